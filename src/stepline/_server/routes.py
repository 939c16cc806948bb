"""The HTTP API: ``/v1/responses`` and its sub-resources, and ``/v1/models``.

A route validates, records and launches; it never runs the loop itself.
Plain, streaming and background requests share one path — the response is
stored and its loop launched as a task — and differ only in how they read
the result: await the task, follow the event log as SSE, or return at once.
A client that goes away cancels only its own reader, never the loop.

Every route runs for an authenticated caller (``caller_of``): a response
belongs to the key that created it, and any other key is told it does not
exist (404), whichever route it uses, ``previous_response_id`` included;
so is a conversation (``_server/conversations.py``) named by ``conversation``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response

from stepline._config import Settings
from stepline._engine.history import Conversation
from stepline._protocol.chat_request import forced_tool
from stepline._protocol.items import base_messages
from stepline._protocol.request import (
    FunctionTool,
    ResponseRequest,
    ToolChoiceBuiltin,
    ToolChoiceFunction,
    load_body,
    new_id,
    parse_request,
    references,
    unknown_fields,
)
from stepline._run.conversation import approvals, load_conversation
from stepline._run.prepare import Prepared, prepare
from stepline._run.response import snapshot, stored_response
from stepline._server.auth import Caller, caller_of
from stepline._server.conversations import pin_conversation
from stepline._server.gateway import Gateway
from stepline._server.logs import response_id_var
from stepline._server.openapi import errors, response_body, streamed
from stepline._server.replies import JSON
from stepline._server.runner import Runner
from stepline._server.sse import EventStream
from stepline._server.tracing import TRACE_CONTEXT_FIELD, client_trace_context
from stepline.errors import InvalidRequest, NotFound, Unavailable
from stepline.store._base import TERMINAL_STATUSES, ResponseRecord

__all__ = ["router"]

router = APIRouter(prefix="/v1")
logger = logging.getLogger(__name__)


def _runner(request: Request) -> Runner:
    runner: Runner = request.app.state.runner
    return runner


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _sse(request: Request, runner: Runner, response_id: str, after: int) -> EventStream:
    return EventStream(
        runner,
        response_id,
        after,
        headers=_SSE_HEADERS,
        open_streams=_gateway(request).metrics.open_streams,
    )


@dataclass(frozen=True, kw_only=True)
class _Checked:
    """A request found valid, with what checking it worked out (the run takes it over
    instead of working it out again)."""

    notices: _Notices
    prepared: Prepared
    conversation: Conversation


async def _validate(runner: Runner, request: ResponseRequest, caller: Caller) -> _Checked:
    """Refuse what would fail later: unknown model, shadowed tools, orphan tool outputs;
    and what the caller's key may not do, or may not see."""
    settings = runner.settings
    if len(request.input) > settings.limits.max_input_items:
        raise InvalidRequest(
            f"input has {len(request.input)} items; this server accepts at most "
            f"{settings.limits.max_input_items}.",
            param="input",
        )
    engine = runner.engine
    # the one preparation the run makes too (run.prepare): the same upstream, the
    # same offered tools, the same validation
    prepared = prepare(engine, request, key_id=caller.key_id)
    if prepared.target is None:
        raise InvalidRequest(
            f"The model '{request.model}' does not exist.", param="model", code="model_not_found"
        )
    caller.check_model(request.model)
    server_tools = set(prepared.offered)
    caller.check_tools(request, server_tools)
    if request.stored_previous_id is not None:
        previous = await runner.engine.store.get_response(request.stored_previous_id)
        if previous is not None and not caller.owns(previous.key_id):
            raise NotFound(
                f"Previous response with id '{request.previous_response_id}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
    for index, tool in enumerate(request.tools):
        if isinstance(tool, FunctionTool) and tool.name in server_tools:
            raise InvalidRequest(
                f"tool name {tool.name!r} is taken by a server tool of model {request.model!r}",
                param=f"tools[{index}].name",
            )
    if runner.engine.mcp is not None:
        runner.engine.mcp.check_request(request)
    _check_hosted(settings, prepared.dropped)
    _check_tool_choice(runner, request, prepared, server_tools)
    conversation = await load_conversation(
        engine.store,
        request.stored_previous_id,
        context_for=prepared.context_for,
        request=request,
        cache=engine.history,
        reading=prepared.reading,
    )
    approvals(request, conversation)  # an unknown approval id is a 400
    history = conversation.history
    transcript = base_messages(request, history, None, prepared.context)
    problem = prepared.problem(transcript)
    if problem is not None:
        raise InvalidRequest(problem, param="input")
    return _Checked(
        notices=_Notices(dropped_tools=prepared.dropped),
        prepared=prepared,
        conversation=conversation,
    )


def _check_tool_choice(
    runner: Runner, request: ResponseRequest, prepared: Prepared, server_tools: set[str]
) -> None:
    """Refuse a ``tool_choice`` that forces a tool nothing of this response provides
    (a client tool, a server tool, a hosted tool played by one): the model call would
    fail. Tools an MCP server lists are known only once listed, at run time."""
    if not isinstance(request.tool_choice, ToolChoiceFunction | ToolChoiceBuiltin):
        return
    if forced_tool(request, prepared.client_tools) is not None:
        return
    mcp = runner.engine.mcp
    if request.mcp_tools() or (mcp is not None and any(map(mcp.is_source, server_tools))):
        return
    name = getattr(request.tool_choice, "name", None) or request.tool_choice.type
    if name not in server_tools and name not in prepared.hosted:
        raise InvalidRequest(
            f"tool_choice names {name!r}, which no tool of this response provides",
            param="tool_choice",
        )


@dataclass(frozen=True, kw_only=True)
class _Notices:
    """What a reply tells the client in headers about what stepline did not do."""

    dropped_tools: list[str]
    ignored_fields: list[str] = field(default_factory=list)

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.dropped_tools:
            headers["Stepline-Dropped-Tools"] = ", ".join(self.dropped_tools)
        if self.ignored_fields:
            headers["Stepline-Ignored-Fields"] = ", ".join(map(_header_name, self.ignored_fields))
        return headers


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.:\-]+")


