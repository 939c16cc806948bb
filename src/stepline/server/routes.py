"""The HTTP API: ``/v1/responses`` and its sub-resources, and ``/v1/models``.

A route validates, records and launches; it never runs the loop itself.
Plain, streaming and background requests share one path — the response is
stored and its loop launched as a task — and differ only in how they read
the result: await the task, follow the event log as SSE, or return at once.
A client that goes away cancels only its own reader, never the loop.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse

from stepline.engine.conversation import conversation_history
from stepline.engine.loop import base_messages
from stepline.errors import InvalidRequest, NotFound
from stepline.protocol.assemble import output_items, response_object, sum_usage
from stepline.protocol.items import check_tool_results
from stepline.protocol.request import ResponseRequest, new_id, parse_request
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


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _sse(runner: Runner, response_id: str, after: int) -> StreamingResponse:
    return StreamingResponse(
        sse_frames(runner, response_id, after),
        media_type="text/event-stream",
        headers=_SSE_HEADERS,
    )


async def _validate(runner: Runner, request: ResponseRequest) -> None:
    """Refuse what would fail later: unknown model, shadowed tools, orphan tool outputs."""
    settings = runner.engine.settings
    if resolve_target(settings, request.model) is None:
        raise InvalidRequest(
            f"The model '{request.model}' does not exist.", param="model", code="model_not_found"
        )
    route = settings.route_for(request.model)
    server_tools = set(route.tools) if route else set()
    for index, tool in enumerate(request.tools):
        if tool.name in server_tools:
            raise InvalidRequest(
                f"tool name {tool.name!r} is taken by a server tool of model {request.model!r}",
                param=f"tools[{index}].name",
            )
    history = await conversation_history(runner.engine.store, request.previous_response_id)
    orphan = check_tool_results(base_messages(request, history))
    if orphan is not None:
        raise InvalidRequest(
            f"No tool call found for function call output with call_id {orphan}.", param="input"
        )


@router.post("/responses")
async def create_response(request: Request) -> Response:
    runner = _runner(request)
    if not runner.accepting:
        raise InvalidRequest("server is shutting down", status_code=503, error_type="server_error")
    parsed = parse_request(await request.body())
    await _validate(runner, parsed)
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
    )
    await runner.engine.store.create_response(record)
    task = runner.launch(record)
    if parsed.stream:
        return _sse(runner, record.id, -1)
    if parsed.background:
        return JSON(_snapshot(record, parsed, record.status, []))
    return JSON(await asyncio.shield(task))


def _snapshot(
    record: ResponseRecord,
    request: ResponseRequest,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return response_object(
        response_id=record.id,
        created_at=record.created_at,
        request=request,
        status=status,
        output=output,
        usage=usage,
    )


async def _record(runner: Runner, response_id: str) -> ResponseRecord:
    record = await runner.engine.store.get_response(response_id)
    if record is None or (not record.store and record.status in TERMINAL_STATUSES):
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
    record = await _record(runner, response_id)
    if stream:
        after = starting_after
        if after is None and last_event_id is not None:
            try:
                after = int(last_event_id)
            except ValueError:
                raise InvalidRequest(
                    "Last-Event-ID must be an integer", param="Last-Event-ID"
                ) from None
        return _sse(runner, record.id, -1 if after is None else after)
    if record.result is not None:
        return JSON(record.result)
    store = runner.engine.store
    steps = await store.load_steps(record.id)
    parsed = parse_request(record.body)
    output = output_items([step for step in steps if step.scope is None])
    return JSON(_snapshot(record, parsed, record.status, output, sum_usage(steps)))


@router.delete("/responses/{response_id}")
async def delete_response(request: Request, response_id: str) -> Response:
    runner = _runner(request)
    record = await _record(runner, response_id)
    task = runner.tasks.get(record.id)
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await runner.engine.store.delete_response(record.id)
    return JSON({"id": record.id, "object": "response.deleted", "deleted": True})


@router.post("/responses/{response_id}/cancel")
async def cancel_response(request: Request, response_id: str) -> Response:
    runner = _runner(request)
    store = runner.engine.store
    record = await _record(runner, response_id)
    if not record.background:
        raise InvalidRequest("Only background responses can be cancelled.", param="response_id")
    if record.status in TERMINAL_STATUSES and record.result is not None:
        return JSON(record.result)
    # stop a loop running here without releasing its lease; one elsewhere stops when
    # its renewal finds the response cancelled
    await runner.stop_loop(record.id)
    await store.cancel_steps(record.id)
    steps = await store.load_steps(record.id)
    parsed = parse_request(record.body)
    output = output_items([step for step in steps if step.scope is None])
    result = _snapshot(record, parsed, "cancelled", output, sum_usage(steps))
    if not await store.finish_response(
        record.id, status="cancelled", result=result, completed_at=None
    ):
        finished = await _record(runner, response_id)
        return JSON(finished.result)
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
    record = await _record(_runner(request), response_id)
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
    created = 0
    data = [
        {"id": route.name, "object": "model", "created": created, "owned_by": "stepline"}
        for route in settings.models
    ]
    return JSON({"object": "list", "data": data})
