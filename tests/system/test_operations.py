"""Operating a fleet: the start-up line, and one flush that reaches every proxy."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import httpx

from litellm_rllm import client
from litellm_rllm.slug import encode
from tests.support import harness


def test_startup_line_names_the_store_path_policies_and_routes(tmp_path: Path, upstream_urls: dict[str, str]) -> None:
    store_url = "sqlite:///traces.db"  # relative: the line shows where it really is
    config = harness.write_config(tmp_path, upstreams=upstream_urls, store_url=store_url,
                                  extra_settings={"writer_batch_size": 64})
    with harness.ProxyProcess(config) as proxy:
        line = harness.wait_for(lambda: next((ln for ln in proxy.log().splitlines()
                                              if "litellm-rllm: entries" in ln), None), timeout=20)
    assert line is not None
    assert f"store sqlite {os.path.realpath(tmp_path / 'traces.db')}" in line or \
        f"store sqlite {tmp_path / 'traces.db'}" in line
    assert "entries metadata, sampling, tracer" in line
    assert f"policies {tmp_path / 'policies.yaml'} (2 rules)" in line
    assert "/metrics" in line and "writer_batch_size=64" in line


def test_flush_all_reaches_every_proxy_of_a_fleet(tmp_path: Path, upstream_urls: dict[str, str]) -> None:
    store_url = f"sqlite:///{tmp_path / 'shared.db'}"
    proxies: list[Any] = []
    try:
        for name in ("a", "b"):
            config = harness.write_config(tmp_path / name, upstreams=upstream_urls, store_url=store_url)
            proxies.append(harness.ProxyProcess(config).wait_ready())
        sid = f"fleet-{uuid.uuid4().hex[:8]}"
        for i in range(6):
            proxy = proxies[i % 2]
            resp = httpx.post(f"{proxy.base_url}/meta/{encode({'session_id': sid})}/v1/chat/completions",
                              headers=harness.auth(), timeout=60,
                              json={"model": "policy", "messages": [{"role": "user", "content": f"turn {i}"}]})
            assert resp.status_code == 200
        answers = client.flush_all([p.base_url for p in proxies], harness.MASTER_KEY)
        assert set(answers) == {p.base_url for p in proxies}
        assert all(a["flushed"] for a in answers.values()), answers
        assert len(harness.read_traces(store_url, sid)) == 6
        down = client.flush_all([proxies[0].base_url, "http://127.0.0.1:9"], harness.MASTER_KEY, timeout=2)
        assert down[proxies[0].base_url]["flushed"] and "error" in down["http://127.0.0.1:9"]
    finally:
        for p in proxies:
            p.stop()
