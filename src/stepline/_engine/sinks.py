"""The one channel a run reports through: typed events, in order, to a :class:`RunSink`.

Everything that watches or shows a run is a consumer of this one sink: a
response's Open Responses event stream, the library's ``stream()`` and taps
(the public :data:`~stepline._engine.run_events.RunEvent` events), metrics,
logs and traces; the engine imports none of them. The events carry the
stored :class:`~stepline._steps.Step` and the engine's typed results: a
response started (the hook a consumer opens its view of a run in); a model
call streaming (its deltas go to the delta sinks the consumers return from
:meth:`RunSink.deltas`), sent, and finishing with its assistant turn; a
compaction and a tool call running and finishing; a step ended; a response
ended. No event names a wire format.

Invariants:

* A sink is called inline on the run's task (a tool call's on its own task),
  so it is cheap and never raises; :class:`Sinks` calls several in order.
* A sink never changes a run. What it shows goes through the run's
  :class:`~stepline._engine.run_log.RunLog`, whose durability points the loop
  keeps: the events a consumer makes of a *finishing* step are stored in the
  transaction that stores the step's end (the loop holds the log first), and
  an *ended* step is stored already.
* The library's events are made only for a sink that reads them
  (``run_events``); a model call's deltas reach only the sinks that return a
  delta sink for it: a run nobody taps costs one call per step, and nothing
  per streamed delta.
* A step run again after a crash carries ``shown_before``: the rows its
  earlier attempt stored, so a consumer never shows anything twice.
* A start is not always followed by its end: a run that stops (drain, lost
  lease, cancellation) leaves its running steps unreported, and a model call
  refused before it reached the upstream ends without being sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from stepline._chat.stream import AssistantTurn, DeltaSink
from stepline._engine.run_events import RunEvent
from stepline._steps import Step, StepKind
from stepline._tools.registry import SERVER_LABEL
from stepline._upstream.routing import UpstreamTarget
from stepline.store._base import EventRow, ResponseRecord

__all__ = [
    "CLIENT",
    "SERVER",
    "CompactionFinishing",
    "CompactionRunning",
    "ListedTool",
    "ModelCallFinishing",
    "ModelCallSending",
    "ModelCallStreaming",
    "NullSink",
    "ResponseEnded",
    "ResponseStarted",
    "RunSink",
    "SinkEvent",
    "Sinks",
    "StepEnded",
    "StepObserver",
    "ToolCallFinishing",
    "ToolCallRunning",
    "ToolListing",
    "ToolView",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolView:
    """Who runs a model's tool call, as the response shows it: the client, the server,
    or the server once the client approves (the engine decides; the wire names the items).
    """

    kind: Literal["client", "server", "approval"]
    #: the label of the source of a server tool (an MCP server's, or stepline's own)
    label: str = SERVER_LABEL
    #: the name its item shows (an MCP tool's own name); default: the call's name
    shown_name: str | None = None
    #: the hosted tool a server tool plays (``web_search``): its item type
    hosted: str | None = None


CLIENT = ToolView(kind="client")
SERVER = ToolView(kind="server")


@dataclass(frozen=True, kw_only=True, slots=True)
class ListedTool:
    """One tool of a listed source, by the name the source gives it."""

    name: str
    description: str
    #: the JSON schema of its arguments
    parameters: dict[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolListing:
    """A tool source's tools listed for a response (shown before its first model call)."""

    label: str
    tools: Sequence[ListedTool]
    #: why the source's tools could not be listed
    error: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ResponseStarted:
    """A response's run began in this process; ``resumed``: an earlier run stopped."""

    record: ResponseRecord
    resumed: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelCallStreaming:
    """A model call is about to stream (delivered through :meth:`RunSink.deltas`)."""

    step: Step
    #: who runs a tool's calls, by the tool's name
    describe: Callable[[str], ToolView]
    #: the tool sources listed before the response's first model call
    listings: Sequence[ToolListing] = ()
    shown_before: Sequence[EventRow] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelCallFinishing:
    """A model call's stream ended with ``turn`` (None: it failed); its end is stored next."""

    step: Step
    turn: AssistantTurn | None


