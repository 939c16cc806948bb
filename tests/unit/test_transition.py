"""``next_action``: every rule of the pure transition, on chains built by hand."""

from __future__ import annotations

from typing import Any

import pytest

from stepline._engine.policies import ApprovedCall, LoopPolicy
from stepline._engine.transition import model_call, next_action, tool_calls_of
from stepline._steps import (
    AppendSteps,
    Complete,
    Fail,
    Finish,
    NewStep,
    RunSteps,
    Step,
    StepKind,
    StepState,
    batches,
)

RESPONSE_ID = "resp_test"
UNFINISHED = [StepState.PENDING, StepState.PROCESSING]


def call(call_id: str, name: str, arguments: str = "{}") -> dict[str, Any]:
    """One tool call as the model made it (a Chat Completions ``tool_calls`` entry)."""
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def model_step(
    sequence: int,
    *,
    calls: tuple[dict[str, Any], ...] = (),
    content: str | None = None,
    finish_reason: str | None = None,
    state: StepState = StepState.COMPLETED,
    error: dict[str, Any] | None = None,
    iteration: int = 1,
) -> Step:
    response: dict[str, Any] | None = None
    if state is StepState.COMPLETED:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = list(calls)
        response = {
            "message": message,
            "items": [],
            "usage": {
                "input_tokens": 10,
                "output_tokens": 5,
                "cached_tokens": 0,
                "reasoning_tokens": 0,
            },
            "finish_reason": finish_reason or ("tool_calls" if calls else "stop"),
        }
    return Step(
        id=f"step_{sequence}",
        response_id=RESPONSE_ID,
        scope=None,
        previous_step_id=f"step_{sequence - 1}" if sequence else None,
        sequence=sequence,
        kind=StepKind.MODEL_CALL,
        state=state,
        request={"iteration": iteration},
        response=response,
        error=error,
    )


def tool_step(
    sequence: int,
    call_id: str,
    name: str,
    *,
    arguments: str = "{}",
    state: StepState = StepState.COMPLETED,
    output: str = "ok",
    error: dict[str, Any] | None = None,
) -> Step:
    return Step(
        id=f"step_{sequence}",
        response_id=RESPONSE_ID,
        scope=None,
        previous_step_id=f"step_{sequence - 1}" if sequence else None,
        sequence=sequence,
        kind=StepKind.TOOL_CALL,
        state=state,
        request={"name": name, "arguments": arguments},
        response={"output": output} if state is StepState.COMPLETED else None,
        error=error,
        call_id=call_id,
    )


def tool_new(call_id: str, name: str, arguments: str = "{}") -> NewStep:
    """The NewStep the transition must ask for to run one server call."""
    return NewStep(
        kind=StepKind.TOOL_CALL,
        call_id=call_id,
        request={"name": name, "arguments": arguments},
    )


def follow_up(iteration: int) -> AppendSteps:
    return AppendSteps(steps=(NewStep(kind=StepKind.MODEL_CALL, request={"iteration": iteration}),))


POLICY = LoopPolicy()


# -- rule 1: the empty chain ---------------------------------------------------


def test_empty_chain_starts_with_the_first_model_call() -> None:
    assert next_action(POLICY, []) == follow_up(1)


def test_model_call_helper_numbers_the_iteration() -> None:
    assert model_call(3) == NewStep(kind=StepKind.MODEL_CALL, request={"iteration": 3})


# -- rule 2: unfinished steps run before anything else ------------------------


@pytest.mark.parametrize("state", UNFINISHED)
def test_unfinished_model_call_is_run_again(state: StepState) -> None:
    first = model_step(0, state=state)
    assert next_action(POLICY, [first]) == RunSteps(steps=(first,))


@pytest.mark.parametrize("state", UNFINISHED)
def test_fan_out_with_last_sibling_finished_runs_the_unfinished_earlier_sibling(
    state: StepState,
) -> None:
    calls = (call("call_a", "lookup"), call("call_b", "lookup"), call("call_c", "lookup"))
    unfinished = tool_step(1, "call_a", "lookup", state=state)
    chain = [
        model_step(0, calls=calls),
        unfinished,
        tool_step(2, "call_b", "lookup"),
        tool_step(3, "call_c", "lookup"),
    ]
    assert next_action(POLICY, chain) == RunSteps(steps=(unfinished,))


