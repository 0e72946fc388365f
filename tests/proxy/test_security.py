"""Bad input and trust: hostile slugs, reserved keys, signed slugs, credentials, team scoping."""

from __future__ import annotations

import base64
import json
import logging
import random
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from litellm_rllm.builder import redact
from litellm_rllm.slug import encode
from tests.support import harness

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("key", ["user_api_key_team_id", "litellm_params", "tags", "model", "spend_logs_metadata"])
@pytest.mark.parametrize("carrier", ["path", "header"])
def test_reserved_metadata_key_is_rejected_naming_the_key(proxy, key, carrier):
    slug = "rllm1:" + b64(json.dumps({"session_id": "x", key: "attacker"}, sort_keys=True,
                                     separators=(",", ":")).encode())
    if carrier == "path":
        r = proxy.client.post(f"/meta/{slug}/v1/chat/completions", json=CHAT)
    else:
        r = proxy.client.post("/v1/chat/completions", headers={"x-rllm-slug": slug}, json=CHAT)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "rllm_invalid_slug" and key in err["message"]


def fuzzed_slugs(n: int, seed: int = 7) -> list[str]:
    """Valid, broken and hostile slugs, deterministic."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            out.append(encode({"session_id": f"fz-{i}", "k": rnd.random()}))
        elif kind == 1:
            out.append("rllm1:" + b64(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 64)))))
        elif kind == 2:
            out.append("rllm1:" + "".join(rnd.choice("AZaz09-_!.~%") for _ in range(rnd.randrange(1, 40))))
        elif kind == 3:
            depth = rnd.randrange(5, 40)
            out.append("rllm1:" + b64(("[" * depth + "]" * depth).encode()))
        elif kind == 4:
            out.append("rllm1:" + b64(json.dumps({"session_uids": rnd.choice([1, "x", [1], None])}).encode()))
        else:
            out.append(rnd.choice(["rllm0:", "RLLM1:", "rllm1", ""]) + b64(b'{"a":1}'))
    return out


def test_hundreds_of_fuzzed_slugs_get_only_4xx_and_the_proxy_keeps_serving(proxy):
    statuses = []
    for slug in fuzzed_slugs(300):
        r = proxy.client.post("/v1/chat/completions", headers={"x-rllm-slug": slug}, json=CHAT)
        statuses.append(r.status_code)
        assert r.status_code == 200 or 400 <= r.status_code < 500, (slug, r.status_code, r.text[:200])
        if r.status_code != 200:
            assert r.json()["error"]["code"] == "rllm_invalid_slug"
    assert statuses.count(200) >= 50 and sum(400 <= s < 500 for s in statuses) >= 200
    assert proxy.client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_redact_removes_echoed_keys():
    msg = "Incorrect API key provided: sk-proj-abcdef123456. And sk-ant-api03-zzzzzzzz and secret-xyz-1"
    out = redact(msg, secrets=("secret-xyz-1",))
    assert "abcdef123456" not in out and "zzzzzzzz" not in out and "secret-xyz-1" not in out


def test_planted_credentials_appear_nowhere_in_store_export_or_logs(proxy, vllm_upstream, openai_upstream, caplog):
    caplog.set_level(logging.DEBUG, logger="litellm_rllm")
    sid = f"cred-{uuid.uuid4().hex[:8]}"
    slug = encode({"session_id": sid})
    client_key_header = {"Authorization": f"Bearer {harness.MASTER_KEY}"}
    for model in ("policy", "teacher", "policy-fail-500", "demo"):
        proxy.client.post(f"/meta/{slug}/v1/chat/completions", headers=client_key_header,
                          json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    with proxy.client.stream("POST", f"/meta/{slug}/v1/chat/completions", headers=client_key_header,
                             json={"model": "policy", "stream": True,
                                   "messages": [{"role": "user", "content": "hi"}]}) as resp:
        list(resp.iter_lines())
    traces = proxy.traces(sid)
    assert len(traces) == 5
    assert all(t.caller and "api_key" not in json.dumps(t.caller) for t in traces)
    planted = [harness.MASTER_KEY, "fake-vllm-key", "sk-fake-openai-key", "sk-ant-fake-key"]
    db = Path(proxy.store_url.removeprefix("sqlite:///"))
    # the database, its WAL and any spool files next to it
    files = [p for p in db.parent.glob(db.name + "*") if p.is_file()]
    files += [p for d in db.parent.glob(db.name + "*") if d.is_dir() for p in d.rglob("*") if p.is_file()]
    blobs = {str(p.relative_to(db.parent)): read_elsewhere(p) for p in files}
    export = subprocess.run([sys.executable, "-m", "litellm_rllm.cli", "traces", "export", "--store",
                             proxy.store_url, "--session", sid], capture_output=True, text=True, check=True).stdout
    assert len(export.splitlines()) == 5
    for secret in planted:
        for name, blob in blobs.items():
            assert secret.encode() not in blob, f"{secret!r} in {name}"
        assert secret not in export
        assert secret not in caplog.text


def read_elsewhere(path: Path) -> bytes:
    """A file's bytes, read by a child process. Not `path.read_bytes()` here: closing any file
    descriptor of the database drops every POSIX lock this process holds on it, including the
    in-process proxy's SQLite locks; another process (the CLI below) then takes itself for the
    last connection, checkpoints and removes the WAL under the proxy's feet (corruption)."""
    return subprocess.run([sys.executable, "-c", "import sys; sys.stdout.buffer.write(open(sys.argv[1], 'rb').read())",
                           str(path)], capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def trust_proxy(tmp_path_factory, upstream_urls):
    """A subprocess proxy with signed slugs required (two secrets: rotation) and a custom auth
    that gives team keys (LiteLLM's `custom_auth`, no database needed)."""
    folder = tmp_path_factory.mktemp("trust")
    store_url = f"sqlite:///{folder / 'traces.db'}"
    config = harness.write_config(folder, upstreams=upstream_urls, store_url=store_url,
                                  extra_settings={"slug_secret": "new-secret-2026",
                                                  "slug_secrets_previous": ["old-secret-2025"],
                                                  "require_signed_slugs": True})
    (folder / "team_auth.py").write_text(TEAM_AUTH.replace("MASTER", harness.MASTER_KEY))
    cfg = yaml.safe_load(config.read_text())
    cfg["general_settings"]["custom_auth"] = "team_auth.user_api_key_auth"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with harness.ProxyProcess(config) as proc:
        proc.store_url = store_url
        yield proc


TEAM_AUTH = '''
from fastapi import HTTPException, Request
from litellm.proxy._types import UserAPIKeyAuth

KEYS = {
    "MASTER": dict(user_role="proxy_admin", key_alias="admin"),
    "sk-team-a-0000000001": dict(team_id="team-a", key_alias="agent-a", user_id="alice", user_role="internal_user"),
    "sk-team-b-0000000002": dict(team_id="team-b", key_alias="agent-b", user_id="bob", user_role="internal_user"),
    "sk-noteam-000000003": dict(key_alias="loner", user_id="carol", user_role="internal_user"),
}


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    key = (api_key or "").removeprefix("Bearer ").strip()
    if key not in KEYS:
        raise HTTPException(status_code=401, detail="unknown key")
    return UserAPIKeyAuth(api_key=key, **KEYS[key])
'''


def post(proc, path, key, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(kw.pop("headers", {}))
    return httpx.post(proc.base_url + path, headers=headers, timeout=30, **kw)


def test_signed_slugs_required_good_passes_tampered_unsigned_and_retired_fail(trust_proxy):
    meta = {"session_id": f"signed-{uuid.uuid4().hex[:6]}"}
    key = harness.MASTER_KEY
    good_new, good_old = encode(meta, secret="new-secret-2026"), encode(meta, secret="old-secret-2025")
    retired = encode(meta, secret="retired-secret-2024")
    unsigned = encode(meta)
    payload, sig = good_new.split(".")
    tampered = encode({**meta, "session_id": "someone-else"}).split(".")[0] + "." + sig
    for slug in (good_new, good_old):
        assert post(trust_proxy, f"/meta/{slug}/v1/chat/completions", key, json=CHAT).status_code == 200
    for slug, status in ((unsigned, 401), (tampered, 401), (retired, 401)):
        r = post(trust_proxy, f"/meta/{slug}/v1/chat/completions", key, json=CHAT)
        assert r.status_code == status, (slug, r.text)
        assert r.json()["error"]["code"] == "rllm_invalid_slug"
    assert post(trust_proxy, "/v1/chat/completions", key, headers={"x-rllm-slug": unsigned}, json=CHAT).status_code == 401


def read_session(proc, sid, key, **params):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{proc.base_url}/rllm/sessions/{sid}/traces", headers=headers, params=params, timeout=30)


def test_read_back_shows_a_team_key_only_its_own_teams_traces(trust_proxy):
    """Sessions are namespaced by team: two teams writing session `sid` write two sessions."""
    sid = f"shared-{uuid.uuid4().hex[:6]}"
    slug = encode({"session_id": sid}, secret="new-secret-2026")
    for key in ("sk-team-a-0000000001", "sk-team-a-0000000001", "sk-team-b-0000000002", harness.MASTER_KEY):
        assert post(trust_proxy, f"/meta/{slug}/v1/chat/completions", key, json=CHAT).status_code == 200
    assert post(trust_proxy, "/rllm/flush", harness.MASTER_KEY).status_code == 200

    admin = read_session(trust_proxy, sid, harness.MASTER_KEY).json()
    assert admin["count"] == 1 and admin["traces"][0]["caller"] == {"key_alias": "admin"}  # no team's namespace
    admin_a = read_session(trust_proxy, sid, harness.MASTER_KEY, team="team-a").json()
    assert admin_a["count"] == 2 and [t["seq"] for t in admin_a["traces"]] == [0, 1]
    team_a = read_session(trust_proxy, sid, "sk-team-a-0000000001").json()
    assert team_a["traces"] == admin_a["traces"] and team_a["team"] == "team-a"
    assert {t["caller"]["key_alias"] for t in team_a["traces"]} == {"agent-a"}
    team_b = read_session(trust_proxy, sid, "sk-team-b-0000000002").json()
    assert team_b["count"] == 1 and team_b["traces"][0]["caller"]["team_id"] == "team-b"
    assert team_b["traces"][0]["seq"] == 0
    assert read_session(trust_proxy, sid, "sk-team-b-0000000002", team="team-a").status_code == 403
    assert read_session(trust_proxy, sid, "sk-noteam-000000003").status_code == 403
    assert read_session(trust_proxy, sid, None).status_code == 401
    assert post(trust_proxy, "/rllm/flush", "sk-team-a-0000000001").status_code == 403
    assert post(trust_proxy, "/rllm/flush", None).status_code == 401
    # no key material in what the read-back returns
    assert "sk-team-a-0000000001" not in json.dumps(admin_a)


def test_team_limit_counts_only_the_teams_own_traces_and_delete_is_scoped(trust_proxy):
    sid = f"del-{uuid.uuid4().hex[:6]}"
    slug = encode({"session_id": sid}, secret="new-secret-2026")
    for key in ("sk-team-b-0000000002", "sk-team-a-0000000001", "sk-team-a-0000000001"):
        assert post(trust_proxy, f"/meta/{slug}/v1/chat/completions", key, json=CHAT).status_code == 200

    def call(method, path, key, **kw):
        return httpx.request(method, f"{trust_proxy.base_url}{path}", headers={"Authorization": f"Bearer {key}"},
                             timeout=30, **kw)

    limited = call("GET", f"/rllm/sessions/{sid}/traces", "sk-team-a-0000000001", params={"limit": 1}).json()
    assert limited["count"] == 1 and limited["traces"][0]["caller"]["team_id"] == "team-a"
    # a team deletes its own session: team B's session of the same name stays
    assert call("DELETE", f"/rllm/sessions/{sid}", "sk-team-a-0000000001", params={"team": "team-b"}).status_code == 403
    gone = call("DELETE", f"/rllm/sessions/{sid}", "sk-team-a-0000000001")
    assert gone.status_code == 200 and gone.json()["deleted"] == 2
    assert call("GET", f"/rllm/sessions/{sid}/traces", harness.MASTER_KEY, params={"team": "team-b"}).json()["count"] == 1
    assert call("DELETE", f"/rllm/sessions/{sid}", "sk-noteam-000000003").status_code == 403
    assert call("DELETE", f"/rllm/sessions/{sid}", harness.MASTER_KEY).json()["deleted"] == 0  # no team's: none
    assert call("DELETE", f"/rllm/sessions/{sid}", harness.MASTER_KEY, params={"team": "team-b"}).json()["deleted"] == 1
    assert call("GET", f"/rllm/sessions/{sid}/traces", harness.MASTER_KEY, params={"team": "team-b"}).json()["count"] == 0


def test_team_namespaces_hold_on_the_trainer_routes(trust_proxy):
    """Trajectories, the session list, rewards and the change feed see a session in its
    team's namespace: team B naming team A's session writes and reads its own."""
    sid = f"ns-{uuid.uuid4().hex[:6]}"
    slug = encode({"session_id": sid}, secret="new-secret-2026")
    for n, key in enumerate(("sk-team-a-0000000001", "sk-team-b-0000000002", "sk-team-a-0000000001")):
        body = {**CHAT, "messages": [{"role": "user", "content": f"turn {n}"}]}  # distinct: no retries
        assert post(trust_proxy, f"/meta/{slug}/v1/chat/completions", key, json=body).status_code == 200
    assert post(trust_proxy, "/rllm/flush", harness.MASTER_KEY).status_code == 200

    def get(path, key, **params):
        return httpx.get(f"{trust_proxy.base_url}{path}", headers={"Authorization": f"Bearer {key}"},
                         params=params, timeout=30)

    def calls(body):  # this upstream returns no token ids: each call is counted, not turned into a row
        return body["count"] + body["skipped_without_ids"]

    rows = get(f"/rllm/sessions/{sid}/trajectories", "sk-team-b-0000000002", view="per-call").json()
    assert calls(rows) == 1 and rows["team"] == "team-b"
    assert calls(get(f"/rllm/sessions/{sid}/trajectories", harness.MASTER_KEY, view="per-call", team="team-a").json()) == 2
    listed = get("/rllm/sessions", harness.MASTER_KEY, q=sid).json()["sessions"]
    assert sorted((s["team"], s["session_id"], s["traces"]) for s in listed) == [("team-a", sid, 2), ("team-b", sid, 1)]
    one = get("/rllm/sessions", "sk-team-b-0000000002", session=sid).json()["sessions"]
    assert [(s["team"], s["traces"]) for s in one] == [("team-b", 1)]
    assert post(trust_proxy, f"/rllm/sessions/{sid}/reward", "sk-team-b-0000000002", json={"reward": 1.0}).status_code == 201
    assert get(f"/rllm/sessions/{sid}/traces", "sk-team-a-0000000001").json()["rewards"] == []
    assert [r["reward"] for r in get(f"/rllm/sessions/{sid}/traces", harness.MASTER_KEY, team="team-b").json()["rewards"]] == [1.0]
    feed = get("/rllm/changes", harness.MASTER_KEY, session=sid, team="team-a").json()["items"]
    assert [i["kind"] for i in feed] == ["trace", "trace"] and {i["session_id"] for i in feed} == {sid}
    feed_b = get("/rllm/changes", "sk-team-b-0000000002", session=sid).json()["items"]
    assert [i["kind"] for i in feed_b] == ["trace", "reward"]
    assert get("/rllm/changes", "sk-team-b-0000000002", session=sid, team="team-a").status_code == 403


def test_a_team_key_naming_another_teams_session_uid_writes_its_own_session(trust_proxy):
    """rLLM-style slugs (session_name + nested uids): team B reusing team A's uid and name can
    neither add to team A's session nor read it; the CLI finds each under its team."""
    name, outer = f"sess_{uuid.uuid4().hex[:16]}", f"ctx_{uuid.uuid4().hex[:16]}"
    a_slug = encode({"session_name": name, "session_uids": [outer]}, secret="new-secret-2026")
    b_slug = encode({"session_name": name, "session_uids": [outer, "ctx_b_inner"]}, secret="new-secret-2026")
    assert post(trust_proxy, f"/meta/{a_slug}/v1/chat/completions", "sk-team-a-0000000001", json=CHAT).status_code == 200
    assert post(trust_proxy, f"/meta/{b_slug}/v1/chat/completions", "sk-team-b-0000000002", json=CHAT).status_code == 200
    assert post(trust_proxy, "/rllm/flush", harness.MASTER_KEY).status_code == 200
    for lookup in (name, outer):
        a_view = read_session(trust_proxy, lookup, harness.MASTER_KEY, team="team-a").json()["traces"]
        assert [t["caller"]["team_id"] for t in a_view] == ["team-a"]
        b_view = read_session(trust_proxy, lookup, "sk-team-b-0000000002").json()["traces"]
        assert [t["caller"]["team_id"] for t in b_view] == ["team-b"]
        assert read_session(trust_proxy, lookup, harness.MASTER_KEY).json()["count"] == 0
    cli = [sys.executable, "-m", "litellm_rllm.cli", "traces", "export", "--store", trust_proxy.store_url,
           "--session", name]
    exported = subprocess.run([*cli, "--team", "team-a"], capture_output=True, text=True, check=True).stdout
    assert [json.loads(line)["caller"]["team_id"] for line in exported.splitlines()] == ["team-a"]
    assert subprocess.run(cli, capture_output=True, text=True, check=True).stdout == ""
