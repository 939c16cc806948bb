"""A response's run as Open Responses events: the wire's view of the loop.

:class:`OpenResponsesView` implements the engine's
:class:`~stepline._engine.view.ResponseView`: the loop tells it what happens
to each step, and it numbers, names and encodes the events (through
:class:`~stepline._protocol.events.ResponseEvents`), keeps the output list
and its ``output_index`` bookkeeping, and makes the output items the steps
store. One model call's events are :mod:`stepline._protocol.model_events`'s;
a server tool's item and its events are :mod:`stepline._protocol.server_items`'.

Invariants (the SSE, WebSocket and plain routes all read what this sends):

* Every event is sent once per response: a step run again after a crash is
  shown as the continuation of what its earlier attempt stored (its events
  are read back; an item already added or done is not announced again).
* A step's done events are held and stored with the step's end; the
  terminal event with the response's result.
* Without a log, the same items are made and nothing is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from stepline._engine.compaction import CONTEXT_OVERFLOW
from stepline._engine.sealing import Sealing
from stepline._engine.view import ModelCallView, ResponseView, ToolShown, ToolView
from stepline._protocol.assemble import approved_call_item
from stepline._protocol.client_tools import ClientTools
from stepline._protocol.compaction import SEAL_LABEL, compaction_item, compaction_item_id
from stepline._protocol.events import TERMINAL_EVENT_TYPES, OutputList, ResponseEvents, event_type
from stepline._protocol.model_events import ItemOptions, ModelCallEvents, PriorEmission
from stepline._protocol.server_items import server_item_events, server_item_state
from stepline._steps import Step, StepState
from stepline.store._base import EndResult, EventRow, ResponseEnd, StepEnd

__all__ = ["OpenResponsesView", "terminal_response", "wire_error"]

#: the events a response's run ends with, by its status
_TERMINAL_EVENT = {
    "completed": "response.completed",
    "failed": "response.failed",
    "incomplete": "response.incomplete",
}

_ITEM_DONE = b"response.output_item.done"

StepEvents = Callable[[str], Awaitable[Sequence[EventRow]]]


async def _nothing_sent(step_id: str) -> Sequence[EventRow]:
    return ()


class OpenResponsesView:
    """The events and output items of one response (or, nested, of one sub-agent).

    What the request asked its items to show — ``options`` (reasoning summaries,
    sealed reasoning, logprobs, event names), ``include`` (what a server tool's
    item carries) and ``client_tools`` (the items of the client's calls) — is
    the wire's to know; a sub-agent's nested view shows its items plainly.
    """

    def __init__(
        self,
        events: ResponseEvents | None,
        output: OutputList,
        *,
        sealer: Sealing,
        step_events: StepEvents = _nothing_sent,
        include: frozenset[str] = frozenset(),
        options: ItemOptions | None = None,
        client_tools: ClientTools | None = None,
    ) -> None:
        self.events = events
        self.output = output
        self.include = include
        self.options = options if options is not None else ItemOptions()
        self.client_tools = client_tools if client_tools is not None else ClientTools()
        self._sealer = sealer
        self._step_events = step_events

    # -- the log's durability points ---------------------------------------

    @property
    def sends(self) -> bool:
        return self.events is not None

    @property
    def commits(self) -> bool:
        return self.events is not None and self.events.commits

    @property
    def next_seq(self) -> int:
        return self.events.next_seq if self.events is not None else 0

    def hold(self) -> None:
        if self.events is not None:
            self.events.hold()

    def commit(self, end: StepEnd | ResponseEnd) -> asyncio.Future[EndResult]:
        assert self.events is not None
        return self.events.commit(end)

    def defer(self, end: StepEnd) -> None:
        assert self.events is not None
        self.events.defer(end)

    async def durable(self) -> None:
        if self.events is not None:
            await self.events.durable()

    def nested(self) -> ResponseView:
        return OpenResponsesView(None, OutputList(), sealer=self._sealer)

    async def _sent(self, step: Step) -> Sequence[EventRow]:
        """What an earlier attempt of ``step`` made durable (nothing on a first attempt)."""
        if self.events is None or step.attempt <= 1:
            return ()
        return await self._step_events(step.id)

    # -- the response ------------------------------------------------------

    def started(self, response: dict[str, Any]) -> None:
        """A fresh run's first events: the response created, and in progress (the caller
        sends them once: a run resumed past them sends nothing)."""
        assert self.events is not None
        self.events.lifecycle("response.created", response)
        self.events.lifecycle("response.in_progress", response)

    def ended(self, status: str, response: dict[str, Any], error: dict[str, Any] | None) -> None:
        """The response's last events (held, for :meth:`commit` with its end): the
        error of a failed run, then the terminal event."""
        assert self.events is not None
        self.events.hold()
        if error is not None:
            self.events.emit(
                "error", {"code": error["code"], "message": error["message"], "param": None}
            )
        self.events.lifecycle(_TERMINAL_EVENT[status], response)

    # -- model calls -------------------------------------------------------

    async def model_call(self, step: Step, *, describe: Callable[[str], ToolView]) -> ModelCallView:
        sent = await self._sent(step)
        return ModelCallEvents(
            self.events,
            self.output,
            step_id=step.id,
            describe=describe,
            client_tools=self.client_tools,
            # run again after a crash: continue what the earlier attempt sent
            prior=PriorEmission(sent) if sent else None,
            options=self.options,
        )

    # -- compaction --------------------------------------------------------

    async def compaction_started(self, step: Step) -> None:
        item = compaction_item(compaction_item_id(step.id), "")
        index = self.output.index_of(item["id"])
        if index is None:
            index = self.output.add(item)
        if self.events is None or await self._sent(step):
            return
        self.events.emit(
            "response.output_item.added", {"output_index": index, "item": item}, step_id=step.id
        )
        self.events.emit(
            "response.compaction.compacting",
            {"item_id": item["id"], "output_index": index},
            step_id=step.id,
        )

    def compaction_done(self, step: Step, summary: str) -> dict[str, Any]:
        item_id = compaction_item_id(step.id)
        done = compaction_item(item_id, self._sealer.seal(summary, label=SEAL_LABEL))
        index = self.output.index_of(item_id)
        assert index is not None
        self.output.replace(index, done)
        if self.events is not None:
            # the item's done event is stored with the step's end
            self.events.hold()
            self.events.emit(
                "response.output_item.done", {"output_index": index, "item": done}, step_id=step.id
            )
        return done

    # -- tool calls --------------------------------------------------------

    async def tool_started(self, step: Step, item_id: str | None) -> ToolShown:
        index = self.output.index_of(item_id) if item_id is not None else None
        if item_id is None and step.approval is not None:
            item_id, index = self._approved_item(step)
        sent = await self._sent(step)
        # run again after a crash: what its earlier attempt made durable stays said
        done_sent = any(event_type(row.data) == _ITEM_DONE for row in sent)
        if self.events is not None and index is not None and not sent:
            for type_ in server_item_events(self.output.items[index], "started"):
                self.events.emit(
                    type_, {"item_id": item_id, "output_index": index}, step_id=step.id
                )
        return ToolShown(item_id=item_id, index=index, done_sent=done_sent)

    def _approved_item(self, step: Step) -> tuple[str, int]:
        """The ``mcp_call`` item of an approved call (added now unless a crash left it)."""
        item = approved_call_item(step)
        index = self.output.index_of(item["id"])
        if index is None:
            index = self.output.add(item)
            if self.events is not None:
                self.events.emit(
                    "response.output_item.added",
                    {"output_index": index, "item": item},
                    step_id=step.id,
                )
        return item["id"], index

    def tool_ended(self, ended: Step, shown: ToolShown) -> None:
        if self.events is not None:
            # the item's done events are stored with the step's end
            self.events.hold()
        if shown.index is None:
            return
        item = server_item_state(self.output.items[shown.index], ended, self.include)
        self.output.replace(shown.index, item)
        if self.events is None or shown.done_sent:
            return
        phase = "completed" if ended.state is StepState.COMPLETED else "failed"
        where = {"item_id": shown.item_id, "output_index": shown.index}
        for type_ in server_item_events(item, phase):
            self.events.emit(type_, dict(where), step_id=ended.id)
        self.events.emit(
            "response.output_item.done",
            {"output_index": shown.index, "item": item},
            step_id=ended.id,
        )


def terminal_response(rows: Sequence[EventRow]) -> dict[str, Any] | None:
    """The response object a stored terminal event carries (the first row), if it is one:
    a run that ended but whose result was not stored yet."""
    if rows and event_type(rows[0].data).decode() in TERMINAL_EVENT_TYPES:
        event: dict[str, Any] = orjson.loads(rows[0].data)
        response: dict[str, Any] = event["response"]
        return response
    return None


def wire_error(code: str, message: str, status: int | None = None) -> dict[str, Any]:
    """``response.error``: ``code`` from the OpenAI set that strict clients validate,
    ``type`` the Open Responses category (``model_error``, ``too_many_requests``...)."""
    if status == 429:
        return {"code": "rate_limit_exceeded", "type": "too_many_requests", "message": message}
    if code == CONTEXT_OVERFLOW:
        # what Codex and the SDKs recognise: the context must shrink before a retry
        return {"code": CONTEXT_OVERFLOW, "type": "invalid_request", "message": message}
    if code == "invalid_prompt":
        # what the request names went away after it was accepted: the request's fault
        return {"code": "invalid_prompt", "type": "invalid_request", "message": message}
    category = "model_error" if code == "model_error" else "server_error"
    return {"code": "server_error", "type": category, "message": message}
