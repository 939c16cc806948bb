"""Translate between Responses items and Chat Completions messages.

Two directions meet here:

* inward: request input items become the ``messages`` of a Chat Completions
  call (a stored chain of steps becomes them in :mod:`stepline._chat.messages`).
  Tool results are always keyed by the model's ``call_id`` (never by
  position), and consecutive ``function_call`` items merge into one
  assistant message, as Chat Completions requires.
* outward: the output item shapes (message, reasoning, function_call for the
  client's tools, mcp_call for tools the server ran).

Everything here is pure and works on plain dicts.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from stepline._chat.messages import REASONING_KEY, tool_error_text
from stepline._chat.summary import summary_message
from stepline._protocol.client_tools import ClientTools
from stepline._protocol.compaction import SEAL_LABEL
from stepline._protocol.request import (
    ClientCallItem,
    ClientCallOutputItem,
    CompactionItem,
    CustomToolCallItem,
    CustomToolCallOutputItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    HostedCallItem,
    InputFile,
    InputImage,
    InputItem,
    McpApprovalResponseItem,
    McpCallItem,
    MessageItem,
    OutputText,
    ReasoningItem,
    Refusal,
    ResponseRequest,
)
from stepline.errors import InvalidRequest

__all__ = [
    "InputContext",
    "base_messages",
    "input_messages",
    "message_item",
]

Message = dict[str, Any]


class Unseal(Protocol):
    """Opens an ``encrypted_content`` stepline sealed under ``label``; None when it cannot."""

    def __call__(self, token: str, *, label: str = ...) -> str | None: ...


def _cannot_unseal(token: str, *, label: str = "reasoning") -> str | None:
    return None


@dataclass(frozen=True, kw_only=True)
class InputContext:
    """What turning input items into chat messages needs besides the items."""

    #: the client's tools, to name their calls as the model saw them
    tools: ClientTools = field(default_factory=ClientTools)
    #: opens an ``encrypted_content`` stepline sealed; None when it cannot
    unseal: Unseal = _cannot_unseal
    #: the upstream takes Chat Completions ``file`` parts for files that are not text
    file_parts: bool = False


_TEXT_MIME = ("text/", "application/json", "application/xml", "application/x-yaml")


def _file_part(part: InputFile, *, file_parts: bool) -> dict[str, Any]:
    """A file as a text part when it is text, else as a Chat Completions file part."""
    name = part.filename or "file"
    if part.file_data is None:
        raise InvalidRequest(
            f"input_file {name!r}: file_url is not supported; send the file as file_data",
            param="input",
        )
    mime, payload, encoded = "", part.file_data, True
    if payload.startswith("data:") and "," in payload:
        header, payload = payload[5:].split(",", 1)
        mime = header.split(";", 1)[0]
        encoded = ";base64" in header
    raw: bytes
    if not encoded:
        raw = urllib.parse.unquote_to_bytes(payload)
    else:
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raw = payload.encode()
    text: str | None = None
    if not mime or mime.startswith(_TEXT_MIME):
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            text = None
        if text is not None and "\x00" in text:
            text = None
    if text is not None:
        return {"type": "text", "text": f"[file {name}]\n{text}"}
    if not file_parts:
        raise InvalidRequest(
            f"input_file {name!r} ({mime or 'binary'}) cannot be sent to this model's upstream: "
            "it takes text files only (set file_parts = true on an upstream that takes files)",
            param="input",
        )
    data = (
        part.file_data
        if part.file_data.startswith("data:")
        else (f"data:{mime or 'application/octet-stream'};base64,{part.file_data}")
    )
    return {"type": "file", "file": {"file_data": data, "filename": name}}


def _content(parts: str | Sequence[Any], *, file_parts: bool = False) -> str | list[dict[str, Any]]:
    """Text-only content collapses to a string, the form every upstream accepts."""
    if isinstance(parts, str):
        return parts
    chat_parts: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, InputImage):
            detail = "high" if part.detail == "original" else part.detail
            chat_parts.append(
                {"type": "image_url", "image_url": {"url": part.image_url, "detail": detail}}
            )
        elif isinstance(part, InputFile):
            chat_parts.append(_file_part(part, file_parts=file_parts))
        elif isinstance(part, Refusal):
            chat_parts.append({"type": "text", "text": part.refusal})
        else:
            chat_parts.append({"type": "text", "text": str(getattr(part, "text", ""))})
    if all(part["type"] == "text" for part in chat_parts):
        return "".join(str(part["text"]) for part in chat_parts)
    return chat_parts


class _Transcript:
    """Chat messages being built from items; holds reasoning until its assistant turn."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._reasoning: list[str] = []

    def reasoning(self, text: str) -> None:
        if text:
            self._reasoning.append(text)

    def _with_reasoning(self, message: Message) -> Message:
        if self._reasoning:
            message[REASONING_KEY] = str(message.get(REASONING_KEY) or "") + "".join(
                self._reasoning
            )
            self._reasoning.clear()
        return message

    def add(self, message: Message) -> None:
        if message["role"] == "assistant":
            self._with_reasoning(message)
        self.messages.append(message)

    def assistant_text(self, content: Any) -> None:
        last = self.messages[-1] if self.messages else None
        if (
            last is not None
            and last["role"] == "assistant"
            and last.get("content") is None
            and not last.get("tool_calls")
        ):
            last["content"] = content
            self._with_reasoning(last)
        else:
            self.add({"role": "assistant", "content": content})

    def call(self, entry: dict[str, Any]) -> None:
        """A tool call: part of the assistant message before it (made if needed)."""
        last = self.messages[-1] if self.messages else None
        if last is None or last["role"] != "assistant":
            last = {"role": "assistant", "content": None}
            self.add(last)
        else:
            self._with_reasoning(last)
        last.setdefault("tool_calls", []).append(entry)

    def result(self, call_id: str, content: Any) -> None:
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": content})


