"""Drive one response to its terminal state, from a stored record; or finish it.

:func:`run_response` is where a response's run begins and ends, in the
server and in the library alike: it prepares the response
(:mod:`stepline._run.prepare`), rebuilds what it continues (earlier
responses, held calls) from storage, lists its MCP tools, runs its
top-level :class:`~stepline._engine.loop.ScopeLoop` with the Open Responses
stream (:mod:`stepline._protocol.response_stream`) among its sinks, then
assembles the response object, emits the one terminal event, waits until
the log is durable and stores the result. A run resumed after a crash that
finds its terminal event already stored just stores that result.

Every accepted response ends with a terminal status, whatever fails in
between, except a storage failure or a drain, which leave it to be resumed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

from stepline._chat.messages import chain_messages
from stepline._engine.creation import Unstored
from stepline._engine.event_log import EventLog
from stepline._engine.history import Conversation
from stepline._engine.loop import Engine, Failure, LoopDrained, Outcome, ScopeLoop
from stepline._engine.policies import StopPolicy
from stepline._engine.run_events import RunCompleted, RunFailed, RunStarted
from stepline._engine.run_log import RunLog
from stepline._engine.sinks import ResponseEnded, ResponseStarted, Sinks
from stepline._protocol.assemble import output_items, response_object, sum_usage
from stepline._protocol.events import OutputList
from stepline._protocol.items import base_messages
from stepline._protocol.request import ResponseRequest, parse_request
from stepline._protocol.response_stream import OpenResponsesStream, terminal_response, wire_error
from stepline._run.conversation import (
    approvals,
    conversation_items,
    load_conversation,
)
from stepline._run.prepare import Prepared, prepare
from stepline._steps import Step, StepKind, StepState
from stepline._tools.mcp_tools import McpListing
from stepline._tools.registry import ServerTool
from stepline.errors import NotFound, StoreError
from stepline.store._base import ResponseEnd, ResponseRecord, StepStore

__all__ = ["offered_tools", "run_response", "snapshot", "stored_response"]

logger = logging.getLogger(__name__)


def _results_at(messages: list[dict[str, Any]], start: int) -> int:
    """Past the tool messages (refusals) that follow ``start``: where approved results go."""
    while start < len(messages) and messages[start]["role"] == "tool":
        start += 1
    return start


async def run_response(
    engine: Engine,
    record: ResponseRecord,
    log: EventLog | None,
    *,
    stops: tuple[StopPolicy, ...] = (),
    tools: Sequence[str] | None = None,
    fresh: bool = False,
    create: bool = False,
    request: ResponseRequest | None = None,
    prepared: Prepared | None = None,
    conversation: Conversation | None = None,
) -> dict[str, Any]:
    """Run (or resume) a stored response to its terminal state; return the response object.

    ``request`` is the record's body as the route that accepted it parsed it
    (so a fresh run does not parse it again); left out, the body is parsed.
    ``prepared`` and ``conversation``, the route's preparation of that request
    and the conversation it continues, are taken as they are (a fresh run in
    the route's process); left out, they are worked out here.

    ``stops`` are checked after every top-level step; the first that fires
    ends the response ``incomplete`` with its name as the reason. ``tools``
    names the server tools of the top level (default: the model route's).
    ``fresh`` says the response was just created here, so nothing is stored
    for it yet but its record. ``create`` (fresh, with an unstored log) says
    not even the record is stored yet: the run stores it with its first steps
    and events, in one write (:mod:`stepline._engine.creation`).
    """
    store = engine.store
    if request is None:
        request = parse_request(record.body)
    run_log = RunLog(log, step_rows=lambda step_id: store.step_events(record.id, step_id))
    stream = OpenResponsesStream(
        run_log, response_id=record.id, sealer=engine.sealer, include=frozenset(request.include)
    )
    transcript: list[dict[str, Any]] = []
    #: the steps whose ends the loop left to the response's end (still running, stored)
    deferred: list[Step] = []
    #: every step of the response, when the loop knows them all (see ScopeLoop.steps)
    known: ScopeLoop | None = None
    creating = Unstored(record=record, log=log, clock=engine.clock) if create else None
    if engine.sink.run_events:
        engine.sink.emit(RunStarted(response_id=record.id, resumed=not fresh))
    engine.sink.emit(ResponseStarted(record=record, resumed=not fresh))
    try:
        if log is not None and log.first_seq > 0:
            finished = await _already_finished(store, record.id, log.first_seq - 1)
            if finished is not None:
                return await _store_result(engine, record, request, finished)
        chain = [] if fresh else await store.load_chain(record.id, scope=None)
        # what the earlier runs showed, where a resumed run goes on from
        stream.output = OutputList(output_items(chain, frozenset(request.include)))
        if run_log.sends and run_log.first_seq == 0:
            # a fresh run's first events (a resumed run already sent them)
            stream.started(snapshot(record, request, "in_progress", []))
        if record.status == "queued":
            await store.set_status(record.id, "in_progress")
        if prepared is None:
            prepared = prepare(engine, request, key_id=record.key_id, tools=tools)
        # what the request asked its items to show is the wire's, never the loop's
        stream.options = prepared.options
        stream.client_tools = prepared.client_tools
        route_target = prepared.target
        if route_target is None:
            outcome = Outcome(
                status="failed",
                stop_reason="error",
                failure=Failure(
                    code="model_error", message=f"no upstream for model {request.model!r}"
                ),
            )
        else:
            server_tools, listings = await offered_tools(engine, request, prepared)
            if conversation is None:
                conversation = await load_conversation(
                    store,
                    request.stored_previous_id,
                    context_for=prepared.context_for,
                    request=request,
                    cache=engine.history,
                    reading=prepared.reading,
                )
            held = {request_id: call.call_id for request_id, call in conversation.held.items()}
            transcript = base_messages(request, conversation.history, held, prepared.context)
            loop = ScopeLoop(
                engine=engine,
                response_id=record.id,
                scope=None,
                spec=prepared.spec(request, server_tools),
                target=route_target,
                server_tools=server_tools,
                base_messages=transcript,
                results_at=_results_at(
                    transcript, int(bool(request.instructions)) + len(conversation.history)
                ),
                policy=prepared.policy(request, server_tools, approvals(request, conversation)),
                log=run_log,
                sink=Sinks(engine.sink, stream),
                stops=stops,
                listings=listings,
                chain=chain,
                key_tools=prepared.key_tools,
                creating=creating,
            )
            deferred = loop.deferred
            known = loop
            outcome = await loop.run()
    except (StoreError, LoopDrained):
        raise
    except NotFound as exc:
        # what the request names went away after it was accepted (a retention sweep
        # or a DELETE took the response it continues): the request's fault, said so
        outcome = Outcome(
            status="failed",
            stop_reason="error",
            failure=Failure(code="invalid_prompt", message=exc.message),
        )
    except Exception as exc:
        logger.exception("response %s failed unexpectedly", record.id)
        outcome = Outcome(
            status="failed",
            stop_reason="error",
            failure=Failure(code="server_error", message=f"internal error: {type(exc).__name__}"),
        )
    if creating is not None and not creating.done:
        await creating.store(store)  # the run ended before it recorded a step
    steps = None if known is None else known.steps()
    return await _finish_response(
        engine, record, request, outcome, stream, transcript, deferred, steps
    )


async def offered_tools(
    engine: Engine,
    request: ResponseRequest,
    prepared: Prepared,
) -> tuple[dict[str, ServerTool], list[McpListing]]:
    """The server tools a response's top level offers its model, by the name the model
    calls, and the MCP listings among them: the offered names (``Prepared.offered``)
    that the caller's key may use, the tools of the MCP servers
    those name and the request's own, and the server tools that play its hosted
    tools. The run and ``/responses/input_tokens`` both ask here."""
    names = prepared.usable
    mcp = engine.mcp
    selected = engine.tools.select([name for name in names if not (mcp and mcp.is_source(name))])
    listings: list[McpListing] = []
    if mcp is not None:
        labels = [name for name in names if mcp.is_source(name)]
        listings = await mcp.listings(labels, request.mcp_tools())
    for listing in listings:
        selected.update(listing.tools)
    for name, played in prepared.hosted.items():
        tool = engine.tools.select([played])[played]
        selected[name] = dataclasses.replace(tool, name=name, hosted=name)
    return selected, listings


async def stored_response(
    store: StepStore, record: ResponseRecord, *, status: str | None = None
) -> dict[str, Any]:
    """The response object as stored now: its result once terminal, else its progress
    (shown with ``status`` when given, as a cancellation stores it: its live steps
    cancelled)."""
    if record.result is not None:
        return record.result
    steps = await store.load_steps(record.id)
    if status == "cancelled":
        steps = [
            step
            if step.state.terminal
            else dataclasses.replace(step, state=StepState.CANCELLED, finished_at=time.time())
            for step in steps
        ]
    request = parse_request(record.body)
    return snapshot(
        record,
        request,
        status or record.status,
        output_items([step for step in steps if step.scope is None], frozenset(request.include)),
        sum_usage(steps),
    )


def snapshot(
    record: ResponseRecord,
    request: ResponseRequest,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The response object of ``record`` with this status, output and usage."""
    return response_object(
        response_id=record.id,
        created_at=record.created_at,
        request=request,
        status=status,
        output=output,
        usage=usage,
    )


async def _finish_response(
    engine: Engine,
    record: ResponseRecord,
    request: ResponseRequest,
    outcome: Outcome,
    stream: OpenResponsesStream,
    transcript: list[dict[str, Any]],
    deferred: Sequence[Step] = (),
    known: list[Step] | None = None,
) -> dict[str, Any]:
    """``known``: every step of the response, as stored with ``deferred``'s ends (the
    loop's, when it knows them all); None: read from the store."""
    failure = outcome.failure
    error = None if failure is None else wire_error(failure.code, failure.message, failure.status)
    if known is not None:
        steps = known
    else:
        # as they will be stored, with the ends that go with this response's
        ended = {step.id: step for step in deferred}
        steps = [ended.get(step.id, step) for step in await engine.store.load_steps(record.id)]
    completed_at = engine.clock() if outcome.status == "completed" else None
    response = response_object(
        response_id=record.id,
        created_at=record.created_at,
        request=request,
        status=outcome.status,
        output=output_items(
            [step for step in steps if step.scope is None], frozenset(request.include)
        ),
        usage=sum_usage(steps),
        error=error,
        incomplete_details=outcome.incomplete_details,
        completed_at=completed_at,
    )
    run_log = stream.log
    if run_log.sends:
        run_log.hold()
        stream.ended(outcome.status, response, error)
        # the terminal event and the stored result are one write: once a client saw
        # the end, every route on every process reports it
        await asyncio.shield(run_log.commit(_response_end(record, request, response)))
        stored = await _after_result(engine, record, request, response)
    else:
        stored = await _store_result(engine, record, request, response)
    _report_end(engine, outcome, error, stored, steps, transcript)
    return stored


#: the statuses whose input and output join the response's conversation
_JOINS_CONVERSATION = frozenset({"completed", "incomplete"})


def _response_end(
    record: ResponseRecord, request: ResponseRequest, response: dict[str, Any]
) -> ResponseEnd:
    items = [*record.body.get("input", ()), *response["output"]]
    joins = request.conversation if response["status"] in _JOINS_CONVERSATION else None
    return ResponseEnd(
        response_id=record.id,
        status=response["status"],
        result=response,
        completed_at=response.get("completed_at"),
        # kept for item_reference in later requests
        items=items if request.store else (),
        conversation_id=None if joins is None else joins.id,
        conversation_items=() if joins is None else conversation_items(items),
    )


async def _store_result(
    engine: Engine, record: ResponseRecord, request: ResponseRequest, response: dict[str, Any]
) -> dict[str, Any]:
    end = _response_end(record, request, response)
    if end.conversation_id is not None:
        # the conversation's items join in the transaction that finishes the response
        await engine.store.append_events((), ends=[end])
        return await _after_result(engine, record, request, response)
    await engine.store.finish_response(
        end.response_id,
        status=end.status,
        result=end.result,
        completed_at=end.completed_at,
        items=end.items,
    )
    return await _after_result(engine, record, request, response)


async def _after_result(
    engine: Engine, record: ResponseRecord, request: ResponseRequest, response: dict[str, Any]
) -> dict[str, Any]:
    if not request.store:
        await engine.store.delete_response(record.id)
    engine.sink.emit(ResponseEnded(response=response))
    return response


def _report_end(
    engine: Engine,
    outcome: Outcome,
    error: dict[str, Any] | None,
    response: dict[str, Any],
    steps: list[Step],
    transcript: list[dict[str, Any]],
) -> None:
    if not engine.sink.run_events:
        return
    if error is not None:
        engine.sink.emit(RunFailed(message=error["message"], code=error["type"]))
    top = [step for step in steps if step.scope is None]
    engine.sink.emit(
        RunCompleted(
            status=outcome.status,
            stop_reason=outcome.stop_reason,
            response=response,
            messages=transcript + chain_messages(top),
            steps=len(steps),
            tool_invocations=sum(1 for step in steps if step.kind is StepKind.TOOL_CALL),
        )
    )


async def _already_finished(
    store: StepStore, response_id: str, last_seq: int
) -> dict[str, Any] | None:
    """The response object of a stored terminal event: the run ended but was not recorded."""
    return terminal_response(await store.read_events(response_id, after=last_seq - 1, limit=1))
