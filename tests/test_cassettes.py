import json, uuid, pytest
from litellm_rllm.slug import encode
from tests.cassette_support import make_vcr
import vcr.errors

CAPTURED = []

@pytest.mark.parametrize("model,stream,extra", [
    ("openai-recorded", False, {}),
    ("openai-recorded", False, {"logprobs": True, "top_logprobs": 2}),
    ("openai-recorded", True, {}),
    ("anthropic-recorded", False, {}),
    ("anthropic-recorded", True, {}),
])
def test_experiment(proxy, model, stream, extra):
    v = make_vcr(cassette_library_dir="/tmp/cas_exp")
    sid = f"s-{uuid.uuid4().hex[:8]}"
    def before(r):
        CAPTURED.append(r)
        return r
    with v.use_cassette("empty.yaml", before_record_request=before) as cas:
        client = proxy.openai(encode({"session_id": sid}))
        try:
            r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}], stream=stream, **extra)
            if stream:
                list(r)
        except Exception as e:
            print("EXC", type(e), str(e)[:3000])
    for r in CAPTURED:
        print("REQ", r.method, r.uri, dict(r.headers), r.body)
    CAPTURED.clear()
