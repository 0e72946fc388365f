"""`GET /metrics`: the plugin's counters in Prometheus' text format.

A collector reads the plugin's counters when Prometheus scrapes, so the request path pays
nothing for metrics (per-route counts are one dict increment at the end of a call). It is
registered in prometheus_client's default registry, where LiteLLM's own Prometheus callback
registers too: whichever of the two mounts `/metrics`, both sets of metrics are served.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from .plugin import Plugin

log = logging.getLogger("litellm_rllm")

# writer stats key -> (metric name, help, counter?)
_WRITER = (
    ("submitted", "rllm_traces_captured", "Calls captured and handed to the writer", True),
    ("written", "rllm_traces_written", "Traces committed to the store", True),
    ("duplicates", "rllm_traces_duplicate", "Writes of a trace id already stored", True),
    ("failed", "rllm_traces_failed", "Traces the store refused and that are lost", True),
    ("dropped", "rllm_traces_dropped", "Traces dropped because the writer queue was full", True),
    ("build_errors", "rllm_trace_build_errors", "Calls whose trace could not be built", True),
    ("spooled", "rllm_traces_spooled", "Traces written to the local spool", True),
    ("spool_dropped", "rllm_traces_spool_dropped", "Traces the full spool could not take", True),
    ("replayed", "rllm_traces_replayed", "Spooled traces replayed into the store", True),
    ("queue_depth", "rllm_writer_queue_depth", "Traces waiting in the writer queue", False),
    ("spool_pending", "rllm_spool_pending_traces", "Traces waiting in the spool", False),
    ("spool_bytes", "rllm_spool_pending_bytes", "Bytes waiting in the spool", False),
    ("oldest_queued_s", "rllm_writer_lag_seconds", "Age of the oldest trace not yet written", False),
)
_CAPTURE = (
    ("capture_errors", "rllm_capture_errors", "Calls whose capture failed (the call was served)"),
    ("strip_errors", "rllm_strip_errors", "Responses whose injected fields could not be hidden"),
    ("policy_errors", "rllm_policy_errors", "Policy decisions that failed (request sent unchanged)"),
)


class PluginCollector:
    """A prometheus_client collector over one plugin's counters."""

    def __init__(self, plugin: "Plugin") -> None:
        self.plugin = plugin

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        p = self.plugin
        writer = p.writer_stats()
        for key, name, doc, counter in _WRITER:
            if key not in writer:
                continue
            family = CounterMetricFamily(name, doc) if counter else GaugeMetricFamily(name, doc)
            family.add_metric([], float(writer[key] or 0))
            yield family
        for key, name, doc in _CAPTURE:
            family = CounterMetricFamily(name, doc)
            family.add_metric([], float(p.counters.get(key, 0)))
            yield family
        calls = CounterMetricFamily("rllm_calls", "Calls captured, by route and status", labels=["route", "status"])
        for (route, status), n in list(p.route_counts.items()):
            calls.add_metric([route or "", status], float(n))
        yield calls
        in_flight = GaugeMetricFamily("rllm_calls_in_flight", "Calls between their pre-call hook and their end")
        in_flight.add_metric([], float(len(p.calls)))
        yield in_flight


def install_metrics(plugin: "Plugin", app: Any) -> bool:
    """Register the collector and serve `/metrics` unless something already does; idempotent."""
    try:
        from prometheus_client import REGISTRY, make_asgi_app
    except ImportError:  # pragma: no cover - a dependency of the package
        log.warning("litellm-rllm: prometheus_client is not installed; no /metrics")
        return False
    if getattr(plugin, "_metrics_collector", None) is None:
        plugin._metrics_collector = PluginCollector(plugin)
        REGISTRY.register(plugin._metrics_collector)
    routes = app.router.routes
    if not any(getattr(r, "path", None) == "/metrics" for r in routes):
        from starlette.routing import Mount

        # first in line (after the slug route): a catch-all route of LiteLLM's must not shadow it
        position = 1 if routes and type(routes[0]).__name__ == "SlugRoute" else 0
        routes.insert(position, Mount("/metrics", app=make_asgi_app(REGISTRY)))
    return True
