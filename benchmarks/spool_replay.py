"""Spool replay rate: how fast the writer empties its spool into the store while traces keep
coming (issue 21: a replay slower than the load never catches up).

    python benchmarks/spool_replay.py [--spooled 5000] [--record-size 2] [--load 60]
    python benchmarks/spool_replay.py --store-url postgresql://user@host/db   # PostgreSQL
    python benchmarks/spool_replay.py --replay-batch 1,2048                  # per record vs batched

The spool is filled the way an outage under a moderate load fills it: records of
``--record-size`` traces (1,000-token traces as in ``store_throughput.py``), each fsynced. Then
a ``TraceWriter`` starts on that spool with the store up (SQLite in its store process, as the
proxy runs it; or ``--store-url``) while a thread submits ``--load`` new traces per second,
which queue behind the spool as they do in the proxy. Printed per ``--replay-batch``: the
seconds until the spool is empty and the replay rate (spooled traces / those seconds) against
the load. ``--replay-batch 1`` replays record by record, one transaction each (the writer
before batched replays).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from litellm_rllm.store.codec import EncodedTrace, encode  # noqa: E402
from litellm_rllm.writer.spool import Spool  # noqa: E402
from litellm_rllm.writer.store_process import open_for_proxy  # noqa: E402
from litellm_rllm.writer.trace_writer import TraceWriter  # noqa: E402
from store_throughput import make_templates  # noqa: E402


def rows(n: int, prefix: str, templates: list) -> list[EncodedTrace]:
    out = []
    for i in range(n):
        base = templates[i % len(templates)]
        session = f"{prefix}-session-{i % 200}"
        out.append(encode(base.model_copy(update={
            "trace_id": f"{prefix}-{i:09d}", "session_id": session, "session_uids": ["run-1", session]})))
    return out


def run(args: argparse.Namespace, replay_batch: int, templates: list) -> None:
    work = Path(tempfile.mkdtemp(prefix="rllm-replay-", dir=args.dir))
    url = args.store_url or f"sqlite:///{work / 'traces.db'}"
    if args.store_url and "schema=" not in url:
        url += ("&" if "?" in url else "?") + f"schema=bench_{os.urandom(4).hex()}"
    spool_dir = str(work / "spool")
    spooled = rows(args.spooled, f"s{replay_batch}", templates)
    spool = Spool(spool_dir)
    for k in range(0, len(spooled), args.record_size):
        assert spool.append(spooled[k:k + args.record_size])
    spool.close()
    incoming = rows(int(args.load * 120) + 1, f"l{replay_batch}", templates)

    store = open_for_proxy(url)
    store.count()  # started (SQLite: its store process) before the clock
    writer = TraceWriter(store, spool=spool_dir, replay_batch=replay_batch, close_at_exit=False)
    stop = threading.Event()
    sent = [0]

    def load() -> None:
        start = time.monotonic()
        while not stop.is_set() and sent[0] < len(incoming):
            due = int((time.monotonic() - start) * args.load)
            while sent[0] < min(due, len(incoming)):
                writer.submit(incoming[sent[0]])
                sent[0] += 1
            stop.wait(0.005)

    started = time.monotonic()
    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    drained = None
    while time.monotonic() - started < args.max_seconds:
        if writer.stats()["spool_pending"] == 0 and writer.stats()["adopted"] >= args.spooled:
            drained = time.monotonic() - started
            break
        time.sleep(0.01)
    stop.set()
    loader.join()
    writer.flush(120)
    stats = writer.stats()
    writer.close()
    count = store.count()
    if args.store_url:
        try:
            conn = store._connection()  # type: ignore[attr-defined]
            conn.execute(f'DROP SCHEMA "{store.schema}" CASCADE')  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001
            print(f"  (could not drop the benchmark schema: {exc!r})")
    store.close()
    shutil.rmtree(work, ignore_errors=True)
    where = "PostgreSQL" if args.store_url else "SQLite (store process)"
    assert count == args.spooled + sent[0], (count, args.spooled, sent[0], stats)
    if drained is None:
        print(f"{where}, replay batch {replay_batch}: {args.spooled} spooled traces NOT drained in "
              f"{args.max_seconds:.0f}s under {args.load:.0f} traces/s ({stats['spool_pending']} left)")
        return
    print(f"{where}, replay batch {replay_batch}: {args.spooled} spooled traces (records of {args.record_size}) "
          f"replayed in {drained:.2f}s = {args.spooled / drained:,.0f} traces/s, under an incoming load of "
          f"{args.load:.0f} traces/s ({sent[0]} submitted meanwhile, all stored once)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spooled", type=int, default=5000, help="traces in the spool at the start")
    parser.add_argument("--record-size", type=int, default=2, help="traces per spool record")
    parser.add_argument("--load", type=float, default=60.0, help="new traces per second during the replay")
    parser.add_argument("--replay-batch", default="2048", help="comma list; 1 = record by record")
    parser.add_argument("--completion-tokens", type=int, default=1000)
    parser.add_argument("--prompt-tokens", type=int, default=500)
    parser.add_argument("--store-url", default=None, help="postgresql://... instead of a SQLite file")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    templates = make_templates(50, args.prompt_tokens, args.completion_tokens, 0)
    for batch in (int(b) for b in args.replay_batch.split(",")):
        run(args, batch, templates)


if __name__ == "__main__":
    main()
