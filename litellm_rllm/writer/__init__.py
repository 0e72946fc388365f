"""The writer: call records -> stored rows, off the event loop.

* `trace_writer.TraceWriter`: the bounded queue and the background thread (group commit, flush
  barrier, retries, shutdown);
* `encoders`: items -> encoded rows in the writer thread (`InlineEncoder`);
* `build_process`: the same in a helper process (`BuildProcess`) for long replies, so the
  proxy's GIL stays free;
* `spool`: the local disk spool that holds rows while the store is down, replayed in order;
* `store_call`: store calls with a deadline, so a hung store never holds the queue;
* `store_process`: the proxy's SQLite in a helper process (a SIGBUS can't end the proxy);
* `pending`: per-session counts of traces not in the store yet (read-back completeness).
"""

from litellm_rllm.writer.trace_writer import TraceWriter

__all__ = ["TraceWriter"]