def test_fan_out_runs_exactly_every_unfinished_sibling_in_chain_order() -> None:
    calls = tuple(call(f"call_{n}", "lookup") for n in range(4))
    pending = tool_step(1, "call_0", "lookup", state=StepState.PENDING)
    processing = tool_step(3, "call_2", "lookup", state=StepState.PROCESSING)
    chain = [
        model_step(0, calls=calls),
        pending,
        tool_step(2, "call_1", "lookup", state=StepState.FAILED, error={"message": "x"}),
        processing,
        tool_step(4, "call_3", "lookup"),
    ]
    assert next_action(POLICY, chain) == RunSteps(steps=(pending, processing))


def test_unfinished_siblings_win_over_a_failure_even_with_fail_on_tool_error() -> None:
    calls = (call("call_a", "lookup"), call("call_b", "lookup"))
    processing = tool_step(1, "call_a", "lookup", state=StepState.PROCESSING)
    chain = [
        model_step(0, calls=calls),
        processing,
        tool_step(2, "call_b", "lookup", state=StepState.FAILED, error={"message": "boom"}),
    ]
    policy = LoopPolicy(fail_on_tool_error=True)
    assert next_action(policy, chain) == RunSteps(steps=(processing,))


@pytest.mark.parametrize("state", UNFINISHED)
def test_unfinished_step_anywhere_in_the_chain_is_run(state: StepState) -> None:
    stuck = tool_step(1, "call_a", "lookup", state=state)
    chain = [
        model_step(0, calls=(call("call_a", "lookup"),)),
        stuck,
        model_step(2, content="done", iteration=2),
    ]
    assert next_action(POLICY, chain) == RunSteps(steps=(stuck,))


def test_unfinished_follow_up_model_call_is_run_again() -> None:
    follow = model_step(2, state=StepState.PROCESSING, iteration=2)
    chain = [
        model_step(0, calls=(call("call_a", "lookup"),)),
        tool_step(1, "call_a", "lookup"),
        follow,
    ]
    assert next_action(POLICY, chain) == RunSteps(steps=(follow,))


# -- rule 3: a failed model call fails the response ----------------------------


def test_failed_model_call_fails_with_its_error() -> None:
    error = {"message": "upstream answered 500", "code": "model_error", "status": 500}
    chain = [model_step(0, state=StepState.FAILED, error=error)]
    assert next_action(POLICY, chain) == Fail(
        message="upstream answered 500", code="model_error", details=error
    )


def test_failed_model_call_keeps_a_custom_error_code() -> None:
    error = {"message": "context too long", "code": "context_length_exceeded", "status": 400}
    chain = [
        model_step(0, calls=(call("call_a", "lookup"),)),
        tool_step(1, "call_a", "lookup"),
        model_step(2, state=StepState.FAILED, error=error, iteration=2),
    ]
    assert next_action(POLICY, chain) == Fail(
        message="context too long", code="context_length_exceeded", details=error
    )


@pytest.mark.parametrize("state", [StepState.FAILED, StepState.CANCELLED])
def test_model_call_ended_without_an_error_fails_with_a_default(state: StepState) -> None:
    chain = [model_step(0, state=state)]
    assert next_action(POLICY, chain) == Fail(
        message=f"model call {state.value}", code="model_error", details={}
    )


# -- rule 4: no tool calls ends the response -----------------------------------


def test_answer_without_tool_calls_completes() -> None:
    chain = [model_step(0, content="Paris is sunny.")]
    assert next_action(POLICY, chain) == Complete(client_call_ids=())


def test_answer_after_a_tool_batch_completes() -> None:
    chain = [
        model_step(0, calls=(call("call_a", "lookup"),)),
        tool_step(1, "call_a", "lookup"),
        model_step(2, content="It is 12:00.", iteration=2),
    ]
    assert next_action(POLICY, chain) == Complete()


def test_length_stop_finishes_incomplete() -> None:
    chain = [model_step(0, content="Once upon a", finish_reason="length")]
    assert next_action(POLICY, chain) == Finish(reason="max_output_tokens")


