"""The HTTP API: ``/v1/responses`` and its sub-resources, and ``/v1/models``.

A route validates, records and launches; it never runs the loop itself.
Plain, streaming and background requests share one path — the response is
stored and its loop launched as a task — and differ only in how they read
the result: await the task, follow the event log as SSE, or return at once.
A client that goes away cancels only its own reader, never the loop.

Every route runs for an authenticated caller (``caller_of``): a response
belongs to the key that created it, and any other key is told it does not
exist (404), whichever route it uses, ``previous_response_id`` included.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import Gauge
from starlette.types import Receive, Scope, Send

from stepline.engine.conversation import approvals, load_conversation
from stepline.engine.loop import base_messages
from stepline.engine.response import snapshot, stored_response
from stepline.errors import InvalidRequest, NotFound
from stepline.protocol.request import FunctionTool, ResponseRequest, new_id, parse_request
from stepline.protocol.validate import conversation_problem
from stepline.server.auth import Caller, caller_of
from stepline.server.gateway import Gateway
from stepline.server.logs import response_id_var
from stepline.server.runner import Runner
from stepline.server.sse import sse_frames
from stepline.store.base import TERMINAL_STATUSES, ResponseRecord
from stepline.upstream.routing import resolve_target

__all__ = ["router"]

router = APIRouter(prefix="/v1")


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _runner(request: Request) -> Runner:
    runner: Runner = request.app.state.runner
    return runner


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _CountedStream(StreamingResponse):
    """An SSE response counted in ``stepline_open_streams`` while its frames flow.

    The count drops before the end of the body is sent, so a client that saw
    the end never sees the stream counted; ``__call__`` closes the frames
    however the response ends (a client that left included)."""

    def __init__(self, frames: AsyncIterator[bytes], gateway: Gateway) -> None:
        self._frames: AsyncGenerator[bytes, None] = _counted(frames, gateway.metrics.open_streams)
        super().__init__(self._frames, media_type="text/event-stream", headers=_SSE_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._frames.aclose()


async def _counted(
    frames: AsyncIterator[bytes], open_streams: Gauge
) -> AsyncGenerator[bytes, None]:
    open_streams.inc()
    try:
        async for frame in frames:
            yield frame
    finally:
        open_streams.dec()
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:
            await aclose()


def _sse(request: Request, runner: Runner, response_id: str, after: int) -> StreamingResponse:
    return _CountedStream(sse_frames(runner, response_id, after), _gateway(request))


async def _validate(runner: Runner, request: ResponseRequest, caller: Caller) -> None:
    """Refuse what would fail later: unknown model, shadowed tools, orphan tool outputs;
    and what the caller's key may not do, or may not see."""
    settings = runner.engine.settings
    if len(request.input) > settings.limits.max_input_items:
        raise InvalidRequest(
            f"input has {len(request.input)} items; this server accepts at most "
            f"{settings.limits.max_input_items}.",
            param="input",
        )
    if resolve_target(settings, request.model) is None:
        raise InvalidRequest(
            f"The model '{request.model}' does not exist.", param="model", code="model_not_found"
        )
    caller.check_model(request.model)
    route = settings.route_for(request.model)
    server_tools = set(route.tools) if route else set()
    caller.check_tools(request, server_tools)
    if request.previous_response_id is not None:
        previous = await runner.engine.store.get_response(request.previous_response_id)
        if previous is not None and previous.key_id != caller.key_id:
            raise NotFound(
                f"Previous response with id '{request.previous_response_id}' not found.",
                param="previous_response_id",
            )
    for index, tool in enumerate(request.tools):
        if isinstance(tool, FunctionTool) and tool.name in server_tools:
            raise InvalidRequest(
                f"tool name {tool.name!r} is taken by a server tool of model {request.model!r}",
                param=f"tools[{index}].name",
            )
    if runner.engine.mcp is not None:
        runner.engine.mcp.check_request(request)
    conversation = await load_conversation(runner.engine.store, request.previous_response_id)
    approvals(request, conversation)  # an unknown approval id is a 400
    history = conversation.history
    problem = conversation_problem(base_messages(request, history), "lenient")
    if problem is not None:
        raise InvalidRequest(problem, param="input")


