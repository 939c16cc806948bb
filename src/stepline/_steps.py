"""The vocabulary of the loop: steps, their states, and the transition's answers.

Below every package that reads them (the engine that runs steps, the store that
keeps them, the wire that shows them), so none of those imports another for them.

A response is a chain of steps. A step is one ``model_call`` (one Chat
Completions request), one ``tool_call`` (one tool run), or one ``compaction``
(a model call that summarises the context so far, for the calls after it). Steps of a
sub-agent carry the id of the calling tool step as their ``scope``; top-level
steps have ``scope=None``. A chain is always read within one scope.

Invariants:

* ``sequence`` is allocated by the store at insert and is unique per response;
  it orders a chain, and siblings of one fan-out are recorded in the order the
  model called them.
* A step's ``id`` is fixed when it is recorded and travels with every side
  effect (upstream header, tool idempotency header), so running it again after
  a crash is safe.
* State only moves forward: pending -> processing -> completed | failed |
  cancelled (processing may be re-entered by a retry after a crash).
* Payloads are JSON-ready dicts (what the store persists); the loop makes
  them from typed results (:class:`ModelCallResult`, :class:`ToolCallResult`,
  :class:`CompactionResult`, :class:`StepError`), one ``payload()`` each.
  Beside the engine's own fields, a step's ``response`` carries what the
  run's stream attached to it (``_engine.run_log``): the output items that
  show it, which only the wire reads.

Payload shapes:

* model_call ``request``: ``{"model": ..., "iteration": n}``
* model_call ``response``: ``{"message": <chat assistant message>,
  "usage": {...}, "finish_reason": str, "model": <the model the upstream
  named> | None}``, and from the stream ``"items": [<output items in
  emission order>], "call_items": {<call id>: <its item's id>}``
* tool_call ``request``: ``{"name": ..., "arguments": <JSON string>}``; an
  approved held call adds ``approval_request_id``, ``server_label`` and
  ``shown_name`` (read as :attr:`Step.approval`)
* tool_call ``response``: ``{"output": str}``
* compaction ``request``: ``{}``; ``response``: ``{"summary": str, "usage":
  {...}}``, and from the stream ``"items": [<the compaction item>]``
* ``error`` (either kind): ``{"message": str, "code": str, "status": int|None}``
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "AppendSteps",
    "Approval",
    "CompactionResult",
    "Complete",
    "Fail",
    "Finish",
    "ModelCallResult",
    "NewStep",
    "NextAction",
    "RunSteps",
    "Step",
    "StepError",
    "StepKind",
    "StepResult",
    "StepState",
    "ToolCallResult",
    "batches",
    "call_arguments",
    "call_name",
]


class StepKind(enum.StrEnum):
    MODEL_CALL = "model_call"
    TOOL_CALL = "tool_call"
    COMPACTION = "compaction"


class StepState(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({StepState.COMPLETED, StepState.FAILED, StepState.CANCELLED})


@dataclass(frozen=True, kw_only=True)
class Approval:
    """The client's approval a tool call step runs under: what its ``mcp_call`` item shows."""

    request_id: str
    server_label: str
    shown_name: str


@dataclass(frozen=True, kw_only=True)
class Step:
    """One stored step; the store returns these, the loop never mutates them."""

    id: str
    response_id: str
    scope: str | None
    previous_step_id: str | None
    sequence: int
    kind: StepKind
    state: StepState
    request: dict[str, Any]
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    call_id: str | None = None
    attempt: int = 0
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def tool_name(self) -> str:
        return str(self.request.get("name", ""))

    @property
    def arguments(self) -> str:
        """A tool call's arguments as the model wrote them."""
        return str(self.request.get("arguments", ""))

    @property
    def approval(self) -> Approval | None:
        """The approval a tool call runs under (a held call the client approved), or None."""
        request_id = self.request.get("approval_request_id")
        if request_id is None:
            return None
        return Approval(
            request_id=str(request_id),
            server_label=str(self.request["server_label"]),
            shown_name=str(self.request["shown_name"]),
        )


@dataclass(frozen=True, kw_only=True)
class StepError:
    """Why a step failed; stored as its ``error`` (the shape above)."""

    message: str
    code: str
    #: the HTTP status of the answer that failed it (an upstream's, a tool's), if any
    status: int | None = None

    def payload(self) -> dict[str, Any]:
        return {"message": self.message, "code": self.code, "status": self.status}


@dataclass(frozen=True, kw_only=True)
class ModelCallResult:
    """What a completed model call stores as its ``response``."""

    #: the assistant's chat message, as the next model call sees it
    message: dict[str, Any]
    usage: dict[str, Any]
    finish_reason: str | None
    #: the model the upstream named
    model: str | None

    def payload(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "usage": self.usage,
            "finish_reason": self.finish_reason,
            "model": self.model,
        }


@dataclass(frozen=True, kw_only=True)
class ToolCallResult:
    """What a completed tool call stores: the tool's output, as the model reads it."""

    output: str

    def payload(self) -> dict[str, Any]:
        return {"output": self.output}


@dataclass(frozen=True, kw_only=True)
class CompactionResult:
    """What a completed compaction stores: the summary, and what it cost."""

    summary: str
    usage: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        return {"summary": self.summary, "usage": self.usage}


StepResult = ModelCallResult | ToolCallResult | CompactionResult


@dataclass(frozen=True, kw_only=True)
class NewStep:
    """A step the transition asks to record; the store fills id-less fields."""

    kind: StepKind
    request: dict[str, Any]
    call_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class AppendSteps:
    """Record these steps (a fan-out when several), then run them."""

    steps: tuple[NewStep, ...]


@dataclass(frozen=True, kw_only=True)
class RunSteps:
    """Run these recorded steps that are not terminal yet (resume after a crash)."""

    steps: tuple[Step, ...]


@dataclass(frozen=True, kw_only=True)
class Complete:
    """The loop is done; ``client_calls`` go back to the client as function_call items."""

    client_call_ids: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Finish:
    """A cap fired or the model stopped early: the response ends ``incomplete``."""

    reason: str


@dataclass(frozen=True, kw_only=True)
class Fail:
    """The response fails with this error."""

    message: str
    code: str = "server_error"
    details: dict[str, Any] = field(default_factory=dict)


NextAction = AppendSteps | RunSteps | Complete | Finish | Fail


def call_name(call: Mapping[str, Any]) -> str:
    """The tool a Chat Completions tool call names (a function, or a native custom tool)."""
    body = call.get("function") or call.get("custom") or {}
    return str(body.get("name", ""))


def call_arguments(call: Mapping[str, Any]) -> str:
    """A tool call's arguments: a function's JSON text, or a custom tool's raw input."""
    function = call.get("function")
    if function is not None:
        return str(function.get("arguments", ""))
    return str((call.get("custom") or {}).get("input", ""))


def batches(chain: Sequence[Step]) -> list[tuple[Step, dict[str, Step]]]:
    """Each model call of a chain with the tool steps that answer it, by ``call_id``.

    A tool step answers the model call recorded last before it, so a call id
    that an upstream repeats in a later turn never picks up an earlier result.
    """
    grouped: list[tuple[Step, dict[str, Step]]] = []
    for step in sorted(chain, key=lambda s: s.sequence):
        if step.kind is StepKind.MODEL_CALL:
            grouped.append((step, {}))
        elif grouped and step.call_id is not None:
            grouped[-1][1][step.call_id] = step
    return grouped


StepKindName = Literal["model_call", "tool_call", "compaction"]
