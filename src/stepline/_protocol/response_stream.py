"""A response's run as Open Responses events: the wire's consumer of the run's sink.

:class:`OpenResponsesStream` is one :class:`~stepline._engine.sinks.RunSink`
of a response's run, beside metrics, traces and the library's taps. The
loop reports each step to the sink as typed events — a model call streaming
(whose deltas it takes), finishing with its assistant turn; a compaction and
a tool call running and finishing — and this consumer numbers, names and
encodes the events (through :class:`~stepline._protocol.events.ResponseEvents`)
into the run's :class:`~stepline._engine.run_log.RunLog`, keeps the output
list and its ``output_index`` bookkeeping, and attaches to each step the
output items that show it, which the step's end stores. One model call's
events are :mod:`stepline._protocol.model_events`'s; a server tool's item
and its events are :mod:`stepline._protocol.server_items`'.

Invariants (the SSE, WebSocket and plain routes all read what this sends):

* Every event is sent once per response: a step run again after a crash is
  shown as the continuation of what its earlier attempt stored (the event
  carries those rows; an item already added or done is not announced again).
* A step's done events are made while it finishes, after the loop held the
  log, so they are stored with the step's end; the terminal event with the
  response's result.
* A sub-agent's steps (``scope`` set) and a run without a log get the same
  items, in an output list of their own scope, and send nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from stepline._chat.stream import DeltaSink
from stepline._engine.compaction import CONTEXT_OVERFLOW
from stepline._engine.run_log import RunLog
from stepline._engine.sealing import Sealing
from stepline._engine.sinks import (
    CompactionFinishing,
    CompactionRunning,
    ListedTool,
    ModelCallFinishing,
    ModelCallStreaming,
    SinkEvent,
    ToolCallFinishing,
    ToolCallRunning,
)
from stepline._protocol.assemble import approved_call_item
from stepline._protocol.client_tools import ClientTools
from stepline._protocol.compaction import SEAL_LABEL, compaction_item, compaction_item_id
from stepline._protocol.events import TERMINAL_EVENT_TYPES, OutputList, ResponseEvents, event_type
from stepline._protocol.model_events import ItemOptions, ModelCallEvents, PriorEmission
from stepline._protocol.server_items import server_item_events, server_item_state
from stepline._steps import Step, StepState
from stepline.store._base import EventRow

__all__ = ["OpenResponsesStream", "terminal_response", "wire_error"]

#: the events a response's run ends with, by its status
_TERMINAL_EVENT = {
    "completed": "response.completed",
    "failed": "response.failed",
    "incomplete": "response.incomplete",
}

_ITEM_DONE = b"response.output_item.done"


def _listed(tool: ListedTool) -> dict[str, Any]:
    """A listed tool as an ``mcp_list_tools`` item shows it."""
    return {
        "name": tool.name,
        "description": tool.description,
        "input_schema": tool.parameters,
        "annotations": None,
    }


class _Shown:
    """Where a running tool call is shown: its item and position, and whether an
    earlier attempt already showed its end."""

    __slots__ = ("done_sent", "index", "item_id", "output")

    def __init__(
        self, output: OutputList, item_id: str | None, index: int | None, *, done_sent: bool
    ) -> None:
        self.output = output
        self.item_id = item_id
        self.index = index
        self.done_sent = done_sent


class OpenResponsesStream:
    """The events and output items of one response's run (every scope of it).

    What the request asked its items to show — ``options`` (reasoning summaries,
    sealed reasoning, logprobs, event names), ``include`` (what a server tool's
    item carries) and ``client_tools`` (the items of the client's calls) — is
    the wire's to know; a sub-agent's items are shown plainly.
    """

    __slots__ = (
        "_nested",
        "_sealer",
        "_showing",
        "client_tools",
        "events",
        "include",
        "log",
        "options",
        "output",
    )

    #: the library's events are not this consumer's
    run_events = False

    def __init__(
        self,
        log: RunLog,
        *,
        response_id: str,
        sealer: Sealing,
        include: frozenset[str] = frozenset(),
    ) -> None:
        self.log = log
        self.events = (
            ResponseEvents(response_id, log.append, next_seq=log.first_seq) if log.sends else None
        )
        #: the top level's output list (a resumed run's starts with what was shown)
        self.output = OutputList()
        self.include = include
        self.options = ItemOptions()
        self.client_tools = ClientTools()
        self._sealer = sealer
        #: each sub-agent's own output list, by scope (made for the first one)
        self._nested: dict[str, OutputList] | None = None
        #: the running model calls' events and tool calls' items, by step id
        self._showing: dict[str, ModelCallEvents | _Shown] = {}

    def _output(self, step: Step) -> OutputList:
        if step.scope is None:
            return self.output
        if self._nested is None:
            self._nested = {}
        return self._nested.setdefault(step.scope, OutputList())

    def _events(self, step: Step) -> ResponseEvents | None:
        return self.events if step.scope is None else None

    # -- the response ------------------------------------------------------

    def started(self, response: dict[str, Any]) -> None:
        """A fresh run's first events: the response created, and in progress (the caller
        sends them once: a run resumed past them sends nothing)."""
        assert self.events is not None
        self.events.lifecycle("response.created", response)
        self.events.lifecycle("response.in_progress", response)

    def ended(self, status: str, response: dict[str, Any], error: dict[str, Any] | None) -> None:
        """The response's last events (the caller holds the log first, and commits them
        with its end): the error of a failed run, then the terminal event."""
        assert self.events is not None
        if error is not None:
            self.events.emit(
                "error", {"code": error["code"], "message": error["message"], "param": None}
            )
        self.events.lifecycle(_TERMINAL_EVENT[status], response)

    # -- the run's sink ----------------------------------------------------

    def emit(self, event: SinkEvent) -> None:
        if isinstance(event, ModelCallFinishing):
            self._model_call_finishing(event)
        elif isinstance(event, ToolCallRunning):
            self._tool_running(event)
        elif isinstance(event, ToolCallFinishing):
            self._tool_finishing(event.step)
        elif isinstance(event, CompactionRunning):
            self._compaction_running(event)
        elif isinstance(event, CompactionFinishing):
            self._compaction_finishing(event.step, event.summary)

    # -- model calls -------------------------------------------------------

    def deltas(self, call: ModelCallStreaming) -> DeltaSink:
        step = call.step
        top = step.scope is None
        events = ModelCallEvents(
            self._events(step),
            self._output(step),
            step_id=step.id,
            describe=call.describe,
            client_tools=self.client_tools if top else ClientTools(),
            # run again after a crash: continue what the earlier attempt sent
            prior=PriorEmission(call.shown_before) if call.shown_before else None,
            options=self.options if top else ItemOptions(),
        )
        for listing in call.listings:
            tools = [_listed(tool) for tool in listing.tools]
            events.list_tools(listing.label, tools, listing.error)
        self._showing[step.id] = events
        return events

    def _model_call_finishing(self, event: ModelCallFinishing) -> None:
        events = self._showing.pop(event.step.id, None)
        if not isinstance(events, ModelCallEvents):
            return  # refused before it streamed
        if event.turn is None:
            events.abort()
            return
        items = events.close(event.turn)
        self.log.attach(event.step.id, {"items": items, "call_items": events.call_items})

    # -- compaction --------------------------------------------------------

    def _compaction_running(self, event: CompactionRunning) -> None:
        step = event.step
        output = self._output(step)
        item = compaction_item(compaction_item_id(step.id), "")
        index = output.index_of(item["id"])
        if index is None:
            index = output.add(item)
        events = self._events(step)
        if events is None or event.shown_before:
            return
        events.emit(
            "response.output_item.added", {"output_index": index, "item": item}, step_id=step.id
        )
        events.emit(
            "response.compaction.compacting",
            {"item_id": item["id"], "output_index": index},
            step_id=step.id,
        )

    def _compaction_finishing(self, step: Step, summary: str) -> None:
        output = self._output(step)
        item_id = compaction_item_id(step.id)
        done = compaction_item(item_id, self._sealer.seal(summary, label=SEAL_LABEL))
        index = output.index_of(item_id)
        assert index is not None
        output.replace(index, done)
        events = self._events(step)
        if events is not None:
            events.emit(
                "response.output_item.done", {"output_index": index, "item": done}, step_id=step.id
            )
        self.log.attach(step.id, {"items": [done]})

    # -- tool calls --------------------------------------------------------

    def _tool_running(self, event: ToolCallRunning) -> None:
        step = event.step
        output = self._output(step)
        events = self._events(step)
        answers = event.answers
        item_id: str | None = None
        if answers is not None:
            assert answers.response is not None and step.call_id is not None
            item_id = answers.response["call_items"].get(step.call_id)
        index = output.index_of(item_id) if item_id is not None else None
        if answers is None and step.approval is not None:
            item_id, index = self._approved_item(step, output, events)
        sent = event.shown_before
        # run again after a crash: what its earlier attempt made durable stays said
        done_sent = any(event_type(row.data) == _ITEM_DONE for row in sent)
        if events is not None and index is not None and not sent:
            for type_ in server_item_events(output.items[index], "started"):
                events.emit(type_, {"item_id": item_id, "output_index": index}, step_id=step.id)
        self._showing[step.id] = _Shown(output, item_id, index, done_sent=done_sent)

    def _approved_item(
        self, step: Step, output: OutputList, events: ResponseEvents | None
    ) -> tuple[str, int]:
        """The ``mcp_call`` item of an approved call (added now unless a crash left it)."""
        item = approved_call_item(step)
        index = output.index_of(item["id"])
        if index is None:
            index = output.add(item)
            if events is not None:
                events.emit(
                    "response.output_item.added",
                    {"output_index": index, "item": item},
                    step_id=step.id,
                )
        return item["id"], index

    def _tool_finishing(self, ended: Step) -> None:
        shown = self._showing.pop(ended.id, None)
        if not isinstance(shown, _Shown) or shown.index is None:
            return
        output = shown.output
        include = self.include if ended.scope is None else frozenset()
        item = server_item_state(output.items[shown.index], ended, include)
        output.replace(shown.index, item)
        events = self._events(ended)
        if events is None or shown.done_sent:
            return
        phase = "completed" if ended.state is StepState.COMPLETED else "failed"
        where = {"item_id": shown.item_id, "output_index": shown.index}
        for type_ in server_item_events(item, phase):
            events.emit(type_, dict(where), step_id=ended.id)
        events.emit(
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