def test_answer_at_the_iteration_cap_still_completes() -> None:
    policy = LoopPolicy(max_iterations=1)
    assert next_action(policy, [model_step(0, content="hi")]) == Complete()


# -- rule 5: tool calls become server steps or go back to the client -----------


def test_server_calls_are_appended_in_the_models_order_with_their_call_ids() -> None:
    calls = (
        call("call_zeta", "weather", '{"city": "Paris"}'),
        call("call_alpha", "time", '{"tz": "UTC"}'),
        call("call_mid", "weather", '{"city": "Oslo"}'),
    )
    assert next_action(POLICY, [model_step(0, calls=calls)]) == AppendSteps(
        steps=(
            tool_new("call_zeta", "weather", '{"city": "Paris"}'),
            tool_new("call_alpha", "time", '{"tz": "UTC"}'),
            tool_new("call_mid", "weather", '{"city": "Oslo"}'),
        )
    )


def test_unknown_tool_name_is_still_a_server_step() -> None:
    calls = (call("call_a", "no_such_tool", '{"x": 1}'),)
    policy = LoopPolicy(client_tools=frozenset({"client_tool"}))
    assert next_action(policy, [model_step(0, calls=calls)]) == AppendSteps(
        steps=(tool_new("call_a", "no_such_tool", '{"x": 1}'),)
    )


CLIENT_POLICY = LoopPolicy(client_tools=frozenset({"ask_user", "open_file"}))
MIXED_CALLS = (
    call("call_c1", "ask_user", '{"q": "which city?"}'),
    call("call_s1", "weather", '{"city": "Paris"}'),
    call("call_c2", "open_file", '{"path": "a.txt"}'),
    call("call_s2", "time", '{"tz": "CET"}'),
)


def test_mixed_batch_appends_only_the_server_calls() -> None:
    assert next_action(CLIENT_POLICY, [model_step(0, calls=MIXED_CALLS)]) == AppendSteps(
        steps=(
            tool_new("call_s1", "weather", '{"city": "Paris"}'),
            tool_new("call_s2", "time", '{"tz": "CET"}'),
        )
    )


def test_mixed_batch_waits_for_an_unfinished_server_sibling() -> None:
    processing = tool_step(1, "call_s1", "weather", state=StepState.PROCESSING)
    chain = [model_step(0, calls=MIXED_CALLS), processing, tool_step(2, "call_s2", "time")]
    assert next_action(CLIENT_POLICY, chain) == RunSteps(steps=(processing,))


def test_mixed_batch_completes_with_only_the_client_calls_once_server_steps_end() -> None:
    chain = [
        model_step(0, calls=MIXED_CALLS),
        tool_step(1, "call_s1", "weather"),
        tool_step(2, "call_s2", "time", state=StepState.FAILED, error={"message": "down"}),
    ]
    assert next_action(CLIENT_POLICY, chain) == Complete(client_call_ids=("call_c1", "call_c2"))


def test_client_only_batch_completes_at_once_with_every_client_call() -> None:
    calls = (call("call_c2", "open_file"), call("call_c1", "ask_user"))
    assert next_action(CLIENT_POLICY, [model_step(0, calls=calls)]) == Complete(
        client_call_ids=("call_c2", "call_c1")
    )


# -- rule 6: the batch is done -------------------------------------------------


def test_finished_batch_leads_to_the_follow_up_model_call() -> None:
    calls = (call("call_a", "weather"), call("call_b", "time"))
    chain = [
        model_step(0, calls=calls),
        tool_step(1, "call_a", "weather"),
        tool_step(2, "call_b", "time"),
    ]
    assert next_action(POLICY, chain) == follow_up(2)


def test_follow_up_numbers_the_iteration_after_the_last_model_call() -> None:
    chain = [
        model_step(0, calls=(call("call_a", "weather"),)),
        tool_step(1, "call_a", "weather"),
        model_step(2, calls=(call("call_b", "weather"),), iteration=2),
        tool_step(3, "call_b", "weather"),
        model_step(4, calls=(call("call_c", "weather"),), iteration=3),
        tool_step(5, "call_c", "weather"),
    ]
    assert next_action(POLICY, chain) == follow_up(4)


