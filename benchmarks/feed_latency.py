"""Feed latency: time from a call's end (the client has its answer) to a follower waiting on
`GET /rllm/changes` receiving that call's trace, p50 / p99, on SQLite and PostgreSQL.

One call at a time, each in its own session, `--interval` apart; one follower long-polling
(`wait=30`, its cursor carried over) in a thread of this process. What the figure holds: the
writer's batching linger and build, the commit, the wake-up of the waiting follower, its
feed read and the HTTP answer. With `--cross` the follower waits on a second proxy: a commit
made by the other proxy reaches it through that proxy's feed poll (`feed_poll_interval_s`,
0.05 s by default), the path of a fleet.

    python benchmarks/feed_latency.py [--store sqlite|postgres|both] [--pg-url URL] [--cross]
                                      [--calls 200] [--interval 0.05]

PostgreSQL: `--pg-url` names a database, else a private server is started through
tests/support/pg.py (needs the PostgreSQL server binaries).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

import common  # noqa: E402


class FeedWaiter(threading.Thread):
    """Long-polls the feed and notes when each session's trace arrived."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.arrived: dict[str, float] = {}
        self.stopping = False
        self.ready = threading.Event()
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            with httpx.Client(headers=common.auth(), timeout=60) as http:
                cursor = http.get(self.base_url + "/rllm/changes", params={"after": "now"}).json()["next"]
                self.ready.set()
                while not self.stopping:
                    page = http.get(self.base_url + "/rllm/changes",
                                    params={"after": cursor, "wait": 2, "limit": 100}).json()
                    now = time.perf_counter()
                    for item in page["items"]:
                        if item["kind"] == "trace":
                            self.arrived.setdefault(item.get("session_id") or "", now)
                    cursor = page["next"]
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
            self.ready.set()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure(store_url: str, upstream: common.Upstream, folder: Path, *, cross: bool, calls: int,
            interval: float, settings: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    config = common.write_config(folder, plugin=True, api_base=upstream.api_base, store_url=store_url,
                                 settings=settings)
    proxies = [common.Proxy(f"p{k}", config) for k in range(2 if cross else 1)]
    try:
        for p in proxies:
            p.wait_ready()
        caller, follower = proxies[0], proxies[-1]
        waiter = FeedWaiter(follower.base_url)
        waiter.start()
        waiter.ready.wait(30)
        ended: dict[str, float] = {}
        run = f"{int(time.time())}"
        with httpx.Client(headers=common.auth(), timeout=60) as http:
            for k in range(calls + 5):
                sid = f"lat-{run}-{k}"
                r = http.post(f"{caller.base_url}/meta/{common.slug_for(sid)}/v1/chat/completions",
                              json={"model": "policy", "messages": [{"role": "user", "content": f"call {k}"}]})
                done = time.perf_counter()
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                if k >= 5:  # the first calls warm up the proxy (and its build process)
                    ended[sid] = done
                time.sleep(interval)
        deadline = time.monotonic() + 30
        while len(set(ended) & set(waiter.arrived)) < len(ended) and time.monotonic() < deadline:
            time.sleep(0.05)
        waiter.stopping = True
        if waiter.error:
            raise waiter.error
        lat = [(waiter.arrived[s] - t) * 1000 for s, t in ended.items() if s in waiter.arrived]
        return {"n": len(lat), "missing": len(ended) - len(lat), "p50_ms": percentile(lat, 0.5),
                "p90_ms": percentile(lat, 0.9), "p99_ms": percentile(lat, 0.99), "max_ms": max(lat),
                "mean_ms": statistics.fmean(lat)}
    finally:
        for p in proxies:
            p.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--pg-url", help="a PostgreSQL database to use (default: start a private server)")
    parser.add_argument("--cross", action="store_true", help="follower on a second proxy (PostgreSQL: both modes)")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between calls")
    parser.add_argument("--plugin-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="a callback_settings.litellm_rllm key (repeatable), e.g. writer_commit_interval_s=0")
    args = parser.parse_args()
    settings = common.parse_settings(args.plugin_setting)

    sys.path.insert(0, str(common.REPO))
    upstream = common.Upstream(tokens=16)
    server = None
    rows: list[tuple[str, dict[str, Any]]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="rllm-feed-lat-") as tmp:
            base = Path(tmp)
            if args.store in ("sqlite", "both"):
                url = f"sqlite:///{base / 'sqlite' / 'traces.db'}"
                rows.append(("sqlite, same proxy", measure(url, upstream, base / "sqlite", cross=False,
                                                           calls=args.calls, interval=args.interval, settings=settings)))
                if args.cross:
                    rows.append(("sqlite, other proxy", measure(url, upstream, base / "sqlite-x", cross=True,
                                                                calls=args.calls, interval=args.interval, settings=settings)))
            if args.store in ("postgres", "both"):
                pg_url = args.pg_url
                if pg_url is None:
                    from tests.support.pg import PgServer

                    server = PgServer().start()
                    pg_url = server.create_database()
                from tests.support.pg import unique_schema, with_schema

                rows.append(("postgres, same proxy", measure(with_schema(pg_url, unique_schema("lat")), upstream,
                                                             base / "pg", cross=False, calls=args.calls,
                                                             interval=args.interval, settings=settings)))
                if args.cross:
                    rows.append(("postgres, other proxy", measure(with_schema(pg_url, unique_schema("latx")),
                                                                  upstream, base / "pg-x", cross=True,
                                                                  calls=args.calls, interval=args.interval, settings=settings)))
    finally:
        upstream.stop()
        if server is not None:
            server.destroy()
    print(f"\nfeed latency: call end -> waiting follower has the trace ({args.calls} calls, "
          f"{args.interval * 1000:.0f} ms apart)")
    print(f"{'store, follower on':<24} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, r in rows:
        print(f"{name:<24} {r['n']:>5} {r['p50_ms']:>8.1f} {r['p90_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['max_ms']:>8.1f}"
              + (f"  ({r['missing']} missing)" if r["missing"] else ""))


if __name__ == "__main__":
    main()
