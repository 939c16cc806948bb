"""What a response shows of its run: the seam between the loop and the wire.

The loop names no wire event and reads no event bytes. At each point a
client may see something — a model call's deltas and the items they make,
a tool call starting and ending, a compaction — it calls its
:class:`ResponseView` with the step; ``protocol.response_events`` turns
those calls into Open Responses events appended to the response's event
log, and makes the output items a step stores. A run without a log (a
sub-agent, a library run) has a view that makes the items and sends nothing.

The view also carries the log's two durability points, which are the
engine's rules, not the wire's: :meth:`ResponseView.hold` keeps the next
events back until :meth:`ResponseView.commit` stores them with the step's
end (what a client is told of an outcome is durable exactly when the
outcome is), and :meth:`ResponseView.durable` waits until every event sent
so far is stored.

A step run again after a crash is shown as a continuation: the view reads
what its earlier attempt sent, so nothing a client saw is sent twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from stepline._chat.stream import AssistantTurn, DeltaSink
from stepline._steps import Step
from stepline._tools.registry import SERVER_LABEL
from stepline.store._base import EndResult, StepEnd

__all__ = ["CLIENT", "SERVER", "ModelCallView", "ResponseView", "ToolShown", "ToolView"]


@dataclass(frozen=True, kw_only=True)
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


class ModelCallView(DeltaSink, Protocol):
    """One model call as it streams: a delta sink that makes the call's output items."""

    #: each tool call's id -> the id of the item that shows it
    call_items: dict[str, str]

    def list_tools(self, label: str, tools: list[dict[str, Any]], error: str | None) -> None:
        """Show a tool source's tools, listed for this response (before any delta)."""
        ...

    def abort(self) -> None:
        """The call failed: close what it opened."""
        ...

    def close(self, turn: AssistantTurn) -> list[dict[str, Any]]:
        """The call ended with ``turn``: close its items; return them, in order."""
        ...


@dataclass(frozen=True, kw_only=True)
class ToolShown:
    """Where a tool call is shown: its item and position, and whether an earlier
    attempt already showed its end."""

    item_id: str | None
    index: int | None
    done_sent: bool


class ResponseView(Protocol):
    @property
    def sends(self) -> bool:
        """Events go to a log (a client may be reading); False: only items are made."""
        ...

    @property
    def commits(self) -> bool:
        """A step's end is stored through :meth:`commit`, with its held events."""
        ...

    @property
    def next_seq(self) -> int:
        """The sequence number the next event gets (it grows as events are sent)."""
        ...

    def hold(self) -> None:
        """Keep the next events back until :meth:`commit` stores them with an end."""
        ...

    def commit(self, end: StepEnd) -> asyncio.Future[EndResult]:
        """Store the held events and ``end`` in one transaction."""
        ...

    def defer(self, end: StepEnd) -> None:
        """Store ``end`` with the next commit instead (the run's end), the events held
        until then."""
        ...

    async def durable(self) -> None:
        """Wait until every event sent so far is stored."""
        ...

    def nested(self) -> ResponseView:
        """The view of a sub-agent's steps: its own items, no events."""
        ...

    async def model_call(self, step: Step, *, describe: Callable[[str], ToolView]) -> ModelCallView:
        """A model call about to stream; ``describe`` says who runs each tool's calls."""
        ...

    async def compaction_started(self, step: Step) -> None:
        """A compaction step is running (shown once, whatever its attempt)."""
        ...

    def compaction_done(self, step: Step, summary: str) -> dict[str, Any]:
        """A compaction wrote ``summary``: its done item, shown and returned for the step."""
        ...

    async def tool_started(self, step: Step, item_id: str | None) -> ToolShown:
        """A tool call is running; ``item_id``: the item of the model call it answers."""
        ...

    def tool_ended(self, ended: Step, shown: ToolShown) -> None:
        """A tool call ended as ``ended`` says (its events are held for its end)."""
        ...