@pytest.mark.parametrize("state", [StepState.FAILED, StepState.CANCELLED])
def test_failed_tool_step_fails_the_response_when_the_policy_says_so(state: StepState) -> None:
    error = {"message": "HTTP 503 from tool", "code": "tool_error", "status": 503}
    calls = (call("call_a", "weather"), call("call_b", "time"))
    chain = [
        model_step(0, calls=calls),
        tool_step(1, "call_a", "weather"),
        tool_step(2, "call_b", "time", state=state, error=error),
    ]
    policy = LoopPolicy(fail_on_tool_error=True)
    assert next_action(policy, chain) == Fail(
        message="tool 'time' failed: HTTP 503 from tool", code="tool_error", details=error
    )


def test_failed_tool_step_fails_before_client_calls_go_back() -> None:
    error = {"message": "boom", "code": "tool_error", "status": None}
    chain = [
        model_step(0, calls=MIXED_CALLS),
        tool_step(1, "call_s1", "weather", state=StepState.FAILED, error=error),
        tool_step(2, "call_s2", "time"),
    ]
    policy = LoopPolicy(client_tools=CLIENT_POLICY.client_tools, fail_on_tool_error=True)
    assert next_action(policy, chain) == Fail(
        message="tool 'weather' failed: boom", code="tool_error", details=error
    )


def test_failed_tool_step_goes_back_to_the_model_by_default() -> None:
    chain = [
        model_step(0, calls=(call("call_a", "weather"),)),
        tool_step(1, "call_a", "weather", state=StepState.FAILED, error={"message": "boom"}),
    ]
    assert next_action(POLICY, chain) == follow_up(2)


def test_max_iterations_reached_finishes_incomplete() -> None:
    chain = [
        model_step(0, calls=(call("call_a", "weather"),)),
        tool_step(1, "call_a", "weather"),
        model_step(2, calls=(call("call_b", "weather"),), iteration=2),
        tool_step(3, "call_b", "weather"),
    ]
    assert next_action(LoopPolicy(max_iterations=2), chain) == Finish(reason="max_iterations")
    assert next_action(LoopPolicy(max_iterations=3), chain) == follow_up(3)


def test_max_tool_calls_exceeded_by_one_batch_finishes_incomplete() -> None:
    calls = (call("call_a", "weather"), call("call_b", "weather"), call("call_c", "weather"))
    chain = [model_step(0, calls=calls)]
    assert next_action(LoopPolicy(max_tool_calls=2), chain) == Finish(reason="max_tool_calls")
    assert next_action(LoopPolicy(max_tool_calls=3), chain) == AppendSteps(
        steps=(
            tool_new("call_a", "weather"),
            tool_new("call_b", "weather"),
            tool_new("call_c", "weather"),
        )
    )


def test_max_tool_calls_counts_the_calls_of_earlier_batches() -> None:
    chain = [
        model_step(0, calls=(call("call_a", "weather"), call("call_b", "weather"))),
        tool_step(1, "call_a", "weather"),
        tool_step(2, "call_b", "weather"),
        model_step(3, calls=(call("call_c", "time"), call("call_d", "time")), iteration=2),
    ]
    assert next_action(LoopPolicy(max_tool_calls=3), chain) == Finish(reason="max_tool_calls")
    assert next_action(LoopPolicy(max_tool_calls=4), chain) == AppendSteps(
        steps=(tool_new("call_c", "time"), tool_new("call_d", "time"))
    )


def test_client_calls_do_not_count_against_max_tool_calls() -> None:
    policy = LoopPolicy(client_tools=CLIENT_POLICY.client_tools, max_tool_calls=2)
    assert next_action(policy, [model_step(0, calls=MIXED_CALLS)]) == AppendSteps(
        steps=(
            tool_new("call_s1", "weather", '{"city": "Paris"}'),
            tool_new("call_s2", "time", '{"tz": "CET"}'),
        )
    )


# -- siblings are matched by call_id, within their own batch -------------------


def test_siblings_recorded_in_another_order_are_matched_by_call_id() -> None:
    calls = (call("call_a", "weather"), call("call_b", "time"), call("call_c", "news"))
    chain = [
        model_step(0, calls=calls),
        tool_step(1, "call_c", "news"),
        tool_step(2, "call_a", "weather"),
        tool_step(3, "call_b", "time"),
    ]
    assert next_action(POLICY, chain) == follow_up(2)