def _header_name(name: str) -> str:
    """A client's field name as a header may carry it: plain, or as a JSON string in
    ASCII (a name may hold any character, and a header only printable ASCII)."""
    return name if _PLAIN_NAME.fullmatch(name) else json.dumps(name)


def _check_hosted(settings: Settings, dropped: list[str]) -> None:
    if dropped and settings.protocol.unmapped_hosted_tools == "reject":
        raise InvalidRequest(
            f"tool type {dropped[0]!r} is a hosted tool this server does not run "
            "(protocol.hosted_tools maps hosted tools to server tools)",
            param="tools",
        )


async def _resolve_references(
    runner: Runner, data: dict[str, Any], caller: Caller
) -> dict[str, Any]:
    """The body with each ``item_reference`` replaced by the stored item it names.

    Only items of responses the caller's key owns are found; any other id is a 400."""
    found = references(data)
    if not found:
        return data
    stored = await runner.engine.store.find_items(
        [item_id for _, item_id in found], key_id=caller.key_id
    )
    items = list(data["input"])
    for index, item_id in found:
        item = stored.get(item_id)
        if item is None:
            raise InvalidRequest(f"Item with id '{item_id}' not found.", param=f"input[{index}].id")
        items[index] = item
    return {**data, "input": items}


@dataclass(frozen=True, kw_only=True)
class Accepted:
    """A response that was validated, stored and launched; how it is read is the caller's."""

    record: ResponseRecord
    request: ResponseRequest
    task: asyncio.Task[dict[str, Any]]
    notices: _Notices


