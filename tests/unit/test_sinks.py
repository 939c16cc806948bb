"""The run's one sink: several consumers as one, a model call's deltas to those who take them."""

from __future__ import annotations

from typing import Any

from stepline._chat.stream import DeltaSink
from stepline._engine.sinks import (
    SERVER,
    ModelCallStreaming,
    NullSink,
    SinkEvent,
    Sinks,
    StepEnded,
    StepObserver,
)
from stepline._steps import Step, StepKind, StepState


class _Recording:
    """A delta sink that notes every delta it is given."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def on_reasoning(self, text: str) -> None:
        self.seen.append(("reasoning", text))

    def on_text(self, text: str) -> None:
        self.seen.append(("text", text))

    def on_tool_call(self, index: int, call_id: str, name: str) -> None:
        self.seen.append(("tool_call", index, call_id, name))

    def on_tool_arguments(self, index: int, text: str) -> None:
        self.seen.append(("arguments", index, text))

    def on_logprobs(self, entries: list[dict[str, Any]]) -> None:
        self.seen.append(("logprobs", entries))


class _Taking:
    """A consumer that takes every model call's deltas and notes the events it gets."""

    run_events = False

    def __init__(self) -> None:
        self.deltas_sink = _Recording()
        self.events: list[SinkEvent] = []

    def emit(self, event: SinkEvent) -> None:
        self.events.append(event)

    def deltas(self, call: ModelCallStreaming) -> DeltaSink:
        return self.deltas_sink


def _step() -> Step:
    return Step(
        id="step_1",
        response_id="resp_1",
        scope=None,
        previous_step_id=None,
        sequence=1,
        kind=StepKind.MODEL_CALL,
        state=StepState.PROCESSING,
        request={"iteration": 1},
    )


def _streaming() -> ModelCallStreaming:
    return ModelCallStreaming(step=_step(), describe=lambda name: SERVER)


def _feed(sink: DeltaSink) -> None:
    sink.on_reasoning("hm")
    sink.on_logprobs([{"token": "4"}])
    sink.on_text("42")
    sink.on_tool_call(0, "call_1", "add")
    sink.on_tool_arguments(0, "{}")


def test_every_consumer_that_takes_a_calls_deltas_gets_all_of_them_in_order() -> None:
    first, second = _Taking(), _Taking()
    sinks = Sinks(first, NullSink(), StepObserver(), second)

    deltas = sinks.deltas(_streaming())
    assert deltas is not None
    _feed(deltas)

    expected = [
        ("reasoning", "hm"),
        ("logprobs", [{"token": "4"}]),
        ("text", "42"),
        ("tool_call", 0, "call_1", "add"),
        ("arguments", 0, "{}"),
    ]
    assert (first.deltas_sink.seen, second.deltas_sink.seen) == (expected, expected)


def test_one_taker_gets_the_deltas_unwrapped_and_none_gets_none() -> None:
    taking = _Taking()

    assert Sinks(NullSink(), taking).deltas(_streaming()) is taking.deltas_sink
    assert Sinks(NullSink(), StepObserver()).deltas(_streaming()) is None


def test_every_consumer_gets_every_event_in_the_order_given() -> None:
    first, second = _Taking(), _Taking()
    ended = StepEnded(step=_step(), target="u")

    Sinks(first, second).emit(ended)

    assert (first.events, second.events) == ([ended], [ended])