#: what the model sees for a held call the client refused
REFUSED = "The user refused this tool call."


def _reasoning_text(item: ReasoningItem, context: InputContext) -> str:
    if item.content:
        return "".join(part.text for part in item.content)
    if item.summary:
        return "\n".join(part.text for part in item.summary)
    if item.encrypted_content:
        return context.unseal(item.encrypted_content) or ""
    return ""


def _client_output(item: ClientCallOutputItem, file_parts: bool) -> str | list[dict[str, Any]]:
    """A built-in client tool's result as the model reads it."""
    output = item.output
    if item.type == "shell_call_output" and isinstance(output, list):
        runs: list[str] = []
        for run in output:
            run = run if isinstance(run, dict) else {}
            outcome = run.get("outcome") or {}
            ended = (
                "timed out"
                if outcome.get("type") == "timeout"
                else f"exit code {outcome.get('exit_code')}"
            )
            text = str(run.get("stdout") or "")
            if run.get("stderr"):
                text += f"\n[stderr]\n{run['stderr']}"
            runs.append(f"{text}\n[{ended}]")
        return "\n".join(runs)
    if item.type == "computer_call_output" and isinstance(output, dict):
        url = output.get("image_url")
        if url:
            return [{"type": "image_url", "image_url": {"url": url, "detail": "auto"}}]
        return "(no screenshot)"
    if item.type == "apply_patch_call_output":
        status = (item.model_extra or {}).get("status", "completed")
        return f"{status}: {output}" if output else str(status)
    if item.type == "tool_search_output":
        tools = (item.model_extra or {}).get("tools") or []
        names = [str(tool.get("name")) for tool in tools if isinstance(tool, dict)]
        return "Tools loaded: " + (", ".join(names) or "none")
    if isinstance(output, str):
        return output
    return orjson.dumps(output).decode()


