"""One model call of a scope, and a compaction: the upstream's stream, shown and stored.

A model call builds its Chat Completions body from the scope's
:class:`~stepline._engine.spec.RunSpec` and the conversation recorded before
it, fits it to the model's context window, streams it through the
:class:`ChatStreamer` and relays every chunk's deltas, as they arrive, to the
delta sinks the run's sink returns for the call; its end is stored through
:meth:`ScopeLoop.end_step <stepline._engine.loop.ScopeLoop.end_step>`.

Invariants:

* Nothing is held back per chunk: each delta goes to the sinks at once, and a
  call that relays many chunks lets the event writer and the readers run at
  least every millisecond.
* A streamed response's first events of a call are durable before the rest
  are relayed (clients see only stored events: time to first token).
* An invalid conversation, a context overflow or an upstream failure fails
  the step (recorded, with its code), never the loop; the transition decides
  what follows.
* What the sinks show of a call's end (its items' done events) is stored
  with the step's end, never before it: the run's log is held first.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from stepline._chat.body import chat_body
from stepline._chat.stream import ChatStreamAccumulator, DeltaSink, Discard
from stepline._engine.compaction import (
    CONTEXT_OVERFLOW,
    fit_context,
    is_context_overflow,
    summarise,
)
from stepline._engine.run_events import StepCompleted, StepStarted, UsageDelta
from stepline._engine.sinks import (
    CLIENT,
    SERVER,
    CompactionFinishing,
    CompactionRunning,
    ListedTool,
    ModelCallFinishing,
    ModelCallSending,
    ModelCallStreaming,
    ToolListing,
    ToolView,
)
from stepline._engine.validate import conversation_problem
from stepline._steps import CompactionResult, ModelCallResult, Step, StepError, StepState
from stepline._tools.mcp_tools import McpListing
from stepline._upstream.routing import UpstreamTarget
from stepline.errors import UpstreamError

if TYPE_CHECKING:
    from stepline._engine.loop import ScopeLoop

__all__ = ["ChatStreamer", "describe_tool", "ended_state", "run_compaction", "run_model_call"]

#: the longest a model call relays chunks without letting other tasks run
_YIELD_SECONDS = 0.001


class ChatStreamer(Protocol):
    """The upstream seam: yields Chat Completions chunk dicts for one model call."""

    def stream(
        self, target: UpstreamTarget, payload: dict[str, Any], *, step_id: str
    ) -> AsyncIterator[dict[str, Any]]: ...


def ended_state(state: StepState) -> Literal["completed", "failed", "cancelled"]:
    """A terminal step's state, as a ``StepCompleted`` event names it."""
    assert state.terminal
    return cast(Literal["completed", "failed", "cancelled"], state.value)


def describe_tool(loop: ScopeLoop, name: str) -> ToolView:
    """Who runs the scope's tool ``name`` when the model calls it: the client, the
    server, or the server once the client approves (an unknown name: the server,
    whose call then fails for the model to see)."""
    if name in loop.policy.client_tools:
        return CLIENT
    tool = loop.server_tools.get(name)
    if tool is None:
        return SERVER
    kind: Literal["server", "approval"] = (
        "approval" if name in loop.policy.approval_tools else "server"
    )
    return ToolView(kind=kind, label=tool.label, shown_name=tool.display_name, hosted=tool.hosted)


def _listed(loop: ScopeLoop, listing: McpListing) -> ToolListing:
    """A listing's tools (those the request allows), by the names their source gives."""
    allowed = loop.spec.allowed_tools
    tools = [
        ListedTool(
            name=tool.display_name or name, description=tool.description, parameters=tool.parameters
        )
        for name, tool in listing.tools.items()
        if allowed is None or name in allowed
    ]
    return ToolListing(label=listing.label, tools=tools, error=listing.error)


def _tool_definitions(loop: ScopeLoop, allowed: frozenset[str] | None) -> list[dict[str, Any]]:
    """The tools a model call offers: the server's (those ``allowed``), then the client's."""
    server = [
        tool.chat_definition()
        for name, tool in loop.server_tools.items()
        if allowed is None or name in allowed
    ]
    return [*server, *loop.spec.client_definitions]


