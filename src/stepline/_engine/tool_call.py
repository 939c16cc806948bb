"""The tool calls of a scope: a fan-out in a task group, one call, and a sub-agent.

A fan-out runs its recorded calls side by side, at most ``tool_concurrency``
at a time. Each call runs the server tool the model named (checked against
the scope's tools and ``allowed_tools``, its arguments against the tool's
schema) or, for an agent tool, a nested :class:`~stepline._engine.loop.ScopeLoop`
whose steps carry the calling step's id as their scope.

Invariants:

* A failing tool is a failed step (its error is what the model sees next),
  never a failed loop; only a storage failure leaves the fan-out as one.
* ``fail_fast``: the first failure cancels its siblings, and each cancelled
  call is recorded as cancelled. Any other cancellation (shutdown, a lost
  lease) leaves the call processing, for whoever resumes the run.
* A tool call's events are stored with its end (through
  :meth:`~stepline._engine.loop.ScopeLoop.end_step`), never before it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from stepline._engine.model_call import ended_state
from stepline._engine.policies import LoopPolicy
from stepline._engine.run_events import (
    StepCompleted,
    StepStarted,
    ToolCallFinished,
    ToolCallStarted,
)
from stepline._engine.sinks import StepEnded, ToolCallFinishing, ToolCallRunning
from stepline._engine.spec import RunSpec
from stepline._steps import Step, StepError, StepKind, StepState, ToolCallResult
from stepline._tools.http import truncate_output
from stepline._tools.registry import AgentSpec, ToolCallContext
from stepline.errors import StoreError, ToolError

if TYPE_CHECKING:
    from stepline._engine.loop import ScopeLoop

__all__ = ["run_tool_call", "run_tool_calls"]


class _SiblingFailed(Exception):
    """A fail_fast fan-out: a tool call failed, so the task group cancels its siblings."""


async def run_tool_calls(
    loop: ScopeLoop, tool_calls: Sequence[Step], *, started: bool = False
) -> None:
    """Run a fan-out of recorded tool calls in a task group, at most
    ``tool_concurrency`` at a time, recording each end as it comes; ``started``: they
    were just recorded already processing."""
    limit = asyncio.Semaphore(loop.engine.limits.tool_concurrency)
    fail_fast = loop.policy.join == "fail_fast"

    async def bounded(step: Step) -> None:
        async with limit:
            done = await run_tool_call(loop, step, started=started)
            if done is not None:
                loop.sink.emit(StepEnded(step=done))
            await loop.record(done)
        if fail_fast and done is not None and done.state is StepState.FAILED:
            loop.failing_fast = True
            raise _SiblingFailed(step.id)

    loop.failing_fast = False
    try:
        async with asyncio.TaskGroup() as group:
            for step in tool_calls:
                group.create_task(bounded(step))
    except ExceptionGroup as failed:
        # fail_fast: the group cancelled the siblings, which recorded it
        errors = [e for e in failed.exceptions if not isinstance(e, _SiblingFailed)]
        # a sibling's storage failure must stay a storage failure for run_response
        for error in errors:
            if isinstance(error, StoreError):
                raise error from failed
        if errors:
            raise


async def run_tool_call(loop: ScopeLoop, step: Step, *, started: bool = False) -> Step | None:
    """Run one recorded tool call to its end; the stored step, or None when its guarded
    end found it no longer processing. ``started``: it was just recorded processing."""
    lease = loop.engine.limits.lease_seconds
    if started and lease is not None and loop.engine.clock() - (step.started_at or 0) > lease:
        # recorded started, but run only now, past a lease: another process may have
        # run it meanwhile, and starting it in the store refuses one that ended
        started = False
    if not started:
        step = await loop.engine.store.start_step(step.id)
    assert step.call_id is not None
    loop.sink.emit(
        ToolCallRunning(
            step=step, answers=_answered(loop, step), shown_before=await loop.log.shown(step)
        )
    )
    loop.tap(StepStarted(step_id=step.id, kind="tool_call", scope=loop.scope, attempt=step.attempt))
    loop.tap(
        ToolCallStarted(
            step_id=step.id,
            scope=loop.scope,
            call_id=step.call_id,
            name=step.tool_name,
            arguments=step.arguments,
        )
    )
    try:
        result = await _execute_tool(loop, step)
    except ToolError as exc:
        error = StepError(message=exc.message, code=exc.code, status=exc.status)
        return await _end_tool_call(loop, step, StepState.FAILED, None, error)
    except asyncio.CancelledError:
        if loop.failing_fast:
            # a sibling failed: this call is abandoned, and says so
            error = StepError(
                message="tool call cancelled: a sibling call failed", code="cancelled"
            )
            done = await _end_tool_call(loop, step, StepState.CANCELLED, None, error)
            if done is not None:
                loop.recorded[step.id] = done
        # otherwise the run itself stops (shutdown, lost lease, a consumer gone):
        # the step stays processing, and whoever resumes the run runs it again
        raise
    return await _end_tool_call(
        loop, step, StepState.COMPLETED, ToolCallResult(output=result), None
    )


async def _end_tool_call(
    loop: ScopeLoop,
    step: Step,
    state: StepState,
    result: ToolCallResult | None,
    error: StepError | None,
) -> Step | None:
    """Show how a tool call ended, then store it (its events first, see ``ScopeLoop.end_step``)."""
    assert step.call_id is not None
    ended = dataclasses.replace(
        step,
        state=state,
        response=None if result is None else result.payload(),
        error=None if error is None else error.payload(),
    )
    # what the call's end shows is stored with the end (see ScopeLoop.end_step)
    loop.log.hold()
    loop.sink.emit(ToolCallFinishing(step=ended))
    done = await loop.end_step(step, state, result=result, failure=error)
    if done is None:
        return None
    loop.state.tool_invocations += 1
    loop.state.tools_called.append(step.tool_name)
    failure = error.message if error is not None and state is not StepState.COMPLETED else None
    loop.tap(
        ToolCallFinished(
            step_id=step.id,
            scope=loop.scope,
            call_id=step.call_id,
            name=step.tool_name,
            output=result.output if result is not None and failure is None else None,
            error=failure,
        )
    )
    loop.tap(
        StepCompleted(step_id=step.id, kind="tool_call", scope=loop.scope, state=ended_state(state))
    )
    return done


def _answered(loop: ScopeLoop, step: Step) -> Step | None:
    """The model call that asked for this tool call (None: an approved call, run first)."""
    model_calls = [
        s
        for s in loop.recorded.values()
        if s.kind is StepKind.MODEL_CALL and s.sequence < step.sequence
    ]
    return max(model_calls, key=lambda s: s.sequence) if model_calls else None


async def _execute_tool(loop: ScopeLoop, step: Step) -> str:
    name = step.tool_name
    tool = loop.server_tools.get(name)
    if tool is None:
        offered = ", ".join(sorted(loop.server_tools)) or "none"
        raise ToolError(
            f"tool {name!r} does not exist; the tools you may call are: {offered}",
            tool=name,
        )
    allowed = loop.spec.allowed_tools
    if allowed is not None and name not in allowed:
        raise ToolError(f"tool {name!r} is not allowed in this response", tool=name)
    arguments = tool.parse_arguments(step.arguments)
    if tool.agent is not None:
        output = await _run_agent(loop, step, tool.name, tool.agent, arguments)
    else:
        assert tool.run is not None
        output = await tool.run(
            arguments,
            ToolCallContext(
                step_id=step.id,
                http=loop.engine.http,
                headers=loop.engine.step_headers(step.id),
            ),
        )
    if tool.limits_output:
        return output
    return truncate_output(output, loop.engine.limits.max_tool_output_chars)


async def _run_agent(
    loop: ScopeLoop, step: Step, name: str, config: AgentSpec, arguments: dict[str, Any]
) -> str:
    limits = loop.engine.limits
    if loop.depth + 1 > limits.max_depth:
        raise ToolError(
            f"agent {name!r} not run: max_depth {limits.max_depth} reached",
            tool=name,
        )
    target = loop.engine.routes.target(config.model)
    if target is None:
        raise ToolError(f"agent {name!r} names model {config.model!r} with no upstream", tool=name)
    task = arguments.get("input")
    text = task if isinstance(task, str) else orjson.dumps(arguments).decode()
    # the agent's instructions, then its task as the one user message
    system = [{"role": "system", "content": config.instructions}] if config.instructions else []
    sub = loop.nested(
        scope=step.id,
        spec=RunSpec(model=config.model),
        target=target,
        server_tools=loop.engine.tools.select(
            [name for name in config.tools if loop.key_tools is None or name in loop.key_tools]
        ),
        base_messages=[*system, {"role": "user", "content": text}],
        policy=LoopPolicy(
            max_iterations=limits.max_iterations,
            fail_on_tool_error=limits.tool_errors == "fail",
            join=limits.tool_join,
            validation=limits.validation,
        ),
    )
    outcome = await sub.run()
    if outcome.status != "completed":
        detail = (
            outcome.failure.message
            if outcome.failure is not None
            else (outcome.incomplete_details or {}).get("reason", "")
        )
        raise ToolError(f"agent {name!r} ended {outcome.status}: {detail}", tool=name)
    return outcome.text
