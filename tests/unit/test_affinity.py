"""The stateless session pin (`litellm_rllm.affinity`): same answer on every proxy, minimal
movement when a replica leaves, bounded load for new sessions."""

from __future__ import annotations

from collections import Counter

from litellm_rllm.affinity import SessionPinner, is_first_call, rendezvous_order

REPLICAS = ["r0", "r1", "r2", "r3"]


def test_every_proxy_computes_the_same_replica_for_a_session() -> None:
    a, b = SessionPinner(), SessionPinner()
    for k in range(500):
        sid = f"session-{k}"
        assert a.choose(sid, REPLICAS, new=True) == b.choose(sid, list(reversed(REPLICAS)), new=False)


def test_sessions_spread_evenly_over_the_replicas() -> None:
    counts = Counter(rendezvous_order(f"s{k}", REPLICAS)[0] for k in range(20_000))
    assert all(abs(n - 5000) < 250 for n in counts.values()), counts


def test_a_replica_that_leaves_releases_only_its_own_sessions_and_gets_them_back() -> None:
    pinner = SessionPinner()
    before = {f"s{k}": pinner.choose(f"s{k}", REPLICAS, new=False) for k in range(2000)}
    healthy = [r for r in REPLICAS if r != "r2"]
    during = {sid: pinner.choose(sid, healthy, new=False) for sid in before}
    moved = {sid for sid in before if before[sid] != during[sid]}
    assert moved == {sid for sid, r in before.items() if r == "r2"}
    assert {sid: pinner.choose(sid, REPLICAS, new=False) for sid in before} == before


def test_a_new_session_avoids_a_replica_far_above_the_average_and_keeps_its_choice() -> None:
    pinner = SessionPinner(load_factor=1.5, min_load=2)
    sid = next(f"s{k}" for k in range(100) if rendezvous_order(f"s{k}", REPLICAS)[0] == "r0")
    for n in range(6):
        pinner.started(f"busy-{n}", "r0")  # r0: 6 in flight, the others none; bound = ceil(1.5 * 7 / 4) = 3
    chosen = pinner.choose(sid, REPLICAS, new=True)
    assert chosen == rendezvous_order(sid, REPLICAS)[1] and pinner.diverted == 1
    assert pinner.choose(sid, REPLICAS, new=False) == chosen  # pinned here for its later calls
    for n in range(6):
        pinner.finished(f"busy-{n}")
    assert pinner.choose(sid, REPLICAS, new=False) == chosen
    assert pinner.choose(sid, [r for r in REPLICAS if r != chosen], new=False) == "r0"  # pin released


def test_a_continuing_session_stays_on_its_replica_however_busy() -> None:
    pinner = SessionPinner(load_factor=1.0, min_load=1)
    sid = next(f"s{k}" for k in range(100) if rendezvous_order(f"s{k}", REPLICAS)[0] == "r1")
    for n in range(50):
        pinner.started(f"c{n}", "r1")
    assert pinner.choose(sid, REPLICAS, new=False) == "r1"


def test_in_flight_counts_follow_starts_retries_and_ends() -> None:
    pinner = SessionPinner()
    pinner.started("call", "r0")
    pinner.started("call", "r1")  # a retry on another replica replaces the first try
    assert dict(pinner.in_flight) == {"r1": 1}
    pinner.finished("call")
    pinner.finished("call")
    assert dict(pinner.in_flight) == {}


def test_first_call_is_a_chat_without_assistant_or_tool_messages() -> None:
    assert is_first_call([{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}])
    assert not is_first_call([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                              {"role": "user", "content": "more"}])
    assert not is_first_call([{"role": "tool", "content": "42"}])
    assert not is_first_call(None)