async def run_model_call(loop: ScopeLoop, step: Step, *, started: bool = False) -> Step | None:
    """Run a recorded model call to its end; the stored step, or None when its guarded
    end found it no longer processing. ``started``: it was recorded processing."""
    if not started:
        step = await loop.engine.store.start_step(step.id)
    loop.tap(
        StepStarted(step_id=step.id, kind="model_call", scope=loop.scope, attempt=step.attempt)
    )
    messages = loop.messages_before(step)
    problem = conversation_problem(messages, loop.policy.validation)
    if problem is not None:
        done = await loop.end_step(
            step,
            StepState.FAILED,
            failure=StepError(
                message=f"invalid conversation: {problem}", code="invalid_conversation"
            ),
        )
        _model_call_done(loop, done)
        return done
    spec = loop.spec
    payload = chat_body(
        spec.chat,
        model=loop.target.upstream_model,
        messages=messages,
        tools=_tool_definitions(loop, spec.allowed_tools),
        first_call=step.request.get("iteration", 1) == 1,
        dialect=loop.target.dialect,
    )
    fitted = await fit_context(
        loop.engine.http,
        loop.target,
        window=loop.engine.routes.context_window(spec.model, loop.target),
        truncation=spec.truncation,
        payload=payload,
        max_output_tokens=spec.max_output_tokens,
    )
    if fitted.overflow is not None:
        error = StepError(message=fitted.overflow, code=CONTEXT_OVERFLOW)
        done = await loop.end_step(step, StepState.FAILED, failure=error)
        _model_call_done(loop, done)
        return done
    payload = fitted.payload
    listed = loop.scope is None and step.request.get("iteration") == 1
    sink: DeltaSink = (
        loop.sink.deltas(
            ModelCallStreaming(
                step=step,
                describe=functools.partial(describe_tool, loop),
                listings=[_listed(loop, listing) for listing in loop.listings] if listed else (),
                shown_before=await loop.log.shown(step),
            )
        )
        or Discard()
    )
    accumulator = ChatStreamAccumulator(sink)
    loop.sink.emit(ModelCallSending(step=step, target=loop.target, payload=payload))
    try:
        clock = asyncio.get_running_loop().time
        next_yield = 0.0
        # a plain request's client reads only the end: nobody waits for its first events
        log = loop.log
        first = log.appended if log.sends and spec.streamed else None
        async for chunk in loop.engine.chat.stream(loop.target, payload, step_id=step.id):
            accumulator.feed(chunk)
            if first is not None:
                if log.appended > first:
                    # clients see only stored events: store the first ones of
                    # this call before relaying the rest (time to first token)
                    await log.durable()
                    first = None
            elif clock() >= next_yield:
                # one network read can carry hundreds of chunks: let the event
                # writer and the readers run at least every millisecond
                await asyncio.sleep(0)
                next_yield = clock() + _YIELD_SECONDS
        turn = accumulator.result()
    except UpstreamError as exc:
        loop.log.hold()
        loop.sink.emit(ModelCallFinishing(step=step, turn=None))
        code = CONTEXT_OVERFLOW if is_context_overflow(exc) else exc.code
        done = await loop.end_step(
            step,
            StepState.FAILED,
            failure=StepError(message=exc.message, code=code, status=exc.status),
        )
        _model_call_done(loop, done)
        return done
    # what the call's end shows is stored with the end (see ScopeLoop.end_step)
    loop.log.hold()
    loop.sink.emit(ModelCallFinishing(step=step, turn=turn))
    message = turn.message()
    if turn.reasoning:
        message["reasoning_content"] = turn.reasoning
    done = await loop.end_step(
        step,
        StepState.COMPLETED,
        result=ModelCallResult(
            message=message,
            usage=turn.usage,
            finish_reason=turn.finish_reason,
            model=turn.model,
        ),
    )
    _model_call_done(loop, done)
    return done


async def run_compaction(loop: ScopeLoop, step: Step, *, started: bool = False) -> Step | None:
    """Have the model summarise the conversation so far; later calls see the summary.

    Shown as a ``compaction`` item (added, ``response.compaction.compacting``,
    done with the sealed summary); the item's done event is stored with the
    step's end, and a rerun after a crash does not announce it twice."""
    if not started:
        step = await loop.engine.store.start_step(step.id)
    loop.sink.emit(CompactionRunning(step=step, shown_before=await loop.log.shown(step)))
    try:
        summary = await summarise(
            loop.engine.chat,
            loop.target,
            loop.messages_before(step),
            step_id=step.id,
            prompt_cache_key=loop.spec.prompt_cache_key,
        )
    except UpstreamError as exc:
        error = StepError(
            message=f"compaction failed: {exc.message}", code=exc.code, status=exc.status
        )
        return await loop.end_step(step, StepState.FAILED, failure=error)
    # what the compaction's end shows is stored with the end (see ScopeLoop.end_step)
    loop.log.hold()
    loop.sink.emit(CompactionFinishing(step=step, summary=summary.text))
    loop.state.input_tokens += summary.usage.get("input_tokens", 0)
    loop.state.output_tokens += summary.usage.get("output_tokens", 0)
    return await loop.end_step(
        step,
        StepState.COMPLETED,
        result=CompactionResult(summary=summary.text, usage=summary.usage),
    )


def _model_call_done(loop: ScopeLoop, step: Step | None) -> None:
    if step is None:
        return
    usage = (step.response or {}).get("usage") or {}
    calls = ((step.response or {}).get("message") or {}).get("tool_calls") or ()
    loop.state.model_calls += 1
    loop.state.input_tokens += int(usage.get("input_tokens", 0))
    loop.state.output_tokens += int(usage.get("output_tokens", 0))
    if loop.scope is None:
        loop.state.wants_tools = bool(calls)
    if usage:
        loop.tap(
            UsageDelta(
                step_id=step.id,
                scope=loop.scope,
                input_tokens=int(usage.get("input_tokens", 0)),
                output_tokens=int(usage.get("output_tokens", 0)),
            )
        )
    loop.tap(
        StepCompleted(
            step_id=step.id, kind="model_call", scope=loop.scope, state=ended_state(step.state)
        )
    )
