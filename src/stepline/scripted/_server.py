"""The scripted Chat Completions server: ``ScriptedModel`` and its ASGI app.

``ScriptedModel`` holds the registered scripts, counts attempts per (script,
turn index) for ``Fault.times``, and keeps the last request bodies per model
so tests can assert on what the upstream saw. ``create_scripted_app`` serves
it over HTTP:

* ``POST /v1/chat/completions``: the model answers, streamed or not.
* ``GET /v1/models``: the registered script names plus ``demo``.
* ``POST /v1/scripts``: ``{"name": ..., "script": {...}}`` registers a script
  (``"turns": "requests"`` picks its turns by request count, see below).
* ``GET /v1/requests?model=NAME``: the request bodies received for NAME.
* ``POST /tokenize``: vLLM's tokenizer endpoint (``{"model", "messages"}`` or
  ``{"model", "prompt"}`` in, ``{"count", "max_model_len", "tokens"}`` out),
  counting tokens as the default ``prompt_tokens`` does: one per word.

Invariants:

* The turn for a request is the number of ``assistant`` messages in it, so
  the server holds no conversation state; a model name without a script gets
  :func:`~stepline.scripted._demo.demo_reply`. A script registered with
  ``turns="requests"`` answers its N-th request with turn N instead, for
  conversations whose earlier turns are replaced (compaction, truncation).
* With a ``context_window``, a request whose prompt has more tokens is
  answered 400 the way vLLM words it ("maximum context length").
* A stream is built completely (as bytes, one SSE event per write) before its
  first byte is sent; pacing and faults only decide when and whether each
  event goes out. Nothing per chunk touches pydantic.
* Every scripted response watches for the client leaving, so a delay or a
  stall ends as soon as the client hangs up.
* Bad input is answered 400 with the OpenAI error envelope.

A ``ScriptedModel`` belongs to one event loop; it is not thread-safe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import time
from collections import defaultdict, deque
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Literal

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from stepline.errors import InvalidRequest, RequestError
from stepline.scripted._demo import demo_reply, message_text
from stepline.scripted._script import Fault, Script, ScriptedCustomToolCall, Turn

__all__ = ["DEMO_MODEL", "ScriptedModel", "create_scripted_app"]

#: the model name listed for the demo behaviour (any unscripted name gets it)
DEMO_MODEL = "demo"
_JSON = "application/json"
_DONE = b"data: [DONE]\n\n"
_GARBAGE = b"data: {not json\n\n"
_ARGUMENT_PIECES = 4
_MAX_TOP_LOGPROBS = 20
#: the fake log probability of every token the scripted model picks
_TOKEN_LOGPROB = -0.1
#: ``/tokenize``'s ``max_model_len`` when the model has no ``context_window``
_DEFAULT_CONTEXT_WINDOW = 32768


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Plan:
    """What to answer one request with, decided before any byte is sent."""

    model: str
    turn: Turn
    turn_index: int
    fault: Fault | None
    stream: bool
    include_usage: bool
    prompt_tokens: int
    logprobs: bool = False
    top_logprobs: int = 0


class ScriptedModel:
    """Scripts by model name, attempt counters, and a log of received requests."""

    def __init__(
        self,
        scripts: Mapping[str, Script] | None = None,
        *,
        demo_token_delay: float = 0.015,
        request_log_size: int = 1000,
        context_window: int | None = None,
    ) -> None:
        self.demo_token_delay = demo_token_delay
        #: the prompt tokens a request may have (``/tokenize``'s ``max_model_len``); None: any
        self.context_window = context_window
        self._scripts: dict[str, Script] = dict(scripts or {})
        self._by_request: set[str] = set()
        self._served: defaultdict[str, int] = defaultdict(int)
        self._tokenized: list[dict[str, Any]] = []
        self._attempts: defaultdict[tuple[str, int], int] = defaultdict(int)
        self._log_size = request_log_size
        self._requests: dict[str, deque[dict[str, Any]]] = {}

    def register(
        self,
        name: str,
        script: Script,
        *,
        turns: Literal["assistant_messages", "requests"] = "assistant_messages",
    ) -> None:
        """Serve ``script`` as model ``name``; forgets that name's attempts and requests.

        ``turns`` says how a request finds its turn: by its ``assistant`` messages,
        or by how many requests the script answered before (``requests``)."""
        self._scripts[name] = script
        self._requests.pop(name, None)
        self._served.pop(name, None)
        if turns == "requests":
            self._by_request.add(name)
        else:
            self._by_request.discard(name)
        for key in [key for key in self._attempts if key[0] == name]:
            del self._attempts[key]

    @property
    def model_names(self) -> list[str]:
        """Registered script names, then ``demo``."""
        return [*self._scripts, *([DEMO_MODEL] if DEMO_MODEL not in self._scripts else [])]

    def requests(self, model: str) -> list[dict[str, Any]]:
        """The request bodies received for ``model``, oldest first (the last N only)."""
        return list(self._requests.get(model, ()))

    def tokenize_requests(self) -> list[dict[str, Any]]:
        """The ``/tokenize`` request bodies received, oldest first."""
        return list(self._tokenized)

    def tokenize(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """vLLM's ``/tokenize`` answer for ``body``; raises InvalidRequest on bad input."""
        self._tokenized.append(dict(body))
        messages, prompt = body.get("messages"), body.get("prompt")
        if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
            count = _count_words(messages)
        elif isinstance(prompt, str):
            count = len(prompt.split())
        else:
            raise InvalidRequest("send messages (a list) or prompt (a string)", param="messages")
        return {
            "count": count,
            "max_model_len": self.context_window or _DEFAULT_CONTEXT_WINDOW,
            "tokens": list(range(count)),
        }

    def attempts(self, model: str, turn: int) -> int:
        """How many requests asked ``model`` for turn index ``turn``."""
        return self._attempts.get((model, turn), 0)

    def _plan(self, body: Mapping[str, Any]) -> _Plan:
        """Record the request and decide its answer; raises InvalidRequest on bad input."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("model must be a non-empty string", param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages must be a non-empty list", param="messages")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise InvalidRequest(
                    "each message must be an object with a role", param=f"messages[{index}]"
                )
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidRequest("stream must be a boolean", param="stream")
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        logprobs, top_logprobs = _logprob_options(body)

        log = self._requests.get(model)
        if log is None:
            log = self._requests[model] = deque(maxlen=self._log_size)
        log.append(dict(body))
        prompt_tokens = _count_words(messages)
        if self.context_window is not None and prompt_tokens > self.context_window:
            raise InvalidRequest(
                f"This model's maximum context length is {self.context_window} tokens. "
                f"However, your request has {prompt_tokens} input tokens. "
                "Please reduce the length of the input messages.",
                param="messages",
            )

        turn_index = sum(1 for message in messages if message["role"] == "assistant")
        if model in self._by_request:
            turn_index = self._served[model]
            self._served[model] += 1
        self._attempts[(model, turn_index)] += 1
        attempt = self._attempts[(model, turn_index)]
        script = self._scripts.get(model)
        if script is None:
            turn = dataclasses.replace(demo_reply(body), token_delay=self.demo_token_delay)
        else:
            found = script.turn(turn_index)
            if found is None:
                raise InvalidRequest(
                    f"script {model} has no turn {turn_index}",
                    param="messages",
                    code="script_exhausted",
                )
            turn = found
        fault = turn.fault
        if fault is not None and fault.times is not None and attempt > fault.times:
            fault = None
        return _Plan(
            model=model,
            turn=turn,
            turn_index=turn_index,
            fault=fault,
            stream=stream,
            include_usage=include_usage,
            prompt_tokens=prompt_tokens,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )


def _logprob_options(body: Mapping[str, Any]) -> tuple[bool, int]:
    """``logprobs`` and ``top_logprobs`` of a request, checked as OpenAI checks them."""
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise InvalidRequest("logprobs must be a boolean", param="logprobs")
    top = body.get("top_logprobs")
    if top is None:
        return bool(logprobs), 0
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= _MAX_TOP_LOGPROBS:
        raise InvalidRequest(
            f"top_logprobs must be an integer from 0 to {_MAX_TOP_LOGPROBS}", param="top_logprobs"
        )
    if top and not logprobs:
        raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    return bool(logprobs), top


def create_scripted_app(model: ScriptedModel | None = None) -> Starlette:
    """The ASGI app serving ``model`` (a fresh demo-only one by default)."""
    scripted = model if model is not None else ScriptedModel()

    async def chat_completions(request: Request) -> Response:
        return _respond(scripted._plan(_json_object(await request.body())))

    async def list_models(request: Request) -> Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "stepline-scripted"}
            for name in scripted.model_names
        ]
        return _json({"object": "list", "data": data})

    async def register_script(request: Request) -> Response:
        body = _json_object(await request.body())
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("name must be a non-empty string", param="name")
        try:
            script = Script.from_dict(body.get("script"))
        except InvalidRequest as exc:
            param = f"script.{exc.param}" if exc.param else "script"
            raise InvalidRequest(exc.message, param=param) from None
        turns = body.get("turns", "assistant_messages")
        if turns not in ("assistant_messages", "requests"):
            raise InvalidRequest("turns must be 'assistant_messages' or 'requests'", param="turns")
        scripted.register(name, script, turns=turns)
        return _json({"name": name})

    async def tokenize(request: Request) -> Response:
        return _json(scripted.tokenize(_json_object(await request.body())))

    async def received_requests(request: Request) -> Response:
        name = request.query_params.get("model")
        if not name:
            raise InvalidRequest("the model query parameter is required", param="model")
        return _json(scripted.requests(name))

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/scripts", register_script, methods=["POST"]),
            Route("/v1/requests", received_requests, methods=["GET"]),
            Route("/tokenize", tokenize, methods=["POST"]),
        ],
        exception_handlers={
            RequestError: _request_error,
            HTTPException: _http_error,
        },
    )


# --- HTTP edge ---


def _json(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status_code, headers, _JSON)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the request body must be valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return _json(exc.to_envelope(), exc.status_code, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = RequestError(
        f"{request.method} {request.url.path}: {exc.detail}",
        status_code=exc.status_code,
        error_type=_error_type(exc.status_code),
    )
    return _json(error.to_envelope(), exc.status_code, exc.headers)


def _error_type(status: int) -> str:
    known = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else known.get(status, "invalid_request_error")


# --- rendering ---


def _respond(plan: _Plan) -> Response:
    turn, fault = plan.turn, plan.fault
    if fault is not None and fault.status is not None:
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["retry-after"] = f"{fault.retry_after:g}"
        error = {
            "error": {
                "message": fault.message,
                "type": _error_type(fault.status),
                "param": None,
                "code": "scripted_fault",
            }
        }
        body = orjson.dumps(error)
        if turn.delay:
            return _ScriptedResponse(
                _once(body), delay=turn.delay, status_code=fault.status, headers=headers
            )
        return Response(body, fault.status, headers, _JSON)
    pieces = _Pieces.of(plan)
    if plan.stream:
        events = _stream_events(plan, pieces)
        return _ScriptedResponse(
            _paced(events, turn.token_delay, fault),
            delay=turn.delay,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )
    return _completion_response(plan, pieces)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _CallPieces:
    """One tool call as it goes on the wire: ``text`` is its arguments or custom input."""

    id: str
    name: str
    kind: Literal["function", "custom"]  # the call's wire type and its payload's key
    text: str
    pieces: list[str]

    @property
    def text_key(self) -> str:
        return "input" if self.kind == "custom" else "arguments"

    def payload(self, text: str, *, named: bool = False) -> dict[str, Any]:
        """``{"function": {"arguments": text}}`` or ``{"custom": {"input": text}}``."""
        body = {"name": self.name, self.text_key: text} if named else {self.text_key: text}
        return {self.kind: body}


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Pieces:
    """The streamed pieces of a turn; their count is the default completion usage."""

    reasoning: list[str]
    content: list[str]
    calls: list[_CallPieces]
    usage: dict[str, int]

    @classmethod
    def of(cls, plan: _Plan) -> _Pieces:
        turn = plan.turn
        reasoning = _split_words(turn.reasoning or "", turn.chunk_size)
        content = _split_words(turn.content or "", turn.chunk_size)
        calls = []
        for index, call in enumerate(turn.tool_calls):
            text = call.input if isinstance(call, ScriptedCustomToolCall) else call.arguments_json
            calls.append(
                _CallPieces(
                    id=call.id or f"call_{plan.turn_index}_{index}",
                    name=call.name,
                    kind=call.kind,
                    text=text,
                    pieces=_split_evenly(text),
                )
            )
        if turn.usage is not None:
            prompt, completion = turn.usage.prompt_tokens, turn.usage.completion_tokens
        else:
            prompt = plan.prompt_tokens
            completion = len(reasoning) + len(content) + sum(len(c.pieces) for c in calls)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        return cls(reasoning=reasoning, content=content, calls=calls, usage=usage)


def _finish_reason(turn: Turn) -> str:
    if turn.finish_reason is not None:
        return turn.finish_reason
    return "tool_calls" if turn.tool_calls else "stop"


def _stream_events(plan: _Plan, pieces: _Pieces) -> list[bytes]:
    """Every SSE event of the stream, in order, as the exact bytes to write."""
    envelope = orjson.dumps(
        {
            "id": _completion_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": plan.model,
        }
    )[:-1]
    head = b"data: " + envelope + b',"choices":[{"index":0,"delta":'
    open_end = b',"finish_reason":null}]}\n\n'

    def chunk(delta: dict[str, Any], logprobs: bytes = b"") -> bytes:
        return head + orjson.dumps(delta) + logprobs + open_end

    def content_chunk(piece: str) -> bytes:
        if not plan.logprobs:
            return chunk({"content": piece})
        entries = {"content": [_token_logprob(piece, plan.top_logprobs)]}
        return chunk({"content": piece}, b',"logprobs":' + orjson.dumps(entries))

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"reasoning_content": piece}) for piece in pieces.reasoning]
    events += [content_chunk(piece) for piece in pieces.content]
    for index, call in enumerate(pieces.calls):
        opening = {"index": index, "id": call.id, "type": call.kind}
        events.append(chunk({"tool_calls": [{**opening, **call.payload("", named=True)}]}))
        events += [
            chunk({"tool_calls": [{"index": index, **call.payload(piece)}]})
            for piece in call.pieces
        ]
    fault = plan.fault
    if fault is None or not fault.no_finish:
        reason = orjson.dumps(_finish_reason(plan.turn))
        events.append(head + b'{},"finish_reason":' + reason + b"}]}\n\n")
    if plan.include_usage:
        usage = orjson.dumps(pieces.usage)
        events.append(b"data: " + envelope + b',"choices":[],"usage":' + usage + b"}\n\n")
    events.append(_DONE)
    if fault is not None and fault.garbage:
        events.insert(1, _GARBAGE)
    return events


def _completion_response(plan: _Plan, pieces: _Pieces) -> Response:
    turn, fault = plan.turn, plan.fault
    message: dict[str, Any] = {"role": "assistant"}
    message["content"] = turn.content if turn.content is not None or turn.tool_calls else ""
    if turn.reasoning is not None:
        message["reasoning_content"] = turn.reasoning
    if pieces.calls:
        message["tool_calls"] = [
            {"id": call.id, "type": call.kind, **call.payload(call.text, named=True)}
            for call in pieces.calls
        ]
    no_finish = fault is not None and fault.no_finish
    logprobs = None
    if plan.logprobs:
        logprobs = {
            "content": [_token_logprob(piece, plan.top_logprobs) for piece in pieces.content]
        }
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": None if no_finish else _finish_reason(turn),
        "logprobs": logprobs,
    }
    body = orjson.dumps(
        {
            "id": _completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": plan.model,
            "choices": [choice],
            "usage": pieces.usage,
        }
    )
    delay = turn.delay
    if fault is not None:
        if fault.garbage:
            body = b"{not json"
        if fault.stall_after is not None:
            delay += fault.stall
        if fault.drop_after is not None:
            # the full length is announced, half is sent: the client sees a short read
            headers = {"content-length": str(len(body))}
            half = _once(body[: len(body) // 2], then_drop=True)
            return _ScriptedResponse(half, delay=delay, headers=headers, media_type=_JSON)
    if delay:
        return _ScriptedResponse(_once(body), delay=delay, media_type=_JSON)
    return Response(body, media_type=_JSON)


# --- pacing and the response that carries it ---


class _ConnectionDrop(Exception):
    """Raised by a body iterator to cut the connection mid-body."""


async def _once(body: bytes, *, then_drop: bool = False) -> AsyncGenerator[bytes, None]:
    yield body
    if then_drop:
        raise _ConnectionDrop


async def _paced(
    events: list[bytes], token_delay: float, fault: Fault | None
) -> AsyncGenerator[bytes, None]:
    drop_after = fault.drop_after if fault is not None else None
    stall_after = fault.stall_after if fault is not None else None
    for sent, event in enumerate(events):
        if sent == drop_after:
            raise _ConnectionDrop
        if sent == stall_after and fault is not None:
            await asyncio.sleep(fault.stall)
        elif sent and token_delay:
            await asyncio.sleep(token_delay)
        yield event
    if drop_after is not None:
        raise _ConnectionDrop


class _ScriptedResponse(StreamingResponse):
    """A StreamingResponse that waits ``delay`` before its first byte, can cut the
    connection (``_ConnectionDrop``), and always stops when the client leaves."""

    def __init__(
        self,
        content: AsyncGenerator[bytes, None],
        *,
        delay: float,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        super().__init__(content, status_code, headers, media_type)
        self._body = content
        self._delay = delay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Starlette only watches for disconnects on older ASGI spec versions;
        # this response watches always, so a long delay or stall ends with the client.
        async with asyncio.TaskGroup() as group:
            streaming = group.create_task(self._send_body(send))
            watching = group.create_task(self.listen_for_disconnect(receive))
            streaming.add_done_callback(lambda _: watching.cancel())
            watching.add_done_callback(lambda _: streaming.cancel())

    async def _send_body(self, send: Send) -> None:
        try:
            if self._delay:
                await asyncio.sleep(self._delay)
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for chunk in self._body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except _ConnectionDrop:
            # returning without the final body message makes the server close the
            # connection, which the client reads as an incomplete response
            return
        finally:
            await self._body.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# --- small helpers ---


def _completion_id() -> str:
    return "chatcmpl-" + os.urandom(12).hex()


_WORD = re.compile(r"\s*\S+")


def _split_words(text: str, size: int) -> list[str]:
    """``text`` in pieces of ``size`` words; the pieces join back to ``text`` exactly."""
    words = _WORD.findall(text)
    rest = text[sum(map(len, words)) :]
    if rest:
        if not words:
            return [rest]
        words[-1] += rest
    if size == 1:
        return words
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


def _split_evenly(text: str) -> list[str]:
    if not text:
        return []
    size = -(-len(text) // _ARGUMENT_PIECES)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _token_logprob(token: str, top: int) -> dict[str, Any]:
    """The fake logprob entry of one token: itself at -0.1, then ``top - 1`` worse guesses."""
    alternatives = [
        {"token": f"<alt{rank}>", "logprob": -float(rank), "bytes": list(f"<alt{rank}>".encode())}
        for rank in range(1, top)
    ]
    chosen = {"token": token, "logprob": _TOKEN_LOGPROB, "bytes": list(token.encode())}
    return {**chosen, "top_logprobs": [chosen, *alternatives][:top]}


def _count_words(messages: list[dict[str, Any]]) -> int:
    """A rough prompt size: the words of every message, tool-call argument and custom input."""
    total = 0
    for message in messages:
        total += len(message_text(message).split())
        for call in message.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            function, custom = call.get("function"), call.get("custom")
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                total += len(function["arguments"].split())
            if isinstance(custom, dict) and isinstance(custom.get("input"), str):
                total += len(custom["input"].split())
    return total
