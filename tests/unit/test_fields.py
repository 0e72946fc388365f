"""`field` reads LiteLLM's objects as `getattr` and pydantic's extras would, without going
through pydantic's `__getattr__` for fields kept among the extras or absent."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from litellm.types.utils import Delta, ModelResponse, ModelResponseStream, StreamingChoices, Usage  # noqa: E402

from litellm_rllm.capture.fields import field, field_view, fields_of  # noqa: E402

KEYS = ("id", "model", "choices", "usage", "provider_specific_fields", "system_fingerprint", "absent",
        "_hidden_params", "content", "role", "tool_calls", "reasoning_content", "index", "logprobs",
        "finish_reason", "prompt_tokens", "message", "token_ids", "text")


def reference(obj, key):
    value = getattr(obj, key, None)
    if value is None:
        value = (getattr(obj, "__pydantic_extra__", None) or {}).get(key)
    return value


def test_field_reads_litellm_objects_as_getattr_and_extras_would():
    chunk = ModelResponseStream(id="c", model="m", created=1, choices=[
        StreamingChoices(index=0, delta=Delta(content="a"), logprobs={"content": []}, token_ids=[5])])
    objects = [chunk, chunk.choices[0], chunk.choices[0].delta, ModelResponse(),
               Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)]
    for obj in objects:
        for key in KEYS:
            assert field(obj, key) == reference(obj, key), (type(obj).__name__, key)
    assert field(chunk.choices[0], "token_ids") == [5]
    assert field(chunk, "_hidden_params") == chunk._hidden_params  # private attributes too


class Plain:
    slot = "class"

    @property
    def computed(self):
        return 3


def test_field_reads_plain_objects_dicts_and_none():
    obj = Plain()
    obj.given = 1
    assert (field(obj, "given"), field(obj, "slot"), field(obj, "computed"), field(obj, "absent")) == (1, "class", 3, None)
    assert field({"a": 1}, "a") == 1 and field({"a": 1}, "b") is None and field(None, "a") is None


def test_field_view_has_the_fields_fields_of_gives_and_copies_nothing_it_can_read_in_place():
    chunk = ModelResponseStream(id="c", model="m", created=1, choices=[
        StreamingChoices(index=0, delta=Delta(content="a"), logprobs={"content": []}, token_ids=[5])])
    plain_dict = {"index": 1, "token_ids": [7]}
    obj = Plain()
    obj.given = 1
    for item in (chunk, chunk.choices[0], chunk.choices[0].delta, ModelResponse(), plain_dict, obj):
        assert dict(field_view(item)) == fields_of(item), type(item).__name__
    assert field_view(plain_dict) is plain_dict
    assert field_view(chunk.choices[0]) is chunk.choices[0].__pydantic_extra__
