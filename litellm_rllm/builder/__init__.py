"""Build: call record -> `Trace`, in two steps with one boundary type between them.

* `prepare` (proxy process: prices, trims, redacts) -> `PreparedCall` (plain, picklable)
* `build_trace` (anywhere: the writer thread or the build process) -> `Trace`

Encoding a `Trace` into stored rows is the store's codec (`store/codec.py`); running these
steps off the event loop is the writer's job (`writer/`).
"""

from .prepare import prepare, redact, weight
from .prepared import PreparedCall
from .trace_builder import build_trace

__all__ = ["PreparedCall", "build_trace", "prepare", "redact", "weight"]
