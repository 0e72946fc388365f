"""Benchmark-only probe, loaded into the proxy processes by `benchmarks/run.py` (this folder is
put on their PYTHONPATH; nothing else imports it): the garbage collector's pauses per
generation, written as JSON to `$RLLM_BENCH_GC_STATS` ten times a second, by the proxy process
only. When the file
`$RLLM_BENCH_GC_STATS.freeze` appears, it runs `gc.collect(); gc.freeze()` once (the
`--gc-freeze` experiment: what survived start-up is no longer scanned by full collections).

With `$RLLM_BENCH_GC_PROMOTIONS` set (`benchmarks/gc_promotions.py`) it also counts the objects
each collection of the middle generation moves into the oldest ("promoted"), and with the value
`types` which types they are. A full collection comes once the promoted objects reach a quarter
of the oldest generation, so promotions per request are what sets how often a request pays for
a walk of LiteLLM's whole heap. Costly (a list of the oldest generation per collection): never
on in the throughput benchmarks."""

import os

_PATH = os.environ.get("RLLM_BENCH_GC_STATS")
# Only the proxy process reports: a process it starts (the plugin's build process) inherits
# the environment, and two writers of one file would mix their totals.
if _PATH and os.environ.setdefault("RLLM_BENCH_GC_PID", str(os.getpid())) != str(os.getpid()):
    _PATH = None

if _PATH:
    import gc
    import json
    import threading
    import time

    _totals = {"count": [0, 0, 0], "seconds": [0.0, 0.0, 0.0], "max": [0.0, 0.0, 0.0], "frozen": False}
    _start = [0.0]
    _PROMOTIONS = os.environ.get("RLLM_BENCH_GC_PROMOTIONS", "")
    _oldest_before = [0]
    if _PROMOTIONS:
        _totals.update(promoted=0, promoted_types={})

    def _promotions(phase):
        """Objects a collection of generation 1 moved into generation 2: its survivors are
        appended to generation 2's list, so they are the list's new tail."""
        if phase == "start":
            _oldest_before[0] = len(gc.get_objects(2))
            return
        oldest = gc.get_objects(2)
        new = oldest[_oldest_before[0]:]
        _totals["promoted"] += len(new)
        if _PROMOTIONS == "types":
            types = _totals["promoted_types"]
            for obj in new:
                t = type(obj)
                key = f"{t.__module__}.{t.__qualname__}"
                types[key] = types.get(key, 0) + 1
        del oldest, new

    def _callback(phase, info):
        gen = info.get("generation", 0)
        if _PROMOTIONS and gen == 1:
            _promotions(phase)
        if phase == "start":
            _start[0] = time.perf_counter()
            return
        dt = time.perf_counter() - _start[0]
        _totals["count"][gen] += 1
        _totals["seconds"][gen] += dt
        if dt > _totals["max"][gen]:
            _totals["max"][gen] = dt

    gc.callbacks.append(_callback)

    def _writer():
        while True:
            time.sleep(0.1)
            if not _totals["frozen"] and os.path.exists(_PATH + ".freeze"):
                gc.collect()
                gc.freeze()
                _totals["frozen"] = True
            try:
                tmp = _PATH + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(_totals, f)
                os.replace(tmp, _PATH)
            except OSError:
                pass

    threading.Thread(target=_writer, name="bench-gc-probe", daemon=True).start()
