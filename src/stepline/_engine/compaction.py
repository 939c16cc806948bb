"""Keeping a conversation within the model's context: compaction and truncation.

* :func:`summarise` is the one model call that writes a compaction summary,
  for ``POST /v1/responses/compact`` and for a loop's compaction step alike;
  the summary is the model's text, never stepline's.
* :func:`fit_context` applies ``truncation`` before a model call when the
  model has a configured ``context_window``: ``auto`` drops the oldest
  messages (never the system messages, never the last turn, a tool call
  always with its results) until the request fits; ``disabled`` leaves the
  request whole and reports that it would overflow. Tokens are counted with
  the upstream's tokenizer when it has one, else estimated (one token per
  three bytes of text, on the high side).
* :func:`is_context_overflow` recognises an upstream's own "context too long"
  answer, which becomes OpenAI's ``context_length_exceeded``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import orjson

from stepline._chat.stream import ChatStreamAccumulator, Discard
from stepline._chat.summary import summary_request
from stepline._upstream.routing import UpstreamTarget
from stepline._upstream.tokenize import tokenizer_for
from stepline.errors import UpstreamError

__all__ = [
    "CONTEXT_OVERFLOW",
    "Summary",
    "drop_oldest",
    "estimate_tokens",
    "fit_context",
    "is_context_overflow",
    "summarise",
]

#: OpenAI's error code for a context longer than the model takes
CONTEXT_OVERFLOW = "context_length_exceeded"

#: how upstreams (OpenAI, vLLM, llama.cpp, Ollama, gateways) word a context overflow
_OVERFLOW = re.compile(
    r"context_length_exceeded|maximum context length|context length|context window"
    r"|exceed_context_size|exceeds the available context|prompt is too long"
    r"|too many tokens|input is too long",
    re.IGNORECASE,
)


class _Streamer(Protocol):
    def stream(
        self, target: UpstreamTarget, payload: dict[str, Any], *, step_id: str
    ) -> AsyncIterator[dict[str, Any]]: ...


@dataclass(frozen=True, kw_only=True)
class Summary:
    """What the model wrote when asked to summarise, and what that call cost."""

    text: str
    usage: dict[str, int]


async def summarise(
    chat: _Streamer,
    target: UpstreamTarget,
    messages: Sequence[dict[str, Any]],
    *,
    step_id: str,
    prompt_cache_key: str | None = None,
) -> Summary:
    """Ask the model for a summary of ``messages``; UpstreamError when it fails or
    answers with no text."""
    payload: dict[str, Any] = {
        "model": target.upstream_model,
        "messages": summary_request(messages),
    }
    if prompt_cache_key is not None:
        payload["prompt_cache_key"] = prompt_cache_key
    accumulator = ChatStreamAccumulator(Discard())
    async for chunk in chat.stream(target, payload, step_id=step_id):
        accumulator.feed(chunk)
    turn = accumulator.result()
    if not turn.text.strip():
        raise UpstreamError("the model wrote no summary", step_id=step_id)
    return Summary(text=turn.text, usage=turn.usage)


def is_context_overflow(exc: UpstreamError) -> bool:
    """The upstream refused the request for being longer than its context."""
    if exc.status not in (400, 413, 422):
        return False
    return bool(_OVERFLOW.search(f"{exc.message} {exc.body or ''}"))


def estimate_tokens(payload: dict[str, Any]) -> int:
    """A high estimate of a request's tokens without a tokenizer: a third of its bytes."""
    size = len(orjson.dumps(payload.get("messages") or []))
    size += len(orjson.dumps(payload.get("tools") or []))
    return size // 3 + 1


def drop_oldest(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """``messages`` without their oldest turn; None when only the last turn is left.

    A turn is one user message, or one assistant message with the tool results
    that answer it; system messages at the start always stay."""
    start = 0
    while start < len(messages) and messages[start]["role"] == "system":
        start += 1
    end = start + 1
    if start < len(messages) and messages[start]["role"] == "assistant":
        while end < len(messages) and messages[end]["role"] == "tool":
            end += 1
    while end < len(messages) and messages[end]["role"] == "tool":
        end += 1  # results whose call was dropped go with it
    if end >= len(messages):
        return None
    return [*messages[:start], *messages[end:]]


@dataclass(frozen=True, kw_only=True)
class Fitted:
    """A request as it will be sent, or why it cannot be."""

    payload: dict[str, Any]
    #: None when it fits; else the error a model call fails with
    overflow: str | None = None


async def fit_context(
    http: httpx.AsyncClient,
    target: UpstreamTarget,
    *,
    window: int | None,
    truncation: str,
    payload: dict[str, Any],
    max_output_tokens: int | None,
) -> Fitted:
    """``payload`` within the model's configured context window, as ``truncation`` says.

    Without a configured ``context_window`` the payload goes as it is and the
    upstream decides. The window keeps room for ``max_output_tokens``."""
    if window is None:
        return Fitted(payload=payload)
    budget = window - (max_output_tokens or 0)
    tokenizer = tokenizer_for(target)

    async def measure(candidate: dict[str, Any]) -> int:
        if tokenizer is None:
            return estimate_tokens(candidate)
        return await tokenizer.count(http, candidate)

    tokens = await measure(payload)
    if tokens <= budget:
        return Fitted(payload=payload)
    if truncation == "auto":
        messages: list[dict[str, Any]] | None = payload["messages"]
        while messages is not None:
            messages = drop_oldest(messages)
            if messages is None:
                break
            candidate = {**payload, "messages": messages}
            tokens = await measure(candidate)
            if tokens <= budget:
                return Fitted(payload=candidate)
    return Fitted(
        payload=payload,
        overflow=(
            f"the input needs {tokens} tokens, more than the {budget} this model's context "
            f"window of {window} leaves"
            + (f" beside max_output_tokens {max_output_tokens}" if max_output_tokens else "")
            + (
                ", even with the older messages dropped"
                if truncation == "auto"
                else "; send truncation: 'auto' to drop the oldest messages"
            )
        ),
    )
