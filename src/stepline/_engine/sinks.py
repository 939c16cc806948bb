"""The one channel a run reports through: typed events, in order, to a :class:`RunSink`.

Everything that watches a run is a consumer of this one sink: the library's
``stream()`` and taps (the public :data:`~stepline._engine.run_events.RunEvent`
events), metrics, logs and traces (the events that carry the stored
:class:`~stepline._steps.Step`: a response started — the hook a
consumer opens its view of a run in —, a model call about to be sent, a tool
call running, a step ended, a response ended). The engine names no consumer
and no wire format; a sink never changes a run.

Invariants:

* A sink is called inline on the run's task (a tool call's on its own task),
  so it is cheap and never raises; :class:`Sinks` calls several in order.
* The library's events are made only for a sink that reads them
  (``run_events``): a run nobody taps costs one call per step, and nothing
  per streamed delta.
* A start is not always followed by its end: a run that stops (drain, lost
  lease, cancellation) leaves its running steps unreported, and a model call
  refused before it reached the upstream ends without being sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from stepline._engine.run_events import RunEvent
from stepline._steps import Step, StepKind
from stepline._upstream.routing import UpstreamTarget
from stepline.store._base import ResponseRecord

__all__ = [
    "ModelCallSending",
    "NullSink",
    "ResponseEnded",
    "ResponseStarted",
    "RunSink",
    "SinkEvent",
    "Sinks",
    "StepEnded",
    "StepObserver",
    "ToolCallRunning",
]


@dataclass(frozen=True, kw_only=True)
class ResponseStarted:
    """A response's run began in this process; ``resumed``: an earlier run stopped."""

    record: ResponseRecord
    resumed: bool


@dataclass(frozen=True, kw_only=True)
class ModelCallSending:
    """A model call is about to be sent to ``target`` with this Chat Completions body."""

    step: Step
    target: UpstreamTarget
    payload: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class ToolCallRunning:
    """A tool call step started running."""

    step: Step


@dataclass(frozen=True, kw_only=True)
class StepEnded:
    """A model or tool call step is stored terminal; ``target`` names a model call's upstream."""

    step: Step
    target: str | None = None


@dataclass(frozen=True, kw_only=True)
class ResponseEnded:
    """A response reached its terminal state (the response object, as stored)."""

    response: dict[str, Any]


#: what a sink receives: the library's events, and the stored records of a run
SinkEvent = (
    RunEvent | ResponseStarted | ModelCallSending | ToolCallRunning | StepEnded | ResponseEnded
)


class RunSink(Protocol):
    #: whether the sink reads the library's events (:data:`RunEvent`, a
    #: :class:`~stepline._engine.run_events.TextDelta` per streamed delta among them);
    #: they are made only then
    @property
    def run_events(self) -> bool: ...

    def emit(self, event: SinkEvent) -> None:
        """One event of a run, in order; cheap, and never raises."""
        ...


class NullSink:
    """Nobody watches."""

    run_events = False

    def emit(self, event: SinkEvent) -> None:
        return None


class Sinks:
    """Several sinks as one, each told in the order given."""

    def __init__(self, *sinks: RunSink) -> None:
        self.sinks = sinks
        self.run_events = any(sink.run_events for sink in sinks)

    def emit(self, event: SinkEvent) -> None:
        for sink in self.sinks:
            sink.emit(event)


class StepObserver:
    """A sink that watches steps, not tokens (metrics, traces): one method per record event.

    Subclasses override the methods they need; the library's events pass by.
    """

    run_events = False

    def emit(self, event: SinkEvent) -> None:
        if isinstance(event, ResponseStarted):
            self.response_started(event.record, resumed=event.resumed)
        elif isinstance(event, ModelCallSending):
            self.model_call_started(event.step, target=event.target, payload=event.payload)
        elif isinstance(event, ToolCallRunning):
            self.tool_call_started(event.step)
        elif isinstance(event, StepEnded):
            if event.step.kind is StepKind.TOOL_CALL:
                self.tool_call_finished(event.step)
            else:
                self.model_call_finished(event.step, target=event.target or "")
        elif isinstance(event, ResponseEnded):
            self.response_finished(event.response)

    def response_started(self, record: ResponseRecord, *, resumed: bool) -> None:
        return None

    def model_call_started(
        self, step: Step, *, target: UpstreamTarget, payload: Mapping[str, Any]
    ) -> None:
        return None

    def model_call_finished(self, step: Step, *, target: str) -> None:
        return None

    def tool_call_started(self, step: Step) -> None:
        return None

    def tool_call_finished(self, step: Step) -> None:
        return None

    def response_finished(self, response: dict[str, Any]) -> None:
        return None