async def accept_response(
    runner: Runner,
    gateway: Gateway,
    data: dict[str, Any],
    caller: Caller,
    *,
    reasoning_events: str | None = None,
    history_inline: bool = False,
    trace_context: dict[str, str] | None = None,
) -> Accepted:
    """Validate a create body, store the response and launch its loop: every transport's
    way in (the HTTP route, the WebSocket). ``reasoning_events`` is the request's
    ``Stepline-Reasoning-Events`` choice; ``history_inline`` says the transport put the
    conversation ``previous_response_id`` names into ``input`` (a WebSocket's memory);
    ``trace_context`` is the client's W3C ``traceparent``, stored with the body.
    A client never sets these itself: ``stepline:`` fields it sends are dropped.

    A background response is stored here, before its client gets its id; any
    other is stored by its run, with its first step and events, in one write
    (its readers wait for them: :mod:`stepline._engine.creation`)."""
    data = {key: value for key, value in data.items() if not key.startswith("stepline:")}
    if not runner.accepting:
        raise Unavailable("server is shutting down")
    ignored = unknown_fields(data)
    if ignored and runner.settings.protocol.unknown_fields == "reject":
        raise InvalidRequest(
            f"Unknown parameter: '{ignored[0]}'.", param=ignored[0], code="unknown_parameter"
        )
    if reasoning_events is not None:
        data["stepline:reasoning_events"] = reasoning_events
    if history_inline:
        data["stepline:history_inline"] = True
    data = await _resolve_references(runner, data, caller)
    parsed = await pin_conversation(runner.engine.store, parse_request(data), caller)
    checked = await _validate(runner, parsed, caller)
    notices = dataclasses.replace(checked.notices, ignored_fields=ignored)
    if ignored or notices.dropped_tools:
        logger.info(
            "request to %s: ignored fields %s, dropped hosted tools %s",
            parsed.model,
            ignored or "none",
            notices.dropped_tools or "none",
        )
    # the key's slot is held until the loop ends, whoever reads the result
    release = gateway.limits.enter(caller)
    now = runner.engine.clock()
    record = ResponseRecord(
        id=new_id("resp"),
        created_at=now,
        status="queued" if parsed.background else "in_progress",
        model=parsed.model,
        body=_with_trace_context(
            parsed.model_dump(mode="json", by_alias=True, exclude_unset=True), trace_context
        ),
        previous_response_id=parsed.previous_response_id,
        store=parsed.store,
        background=parsed.background,
        owner=runner.owner,
        lease_expires_at=runner.lease_expiry(),
        key_id=caller.key_id,
    )
    stored_by_run = not parsed.background
    try:
        if not stored_by_run:
            await runner.engine.store.create_response(record)
        response_id_var.set(record.id)  # the loop's task inherits it, for its log lines
        task = runner.launch(
            record,
            request=parsed,
            stored=not stored_by_run,
            prepared=checked.prepared,
            conversation=checked.conversation,
        )
    except BaseException:
        release()
        raise
    task.add_done_callback(lambda _: release())
    return Accepted(record=record, request=parsed, task=task, notices=notices)


def _with_trace_context(
    body: dict[str, Any], trace_context: dict[str, str] | None
) -> dict[str, Any]:
    """The stored body, with the client's trace context: it rides in the write that
    creates the response, so a run resumed elsewhere can link to it."""
    if trace_context is not None:
        body[TRACE_CONTEXT_FIELD] = trace_context
    return body


@router.post(
    "/responses",
    responses=streamed() | errors(400, 401, 403, 404, 413, 429, 503),
    openapi_extra=response_body(),
)
async def create_response(request: Request) -> Response:
    runner = _runner(request)
    accepted = await accept_response(
        runner,
        _gateway(request),
        load_body(await request.body()),
        caller_of(request),
        reasoning_events=request.headers.get("stepline-reasoning-events"),
        trace_context=client_trace_context(request.headers),
    )
    record, parsed = accepted.record, accepted.request
    if parsed.stream:
        reply: Response = _sse(request, runner, record.id, -1)
    elif parsed.background:
        reply = JSON(snapshot(record, parsed, record.status, []))
    else:
        reply = JSON(await asyncio.shield(accepted.task))
    reply.headers.update(accepted.notices.headers())
    return reply


