"""Session keys: names as lookup keys, team namespaces, and the same keys on every write path."""

from __future__ import annotations

from litellm_rllm import sessions
from litellm_rllm.slug import encode
from litellm_rllm.store.codec import encode as encode_trace
from litellm_rllm.store.codec import from_stored
from litellm_rllm.trace import Trace


def test_lookup_keys_are_id_uids_and_name_each_once():
    assert sessions.lookup_keys("sid", ["outer", "sid"], "name") == ("sid", "outer", "name")
    assert sessions.lookup_keys(None, [], None) == ()
    assert sessions.session_key(None, ["outer", "inner"], "name") == "inner"
    assert sessions.session_key(None, [], "name") == "name"
    assert sessions.session_key(None, [], None) == ""


def test_a_teams_keys_are_qualified_and_split_back():
    keys = sessions.lookup_keys(None, ["ctx_a"], "sess_x", team="team-a")
    assert keys == (f"team-a{sessions.TEAM_SEP}ctx_a", f"team-a{sessions.TEAM_SEP}sess_x")
    assert sessions.split_key(keys[0]) == ("team-a", "ctx_a")
    assert sessions.split_key("plain") == (None, "plain")
    assert sessions.session_key(None, [], None, team="team-a") == ""  # no session stays no session


def test_a_spooled_trace_is_replayed_under_the_same_keys_it_was_encoded_with():
    """The writer's spool stores the doc; replay reads the keys back from it (name, team)."""
    trace = Trace(trace_id="t", session_uids=["ctx_o", "ctx_i"], metadata={"session_name": "sess_n", "k": 1},
                  caller={"team_id": "team-a", "key_alias": "agent"})
    encoded = encode_trace(trace)
    replayed = from_stored(encoded.doc, encoded.arrays, encoded.detail)
    assert (replayed.session_key, replayed.uids) == (encoded.session_key, encoded.uids)
    assert encoded.uids == tuple(f"team-a{sessions.TEAM_SEP}{k}" for k in ("ctx_o", "ctx_i", "sess_n"))


def test_rllm_slug_fields_become_the_traces_keys():
    """What rLLM's SDK sends (session_name + session_uids, outer to inner; see
    tests/proxy/test_rllm_sessions.py for the byte-level slug) is accepted as is."""
    from litellm_rllm.slug import decode

    meta = decode(encode({"session_name": "sess_0123456789abcdef",
                          "session_uids": ["ctx_aaaaaaaaaaaaaaaa", "ctx_bbbbbbbbbbbbbbbb"], "task": "t1"})).as_dict()
    trace = Trace(trace_id="t", session_id=meta.get("session_id"), session_uids=meta["session_uids"],
                  metadata={k: v for k, v in meta.items() if k not in ("session_id", "session_uids")})
    assert trace.lookup_keys() == ("ctx_aaaaaaaaaaaaaaaa", "ctx_bbbbbbbbbbbbbbbb", "sess_0123456789abcdef")
    assert trace.session_key() == "ctx_bbbbbbbbbbbbbbbb"
