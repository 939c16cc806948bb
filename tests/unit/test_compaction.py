"""Compaction and truncation, the pure parts: how a summary replaces what it summarises,
when the transition compacts, how a turn is dropped, and how tokenizers are asked."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from stepline._chat.messages import chain_messages, finalize_messages
from stepline._chat.summary import (
    SUMMARY_KEY,
    SUMMARY_PREFIX,
    compacted,
    summary_message,
    transcript,
)
from stepline._config import UpstreamConfig
from stepline._engine.compaction import drop_oldest, estimate_tokens, is_context_overflow
from stepline._engine.policies import LoopPolicy
from stepline._engine.transition import next_action
from stepline._protocol.assemble import output_items, sum_usage
from stepline._protocol.items import InputContext, input_messages
from stepline._protocol.request import parse_request
from stepline._protocol.sealing import Sealer
from stepline._steps import AppendSteps, Fail, Step, StepKind, StepState
from stepline._upstream.routing import UpstreamTarget
from stepline._upstream.tokenize import tokenizer_for
from stepline.errors import InvalidRequest, UpstreamError

USER = {"role": "user", "content": "Plan the launch."}
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "calendar", "arguments": "{}"}}
    ],
}
RESULT = {"role": "tool", "tool_call_id": "c1", "content": "Tuesday is free."}


# -- the summary stands in for what came before it -------------------------------------------


def test_a_summary_keeps_system_and_user_messages_and_drops_the_rest_before_it() -> None:
    system = {"role": "system", "content": "Be brief."}
    earlier = summary_message("an older summary")
    later = {"role": "user", "content": "And then?"}

    seen = compacted(
        [
            system,
            USER,
            CALL,
            RESULT,
            earlier,
            {"role": "assistant", "content": "ok"},
            summary_message("Tuesday is free."),
            later,
        ]
    )

    assert seen == [
        system,
        USER,
        {"role": "user", "content": SUMMARY_PREFIX + "Tuesday is free."},
        later,
    ]
    assert compacted([USER, CALL, RESULT]) == [USER, CALL, RESULT]


def test_no_summary_marker_reaches_the_upstream() -> None:
    sent = finalize_messages([USER, CALL, RESULT, summary_message("s")])
    assert all(SUMMARY_KEY not in message for message in sent)
    assert [message["role"] for message in sent] == ["user", "user"]


def test_the_transcript_shows_calls_and_results() -> None:
    assert transcript([USER, CALL, RESULT]) == (
        "[user]\nPlan the launch.\n\n[assistant calls calendar (c1)]\n{}\n\n"
        "[tool result c1]\nTuesday is free."
    )


# -- compaction items as input --------------------------------------------------------------


def _items(*raw: dict[str, Any]) -> list[Any]:
    return list(parse_request({"model": "m", "input": list(raw)}).input)


def test_a_compaction_item_opens_only_under_its_own_label() -> None:
    sealer = Sealer.ephemeral()
    context = InputContext(unseal=sealer.open)
    good = sealer.seal("the summary", label="compaction")

    assert input_messages(
        _items({"type": "compaction", "encrypted_content": good}), None, context
    ) == [summary_message("the summary")]
    as_reasoning = sealer.seal("the summary")  # sealed for reasoning, not for compaction
    with pytest.raises(InvalidRequest) as raised:
        input_messages(
            _items(USER, {"type": "compaction", "encrypted_content": as_reasoning}), None, context
        )
    assert raised.value.param == "input[1].encrypted_content"
    assert raised.value.code == "invalid_encrypted_content"


# -- the transition --------------------------------------------------------------------------


def _step(sequence: int, kind: StepKind, **fields: Any) -> Step:
    return Step(
        id=f"step_{sequence}",
        response_id="resp_t",
        scope=None,
        previous_step_id=None,
        sequence=sequence,
        kind=kind,
        state=fields.pop("state", StepState.COMPLETED),
        request=fields.pop("request", {}),
        **fields,
    )


def _model_call(sequence: int, tokens: int, *, calls: bool = True) -> Step:
    message: dict[str, Any] = {"role": "assistant", "content": None if calls else "done"}
    if calls:
        message["tool_calls"] = CALL["tool_calls"]
    return _step(
        sequence,
        StepKind.MODEL_CALL,
        request={"iteration": 1},
        response={
            "message": message,
            "items": [],
            "call_items": {},
            "usage": {"input_tokens": tokens - 10, "output_tokens": 10},
            "finish_reason": "tool_calls" if calls else "stop",
        },
    )


def _tool_call(sequence: int) -> Step:
    return _step(
        sequence,
        StepKind.TOOL_CALL,
        call_id="c1",
        request={"name": "calendar", "arguments": "{}"},
        response={"output": "Tuesday is free."},
    )


def _compaction(sequence: int, state: StepState = StepState.COMPLETED) -> Step:
    if state is StepState.COMPLETED:
        item = {"id": "cmp_1", "type": "compaction", "encrypted_content": "sl1.x.y"}
        response = {"summary": "Tuesday is free.", "items": [item], "usage": {"input_tokens": 7}}
        return _step(sequence, StepKind.COMPACTION, response=response)
    return _step(sequence, StepKind.COMPACTION, state=state, error={"message": "down"})


POLICY = LoopPolicy(compact_threshold=100)


def test_a_context_past_the_threshold_is_compacted_once_before_the_next_model_call() -> None:
    chain = [_model_call(0, 100), _tool_call(1)]
    action = next_action(POLICY, chain)
    assert isinstance(action, AppendSteps)
    assert [new.kind for new in action.steps] == [StepKind.COMPACTION]

    action = next_action(POLICY, [*chain, _compaction(2)])
    assert isinstance(action, AppendSteps)
    assert [(new.kind, new.request) for new in action.steps] == [
        (StepKind.MODEL_CALL, {"iteration": 2})
    ]


@pytest.mark.parametrize(
    ("policy", "tokens"), [(POLICY, 99), (LoopPolicy(), 10_000)], ids=["below", "not-asked"]
)
def test_no_compaction_below_the_threshold_or_without_one(policy: LoopPolicy, tokens: int) -> None:
    action = next_action(policy, [_model_call(0, tokens), _tool_call(1)])
    assert isinstance(action, AppendSteps)
    assert [new.kind for new in action.steps] == [StepKind.MODEL_CALL]


def test_a_failed_compaction_fails_the_response() -> None:
    action = next_action(
        POLICY, [_model_call(0, 500), _tool_call(1), _compaction(2, StepState.FAILED)]
    )
    assert isinstance(action, Fail) and action.message == "down"


def test_a_last_answer_is_never_compacted() -> None:
    action = next_action(POLICY, [_model_call(0, 500, calls=False)])
    assert not isinstance(action, AppendSteps)


# -- the chain with a compaction step -------------------------------------------------------


def test_the_chain_reads_the_summary_at_its_place_and_counts_its_usage() -> None:
    after = _model_call(3, 20, calls=False)
    chain = [_model_call(0, 100), _tool_call(1), _compaction(2), after]

    assert compacted(chain_messages(chain)) == [
        {"role": "user", "content": SUMMARY_PREFIX + "Tuesday is free."},
        {"role": "assistant", "content": "done"},
    ]
    assert [item["type"] for item in output_items(chain)] == ["compaction"]
    assert sum_usage(chain)["input_tokens"] == 90 + 7 + 10


# -- truncation -------------------------------------------------------------------------------


def test_dropping_the_oldest_turn_keeps_system_messages_and_a_call_with_its_results() -> None:
    system = {"role": "system", "content": "Be brief."}
    last = {"role": "user", "content": "Now?"}

    assert drop_oldest([system, USER, CALL, RESULT, last]) == [system, CALL, RESULT, last]
    assert drop_oldest([system, CALL, RESULT, last]) == [system, last]
    assert drop_oldest([system, last]) is None


def test_the_estimate_errs_high() -> None:
    payload = {"messages": [{"role": "user", "content": "word " * 100}]}
    assert estimate_tokens(payload) > 100


@pytest.mark.parametrize(
    ("status", "message", "overflow"),
    [
        (400, "This model's maximum context length is 4096 tokens. However, ...", True),
        (400, "the request exceeds the available context size, try increasing it", True),
        (400, "Invalid 'messages[0].role'", False),
        (500, "maximum context length is 4096 tokens", False),
    ],
)
def test_context_overflow_is_recognised_from_the_upstream_answer(
    status: int, message: str, overflow: bool
) -> None:
    assert is_context_overflow(UpstreamError(message, status=status)) is overflow


# -- tokenizers -------------------------------------------------------------------------------


def _target(tokenize: str | None) -> UpstreamTarget:
    config = UpstreamConfig(base_url="http://model:8000/v1", tokenize=tokenize)
    return UpstreamTarget(
        name="local",
        base_url="http://model:8000/v1",
        api_key="sk-secret-key-123",
        upstream_model="qwen",
        config=config,
    )


async def test_llama_cpp_is_asked_for_the_template_then_its_tokens() -> None:
    seen: list[tuple[str, dict[str, Any], str | None]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        seen.append((str(request.url), body, request.headers.get("authorization")))
        if request.url.path == "/apply-template":
            return httpx.Response(200, json={"prompt": "<|user|>Plan the launch.<|end|>"})
        return httpx.Response(200, json={"tokens": [1, 2, 3, 4, 5]})

    tokenizer = tokenizer_for(_target("llama.cpp"))
    assert tokenizer is not None
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        count = await tokenizer.count(http, {"messages": [USER], "tools": []})

    assert count == 5
    assert seen == [
        ("http://model:8000/apply-template", {"messages": [USER]}, "Bearer sk-secret-key-123"),
        (
            "http://model:8000/tokenize",
            {
                "content": "<|user|>Plan the launch.<|end|>",
                "add_special": True,
                "parse_special": True,
            },
            "Bearer sk-secret-key-123",
        ),
    ]


async def test_vllm_is_asked_beside_v1_and_a_failure_never_shows_the_key() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url == "http://model:8000/tokenize"
        assert orjson.loads(request.content)["model"] == "qwen"
        return httpx.Response(401, text="bad key sk-secret-key-123")

    tokenizer = tokenizer_for(_target("vllm"))
    assert tokenizer is not None and tokenizer_for(_target(None)) is None
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        with pytest.raises(UpstreamError) as raised:
            await tokenizer.count(http, {"messages": [USER]})
    assert "sk-secret-key-123" not in raised.value.message
    assert raised.value.status == 401
