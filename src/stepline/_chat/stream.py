"""Chat Completions stream chunks -> deltas for a sink, and the final assistant turn.

This runs once per upstream chunk, so it does the least it can: it reads the
chunk dict the upstream client already decoded, forwards each piece to the
sink as it arrives (nothing is held back to the end of the step), and keeps
just enough state to rebuild the assistant message at the end.

Tool calls are keyed by the chunk's ``index``. A call is announced to the
sink once its name is known; argument pieces that arrive before that are
held and forwarded with the announcement. A Chat Completions *custom* tool
call (``type: custom``, ``custom: {name, input}``) is announced the same way
and its ``input`` pieces arrive as the call's arguments; the turn remembers
it was custom, so the history shows it as the model sent it. Reasoning text
arrives as ``reasoning_content`` (vLLM, llama.cpp) or ``reasoning`` (newer
vLLM). Token logprobs (``choices[].logprobs.content``) reach the sink just
before the text they belong to.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Protocol

from stepline.errors import UpstreamError

__all__ = ["AssistantTurn", "ChatStreamAccumulator", "DeltaSink", "Discard", "ToolCall"]


class DeltaSink(Protocol):
    def on_reasoning(self, text: str) -> None: ...

    def on_text(self, text: str) -> None: ...

    def on_tool_call(self, index: int, call_id: str, name: str) -> None: ...

    def on_tool_arguments(self, index: int, text: str) -> None: ...

    def on_logprobs(self, entries: list[dict[str, Any]]) -> None: ...


class Discard:
    """A delta sink for a call whose pieces nobody watches."""

    def on_reasoning(self, text: str) -> None:
        return None

    def on_text(self, text: str) -> None:
        return None

    def on_tool_call(self, index: int, call_id: str, name: str) -> None:
        return None

    def on_tool_arguments(self, index: int, text: str) -> None:
        return None

    def on_logprobs(self, entries: list[dict[str, Any]]) -> None:
        return None


@dataclass(frozen=True, kw_only=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str
    #: a Chat Completions custom tool call: ``arguments`` is its raw input
    custom: bool = False


@dataclass(frozen=True, kw_only=True)
class AssistantTurn:
    """One model call's result: the assistant message as Chat Completions shapes it."""

    text: str
    reasoning: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str
    usage: dict[str, int]
    #: the model the upstream says answered (read from its usage chunk), if it said
    model: str | None = None

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.call_id,
                    "type": "custom",
                    "custom": {"name": call.name, "input": call.arguments},
                }
                if call.custom
                else {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
        return message


@dataclass
class _PendingCall:
    call_id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)
    announced: bool = False
    custom: bool = False


class ChatStreamAccumulator:
    """Feed it chunks in order; ``result()`` gives the turn once the stream ended."""

    def __init__(self, sink: DeltaSink) -> None:
        self._sink = sink
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: dict[int, _PendingCall] = {}
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None
        self._model: str | None = None

    def feed(self, chunk: dict[str, Any]) -> None:
        usage = chunk.get("usage")
        if usage:
            # the usage chunk comes once, last: read the model there, not per chunk
            self._usage = usage
            self._model = chunk.get("model") or None
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta")
            if delta:
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning:
                    self._reasoning.append(reasoning)
                    self._sink.on_reasoning(reasoning)
                content = delta.get("content")
                logprobs = (choice.get("logprobs") or {}).get("content")
                if logprobs and content:
                    self._sink.on_logprobs(logprobs)
                if content:
                    self._text.append(content)
                    self._sink.on_text(content)
                tool_calls = delta.get("tool_calls")
                if tool_calls:
                    self._feed_tool_calls(tool_calls)
            finish = choice.get("finish_reason")
            if finish:
                self._finish_reason = finish

    def _feed_tool_calls(self, tool_calls: list[dict[str, Any]]) -> None:
        for position, piece in enumerate(tool_calls):
            index = piece.get("index", position)
            call = self._calls.get(index)
            if call is None:
                call = self._calls[index] = _PendingCall()
            if piece.get("id") and not call.announced:
                # once announced, the id is what events and steps carry
                call.call_id = piece["id"]
            function = piece.get("function")
            if function is None and (piece.get("type") == "custom" or "custom" in piece):
                custom = piece.get("custom") or {}
                function = {"name": custom.get("name"), "arguments": custom.get("input")}
                call.custom = True
            function = function or {}
            if function.get("name") and not call.announced:
                call.name = function["name"]
            arguments = function.get("arguments")
            if not call.announced and call.name:
                call.announced = True
                call.call_id = call.call_id or f"call_{secrets.token_hex(12)}"
                self._sink.on_tool_call(index, call.call_id, call.name)
                if call.arguments:
                    self._sink.on_tool_arguments(index, "".join(call.arguments))
            if arguments:
                call.arguments.append(arguments)
                if call.announced:
                    self._sink.on_tool_arguments(index, arguments)

    def result(self) -> AssistantTurn:
        if self._finish_reason is None:
            raise UpstreamError("upstream stream ended before finish_reason")
        calls: list[ToolCall] = []
        for index in sorted(self._calls):
            call = self._calls[index]
            if not call.announced or call.call_id is None or call.name is None:
                raise UpstreamError(f"upstream sent tool call {index} without a name")
            calls.append(
                ToolCall(
                    call_id=call.call_id,
                    name=call.name,
                    arguments="".join(call.arguments),
                    custom=call.custom,
                )
            )
        return AssistantTurn(
            text="".join(self._text),
            reasoning="".join(self._reasoning),
            tool_calls=tuple(calls),
            finish_reason=self._finish_reason,
            usage=_usage(self._usage),
            model=self._model if isinstance(self._model, str) else None,
        )


def _usage(raw: dict[str, Any] | None) -> dict[str, int]:
    raw = raw or {}
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    return {
        "input_tokens": int(raw.get("prompt_tokens") or 0),
        "output_tokens": int(raw.get("completion_tokens") or 0),
        "cached_tokens": int(prompt_details.get("cached_tokens") or 0),
        "reasoning_tokens": int(completion_details.get("reasoning_tokens") or 0),
    }
