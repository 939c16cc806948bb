"""One model call's deltas as Responses events and output items, as they arrive.

:class:`ModelCallEvents` implements the chat stream's ``DeltaSink``: it opens
an output item when the first piece of it arrives (reasoning, message text, a
tool call), sends each piece on as a delta event, and closes the items when
the call ends. A tool the client owns becomes a ``function_call`` item; a
tool the server runs becomes an ``mcp_call`` item, which its tool step
finishes later. ``call_items`` maps each call id to its item id.

A model call that was interrupted by a crash is run again from its start.
Its earlier attempt already sent events (they are durable and clients may
have seen them), so the new attempt is given that :class:`PriorEmission`:

* an item the new attempt opens at the same position, with the same kind
  (and tool name), continues the earlier item: same id, no second
  ``output_item.added``, and deltas resume after the characters already
  sent. A deterministic upstream therefore shows each piece exactly once.
* at the first item that does not match, the earlier attempt's remaining
  items are closed as ``incomplete`` (they stay in the output, where clients
  saw them) and the new items follow them.

The done events of an item always carry its whole, true text.

A client tool's call shows as the item type of its kind (see
:mod:`stepline._protocol.client_tools`): a ``function_call`` streams its
arguments, a ``custom_tool_call`` its decoded ``input``; a built-in call
(``shell_call``, ``apply_patch_call``...) has no deltas and is shown whole,
added and done, as soon as its arguments are complete (when the next item
starts, or the call ends), so items are still added in output order.

Reasoning fills the item's ``content``; with :attr:`ItemOptions.summary` also
its ``summary`` (the same text), and then its deltas stream once, as
``reasoning_summary_text`` deltas, as OpenAI streams them; with
:attr:`ItemOptions.seal` it carries ``encrypted_content``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from stepline._chat.stream import AssistantTurn
from stepline._engine.sinks import ToolView
from stepline._protocol.client_tools import (
    ITEM_PREFIX,
    ClientTool,
    ClientTools,
    CustomInputDecoder,
    call_item,
)
from stepline._protocol.events import OutputList, ResponseEvents
from stepline._protocol.items import message_item
from stepline._protocol.server_items import (
    hosted_call_item,
    is_hosted_item,
    mcp_call_id,
    with_arguments,
)
from stepline.store._base import EventRow

__all__ = ["ItemOptions", "ModelCallEvents", "PriorEmission"]

#: an item kind: ``reasoning``, ``message``, ``mcp_call``... or a client call's item type
Kind = str

#: the delta event of each streamed kind (reasoning: OpenAI's name; see ItemOptions)
_DELTA = {
    "reasoning": "response.reasoning_text.delta",
    "message": "response.output_text.delta",
    "function_call": "response.function_call_arguments.delta",
    "custom_tool_call": "response.custom_tool_call_input.delta",
    "mcp_call": "response.mcp_call_arguments.delta",
}
#: delta events whose text an earlier attempt sent (both names of reasoning)
_SENT_TEXT = frozenset(
    {*_DELTA.values(), "response.reasoning.delta", "response.reasoning_summary_text.delta"}
)
_HAS_PART = frozenset({"reasoning", "message"})
#: client call kinds whose items stream (the others are shown whole once complete)
_STREAMED_CALLS = frozenset({"function_call", "custom_tool_call"})
#: every client call kind
_CLIENT_CALLS = frozenset(ITEM_PREFIX)


@dataclass(frozen=True, kw_only=True)
class ItemOptions:
    """How a response wants its items: what it asked for with ``reasoning`` and ``include``."""

    #: fill reasoning ``summary`` too (``reasoning.summary`` was set)
    summary: bool = False
    #: seals reasoning text into ``encrypted_content``
    #: (``include: ["reasoning.encrypted_content"]``); None: no encrypted content
    seal: Callable[[str], str] | None = None
    #: name reasoning events as the Open Responses schema does (``response.reasoning.*``)
    #: rather than as OpenAI does (``response.reasoning_text.*``)
    open_responses_names: bool = False
    #: keep token logprobs on output text (``include`` or ``top_logprobs``)
    logprobs: bool = False


@dataclass(kw_only=True)
class _PriorItem:
    kind: Kind
    name: str
    item_id: str
    index: int
    item: dict[str, Any]
    text: str = ""
    part_added: bool = False
    done: dict[str, Any] | None = None


class PriorEmission:
    """What an earlier attempt of a model call sent, rebuilt from its stored events."""

    def __init__(self, rows: Sequence[EventRow]) -> None:
        by_id: dict[str, _PriorItem] = {}
        self.items: list[_PriorItem] = []
        for row in rows:
            event = orjson.loads(row.data)
            kind = event["type"]
            if kind == "response.output_item.added":
                item = event["item"]
                prior = _PriorItem(
                    kind=item["type"],
                    name=item.get("name") or item.get("server_label", ""),
                    item_id=item["id"],
                    index=event["output_index"],
                    item=item,
                )
                by_id[prior.item_id] = prior
                self.items.append(prior)
            elif kind == "response.content_part.added":
                by_id[event["item_id"]].part_added = True
            elif kind in _SENT_TEXT:
                by_id[event["item_id"]].text += event["delta"]
            elif kind == "response.output_item.done" and event["item"]["id"] in by_id:
                by_id[event["item"]["id"]].done = event["item"]
        self._next = 0

    def take(self, kind: str, name: str, index: int) -> _PriorItem | None:
        """The earlier item at ``index`` if it is of the same kind and name."""
        if self._next >= len(self.items):
            return None
        prior = self.items[self._next]
        if (prior.kind, prior.name, prior.index) != (kind, name, index):
            return None
        self._next += 1
        return prior

    def rest(self) -> list[_PriorItem]:
        """The earlier items not continued; taking them ends the matching."""
        rest = self.items[self._next :]
        self._next = len(self.items)
        return rest


class _Open:
    """An item being streamed."""

    __slots__ = (
        "call_id",
        "decoder",
        "done_sent",
        "index",
        "item_id",
        "kind",
        "logprobs",
        "name",
        "pieces",
        "skip",
        "tool",
    )

    def __init__(
        self,
        kind: Kind,
        item_id: str,
        index: int,
        *,
        name: str = "",
        call_id: str = "",
        skip: int = 0,
        done_sent: bool = False,
        tool: ClientTool | None = None,
    ) -> None:
        self.kind: Kind = kind
        self.item_id = item_id
        self.index = index
        self.name = name
        self.call_id = call_id
        self.pieces: list[str] = []
        self.skip = skip
        self.done_sent = done_sent
        self.tool = tool
        self.logprobs: list[dict[str, Any]] = []
        #: a custom tool offered as a function: its input is decoded as it streams
        self.decoder = (
            CustomInputDecoder()
            if tool is not None and tool.kind == "custom" and not tool.native
            else None
        )


class ModelCallEvents:
    """Events and output items of one model call; ``events=None`` sends no events.

    ``describe`` says who runs each tool the model calls (the engine's
    :class:`~stepline._engine.sinks.ToolView`); a call the client runs shows as
    the item of its tool in ``client_tools`` (a plain ``function_call`` when
    the response declared no such tool)."""

    def __init__(
        self,
        events: ResponseEvents | None,
        output: OutputList,
        *,
        step_id: str,
        describe: Callable[[str], ToolView],
        client_tools: ClientTools | None = None,
        prior: PriorEmission | None = None,
        options: ItemOptions = ItemOptions(),
    ) -> None:
        self._events = events
        self._describe = describe
        self._client_tools = client_tools if client_tools is not None else ClientTools()
        self._output = output
        self._step_id = step_id
        self._prior = prior
        self._options = options
        self._reasoning_event = (
            "response.reasoning" if options.open_responses_names else "response.reasoning_text"
        )
        self._start = len(output.items)
        self._reasoning: _Open | None = None
        self._message: _Open | None = None
        self._tools: dict[int, _Open] = {}
        #: built-in client calls not shown yet: they are shown whole when complete
        self._unshown: dict[int, _Open] = {}
        self._pending_logprobs: list[dict[str, Any]] = []
        self._phase = "commentary"
        self.call_items: dict[str, str] = {}

    def _emit(self, type_: str, fields: dict[str, Any]) -> None:
        if self._events is not None:
            self._events.emit(type_, fields, step_id=self._step_id)

    # -- opening items -----------------------------------------------------

    def _open(
        self,
        kind: Kind,
        item: dict[str, Any],
        *,
        name: str = "",
        call_id: str = "",
        tool: ClientTool | None = None,
    ) -> _Open:
        self._show_unshown()
        index = len(self._output.items)
        prior = self._prior.take(kind, name, index) if self._prior is not None else None
        if prior is not None:
            item = {**item, "id": prior.item_id}
            self._output.add(item)
            opened = _Open(
                kind,
                prior.item_id,
                index,
                name=name,
                call_id=call_id,
                skip=len(prior.text),
                done_sent=prior.done is not None,
                tool=tool,
            )
            if kind in _HAS_PART and not prior.part_added:
                self._part_added(opened)
            return opened
        if self._prior is not None:
            self._retire(self._prior.rest())
            index = len(self._output.items)
        self._output.add(item)
        self._emit("response.output_item.added", {"output_index": index, "item": item})
        opened = _Open(kind, item["id"], index, name=name, call_id=call_id, tool=tool)
        if kind in _HAS_PART:
            self._part_added(opened)
        return opened

    def _part_added(self, opened: _Open) -> None:
        part: dict[str, Any] = (
            {"type": "reasoning_text", "text": ""}
            if opened.kind == "reasoning"
            else {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        )
        where = {"item_id": opened.item_id, "output_index": opened.index}
        if opened.kind == "reasoning" and self._options.summary:
            self._emit(
                "response.reasoning_summary_part.added",
                {**where, "summary_index": 0, "part": {"type": "summary_text", "text": ""}},
            )
        self._emit("response.content_part.added", {**where, "content_index": 0, "part": part})

    def _retire(self, items: list[_PriorItem]) -> None:
        """Close an earlier attempt's items as incomplete, where clients saw them."""
        for prior in items:
            if prior.done is not None:
                self._output.add(prior.done)
                continue
            retired = _Open(prior.kind, prior.item_id, len(self._output.items), name=prior.name)
            retired.pieces.append(prior.text)
            self._output.add(prior.item)
            self._close(retired, status="incomplete")

    def list_tools(self, label: str, tools: list[dict[str, Any]], error: str | None) -> None:
        """Show a tool source's tools, listed for this response (before any delta)."""
        item = {
            "id": f"mcpl_{secrets.token_hex(16)}",
            "type": "mcp_list_tools",
            "server_label": label,
            "tools": tools,
            "error": error,
        }
        self._close(self._open("mcp_list_tools", item, name=label))

    # -- DeltaSink ---------------------------------------------------------

    def _delta(self, opened: _Open, text: str) -> None:
        opened.pieces.append(text)
        if opened.kind not in _DELTA and opened.kind != "mcp_approval_request":
            return  # a built-in client call: shown whole once complete
        if opened.decoder is not None:
            text = opened.decoder.feed(text)
            if not text:
                return
        if opened.skip:
            if len(text) <= opened.skip:
                opened.skip -= len(text)
                return
            text = text[opened.skip :]
            opened.skip = 0
        if opened.kind == "mcp_approval_request":
            return  # its arguments arrive whole, with the item's done event
        fields: dict[str, Any] = {"item_id": opened.item_id, "output_index": opened.index}
        if opened.kind in _HAS_PART:
            fields["content_index"] = 0
        fields["delta"] = text
        if opened.kind == "message":
            fields["logprobs"] = self._take_logprobs(opened)
        if opened.kind == "reasoning":
            # with a summary asked for, the text streams once, as the summary (as OpenAI
            # streams it; clients that read both kinds would show it twice)
            if self._options.summary:
                where = {"item_id": opened.item_id, "output_index": opened.index}
                self._emit(
                    "response.reasoning_summary_text.delta",
                    {**where, "summary_index": 0, "delta": text},
                )
            else:
                self._emit(f"{self._reasoning_event}.delta", fields)
            return
        self._emit(_DELTA[opened.kind], fields)

    def _take_logprobs(self, opened: _Open) -> list[dict[str, Any]]:
        taken, self._pending_logprobs = self._pending_logprobs, []
        if not self._options.logprobs:
            return []
        opened.logprobs.extend(taken)
        return taken

    def on_logprobs(self, entries: list[dict[str, Any]]) -> None:
        self._pending_logprobs = [
            {
                "token": entry.get("token", ""),
                "logprob": entry.get("logprob", 0.0),
                "bytes": entry.get("bytes") or [],
                "top_logprobs": [
                    {
                        "token": top.get("token", ""),
                        "logprob": top.get("logprob", 0.0),
                        "bytes": top.get("bytes") or [],
                    }
                    for top in entry.get("top_logprobs") or ()
                ],
            }
            for entry in entries
            if isinstance(entry, dict)
        ]

    def on_reasoning(self, text: str) -> None:
        if self._reasoning is None:
            item_id = f"rs_{secrets.token_hex(16)}"
            self._reasoning = self._open(
                "reasoning",
                {
                    "id": item_id,
                    "type": "reasoning",
                    "status": "in_progress",
                    "summary": [],
                    "content": [],
                },
            )
        self._delta(self._reasoning, text)

    def on_text(self, text: str) -> None:
        if self._message is None:
            self._close_open_reasoning()
            item_id = f"msg_{secrets.token_hex(16)}"
            self._message = self._open(
                "message",
                {
                    "id": item_id,
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                },
            )
        self._delta(self._message, text)

    def on_tool_call(self, index: int, call_id: str, name: str) -> None:
        self._close_open_reasoning()
        self._close_open_message()
        item: dict[str, Any]
        view = self._describe(name)
        shown = view.shown_name or name
        if view.kind == "approval":
            item = {
                "id": f"mcpr_{secrets.token_hex(16)}",
                "type": "mcp_approval_request",
                "server_label": view.label,
                "name": shown,
                "arguments": "",
            }
            opened = self._open("mcp_approval_request", item, name=shown, call_id=call_id)
        elif view.kind == "client":
            tool = self._client_tools.get(name)
            client_call = self._open_client_call(index, call_id, name, tool)
            if client_call is None:
                return  # a built-in call: shown once its arguments are complete
            opened = client_call
        elif view.hosted is not None:
            item = hosted_call_item(
                view.hosted, call_id=call_id, step_id=self._step_id, arguments=""
            )
            opened = self._open(item["type"], item, call_id=call_id)
        else:
            item = {
                "id": mcp_call_id(call_id, self._step_id),
                "type": "mcp_call",
                "status": "in_progress",
                "server_label": view.label,
                "name": shown,
                "arguments": "",
                "output": None,
                "error": None,
            }
            opened = self._open("mcp_call", item, name=shown, call_id=call_id)
        self._tools[index] = opened
        self.call_items[call_id] = opened.item_id

    def _open_client_call(
        self, index: int, call_id: str, name: str, tool: ClientTool | None
    ) -> _Open | None:
        """A client tool call's item; a built-in one waits, unshown, until complete."""
        kind = tool.item_type if tool is not None else "function_call"
        item_id = f"{ITEM_PREFIX[kind]}_{secrets.token_hex(16)}"
        shown = tool.name if tool is not None else name
        if kind not in _STREAMED_CALLS:
            assert tool is not None
            self._unshown[index] = _Open(kind, item_id, -1, call_id=call_id, tool=tool)
            self.call_items[call_id] = item_id
            return None
        item: dict[str, Any] = {"id": item_id, "type": kind, "status": "in_progress"}
        item["call_id"] = call_id
        item["name"] = shown
        if kind == "function_call":
            item["arguments"] = ""
        else:
            item["input"] = ""
        if tool is not None and tool.namespace is not None:
            item["namespace"] = tool.namespace
        return self._open(kind, item, name=shown, call_id=call_id, tool=tool)

    def _show_unshown(self) -> None:
        """Show the built-in calls whose arguments are complete: added, then done."""
        pending, self._unshown = self._unshown, {}
        for index, waiting in pending.items():
            assert waiting.tool is not None
            whole = call_item(
                waiting.tool,
                item_id=waiting.item_id,
                call_id=waiting.call_id,
                arguments="".join(waiting.pieces),
                status="in_progress",
            )
            opened = self._open(waiting.kind, whole, call_id=waiting.call_id, tool=waiting.tool)
            opened.pieces = waiting.pieces
            self._tools[index] = opened
            self.call_items[waiting.call_id] = opened.item_id
            self._close(opened)
            opened.done_sent = True

    def on_tool_arguments(self, index: int, text: str) -> None:
        waiting = self._unshown.get(index)
        if waiting is not None:
            waiting.pieces.append(text)
            return
        self._delta(self._tools[index], text)

    # -- closing -----------------------------------------------------------

    def _close_open_reasoning(self) -> None:
        if self._reasoning is not None:
            self._close(self._reasoning)
            self._reasoning = None

    def _close_open_message(self, phase: str = "commentary") -> None:
        """Close the message: ``commentary`` when tool calls follow it, else ``final_answer``."""
        if self._message is not None:
            self._phase = phase
            self._close(self._message)
            self._message = None

    def _close(self, opened: _Open, *, status: str = "completed") -> None:
        text = "".join(opened.pieces)
        where = {"item_id": opened.item_id, "output_index": opened.index}
        item: dict[str, Any]
        if opened.kind == "reasoning":
            item, done = self._reasoning_done(opened, text, status)
        elif opened.kind == "message":
            part = {
                "type": "output_text",
                "text": text,
                "annotations": [],
                "logprobs": opened.logprobs,
            }
            item = {**message_item(opened.item_id, text, status=status), "content": [part]}
            item["phase"] = self._phase
            done = [
                (
                    "response.output_text.done",
                    {**where, "content_index": 0, "text": text, "logprobs": opened.logprobs},
                ),
                ("response.content_part.done", {**where, "content_index": 0, "part": part}),
            ]
        elif opened.kind in _CLIENT_CALLS:
            item = self._client_call_done(opened, text, status)
            if opened.kind == "function_call":
                done = [
                    (
                        "response.function_call_arguments.done",
                        {**where, "name": item["name"], "arguments": text},
                    )
                ]
            elif opened.kind == "custom_tool_call":
                done = [("response.custom_tool_call_input.done", {**where, "input": item["input"]})]
            else:
                done = []
        elif opened.kind == "mcp_approval_request":
            item = {**self._output.items[opened.index], "arguments": text}
            done = []
        elif opened.kind == "mcp_list_tools":
            item = self._output.items[opened.index]
            ended = "failed" if item["error"] else "completed"
            done = [
                ("response.mcp_list_tools.in_progress", where),
                (f"response.mcp_list_tools.{ended}", where),
            ]
        elif is_hosted_item(opened.kind):
            # a hosted tool's item stays open for its tool step too
            item = with_arguments(self._output.items[opened.index], text)
            if status == "completed":
                self._output.replace(opened.index, item)
                return
            item["status"] = status
            done = []
        else:
            # an mcp_call item stays open for its tool step; only its arguments are done
            item = {
                **self._output.items[opened.index],
                "arguments": text,
                "status": "calling" if status == "completed" else status,
            }
            self._output.replace(opened.index, item)
            if not opened.done_sent:
                self._emit("response.mcp_call_arguments.done", {**where, "arguments": text})
            if status == "completed":
                return
            done = []
        self._output.replace(opened.index, item)
        if opened.done_sent:
            return
        for type_, fields in done:
            self._emit(type_, fields)
        self._emit("response.output_item.done", {"output_index": opened.index, "item": item})

    def _reasoning_done(
        self, opened: _Open, text: str, status: str
    ) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
        where = {"item_id": opened.item_id, "output_index": opened.index}
        part = {"type": "reasoning_text", "text": text}
        summary = {"type": "summary_text", "text": text}
        item: dict[str, Any] = {
            "id": opened.item_id,
            "type": "reasoning",
            "status": status,
            "summary": [summary] if self._options.summary else [],
            "content": [part],
        }
        if self._options.seal is not None:
            item["encrypted_content"] = self._options.seal(text)
        done: list[tuple[str, dict[str, Any]]] = []
        if self._options.summary:
            done += [
                (
                    "response.reasoning_summary_text.done",
                    {**where, "summary_index": 0, "text": text},
                ),
                (
                    "response.reasoning_summary_part.done",
                    {**where, "summary_index": 0, "part": summary},
                ),
            ]
        done += [
            (f"{self._reasoning_event}.done", {**where, "content_index": 0, "text": text}),
            ("response.content_part.done", {**where, "content_index": 0, "part": part}),
        ]
        return item, done

    def _client_call_done(self, opened: _Open, text: str, status: str) -> dict[str, Any]:
        """A client call's item with its whole arguments."""
        tool = opened.tool
        if tool is None and opened.kind == "function_call":
            tool = ClientTool(
                kind="function", chat_name=opened.name, name=opened.name, definition={}
            )
        if tool is None:
            # an earlier attempt's item, retired: as it was shown, with its new status
            return {**self._output.items[opened.index], "status": status}
        return call_item(
            tool, item_id=opened.item_id, call_id=opened.call_id, arguments=text, status=status
        )

    def close(self, turn: AssistantTurn) -> list[dict[str, Any]]:
        """End the model call: close every item; return the step's items in output order."""
        self._close_open_reasoning()
        self._close_open_message("commentary" if turn.tool_calls else "final_answer")
        self._show_unshown()
        for opened in self._tools.values():
            self._close(opened)
        if self._prior is not None:
            self._retire(self._prior.rest())
        return self._output.items[self._start :]

    def abort(self) -> None:
        """The model call failed: close its open items as incomplete, drop them from the output.

        Clients that saw an item added see it done (``incomplete``); the
        assembled output, built from completed steps only, never shows it.
        """
        for opened in [self._reasoning, self._message, *self._tools.values()]:
            if opened is not None:
                self._close(opened, status="incomplete")
        self._reasoning = self._message = None
        self._tools.clear()
        self._unshown.clear()
        self._output.truncate(self._start)
