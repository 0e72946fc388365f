"""Capture: upstream bytes and LiteLLM objects -> one call's data, cheaply, on the event loop.

* `sse`: incremental server-sent-events parser (the tee's bytes -> JSON events);
* `stream`: `StreamAccumulator`, a stream's chunks -> packed arrays;
* `response`: a whole response (plain dicts) -> trace choices, completeness checks;
* `record`: `CallRecord`, what the end-of-call hook hands the writer.
"""
