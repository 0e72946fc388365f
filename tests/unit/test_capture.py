"""Pure capture logic: response formats -> trace choices, completeness checks, SSE parsing."""

from __future__ import annotations

import json

from litellm_rllm.capture.response import (
    check_completeness,
    choices_from_response,
    logprobs_requested,
    prompt_ids_from,
)
from litellm_rllm.capture.sse import SSEParser
from litellm_rllm.capture.stream import StreamAccumulator
from litellm_rllm.trace import TraceChoice


def test_completeness_flags_ids_logprobs_and_usage_mismatch():
    choice = TraceChoice(index=0, token_ids=[1, 2, 3], logprobs=[-0.5, -0.25])
    result = check_completeness(choice, {"completion_tokens": 3})
    assert not result.ok
    assert result.problems == ["3 token ids but 2 logprobs", "2 logprobs but usage says 3 completion tokens"]
    ok = check_completeness(TraceChoice(index=0, token_ids=[1, 2], logprobs=[-1.0, -2.0]), {"completion_tokens": 2})
    assert ok.ok and ok.problems == []


def test_a_choice_without_logprobs_is_not_ok_when_they_were_requested():
    """vLLM's Responses API tool-call turn: ids and usage agree, logprobs null."""
    choice = TraceChoice(index=0, token_ids=list(range(12)), logprobs=None)
    assert check_completeness(choice, {"output_tokens": 12}).ok  # nobody asked: nothing missing
    result = check_completeness(choice, {"output_tokens": 12}, logprobs_requested=True)
    assert not result.ok and result.problems == ["logprobs were requested but the choice has none (12 token ids)"]
    bare = check_completeness(TraceChoice(index=0), None, logprobs_requested=True)
    assert not bare.ok and bare.problems == ["logprobs were requested but the choice has none"]
    short = check_completeness(TraceChoice(index=0, token_ids=[1, 2, 3], logprobs=[-1.0, -1.0]), None, True)
    assert not short.ok and short.problems == ["3 token ids but 2 logprobs"]


def test_logprobs_requested_reads_each_routes_own_names():
    assert logprobs_requested({"logprobs": True})
    assert logprobs_requested({"logprobs": 0})  # completions: the sampled token's logprob
    assert logprobs_requested({"include": ["message.output_text.logprobs"], "top_logprobs": 0})
    assert not logprobs_requested({"logprobs": False})
    assert not logprobs_requested({"top_logprobs": 3, "include": ["reasoning.encrypted_content"]})
    assert not logprobs_requested({})


def test_responses_tool_call_with_token_ids_but_no_logprobs_is_flagged():
    response = {"object": "response", "status": "completed", "usage": {"input_tokens": 5, "output_tokens": 3},
                "output": [{"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"}],
                "output_messages": [{"tokens": [7, 8, 9], "type": "raw_message_tokens"}]}
    [choice] = choices_from_response(response, logprobs_requested=True)
    assert choice.token_ids == [7, 8, 9] and choice.logprobs is None and choice.finish_reason == "tool_calls"
    assert not choice.completeness.ok and "logprobs were requested" in choice.completeness.problems[0]
    acc = StreamAccumulator()
    acc.add({"type": "response.completed", "response": response})
    [streamed] = acc.choices(logprobs_requested=True)
    assert not streamed.completeness.ok


def test_completions_format_gives_tokens_logprobs_and_per_choice_ids():
    response = {"object": "text_completion", "choices": [
        {"index": 0, "text": " a b", "finish_reason": "length", "prompt_token_ids": [5, 6], "token_ids": [7, 8],
         "logprobs": {"tokens": [" a", " b"], "token_logprobs": [-0.5, -0.25], "top_logprobs": [{" a": -0.5}, {" b": -0.25}],
                      "text_offset": [0, 2]}}]}
    [choice] = choices_from_response(response)
    assert choice.text == " a b" and choice.token_ids == [7, 8] and choice.logprobs == [-0.5, -0.25]
    assert [[t.token for t in pos] for pos in choice.materialize().top_logprobs] == [[" a"], [" b"]]
    assert prompt_ids_from(response, [choice]) == [5, 6]