@router.post("/responses")
async def create_response(request: Request) -> Response:
    runner = _runner(request)
    caller = caller_of(request)
    if not runner.accepting:
        raise InvalidRequest("server is shutting down", status_code=503, error_type="server_error")
    parsed = parse_request(await request.body())
    await _validate(runner, parsed, caller)
    # the key's slot is held until the loop ends, whoever reads the result
    release = _gateway(request).limits.enter(caller)
    now = runner.engine.clock()
    record = ResponseRecord(
        id=new_id("resp"),
        created_at=now,
        status="queued" if parsed.background else "in_progress",
        model=parsed.model,
        body=parsed.model_dump(mode="json", by_alias=True, exclude_unset=True),
        previous_response_id=parsed.previous_response_id,
        store=parsed.store,
        background=parsed.background,
        owner=runner.owner,
        lease_expires_at=runner.lease_expiry(),
        key_id=caller.key_id,
    )
    try:
        await runner.engine.store.create_response(record)
        response_id_var.set(record.id)  # the loop's task inherits it, for its log lines
        task = runner.launch(record)
    except BaseException:
        release()
        raise
    task.add_done_callback(lambda _: release())
    if parsed.stream:
        return _sse(request, runner, record.id, -1)
    if parsed.background:
        return JSON(snapshot(record, parsed, record.status, []))
    return JSON(await asyncio.shield(task))


async def _record(runner: Runner, response_id: str, caller: Caller) -> ResponseRecord:
    record = await runner.engine.store.get_response(response_id)
    if (
        record is None
        or (not record.store and record.status in TERMINAL_STATUSES)
        or record.key_id != caller.key_id
    ):
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return record


@router.get("/responses/{response_id}")
async def get_response(
    request: Request,
    response_id: str,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=-1)] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    runner = _runner(request)
    record = await _record(runner, response_id, caller_of(request))
    if stream:
        after = starting_after
        if after is None and last_event_id is not None:
            try:
                after = int(last_event_id)
            except ValueError:
                raise InvalidRequest(
                    "Last-Event-ID must be an integer", param="Last-Event-ID"
                ) from None
        return _sse(request, runner, record.id, -1 if after is None else after)
    return JSON(await stored_response(runner.engine.store, record))


@router.delete("/responses/{response_id}")
async def delete_response(request: Request, response_id: str) -> Response:
    runner = _runner(request)
    record = await _record(runner, response_id, caller_of(request))
    # keep its lease while the loop stops, so no other process claims it meanwhile
    await runner.stop_loop(record.id)
    await runner.engine.store.delete_response(record.id)
    return JSON({"id": record.id, "object": "response.deleted", "deleted": True})


@router.post("/responses/{response_id}/cancel")
async def cancel_response(request: Request, response_id: str) -> Response:
    runner = _runner(request)
    caller = caller_of(request)
    store = runner.engine.store
    record = await _record(runner, response_id, caller)
    if not record.background:
        raise InvalidRequest("Only background responses can be cancelled.", param="response_id")
    if record.status in TERMINAL_STATUSES and record.result is not None:
        return JSON(record.result)
    # stop a loop running here without releasing its lease; one elsewhere stops when
    # its renewal finds the response cancelled
    await runner.stop_loop(record.id)
    await store.cancel_steps(record.id)
    result = await stored_response(store, record, status="cancelled")
    if not await store.finish_response(
        record.id, status="cancelled", result=result, completed_at=None
    ):
        finished = await _record(runner, response_id, caller)
        return JSON(finished.result)
    _gateway(request).metrics.responses.labels("cancelled").inc()
    return JSON(result)


def _input_item(item: dict[str, Any]) -> dict[str, Any]:
    if item.get("type") == "message" and isinstance(item.get("content"), str):
        part = "output_text" if item.get("role") == "assistant" else "input_text"
        item = {**item, "content": [{"type": part, "text": item["content"]}]}
    if item.get("type") == "message":
        item = {"status": "completed", **item}
    return item


@router.get("/responses/{response_id}/input_items")
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


@router.get("/models")
async def list_models(request: Request) -> Response:
    settings = _runner(request).engine.settings
    caller = caller_of(request)
    created = 0
    data = [
        {"id": route.name, "object": "model", "created": created, "owned_by": "stepline"}
        for route in settings.models
        if caller.may_use_model(route.name)
    ]
    return JSON({"object": "list", "data": data})
