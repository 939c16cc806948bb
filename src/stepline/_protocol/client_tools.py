"""The tools a client runs: as a Chat Completions upstream sees them, and as their calls show.

Every tool type of the Responses API that the *client* executes — functions
(grouped in a ``namespace`` too), ``custom`` freeform tools, the built-ins
``local_shell``, ``shell``, ``apply_patch``, ``computer`` and a client-run
``tool_search`` — is offered to the upstream as one Chat Completions tool
under its *chat name*, and the model's call of that name comes back as the
item type of its kind (``custom_tool_call``, ``shell_call``...). The same
table turns the call and output items a client sends back into the chat
messages the model saw, so a conversation reads the same whichever way it
arrives (``previous_response_id`` or resent history).

Invariants:

* Chat names are unique in one response. A namespace's function ``f`` of
  ``ns`` is ``ns__f``; a built-in keeps its type as its name.
* A custom tool is a function with one string argument ``input`` unless the
  upstream takes Chat Completions custom tools (``native_custom``); either
  way the item's ``input`` is the model's text.
* Hosted tools (``web_search``...) are never offered here: the server maps
  them or leaves them out (:attr:`ClientTools.hosted`).
* Everything is pure: built from the request and the upstream's dialect.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ValidationError

from stepline._protocol.request import (
    BUILTIN_CLIENT_TOOLS,
    BuiltinTool,
    ClientCallItem,
    CustomTool,
    CustomToolCallItem,
    FunctionCallItem,
    FunctionTool,
    HostedTool,
    InputItem,
    NamespaceTool,
    ResponseRequest,
    ToolSearchTool,
    allowed_tool_names,
)
from stepline.errors import InvalidRequest

__all__ = [
    "ITEM_PREFIX",
    "ClientTool",
    "ClientTools",
    "CustomInputDecoder",
    "call_item",
    "custom_input",
]

Kind = Literal[
    "function", "custom", "local_shell", "shell", "apply_patch", "computer", "tool_search"
]

#: the item type of a call, by kind
CALL_ITEM = {
    "function": "function_call",
    "custom": "custom_tool_call",
    "local_shell": "local_shell_call",
    "shell": "shell_call",
    "apply_patch": "apply_patch_call",
    "computer": "computer_call",
    "tool_search": "tool_search_call",
}

#: the id prefix of each call item type
ITEM_PREFIX = {
    "function_call": "fc",
    "custom_tool_call": "ctc",
    "local_shell_call": "lsh",
    "shell_call": "sh",
    "apply_patch_call": "apc",
    "computer_call": "cu",
    "tool_search_call": "tsc",
}

_STRING = {"type": "string"}
_INTEGER = {"type": "integer"}

#: the function parameters a built-in is offered with
_BUILTIN_PARAMETERS: dict[str, dict[str, Any]] = {
    "local_shell": {
        "type": "object",
        "properties": {
            "command": {
                "type": "array",
                "items": _STRING,
                "description": 'The program and its arguments, e.g. ["ls", "-la"].',
            },
            "working_directory": _STRING,
            "timeout_ms": _INTEGER,
            "env": {"type": "object", "additionalProperties": _STRING},
        },
        "required": ["command"],
    },
    "shell": {
        "type": "object",
        "properties": {
            "commands": {
                "type": "array",
                "items": _STRING,
                "description": "Shell command lines, run in order.",
            },
            "timeout_ms": _INTEGER,
            "max_output_length": _INTEGER,
        },
        "required": ["commands"],
    },
    "apply_patch": {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["create_file", "update_file", "delete_file"]},
            "path": {"type": "string", "description": "The file, relative to the workspace."},
            "diff": {
                "type": "string",
                "description": "The change as a V4A diff (not for delete_file).",
            },
        },
        "required": ["type", "path"],
    },
    "computer": {
        "type": "object",
        "properties": {
            "action": {
                "type": "object",
                "description": (
                    "One action: {type: click|double_click|drag|keypress|move|screenshot|"
                    "scroll|type|wait, ...its fields (x, y, button, keys, text, path, "
                    "scroll_x, scroll_y)}."
                ),
            }
        },
        "required": ["action"],
    },
    "tool_search": {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "What the tools should do."}},
        "required": ["query"],
    },
}

_BUILTIN_DESCRIPTION = {
    "local_shell": "Run a command on the user's machine.",
    "shell": "Run shell commands on the user's machine.",
    "apply_patch": "Create, update or delete a file in the user's workspace.",
    "computer": "Control the user's computer: one mouse, keyboard or screenshot action.",
    "tool_search": "Find more tools for the next step.",
}


@dataclass(frozen=True, kw_only=True)
class ClientTool:
    """One tool the client runs: its kind, the name the model calls, the name its item shows."""

    kind: Kind
    chat_name: str
    name: str
    namespace: str | None = None
    definition: dict[str, Any]
    #: a custom tool offered as a Chat Completions custom tool (its input arrives raw)
    native: bool = False

    @property
    def item_type(self) -> str:
        return CALL_ITEM[self.kind]


def _function(
    chat_name: str, description: str | None, parameters: Any, strict: bool | None = None
) -> dict[str, Any]:
    function: dict[str, Any] = {
        "name": chat_name,
        "parameters": parameters or {"type": "object", "properties": {}},
    }
    if description:
        function["description"] = description
    if strict is not None:
        function["strict"] = strict
    return {"type": "function", "function": function}


def _custom_definition(tool: CustomTool, chat_name: str, *, native: bool) -> dict[str, Any]:
    fmt = tool.format or {"type": "text"}
    if native:
        custom: dict[str, Any] = {"name": chat_name}
        if tool.description:
            custom["description"] = tool.description
        if fmt.get("type") == "grammar":
            custom["format"] = {
                "type": "grammar",
                "grammar": {"syntax": fmt.get("syntax"), "definition": fmt.get("definition")},
            }
        else:
            custom["format"] = {"type": "text"}
        return {"type": "custom", "custom": custom}
    described = "The tool's input, as free text."
    if fmt.get("type") == "grammar":
        described = (
            f"The tool's input, as free text that follows this {fmt.get('syntax')} grammar:\n"
            f"{fmt.get('definition')}"
        )
    parameters = {
        "type": "object",
        "properties": {"input": {"type": "string", "description": described}},
        "required": ["input"],
        "additionalProperties": False,
    }
    return _function(chat_name, tool.description, parameters)


def _loads(arguments: str) -> Any:
    try:
        return orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        return None


def custom_input(arguments: str) -> str:
    """A custom tool's input from the function arguments the model sent.

    ``{"input": "..."}`` gives its string; anything else (a model that wrote
    the text bare) is taken as the input itself.
    """
    parsed = _loads(arguments)
    if isinstance(parsed, dict) and isinstance(parsed.get("input"), str):
        return str(parsed["input"])
    return arguments


def _hex4(text: str) -> int | None:
    if len(text) != 4 or any(c not in "0123456789abcdefABCDEF" for c in text):
        return None
    return int(text, 16)


class CustomInputDecoder:
    """Decodes ``{"input": "..."}`` as it streams, so input deltas can be sent at once.

    :meth:`feed` takes raw argument pieces and returns the newly decoded
    characters of the string; it returns nothing once the text turns out not
    to have that shape (the done event then carries the whole input).
    """

    def __init__(self) -> None:
        self._raw = ""
        self._at: int | None = None
        self._closed = False
        self._broken = False

    def feed(self, piece: str) -> str:
        self._raw += piece
        if self._broken or self._closed:
            return ""
        if self._at is None:
            head = self._raw.lstrip()
            if not head:
                return ""
            if not head.startswith("{"):
                self._broken = True
                return ""
            after = head[1:].lstrip()
            key = '"input"'
            if len(after) < len(key) + 1:
                if not key.startswith(after[: len(key)]):
                    self._broken = True
                return ""
            if not after.startswith(key):
                self._broken = True
                return ""
            rest = after[len(key) :].lstrip()
            if not rest:
                return ""
            if not rest.startswith(":"):
                self._broken = True
                return ""
            value = rest[1:].lstrip()
            if not value:
                return ""
            if not value.startswith('"'):
                self._broken = True
                return ""
            self._at = len(self._raw) - len(value) + 1
        return self._decode()

    def _decode(self) -> str:
        assert self._at is not None
        out: list[str] = []
        raw, at = self._raw, self._at
        while at < len(raw):
            char = raw[at]
            if char == '"':
                self._closed = True
                at += 1
                break
            if char != "\\":
                out.append(char)
                at += 1
                continue
            if at + 1 >= len(raw):
                break
            escape = raw[at + 1]
            if escape == "u":
                if at + 6 > len(raw):
                    break
                code = _hex4(raw[at + 2 : at + 6])
                if code is None or 0xDC00 <= code < 0xE000:
                    self._broken = True
                    break
                if 0xD800 <= code < 0xDC00:
                    # a surrogate pair: wait for its second half
                    if at + 12 > len(raw):
                        break
                    low = _hex4(raw[at + 8 : at + 12]) if raw[at + 6 : at + 8] == "\\u" else None
                    if low is None or not 0xDC00 <= low < 0xE000:
                        self._broken = True
                        break
                    out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                    at += 12
                else:
                    out.append(chr(code))
                    at += 6
                continue
            out.append({"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}.get(escape, escape))
            at += 2
        self._at = at
        return "".join(out)


_BUILTIN_KIND: dict[str, Kind] = {
    "local_shell": "local_shell",
    "shell": "shell",
    "apply_patch": "apply_patch",
    "computer": "computer",
    "computer_use_preview": "computer",
}


@dataclass
class ClientTools:
    """The client tools of one response, by chat name; and the hosted ones it asked for."""

    by_chat_name: dict[str, ClientTool] = field(default_factory=dict)
    #: hosted tool types the request offered (``web_search``...), in order
    hosted: list[str] = field(default_factory=list)
    #: custom tools go upstream as Chat Completions custom tools
    native_custom: bool = False

    @classmethod
    def of(
        cls,
        request: ResponseRequest,
        *,
        native_custom: bool = False,
        items: Iterable[InputItem] | None = None,
    ) -> ClientTools:
        """The tools ``request`` declares, plus those earlier ``tool_search`` results loaded."""
        tools = cls(native_custom=native_custom)
        for tool in request.tools:
            tools._add(tool)
        for item in request.input if items is None else items:
            if getattr(item, "type", None) == "tool_search_output":
                for loaded in getattr(item, "tools", None) or ():
                    tools._add_loaded(loaded)
        return tools

    def _put(self, tool: ClientTool, *, loaded: bool = False) -> None:
        """Add a tool; two declared tools the model would call by one name are a 400
        (a tool an earlier ``tool_search`` loaded again is already there)."""
        if tool.chat_name in self.by_chat_name:
            if loaded:
                return
            raise InvalidRequest(
                f"two tools are called {tool.chat_name!r} by the model; tool names must be unique",
                param="tools",
            )
        self.by_chat_name[tool.chat_name] = tool

    def _add(self, tool: Any, namespace: str | None = None, *, loaded: bool = False) -> None:
        if isinstance(tool, FunctionTool):
            chat_name = f"{namespace}__{tool.name}" if namespace else tool.name
            self._put(
                ClientTool(
                    kind="function",
                    chat_name=chat_name,
                    name=tool.name,
                    namespace=namespace,
                    definition=_function(chat_name, tool.description, tool.parameters, tool.strict),
                ),
                loaded=loaded,
            )
        elif isinstance(tool, CustomTool):
            chat_name = f"{namespace}__{tool.name}" if namespace else tool.name
            self._put(
                ClientTool(
                    kind="custom",
                    chat_name=chat_name,
                    name=tool.name,
                    namespace=namespace,
                    definition=_custom_definition(tool, chat_name, native=self.native_custom),
                    native=self.native_custom,
                ),
                loaded=loaded,
            )
        elif isinstance(tool, NamespaceTool):
            for inner in tool.tools:
                self._add(inner, namespace=tool.name, loaded=loaded)
        elif isinstance(tool, BuiltinTool):
            kind = _BUILTIN_KIND[tool.type]
            description = _BUILTIN_DESCRIPTION[kind]
            extra = tool.model_extra or {}
            if kind == "computer" and extra.get("display_width"):
                description += (
                    f" The display is {extra.get('display_width')}x{extra.get('display_height')}"
                    f" ({extra.get('environment', 'unknown')})."
                )
            self._put(
                ClientTool(
                    kind=kind,
                    chat_name=kind,
                    name=kind,
                    definition=_function(kind, description, _BUILTIN_PARAMETERS[kind]),
                ),
                loaded=loaded,
            )
        elif isinstance(tool, ToolSearchTool):
            if tool.execution != "client":
                self.hosted.append("tool_search")
                return
            self._put(
                ClientTool(
                    kind="tool_search",
                    chat_name="tool_search",
                    name="tool_search",
                    definition=_function(
                        "tool_search",
                        tool.description or _BUILTIN_DESCRIPTION["tool_search"],
                        tool.parameters or _BUILTIN_PARAMETERS["tool_search"],
                    ),
                ),
                loaded=loaded,
            )
        elif isinstance(tool, HostedTool):
            self.hosted.append(tool.type)

    def _add_loaded(self, raw: Any) -> None:
        """A tool a ``tool_search_output`` loaded (a function or a namespace)."""
        if not isinstance(raw, Mapping):
            return
        shapes: dict[str, type[BaseModel]] = {
            "function": FunctionTool,
            "namespace": NamespaceTool,
            "custom": CustomTool,
        }
        shape = shapes.get(str(raw.get("type")))
        if shape is None:
            return
        try:
            self._add(shape.model_validate(raw), loaded=True)
        except ValidationError:
            return  # a tool the client loaded that no model could call: left out

    # -- what the upstream is offered -------------------------------------

    def allowed(self, allowed: frozenset[str] | None) -> list[ClientTool]:
        """The tools ``tool_choice: allowed_tools`` lets the model call (all, when None)."""
        if allowed is not None:
            allowed = frozenset(_BUILTIN_KIND.get(name, name) for name in allowed)
        return [
            tool
            for tool in self.by_chat_name.values()
            if allowed is None
            or tool.chat_name in allowed
            or tool.name in allowed
            or tool.kind in allowed
        ]

    def definitions(self, request: ResponseRequest) -> list[dict[str, Any]]:
        return [tool.definition for tool in self.allowed(allowed_tool_names(request))]

    def chat_names(self, request: ResponseRequest) -> frozenset[str]:
        return frozenset(tool.chat_name for tool in self.allowed(allowed_tool_names(request)))

    def forced(self, name: str | None, kind: str) -> ClientTool | None:
        """The tool a ``tool_choice`` names: by name (function, custom) or by type."""
        for tool in self.by_chat_name.values():
            if name is not None and name in (tool.name, tool.chat_name):
                return tool
            if name is None and kind in (tool.kind, tool.chat_name):
                return tool
        return None

    def get(self, chat_name: str) -> ClientTool | None:
        return self.by_chat_name.get(chat_name)

    # -- an item a client sends back, as the model's call ------------------

    def chat_call(self, item: InputItem) -> dict[str, Any] | None:
        """The Chat Completions ``tool_calls`` entry of a call item, or None."""
        if isinstance(item, FunctionCallItem):
            name = f"{item.namespace}__{item.name}" if item.namespace else item.name
            return _chat_function(item.call_id, name, item.arguments)
        if isinstance(item, CustomToolCallItem):
            name = f"{item.namespace}__{item.name}" if item.namespace else item.name
            tool = self.get(name)
            if tool is not None and tool.native:
                return {
                    "id": item.call_id,
                    "type": "custom",
                    "custom": {"name": name, "input": item.input},
                }
            return _chat_function(item.call_id, name, orjson.dumps({"input": item.input}).decode())
        if isinstance(item, ClientCallItem):
            kind = _KIND_OF_ITEM[item.type]
            extra = item.model_extra or {}
            return _chat_function(item.key, kind, _builtin_arguments(kind, extra))
        return None


def call_item(
    tool: ClientTool, *, item_id: str, call_id: str, arguments: str, status: str
) -> dict[str, Any]:
    """The output item of the model's call of ``tool`` with these (complete) arguments."""
    base: dict[str, Any] = {"id": item_id, "type": tool.item_type, "status": status}
    if tool.kind == "function":
        item = {**base, "call_id": call_id, "name": tool.name, "arguments": arguments}
    elif tool.kind == "custom":
        text = arguments if tool.native else custom_input(arguments)
        item = {**base, "call_id": call_id, "name": tool.name, "input": text}
    else:
        item = {**base, "call_id": call_id, **_builtin_payload(tool.kind, arguments)}
        if tool.kind == "apply_patch" and status not in ("in_progress", "completed"):
            item["status"] = "in_progress"
    if tool.namespace is not None:
        item["namespace"] = tool.namespace
    return item