async def _record(runner: Runner, response_id: str, caller: Caller) -> ResponseRecord:
    record = await runner.engine.store.get_response(response_id)
    if (
        record is None
        or (not record.store and record.status in TERMINAL_STATUSES)
        or not caller.owns(record.key_id)
    ):
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return record


#: the largest event sequence number: the events table keeps ``seq`` in a 32-bit
#: INTEGER on PostgreSQL (64-bit on SQLite); a larger bound would reach the driver
#: and fail there, after the stream's 200 was sent
_MAX_SEQUENCE = 2**31 - 1
_SEQUENCE_TEXT = re.compile(r"-?[0-9]{1,10}")


def _sequence(value: str, param: str) -> int:
    """A client's event sequence number (``-1``: before the first event), or a 400."""
    number = int(value) if _SEQUENCE_TEXT.fullmatch(value.strip()) else None
    if number is None or not -1 <= number <= _MAX_SEQUENCE:
        raise InvalidRequest(
            f"Invalid '{param}': expected an event sequence number, "
            f"an integer from -1 to {_MAX_SEQUENCE}.",
            param=param,
        )
    return number


@router.get("/responses/{response_id}", responses=streamed() | errors(400, 401, 404, 429, 503))
async def get_response(
    request: Request,
    response_id: str,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=-1, le=_MAX_SEQUENCE)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    runner = _runner(request)
    record = await _record(runner, response_id, caller_of(request))
    if stream:
        after = starting_after
        if after is None and last_event_id is not None:
            after = _sequence(last_event_id, "Last-Event-ID")
        return _sse(request, runner, record.id, -1 if after is None else after)
    return JSON(await stored_response(runner.engine.store, record))


@router.delete("/responses/{response_id}", responses=errors(401, 404, 429, 503))
async def delete_response(request: Request, response_id: str) -> Response:
    runner = _runner(request)
    record = await _record(runner, response_id, caller_of(request))
    # keep its lease while the loop stops, so no other process claims it meanwhile
    await runner.stop_loop(record.id)
    await runner.engine.store.delete_response(record.id)
    return JSON({"id": record.id, "object": "response.deleted", "deleted": True})


@router.post("/responses/{response_id}/cancel", responses=errors(400, 401, 404, 429, 503))
async def cancel_response(request: Request, response_id: str) -> Response:
    runner = _runner(request)
    caller = caller_of(request)
    record = await _record(runner, response_id, caller)
    if not record.background:
        raise InvalidRequest("Only background responses can be cancelled.", param="response_id")
    if record.status in TERMINAL_STATUSES and record.result is not None:
        return JSON(record.result)
    cancelled = await runner.cancel(record)
    if cancelled is None:
        finished = await _record(runner, response_id, caller)
        return JSON(finished.result)
    _gateway(request).metrics.responses.labels("cancelled").inc()
    return JSON(cancelled)


def _input_item(item: dict[str, Any]) -> dict[str, Any]:
    if item.get("type") == "message" and isinstance(item.get("content"), str):
        part = "output_text" if item.get("role") == "assistant" else "input_text"
        item = {**item, "content": [{"type": part, "text": item["content"]}]}
    if item.get("type") == "message":
        item = {"status": "completed", **item}
    return item


@router.get("/responses/{response_id}/input_items", responses=errors(400, 401, 404, 429, 503))
async def list_input_items(
    request: Request,
    response_id: str,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
) -> Response:
    record = await _record(_runner(request), response_id, caller_of(request))
    items = [_input_item(item) for item in record.body.get("input", [])]
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise InvalidRequest(f"No input item with id '{after}'.", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return JSON(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


@router.get("/models", responses=errors(401, 429))
async def list_models(request: Request) -> Response:
    settings = _runner(request).settings
    caller = caller_of(request)
    created = 0
    data = [
        {"id": route.name, "object": "model", "created": created, "owned_by": "stepline"}
        for route in settings.models
        if caller.may_use_model(route.name)
    ]
    return JSON({"object": "list", "data": data})
