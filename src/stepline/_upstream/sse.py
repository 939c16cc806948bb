"""Chat Completions bodies read into chunk dicts: an SSE stream, or one JSON body.

Invariants:

* This is the hot path of every token: a streamed event costs one
  ``orjson.loads`` and a few dict lookups, nothing more.
* A bad event, an ``error`` event or an error object in the stream becomes an
  :class:`~stepline.errors.UpstreamError` whose message has registered secrets
  masked (:mod:`stepline._masking`); chunks parsed before it are still handed on.
* A whole ``chat.completion`` body becomes the chunks a stream of it would have
  sent, so the loop reads one shape whatever the upstream does.
"""

from __future__ import annotations

from typing import Any

import orjson

from stepline._masking import mask
from stepline.errors import UpstreamError

__all__ = ["SSEParser", "clip", "completion_chunks", "error_message"]

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


class SSEParser:
    """Server-sent events in, chunk dicts out; fed whatever each network read returns.

    Lines end in ``\\n`` or ``\\r\\n``; an event is dispatched at its blank line,
    multi-line ``data`` is joined with ``\\n``. A bad event sets ``failure``
    (chunks parsed before it in the same read are still returned), ``[DONE]``
    sets ``done``, and ``finished`` records whether any choice ever carried a
    ``finish_reason``.
    """

    __slots__ = ("_data", "_event", "_step_id", "_tail", "done", "failure", "finished")

    def __init__(self, step_id: str | None = None) -> None:
        self._step_id = step_id
        self._tail = b""
        self._data: bytes | None = None
        self._event: bytes | None = None
        self.done = False
        self.finished = False
        self.failure: UpstreamError | None = None

    def close(self) -> list[dict[str, Any]]:
        """End of the body: an unterminated last event still counts."""
        return self.feed(b"\n\n")

    def feed(self, block: bytes) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        if self.done or self.failure is not None:
            return chunks
        lines = (self._tail + block if self._tail else block).split(b"\n")
        self._tail = lines.pop()
        data = self._data
        for line in lines:
            if line.startswith(b"data:"):
                data = line[5:] if data is None else data + b"\n" + line[5:]
                continue
            if line and line != b"\r":
                if line.startswith(b"event:"):
                    self._event = line[6:].strip()
                # Comments (keep-alive pings) and id/retry fields carry nothing for us.
                continue
            if data is None:
                continue
            event, data = data, None
            try:
                chunk = _loads(event)  # JSON allows the leading space and a trailing \r
            except _JSONDecodeError:
                if event.strip() == b"[DONE]":
                    self.done = True
                elif self._event == b"error":
                    self.failure = self._error(event.strip().decode("utf-8", "replace"))
                else:
                    self.failure = self._error(f"upstream sent invalid JSON: {clip(event)}")
                break
            if self._event is not None:
                if self._event == b"error":
                    self.failure = self._error(error_message(chunk) or clip(event))
                    break
                self._event = None
            if type(chunk) is not dict or chunk.get("error") is not None:
                self.failure = self._error(
                    error_message(chunk) or f"upstream sent an unexpected event: {clip(event)}"
                )
                break
            if not self.finished:
                choices = chunk.get("choices")
                if choices:
                    try:
                        for choice in choices:
                            if choice.get("finish_reason"):
                                self.finished = True
                    except (AttributeError, TypeError):
                        self.failure = self._error(
                            f"upstream sent a malformed chunk: {clip(event)}"
                        )
                        break
                elif choices is None and chunk.get("object") == "error":
                    self.failure = self._error(error_message(chunk) or clip(event))
                    break
            chunks.append(chunk)
        self._data = data
        return chunks

    def _error(self, message: str) -> UpstreamError:
        return UpstreamError(mask(message), step_id=self._step_id)


def error_message(data: Any) -> str | None:
    """The message of an error body in any of the shapes compatible servers use."""
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict):
        message = error.get("message")  # the OpenAI envelope
    elif isinstance(error, str):
        message = error  # {"error": "model not found"}
    elif data.get("object") == "error":
        message = data.get("message")  # {"object": "error", "message": ...}
    else:
        message = data.get("detail")  # a web framework's default error
    return message if isinstance(message, str) else None


def completion_chunks(body: bytes, step_id: str) -> list[dict[str, Any]]:
    """A whole ``chat.completion`` as the chunks a stream of it would have sent."""
    try:
        completion = _loads(body)
    except _JSONDecodeError:
        raise UpstreamError(f"upstream sent invalid JSON: {clip(body)}", step_id=step_id) from None
    message = error_message(completion)
    if message is not None:
        raise UpstreamError(mask(message), step_id=step_id)
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not isinstance(choices, list) or not choices:
        raise UpstreamError(f"upstream reply has no choices: {clip(body)}", step_id=step_id)

    head = {
        "id": completion.get("id", ""),
        "object": "chat.completion.chunk",
        "created": completion.get("created", 0),
        "model": completion.get("model", ""),
    }
    if completion.get("system_fingerprint") is not None:
        head["system_fingerprint"] = completion["system_fingerprint"]
    deltas: list[dict[str, Any]] = []
    finishes: list[dict[str, Any]] = []
    for position, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise UpstreamError(
                mask(f"upstream sent a malformed choice: {choice!r:.200}"), step_id=step_id
            )
        index = choice.get("index", position)
        message_dict = choice.get("message") or {}
        delta = {
            key: value
            for key, value in message_dict.items()
            if value is not None and key != "tool_calls"
        }
        delta.setdefault("role", "assistant")
        tool_calls = message_dict.get("tool_calls")
        if tool_calls:
            delta["tool_calls"] = [
                {"index": number, **call} for number, call in enumerate(tool_calls)
            ]
        opening: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": None}
        if choice.get("logprobs") is not None:
            opening["logprobs"] = choice["logprobs"]
        deltas.append(opening)
        # A complete reply has ended, whether or not the server said why.
        finishes.append(
            {"index": index, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}
        )
    chunks = [{**head, "choices": deltas}, {**head, "choices": finishes}]
    if completion.get("usage") is not None:
        chunks.append({**head, "choices": [], "usage": completion["usage"]})
    return chunks


def clip(data: bytes) -> str:
    """What an error quotes of an upstream's bytes: the start, secrets masked."""
    text = mask(data.strip().decode("utf-8", "replace"))
    return text if len(text) <= 200 else text[:200] + "..."