def test_failed_sibling_is_found_by_call_id_not_by_position() -> None:
    calls = (call("call_a", "weather"), call("call_b", "time"))
    error = {"message": "time server down"}
    chain = [
        model_step(0, calls=calls),
        tool_step(1, "call_b", "time", state=StepState.FAILED, error=error),
        tool_step(2, "call_a", "weather"),
    ]
    assert next_action(LoopPolicy(fail_on_tool_error=True), chain) == Fail(
        message="tool 'time' failed: time server down", code="tool_error", details=error
    )


def test_only_the_calls_without_a_step_are_appended() -> None:
    calls = (call("call_a", "weather"), call("call_b", "time"), call("call_c", "news"))
    chain = [model_step(0, calls=calls), tool_step(1, "call_b", "time")]
    assert next_action(POLICY, chain) == AppendSteps(
        steps=(tool_new("call_a", "weather"), tool_new("call_c", "news"))
    )


def test_steps_of_an_earlier_batch_are_not_siblings_of_this_batch() -> None:
    # some upstreams number their call ids per message, so ids repeat across batches
    chain = [
        model_step(0, calls=(call("call_0", "weather", '{"city": "Paris"}'),)),
        tool_step(1, "call_0", "weather", arguments='{"city": "Paris"}'),
        model_step(2, calls=(call("call_0", "weather", '{"city": "Oslo"}'),), iteration=2),
    ]
    assert next_action(POLICY, chain) == AppendSteps(
        steps=(tool_new("call_0", "weather", '{"city": "Oslo"}'),)
    )


def test_tool_calls_of_lists_the_calls_in_the_models_order() -> None:
    calls = (call("call_b", "time"), call("call_a", "weather"))
    assert tool_calls_of(model_step(0, calls=calls)) == list(calls)
    assert tool_calls_of(model_step(0, content="no calls")) == []


def test_batches_pair_each_model_call_with_the_tool_steps_recorded_after_it() -> None:
    first = model_step(0, calls=(call("call_0", "weather"), call("call_1", "time")))
    first_a = tool_step(1, "call_1", "time")
    first_b = tool_step(2, "call_0", "weather")
    second = model_step(3, calls=(call("call_0", "weather"),), iteration=2)
    second_a = tool_step(4, "call_0", "weather", state=StepState.PROCESSING)
    third = model_step(5, content="done", iteration=3)
    shuffled = [second_a, first, third, first_b, second, first_a]
    assert batches(shuffled) == [
        (first, {"call_1": first_a, "call_0": first_b}),
        (second, {"call_0": second_a}),
        (third, {}),
    ]


def test_a_fail_fast_fan_out_names_only_the_call_that_failed() -> None:
    error = {"message": "boom", "code": "tool_error", "status": None}
    cancelled = {"message": "tool call cancelled: a sibling call failed", "code": "cancelled"}
    calls = (call("call_a", "weather"), call("call_b", "time"), call("call_c", "news"))
    chain = [
        model_step(0, calls=calls),
        tool_step(1, "call_a", "weather", state=StepState.CANCELLED, error=cancelled),
        tool_step(2, "call_b", "time", state=StepState.FAILED, error=error),
        tool_step(3, "call_c", "news"),
    ]
    policy = LoopPolicy(fail_on_tool_error=True, join="fail_fast")
    assert next_action(policy, chain) == Fail(
        message="tool 'time' failed: boom", code="tool_error", details=error
    )


def _approved(call_id: str) -> ApprovedCall:
    return ApprovedCall(
        call_id=call_id,
        name="weather",
        arguments="{}",
        approval_request_id=f"mcpr_{call_id}",
        server_label="tools",
        shown_name="weather",
    )


def test_approved_calls_run_once_then_the_first_model_call() -> None:
    policy = LoopPolicy(approved_calls=(_approved("call_x"), _approved("call_y")))
    ran_x = tool_step(1, "call_x", "weather")
    action = next_action(policy, [ran_x])
    assert isinstance(action, AppendSteps)
    assert [step.call_id for step in action.steps] == ["call_y"]
    ran_y = tool_step(2, "call_y", "weather")
    assert next_action(policy, [ran_x, ran_y]) == AppendSteps(steps=(model_call(1),))