@dataclass(frozen=True, kw_only=True, slots=True)
class CompactionRunning:
    """A compaction step is running."""

    step: Step
    shown_before: Sequence[EventRow] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class CompactionFinishing:
    """A compaction wrote ``summary``; its end is stored next."""

    step: Step
    summary: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelCallSending:
    """A model call is about to be sent to ``target`` with this Chat Completions body."""

    step: Step
    target: UpstreamTarget
    payload: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallRunning:
    """A tool call step started running; ``answers``: the model call that asked for it
    (None: a call the client approved, run before any model call)."""

    step: Step
    answers: Step | None = None
    shown_before: Sequence[EventRow] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallFinishing:
    """A tool call ended as ``step`` says; its end is stored next."""

    step: Step


@dataclass(frozen=True, kw_only=True, slots=True)
class StepEnded:
    """A model or tool call step is stored terminal; ``target`` names a model call's upstream."""

    step: Step
    target: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ResponseEnded:
    """A response reached its terminal state (the response object, as stored)."""

    response: dict[str, Any]


#: what a sink receives: the library's events, and the stored records of a run
SinkEvent = (
    RunEvent
    | ResponseStarted
    | ModelCallSending
    | ModelCallFinishing
    | CompactionRunning
    | CompactionFinishing
    | ToolCallRunning
    | ToolCallFinishing
    | StepEnded
    | ResponseEnded
)


class RunSink(Protocol):
    #: whether the sink reads the library's events (:data:`RunEvent`); they are made
    #: only then
    @property
    def run_events(self) -> bool: ...

    def emit(self, event: SinkEvent) -> None:
        """One event of a run, in order; cheap, and never raises."""
        ...

    def deltas(self, call: ModelCallStreaming) -> DeltaSink | None:
        """A model call starts streaming: where its deltas go (None: not here)."""
        ...


class NullSink:
    """Nobody watches."""

    run_events = False

    def emit(self, event: SinkEvent) -> None:
        return None

    def deltas(self, call: ModelCallStreaming) -> DeltaSink | None:
        return None


class Sinks:
    """Several sinks as one, each told in the order given."""

    __slots__ = ("run_events", "sinks")

    def __init__(self, *sinks: RunSink) -> None:
        self.sinks = sinks
        self.run_events = any(sink.run_events for sink in sinks)

    def emit(self, event: SinkEvent) -> None:
        for sink in self.sinks:
            sink.emit(event)

    def deltas(self, call: ModelCallStreaming) -> DeltaSink | None:
        taken = [deltas for sink in self.sinks if (deltas := sink.deltas(call)) is not None]
        if len(taken) > 1:
            return _FanOut(taken)
        return taken[0] if taken else None


class _FanOut:
    """One model call's deltas to several delta sinks, in order."""

    def __init__(self, sinks: Sequence[DeltaSink]) -> None:
        self._sinks = sinks

    def on_reasoning(self, text: str) -> None:
        for sink in self._sinks:
            sink.on_reasoning(text)

    def on_text(self, text: str) -> None:
        for sink in self._sinks:
            sink.on_text(text)

    def on_tool_call(self, index: int, call_id: str, name: str) -> None:
        for sink in self._sinks:
            sink.on_tool_call(index, call_id, name)

    def on_tool_arguments(self, index: int, text: str) -> None:
        for sink in self._sinks:
            sink.on_tool_arguments(index, text)

    def on_logprobs(self, entries: list[dict[str, Any]]) -> None:
        for sink in self._sinks:
            sink.on_logprobs(entries)


class StepObserver:
    """A sink that watches steps, not tokens (metrics, traces): one method per record event.

    Subclasses override the methods they need; the library's events, and what only
    the wire shows, pass by.
    """

    run_events = False

    def deltas(self, call: ModelCallStreaming) -> DeltaSink | None:
        return None

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