def _hosted_call(transcript: _Transcript, item: HostedCallItem) -> None:
    """A hosted call that carries its result: the model saw the call and its result."""
    extra = item.model_extra or {}
    result = next(
        (extra[key] for key in ("output", "results", "outputs", "result") if extra.get(key)),
        None,
    )
    item_id = extra.get("id")
    if result is None or not item_id:
        return
    arguments = {
        key: extra[key] for key in ("action", "queries", "code") if extra.get(key) is not None
    }
    name = item.type.removesuffix("_call")
    transcript.call(
        {
            "id": item_id,
            "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
        }
    )
    text = result if isinstance(result, str) else orjson.dumps(result).decode()
    transcript.result(str(item_id), text)


def input_messages(
    items: Iterable[InputItem],
    approvals: Mapping[str, str] | None = None,
    context: InputContext | None = None,
) -> list[Message]:
    """Chat messages for request input items, in order.

    ``approvals`` maps an ``mcp_approval_request`` id of the previous
    response to the call it held: a refusal answers that call here; an
    approved call is run by the response and answered by its tool step.
    Reasoning items travel on the next assistant message (``REASONING_KEY``).
    """
    context = context or InputContext()
    transcript = _Transcript()
    for index, item in enumerate(items):
        if isinstance(item, CompactionItem):
            transcript.add(summary_message(_opened_summary(item, index, context)))
            continue
        if isinstance(item, McpApprovalResponseItem):
            call_id = (approvals or {}).get(item.approval_request_id)
            if call_id is not None and not item.approve:
                reason = f" Reason: {item.reason}" if item.reason else ""
                transcript.result(call_id, REFUSED + reason)
            continue
        if isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            content = _content(item.content, file_parts=context.file_parts)
            if role == "assistant":
                transcript.assistant_text(content)
            else:
                transcript.add({"role": role, "content": content})
        elif isinstance(item, FunctionCallItem | CustomToolCallItem | ClientCallItem):
            entry = context.tools.chat_call(item)
            assert entry is not None
            transcript.call(entry)
        elif isinstance(item, FunctionCallOutputItem | CustomToolCallOutputItem):
            transcript.result(item.call_id, _content(item.output, file_parts=context.file_parts))
        elif isinstance(item, ClientCallOutputItem):
            transcript.result(item.key, _client_output(item, context.file_parts))
        elif isinstance(item, McpCallItem):
            call_id = item.id or item.name
            transcript.call(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
            )
            result = item.output if item.output is not None else tool_error_text(item.error)
            transcript.result(call_id, result or "")
        elif isinstance(item, ReasoningItem):
            transcript.reasoning(_reasoning_text(item, context))
        elif isinstance(item, HostedCallItem):
            _hosted_call(transcript, item)
        # mcp_list_tools and mcp_approval_request items carry nothing for the model
    return transcript.messages


def _opened_summary(item: CompactionItem, index: int, context: InputContext) -> str:
    summary = context.unseal(item.encrypted_content, label=SEAL_LABEL)
    if summary is None:
        raise InvalidRequest(
            "The encrypted content of this compaction item could not be verified: it was not "
            "made by this server, was changed, or its key was rotated out.",
            param=f"input[{index}].encrypted_content",
            code="invalid_encrypted_content",
        )
    return summary


def _text_of(parts: Sequence[Any]) -> str:
    return "".join(p.text for p in parts if isinstance(p, OutputText) or hasattr(p, "text"))


def message_item(item_id: str, text: str, *, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def dumps_arguments(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()


def base_messages(
    request: ResponseRequest,
    history: list[dict[str, Any]],
    held: Mapping[str, str] | None = None,
    context: InputContext | None = None,
) -> list[dict[str, Any]]:
    """System instructions, then the earlier conversation, then this request's input.

    ``held`` maps the previous response's approval request ids to their calls.
    """
    system = [{"role": "system", "content": request.instructions}] if request.instructions else []
    return [*system, *history, *input_messages(request.input, held, context)]
