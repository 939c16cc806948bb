"""The typed events of a run, as the library sees them (``Agent.stream``, taps).

These are the library's view of a run; they reach it through the engine's
one sink (``engine.sinks``), beside the events metrics and traces read. The
loop reports them inline, in order, as things happen: a tap
sees every event of the run, unbuffered and never reordered, and cannot
change the run. ``scope`` is None for the top-level agent and the calling
step's id for a sub-agent's events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "RUN_EVENT_TYPES",
    "RunCompleted",
    "RunEvent",
    "RunFailed",
    "RunStarted",
    "StepCompleted",
    "StepStarted",
    "TextDelta",
    "ToolCallFinished",
    "ToolCallStarted",
    "UsageDelta",
]


@dataclass(frozen=True, kw_only=True)
class RunStarted:
    """The first event of a run: the id to resume it by, should it be interrupted."""

    response_id: str
    resumed: bool
    type: Literal["run_started"] = "run_started"


@dataclass(frozen=True, kw_only=True)
class StepStarted:
    step_id: str
    kind: Literal["model_call", "tool_call"]
    scope: str | None
    attempt: int
    type: Literal["step_started"] = "step_started"


@dataclass(frozen=True, kw_only=True)
class TextDelta:
    step_id: str
    scope: str | None
    text: str
    type: Literal["text_delta"] = "text_delta"


@dataclass(frozen=True, kw_only=True)
class ToolCallStarted:
    step_id: str
    scope: str | None
    call_id: str
    name: str
    arguments: str
    type: Literal["tool_call_started"] = "tool_call_started"


@dataclass(frozen=True, kw_only=True)
class ToolCallFinished:
    step_id: str
    scope: str | None
    call_id: str
    name: str
    output: str | None
    error: str | None
    type: Literal["tool_call_finished"] = "tool_call_finished"


@dataclass(frozen=True, kw_only=True)
class UsageDelta:
    step_id: str
    scope: str | None
    input_tokens: int
    output_tokens: int
    type: Literal["usage_delta"] = "usage_delta"


@dataclass(frozen=True, kw_only=True)
class StepCompleted:
    step_id: str
    kind: Literal["model_call", "tool_call"]
    scope: str | None
    state: Literal["completed", "failed", "cancelled"]
    type: Literal["step_completed"] = "step_completed"


@dataclass(frozen=True, kw_only=True)
class RunCompleted:
    """The run's end: its response object, and the top-level transcript as chat messages."""

    status: Literal["completed", "failed", "incomplete"]
    stop_reason: str
    response: dict[str, Any]
    messages: list[dict[str, Any]]
    #: steps of every scope, and how many of them were tool calls
    steps: int
    tool_invocations: int
    type: Literal["run_completed"] = "run_completed"


@dataclass(frozen=True, kw_only=True)
class RunFailed:
    """The run failed: its error's message and code (the response ends ``failed``)."""

    message: str
    code: str
    type: Literal["error"] = "error"


#: the library's view of a run, event by event (``Agent.stream``, taps)
RunEvent = (
    RunStarted
    | StepStarted
    | TextDelta
    | ToolCallStarted
    | ToolCallFinished
    | UsageDelta
    | StepCompleted
    | RunCompleted
    | RunFailed
)

#: the classes of :data:`RunEvent`, for ``isinstance``
RUN_EVENT_TYPES = (
    RunStarted,
    StepStarted,
    TextDelta,
    ToolCallStarted,
    ToolCallFinished,
    UsageDelta,
    StepCompleted,
    RunCompleted,
    RunFailed,
)
