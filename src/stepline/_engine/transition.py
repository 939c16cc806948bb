"""``next_action``: what a loop does next, decided from the stored chain alone.

Pure: no I/O, no clock, no randomness, so a process that resumes a response
after a crash decides exactly what the first process would have.

Rules, in order:

1. Any step of the chain that is not terminal is run (again) before anything
   else: a fan-out is never passed over while a sibling is pending or
   processing, whichever sibling finished last.
2. A chain without a model call first runs the calls the client approved
   (held by the previous response), then starts with a model call.
3. A failed model call fails the response with its error.
4. A model call without tool calls completes the response (``incomplete``
   when the upstream stopped on ``length``).
5. Tool calls that name client tools, or tools that need approval, go back
   to the client; every other call is a server step (an unknown name fails
   at run time and goes back to the model). Server calls without a step yet
   are recorded together, in the order the model made them, as one fan-out.
6. Once every server sibling is terminal: a failure fails the response when
   the policy says so; client calls end the response with them; otherwise
   the follow-up model call, unless ``max_iterations`` model calls were made.
7. Before that follow-up call, when the last model call's input plus output
   tokens reached the policy's ``compact_threshold``, one compaction step
   (once per model call); a failed compaction fails the response.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stepline._engine.policies import ApprovedCall, LoopPolicy
from stepline._steps import (
    AppendSteps,
    Complete,
    Fail,
    Finish,
    NewStep,
    NextAction,
    RunSteps,
    Step,
    StepKind,
    StepState,
    call_arguments,
    call_name,
)

__all__ = ["compaction", "model_call", "next_action", "tool_calls_of"]


def model_call(iteration: int) -> NewStep:
    return NewStep(kind=StepKind.MODEL_CALL, request={"iteration": iteration})


def compaction() -> NewStep:
    return NewStep(kind=StepKind.COMPACTION, request={})


def tool_calls_of(step: Step) -> list[dict[str, Any]]:
    """The tool calls of a completed model call, in the order the model made them."""
    assert step.response is not None
    calls: list[dict[str, Any]] = step.response["message"].get("tool_calls") or []
    return calls


def next_action(policy: LoopPolicy, chain: Sequence[Step]) -> NextAction:
    unfinished = tuple(step for step in chain if not step.state.terminal)
    if unfinished:
        return RunSteps(steps=unfinished)

    model_calls = [step for step in chain if step.kind is StepKind.MODEL_CALL]
    if not model_calls:
        recorded = {step.call_id for step in chain}
        approved = [call for call in policy.approved_calls if call.call_id not in recorded]
        if approved:
            return AppendSteps(steps=tuple(_approved_step(call) for call in approved))
        return AppendSteps(steps=(model_call(1),))
    last = model_calls[-1]
    if last.state is not StepState.COMPLETED:
        error = last.error or {}
        return Fail(
            message=str(error.get("message", f"model call {last.state.value}")),
            code=str(error.get("code", "model_error")),
            details=error,
        )

    assert last.response is not None
    calls = tool_calls_of(last)
    if not calls:
        if last.response.get("finish_reason") == "length":
            return Finish(reason="max_output_tokens")
        return Complete()

    siblings = {
        step.call_id: step
        for step in chain
        if step.kind is StepKind.TOOL_CALL and step.sequence > last.sequence
    }
    held = policy.client_tools | policy.approval_tools
    server_calls = [call for call in calls if call_name(call) not in held]
    # client calls, and calls held for approval, go back to the client
    client_calls = [call for call in calls if call_name(call) in held]

    missing = [call for call in server_calls if call["id"] not in siblings]
    if missing:
        run_so_far = sum(1 for step in chain if step.kind is StepKind.TOOL_CALL)
        if policy.max_tool_calls is not None and run_so_far + len(missing) > policy.max_tool_calls:
            return Finish(reason="max_tool_calls")
        return AppendSteps(
            steps=tuple(
                NewStep(
                    kind=StepKind.TOOL_CALL,
                    call_id=call["id"],
                    request={"name": call_name(call), "arguments": call_arguments(call)},
                )
                for call in missing
            )
        )

    if policy.fail_on_tool_error:
        failed = [
            siblings[call["id"]]
            for call in server_calls
            if siblings[call["id"]].state is not StepState.COMPLETED
        ]
        if failed:
            return _tool_failure(failed)

    if client_calls:
        return Complete(client_call_ids=tuple(call["id"] for call in client_calls))

    if len(model_calls) >= policy.max_iterations:
        return Finish(reason="max_iterations")
    compacted = _compaction_after(chain, last)
    if compacted is None and _passes_threshold(policy, last):
        return AppendSteps(steps=(compaction(),))
    if compacted is not None and compacted.state is not StepState.COMPLETED:
        error = compacted.error or {}
        return Fail(
            message=str(error.get("message", f"compaction {compacted.state.value}")),
            code=str(error.get("code", "model_error")),
            details=error,
        )
    return AppendSteps(steps=(model_call(len(model_calls) + 1),))


def _compaction_after(chain: Sequence[Step], last: Step) -> Step | None:
    return next(
        (
            step
            for step in chain
            if step.kind is StepKind.COMPACTION and step.sequence > last.sequence
        ),
        None,
    )


def _passes_threshold(policy: LoopPolicy, last: Step) -> bool:
    """The context measured as the upstream reported it: the last call's input + output."""
    if policy.compact_threshold is None or last.response is None:
        return False
    usage = last.response.get("usage") or {}
    tokens = int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
    return tokens >= policy.compact_threshold


def _approved_step(call: ApprovedCall) -> NewStep:
    return NewStep(
        kind=StepKind.TOOL_CALL,
        call_id=call.call_id,
        request={
            "name": call.name,
            "arguments": call.arguments,
            "approval_request_id": call.approval_request_id,
            "server_label": call.server_label,
            "shown_name": call.shown_name,
        },
    )


def _tool_failure(failed: list[Step]) -> Fail:
    """One error for the failed siblings of a fan-out, in call order.

    Siblings cancelled because another failed (``fail_fast``) are not named
    as errors of their own.
    """
    errors = [step for step in failed if step.state is StepState.FAILED] or failed
    described = [
        f"tool {step.tool_name!r} failed: {(step.error or {}).get('message', step.state.value)}"
        for step in errors
    ]
    if len(errors) == 1:
        return Fail(message=described[0], code="tool_error", details=errors[0].error or {})
    return Fail(
        message=f"{len(described)} tool calls failed: " + "; ".join(described),
        code="tool_error",
        details={
            "errors": [
                {"call_id": step.call_id, "name": step.tool_name, **(step.error or {})}
                for step in errors
            ]
        },
    )