def test_anthropic_message_becomes_one_choice_with_tool_calls():
    response = {"type": "message", "role": "assistant", "stop_reason": "tool_use", "content": [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}}]}
    [choice] = choices_from_response(response)
    assert choice.message["content"] == "Let me look."
    assert choice.message["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"location": "Paris"}'}
    assert choice.finish_reason == "tool_use" and choice.token_ids is None


def test_sse_parser_handles_events_and_crlf_split_across_reads():
    events = []
    parser = SSEParser(events.append)
    body = b'data: {"a": 1}\r\n\r\nevent: x\r\ndata: {"b":\r\ndata: 2}\r\n\r\ndata: [DONE]\r\n\r\n'
    for i in range(len(body)):  # one byte at a time: every possible split
        parser.feed(body[i:i + 1])
    parser.close()
    assert events == [{"a": 1}, {"b": 2}] and parser.done


def test_sse_parser_gives_the_same_events_for_whole_event_reads_and_any_split():
    """The one-event-per-read fast path and the line loop agree, whatever the reads."""
    import random

    events_bytes = [b'data: {"a": 1}\n\n', b'data: {"b": "x\\ny"}\r\n\n', b': comment\n\n',
                    b'event: e\ndata: {"c": 3}\n\n', b'data: {"d":\ndata: 4}\n\n', b'data:{"e": 5}\n\n',
                    b'data: not json\n\n', b'data: {"f": 6}\r\n\r\n', b'data: [DONE]\n\n']
    body = b"".join(events_bytes)

    def parse(reads):
        out = []
        parser = SSEParser(out.append)
        for read in reads:
            parser.feed(read)
        parser.close()
        return out, parser.done, parser.bad_events

    expected = parse([body[i:i + 1] for i in range(len(body))])
    assert expected == ([{"a": 1}, {"b": "x\ny"}, {"c": 3}, {"d": 4}, {"e": 5}, {"f": 6}], True, 1)
    assert parse(events_bytes) == expected
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(1, 12)))
        assert parse([body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]) == expected


def test_sse_parser_keeps_a_last_event_the_body_did_not_end_with_a_blank_line():
    for tail in (b'data: {"z": 1}', b'data: {"z": 1}\n', b'data: {"z": 1}\r\n'):
        for reads in ([b'data: {"a": 0}\n\n' + tail], [b'data: {"a": 0}\n\n', tail]):
            events = []
            parser = SSEParser(events.append)
            for read in reads:
                parser.feed(read)
            parser.close()
            assert events == [{"a": 0}, {"z": 1}], (tail, reads)


def test_stream_accumulator_merges_tool_call_fragments_by_index():
    acc = StreamAccumulator()
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"x"'}}]},
                      "token_ids": [1], "logprobs": {"content": [{"token": "a", "logprob": -0.5, "top_logprobs": []}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ': 1}'}}]},
                      "token_ids": [2], "logprobs": {"content": [{"token": "b", "logprob": -0.25, "top_logprobs": []}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls", "stop_reason": None, "token_ids": [3],
                      "logprobs": {"content": [{"token": "</s>", "logprob": -1.0, "top_logprobs": []}]}}]},
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}},
    ]
    for c in chunks:
        acc.add(json.loads(json.dumps(c)))
    [choice] = acc.choices()
    assert choice.message["tool_calls"] == [{"id": "call_1", "type": "function",
                                             "function": {"name": "f", "arguments": '{"x": 1}'}}]
    assert choice.token_ids == [1, 2, 3] and choice.logprobs == [-0.5, -0.25, -1.0]
    assert choice.finish_reason == "tool_calls" and choice.completeness.ok


def test_cached_tokens_come_from_the_usage_the_upstream_reports() -> None:
    from litellm_rllm.builder.trace_builder import cached_tokens_of

    assert cached_tokens_of({"prompt_tokens": 90, "prompt_tokens_details": {"cached_tokens": 64}}) == 64
    assert cached_tokens_of({"prompt_tokens": 90, "prompt_tokens_details": None}) is None
    assert cached_tokens_of({"input_tokens": 9, "cache_read_input_tokens": 7}) == 7  # Anthropic's name
    assert cached_tokens_of(None) is None and cached_tokens_of({"prompt_tokens_details": {"cached_tokens": True}}) is None
