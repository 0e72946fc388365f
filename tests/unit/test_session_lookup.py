"""A lookup by a session uid includes nested sessions, by a session_id only the traces that
carry it: what `client.Session`, `fetch_traces` and the CLI help say, checked against the store."""

from __future__ import annotations

from litellm_rllm import client as rllm
from litellm_rllm import store
from litellm_rllm.trace import Trace


def _trace(trace_id: str) -> Trace:
    """A trace tagged the way the proxy tags a request sent inside the current session."""
    meta = rllm.current_metadata()
    return Trace(trace_id=trace_id, session_id=meta.get("session_id"), session_uids=meta.get("session_uids", []))


def test_outer_uid_finds_nested_sessions_and_session_id_finds_its_own(tmp_path):
    written = []
    with rllm.session(session_id="episode-17") as episode:
        written.append(_trace("outer-1"))
        with rllm.session(session_id="judge-17") as judge:
            written.append(_trace("judge-1"))
        with rllm.session(step=2):  # keeps the episode's session_id
            written.append(_trace("step-2"))
    st = store.open(f"sqlite:///{tmp_path / 't.db'}")
    try:
        st.write(written)

        def ids(session: str) -> list[str]:
            return [t.trace_id for t in st.traces(session=session)]

        assert ids(episode.uid) == ["outer-1", "judge-1", "step-2"]
        assert ids("episode-17") == ["outer-1", "step-2"]
        assert ids(judge.uid) == ids("judge-17") == ["judge-1"]
    finally:
        st.close()


def test_the_uid_is_known_before_entry_and_differs_per_block():
    a, b = rllm.session(session_id="x"), rllm.session(session_id="x")
    assert a.uid and b.uid and a.uid != b.uid
    with a:
        assert rllm.current_metadata()["session_uids"] == [a.uid]
