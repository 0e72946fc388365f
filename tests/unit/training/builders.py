"""Hand-built sessions for the training tests: a toy chat "template" over token ids.

Ids are small ints chosen so every part of a prompt is recognisable in a failing assertion:
the opening (system + first user message + assistant header), user / tool turns, and the
sampled completions (1000 + 100 * turn + i, then END).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from litellm_rllm.trace import Completeness, Trace, TraceChoice

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SYSTEM = [1, 11, 12, 13, 14, 15]
HEADER = [4, 40]  # "<|im_start|>assistant\n"
END = 5  # end of turn, sampled by the model as its last token


def user(turn: int) -> list[int]:
    return [2, 200 + turn, 201 + turn, 202 + turn, 3]


def tool_result(turn: int) -> list[int]:
    return [6, 600 + turn, 601 + turn, 3]


def completion(turn: int, length: int = 4, branch: int = 0) -> list[int]:
    return [1000 + 100 * turn + 10 * branch + i for i in range(length - 1)] + [END]


def logprobs_for(ids: list[int]) -> list[float]:
    """float32-exact values, distinct per position."""
    return [-(i % 7 + 1) / 8 for i in range(len(ids))]


def trace(
    trace_id: str,
    prompt: Optional[list[int]],
    completions: list[Optional[list[int]]],
    *,
    session: str = "s1",
    seq: int = 0,
    messages: Optional[list[dict[str, Any]]] = None,
    logprobs: bool = True,
    status: str = "ok",
    finish_reason: str = "stop",
    problems: Optional[list[str]] = None,
    **extra: Any,
) -> Trace:
    choices = []
    for index, ids in enumerate(completions):
        choices.append(
            TraceChoice(
                index=index,
                message={"role": "assistant", "content": f"answer {trace_id}/{index}"},
                finish_reason=finish_reason,
                token_ids=ids,
                logprobs=logprobs_for(ids) if (ids is not None and logprobs) else None,
                completeness=Completeness(ok=False, problems=problems) if problems else None,
            )
        )
    return Trace(
        trace_id=trace_id,
        session_id=session,
        session_uids=[session],
        metadata={"task": session, "attempt": 1},
        seq=seq,
        route="/v1/chat/completions",
        model="policy",
        request={"messages": messages if messages is not None else [{"role": "user", "content": trace_id}],
                 "temperature": 1.0, "n": len(completions) or 1},
        prompt_token_ids=prompt,
        choices=choices,
        status=status,  # type: ignore[arg-type]
        created_at=T0 + timedelta(seconds=seq),
        **extra,
    )


class Conversation:
    """An agent loop: each turn's prompt is the previous prompt + what the model sampled
    (exactly, unless a turn says otherwise) + the next user or tool message + the header."""

    def __init__(self, session: str = "s1", first_seq: int = 0) -> None:
        self.session = session
        self.seq = first_seq
        self.prompt = SYSTEM + user(0) + HEADER
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": "sys"}, {"role": "user", "content": "u0"}]
        self.traces: list[Trace] = []
        self.spans: list[tuple[int, int]] = []  # where each turn's completion sits in the final ids

    def call(self, trace_id: str, completions: list[list[int]], **kw: Any) -> Trace:
        t = trace(trace_id, list(self.prompt), list(completions), session=self.session, seq=self.seq,
                  messages=[dict(m) for m in self.messages], **kw)
        self.seq += 1
        self.traces.append(t)
        return t

    def follow(self, sampled: list[int], rendered: Optional[list[int]] = None, turn: int = 0, tool: bool = False) -> None:
        """Continue after a call: the history gets `rendered` (default: exactly `sampled`)."""
        start = len(self.prompt)
        self.spans.append((start, start + len(sampled)))
        self.prompt = self.prompt + (rendered if rendered is not None else sampled)
        self.prompt += (tool_result(turn) if tool else user(turn)) + HEADER
        self.messages.append({"role": "assistant", "content": f"a{turn}"})
        self.messages.append({"role": "tool" if tool else "user", "content": f"m{turn}"})