_KIND_OF_ITEM: dict[str, Kind] = {
    "local_shell_call": "local_shell",
    "shell_call": "shell",
    "apply_patch_call": "apply_patch",
    "computer_call": "computer",
    "tool_search_call": "tool_search",
}
assert set(_KIND_OF_ITEM) | {"function_call", "custom_tool_call"} == set(CALL_ITEM.values())
assert set(_BUILTIN_KIND) == set(BUILTIN_CLIENT_TOOLS)


def _chat_function(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _builtin_payload(kind: Kind, arguments: str) -> dict[str, Any]:
    """A built-in call's item fields from the function arguments the model sent."""
    parsed = _loads(arguments)
    args: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    if kind == "local_shell":
        command = args.get("command")
        return {
            "action": {
                "type": "exec",
                "command": [str(c) for c in command] if isinstance(command, list) else [],
                "timeout_ms": args.get("timeout_ms"),
                "working_directory": args.get("working_directory"),
                "env": args.get("env") or {},
                "user": None,
            }
        }
    if kind == "shell":
        commands = args.get("commands")
        return {
            "action": {
                "commands": [str(c) for c in commands] if isinstance(commands, list) else [],
                "timeout_ms": args.get("timeout_ms"),
                "max_output_length": args.get("max_output_length"),
            },
            "environment": None,
        }
    if kind == "apply_patch":
        operation: dict[str, Any] = {
            "type": args.get("type", "update_file"),
            "path": str(args.get("path", "")),
        }
        if operation["type"] != "delete_file":
            operation["diff"] = str(args.get("diff", ""))
        return {"operation": operation}
    if kind == "computer":
        action = args.get("action")
        return {
            "action": action if isinstance(action, dict) else {"type": "screenshot"},
            "pending_safety_checks": [],
        }
    return {"execution": "client", "arguments": args}


def _builtin_arguments(kind: Kind, item: Mapping[str, Any]) -> str:
    """The function arguments a built-in call item stands for (the inverse of the payload)."""
    if kind == "local_shell":
        action = dict(item.get("action") or {})
        action.pop("type", None)
        action.pop("user", None)
        payload: Any = {key: value for key, value in action.items() if value not in (None, {})}
    elif kind == "shell":
        action = dict(item.get("action") or {})
        payload = {key: value for key, value in action.items() if value is not None}
    elif kind == "apply_patch":
        payload = dict(item.get("operation") or {})
    elif kind == "computer":
        payload = {"action": item.get("action") or {}}
    else:
        payload = item.get("arguments") or {}
    return orjson.dumps(payload).decode()
