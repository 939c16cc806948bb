"""``POST /v1/responses/compact`` and ``POST /v1/responses/input_tokens``.

Both read a conversation the way a create would (its input items, the
responses ``previous_response_id`` names, compaction items opened), for the
caller who owns it, and neither stores anything.

* ``compact`` asks the model for a summary of that conversation and answers
  the ``response.compaction`` object: the user messages, then one
  ``compaction`` item whose ``encrypted_content`` is the summary, sealed. A
  client starts its next request from that window.
* ``input_tokens`` counts the tokens of the Chat Completions request stepline
  would send for the first model call (messages and tools), with the
  upstream's tokenizer; an upstream without one (``tokenize`` unset) is a 400,
  never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from stepline._engine.compaction import (
    CONTEXT_OVERFLOW,
    fit_context,
    is_context_overflow,
    summarise,
)
from stepline._protocol.chat_request import chat_payload
from stepline._protocol.compaction import SEAL_LABEL, compaction_item, user_message_items
from stepline._protocol.items import base_messages
from stepline._protocol.request import (
    ResponseRequest,
    allowed_tool_names,
    load_body,
    new_id,
    parse_request,
)
from stepline._run.conversation import load_conversation, previous_chain_records
from stepline._run.prepare import Prepared, prepare
from stepline._run.response import offered_tools
from stepline._server.auth import Caller, caller_of
from stepline._server.conversations import pin_conversation
from stepline._server.gateway import Gateway
from stepline._server.openapi import errors, response_body
from stepline._server.replies import JSON
from stepline._server.runner import Runner
from stepline._tools.registry import ServerTool
from stepline._upstream.routing import UpstreamTarget
from stepline._upstream.tokenize import tokenizer_for
from stepline.errors import InvalidRequest, NotFound, RequestError, Unavailable, UpstreamError

__all__ = ["router"]

router = APIRouter(prefix="/v1")

#: the body fields of ``/responses/compact`` that shape what is compacted
_COMPACT_FIELDS = ("model", "input", "previous_response_id", "instructions", "prompt_cache_key")
#: the body fields of ``/responses/input_tokens`` (a create body, without what it
#: only does at run time)
_COUNT_FIELDS = (
    "model",
    "input",
    "previous_response_id",
    "conversation",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning",
    "text",
    "truncation",
)


@dataclass(frozen=True, kw_only=True)
class _Read:
    """A conversation as a create would read it."""

    request: ResponseRequest
    target: UpstreamTarget
    prepared: Prepared
    messages: list[dict[str, Any]]


def _body(data: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(data.get("model"), str) or not data["model"]:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    body = {name: data[name] for name in fields if data.get(name) is not None}
    body.setdefault("input", [])
    return body


async def _read(runner: Runner, caller: Caller, body: dict[str, Any]) -> _Read:
    """Validate ``body`` and rebuild its conversation; 4xx for what the caller got wrong."""
    if not runner.accepting:
        raise Unavailable("server is shutting down")
    request = parse_request(body)
    engine = runner.engine
    settings = runner.settings
    if len(request.input) > settings.limits.max_input_items:
        raise InvalidRequest(
            f"input has {len(request.input)} items; this server accepts at most "
            f"{settings.limits.max_input_items}.",
            param="input",
        )
    prepared = prepare(engine, request, key_id=caller.key_id)
    target = prepared.target
    if target is None:
        raise InvalidRequest(
            f"The model '{request.model}' does not exist.", param="model", code="model_not_found"
        )
    caller.check_model(request.model)
    if request.previous_response_id is not None:
        previous = await engine.store.get_response(request.previous_response_id)
        if previous is not None and not caller.owns(previous.key_id):
            raise NotFound(
                f"Previous response with id '{request.previous_response_id}' not found.",
                param="previous_response_id",
            )
    # a conversation's items are read as a create reads them (as the conversation is now)
    request = await pin_conversation(engine.store, request, caller)
    conversation = await load_conversation(
        engine.store,
        request.previous_response_id,
        context_for=prepared.context_for,
        request=request,
    )
    messages = base_messages(request, conversation.history, None, prepared.context)
    return _Read(request=request, target=target, prepared=prepared, messages=messages)


def _upstream_failure(exc: UpstreamError) -> RequestError:
    if is_context_overflow(exc):
        return InvalidRequest(exc.message, param="input", code=CONTEXT_OVERFLOW)
    return RequestError(
        f"The model failed: {exc.message}",
        status_code=502,
        error_type="server_error",
        code="model_error",
    )


def _usage(usage: dict[str, int]) -> dict[str, Any]:
    input_tokens, output_tokens = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": usage.get("cached_tokens", 0)},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.get("reasoning_tokens", 0)},
        "total_tokens": input_tokens + output_tokens,
    }


@router.post(
    "/responses/compact",
    responses=errors(400, 401, 403, 404, 413, 429, 502, 503),
    openapi_extra=response_body(_COMPACT_FIELDS),
)
async def compact(request: Request) -> Response:
    runner: Runner = request.app.state.runner
    gateway: Gateway = request.app.state.gateway
    caller = caller_of(request)
    read = await _read(runner, caller, _body(load_body(await request.body()), _COMPACT_FIELDS))
    engine = runner.engine
    kept: list[dict[str, Any]] = []
    for record in await previous_chain_records(engine.store, read.request.previous_response_id):
        kept.extend(user_message_items(parse_request(record.body).input))
    kept.extend(user_message_items(read.request.input))
    release = gateway.limits.enter(caller)
    try:
        summary = await summarise(
            engine.chat,
            read.target,
            read.messages,
            step_id=new_id("compact"),
            prompt_cache_key=read.request.prompt_cache_key,
        )
    except UpstreamError as exc:
        raise _upstream_failure(exc) from None
    finally:
        release()
    sealed = engine.sealer.seal(summary.text, label=SEAL_LABEL)
    return JSON(
        {
            "id": new_id("resp"),
            "object": "response.compaction",
            "created_at": int(engine.clock()),
            "output": [*kept, compaction_item(new_id("cmp"), sealed)],
            "usage": _usage(summary.usage),
        }
    )


async def _offered_tools(runner: Runner, read: _Read, caller: Caller) -> dict[str, ServerTool]:
    """The server tools the first model call of this request would be offered."""
    mcp = runner.engine.mcp
    if mcp is not None:
        mcp.check_request(read.request)
    tools, _ = await offered_tools(runner.engine, read.request, read.prepared)
    return tools


@router.post(
    "/responses/input_tokens",
    responses=errors(400, 401, 403, 404, 413, 429, 502, 503),
    openapi_extra=response_body(_COUNT_FIELDS),
)
async def count_input_tokens(request: Request) -> Response:
    runner: Runner = request.app.state.runner
    caller = caller_of(request)
    data = load_body(await request.body())
    read = await _read(runner, caller, _body(data, _COUNT_FIELDS))
    tokenizer = tokenizer_for(read.target)
    if tokenizer is None:
        raise InvalidRequest(
            f"Input tokens cannot be counted for model '{read.request.model}': its upstream "
            f"'{read.target.name}' has no tokenizer configured (set tokenize = \"vllm\", "
            f'"llama.cpp" or a URL on [upstreams.{read.target.name}]).',
            param="model",
            code="token_counting_unavailable",
        )
    server_tools = await _offered_tools(runner, read, caller)
    allowed = allowed_tool_names(read.request)
    definitions = [
        tool.chat_definition()
        for name, tool in server_tools.items()
        if allowed is None or name in allowed
    ] + read.prepared.client_tools.definitions(read.request)
    payload = chat_payload(
        read.request,
        model=read.target.upstream_model,
        messages=read.messages,
        tools=definitions,
        first_call=True,
        dialect=read.target.dialect,
        client_tools=read.prepared.client_tools,
        server_names=frozenset(server_tools),
    )
    engine = runner.engine
    try:
        if read.request.truncation == "auto":
            fitted = await fit_context(
                engine.http,
                read.target,
                window=engine.routes.context_window(read.request.model, read.target),
                truncation="auto",
                payload=payload,
                max_output_tokens=None,
            )
            payload = fitted.payload
        count = await tokenizer.count(engine.http, payload)
    except UpstreamError as exc:
        raise RequestError(
            exc.message, status_code=502, error_type="server_error", code="tokenizer_error"
        ) from None
    return JSON({"object": "response.input_tokens", "input_tokens": count})
