"""The whole Responses tool and item vocabulary, end to end.

Every tool type a request may declare, every call item the model's call of
one comes back as, and every output item a client continues with, through
stepline on a real socket to the scripted upstream and back, checked with
the openai SDK's own types. Also: ``item_reference``, reasoning (summary,
sealed ``encrypted_content`` and its replay), the fields stepline refuses or
names instead of ignoring silently, and a hosted tool played by a server tool.

Tests that need a config of their own start a stack with ``configured``
(the conftest's pieces, one settings edit).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai.types.responses import (
    Response,
    ResponseInputItemParam,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseStreamEvent,
    ToolParam,
)
from openai.types.shared_params.custom_tool_input_format import Grammar
from pydantic import TypeAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from stepline._server.auth import hash_token, new_token
from tests._backends import SQL_KINDS, backend_params
from tests.e2e.conftest import Stack, ToolServer, read_sse, serve_stack

pytestmark = pytest.mark.timeout(30)

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)

#: for tests whose store work other tests already cover on every backend: SQLite only,
#: to keep the file fast
SQLITE_STACK = pytest.mark.parametrize("stack_factory", ["sqlite"], indirect=True)
SQLITE_CONFIGURED = pytest.mark.parametrize("configured", ["sqlite"], indirect=True)


# -- a stack with a config of its own -----------------------------------------


@dataclass
class _SearchTools(ToolServer):
    """The conftest's tools plus ``search``, which answers with result URLs."""

    def app(self) -> Starlette:
        async def search(request: Request) -> JSONResponse:
            body = orjson.loads(await request.body())
            self.calls["search"] += 1
            self.bodies.setdefault("search", []).append(body)
            query = body.get("query", "")
            return JSONResponse(
                {"results": [{"url": f"https://example.test/{query}", "title": query}]}
            )

        routes = [Route("/tools/search", search, methods=["POST"]), *super().app().routes]
        return Starlette(routes=routes)


Change = Callable[[dict[str, Any]], None]
Configured = Callable[..., Awaitable[Stack]]


@pytest.fixture(params=backend_params(SQL_KINDS))
async def configured(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Configured]:
    """``await configured(change)``: a stack whose settings dict ``change`` edited first.

    The settings are the conftest's, plus an HTTP tool ``search``, and the
    default route offers no server tools (the upstream sees the request's only).
    """
    async with AsyncExitStack() as exits:

        async def start(change: Change | None = None) -> Stack:
            def configure(data: dict[str, Any], tools_url: str) -> None:
                data["tools"]["search"] = {
                    "type": "http",
                    "description": "Search the web.",
                    "url": f"{tools_url}/tools/search",
                    "parameters": _object(query={"type": "string"}),
                    "timeout": 5,
                }
                data["default_model"]["tools"] = []
                if change is not None:
                    change(data)

            return await serve_stack(
                exits, request.param, tmp_path, tools=_SearchTools(), configure=configure
            )

        yield start


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


def _protocol(**options: Any) -> Change:
    def change(data: dict[str, Any]) -> None:
        data["protocol"] = {**data["protocol"], **options}

    return change


def _upstream(**options: Any) -> Change:
    def change(data: dict[str, Any]) -> None:
        data["upstreams"]["scripted"].update(options)

    return change


# -- the vocabulary -----------------------------------------------------------

GRAMMAR: Grammar = {"type": "grammar", "syntax": "lark", "definition": "start: /[a-z ]+/"}

TOOLS: list[ToolParam] = [
    {
        "type": "function",
        "name": "lookup",
        "description": "Look a word up.",
        "parameters": _object(word={"type": "string"}),
        "strict": True,
    },
    {
        "type": "namespace",
        "name": "files",
        "description": "File tools.",
        "tools": [
            {
                "type": "function",
                "name": "read",
                "description": "Read a file.",
                "parameters": _object(path={"type": "string"}),
            }
        ],
    },
    {"type": "custom", "name": "note", "description": "Write a note.", "format": {"type": "text"}},
    {"type": "custom", "name": "spell", "description": "Spell it out.", "format": GRAMMAR},
    {"type": "local_shell"},
    {"type": "shell"},
    {"type": "apply_patch"},
    {
        "type": "computer_use_preview",
        "display_width": 1024,
        "display_height": 768,
        "environment": "linux",
    },
    {
        "type": "tool_search",
        "execution": "client",
        "description": "Find more tools.",
        "parameters": _object(goal={"type": "string"}),
    },
    {"type": "web_search"},
]


def _chat_function(name: str, description: str, parameters: Any, **extra: Any) -> dict[str, Any]:
    function = {"name": name, "parameters": parameters, "description": description, **extra}
    return {"type": "function", "function": function}


def _input_only(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"input": {"type": "string", "description": description}},
        "required": ["input"],
        "additionalProperties": False,
    }


#: what the upstream is offered for TOOLS: web_search is left out
CHAT_TOOLS: list[dict[str, Any]] = [
    _chat_function("lookup", "Look a word up.", _object(word={"type": "string"}), strict=True),
    _chat_function("files__read", "Read a file.", _object(path={"type": "string"})),
    _chat_function("note", "Write a note.", _input_only("The tool's input, as free text.")),
    _chat_function(
        "spell",
        "Spell it out.",
        _input_only(
            "The tool's input, as free text that follows this lark grammar:\nstart: /[a-z ]+/"
        ),
    ),
    _chat_function(
        "local_shell",
        "Run a command on the user's machine.",
        {
            "type": "object",
            "properties": {
                "command": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": 'The program and its arguments, e.g. ["ls", "-la"].',
                },
                "working_directory": {"type": "string"},
                "timeout_ms": {"type": "integer"},
                "env": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "required": ["command"],
        },
    ),
    _chat_function(
        "shell",
        "Run shell commands on the user's machine.",
        {
            "type": "object",
            "properties": {
                "commands": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Shell command lines, run in order.",
                },
                "timeout_ms": {"type": "integer"},
                "max_output_length": {"type": "integer"},
            },
            "required": ["commands"],
        },
    ),
    _chat_function(
        "apply_patch",
        "Create, update or delete a file in the user's workspace.",
        {
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
    ),
    _chat_function(
        "computer",
        "Control the user's computer: one mouse, keyboard or screenshot action. "
        "The display is 1024x768 (linux).",
        {
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
    ),
    _chat_function("tool_search", "Find more tools.", _object(goal={"type": "string"})),
]

NOTE = 'remember "this"\nand that'
SPELL = "s t e p l i n e"

#: one scripted turn calling every client tool, as the chat functions it was offered
CALLS: list[dict[str, Any]] = [
    {"id": "call_fn", "name": "lookup", "arguments": {"word": "stepline"}},
    {"id": "call_ns", "name": "files__read", "arguments": {"path": "README.md"}},
    {"id": "call_note", "name": "note", "arguments": {"input": NOTE}},
    {"id": "call_spell", "name": "spell", "arguments": {"input": SPELL}},
    {"id": "call_lsh", "name": "local_shell", "arguments": {"command": ["ls", "-la"]}},
    {"id": "call_sh", "name": "shell", "arguments": {"commands": ["pwd", "ls src"]}},
    {
        "id": "call_ap",
        "name": "apply_patch",
        "arguments": {"type": "create_file", "path": "hello.txt", "diff": "+hello\n"},
    },
    {
        "id": "call_cu",
        "name": "computer",
        "arguments": {"action": {"type": "click", "x": 10, "y": 20, "button": "left"}},
    },
    {"id": "call_ts", "name": "tool_search", "arguments": {"goal": "the weather"}},
]

#: the output items of CALLS (without their generated ids), in output order
CALL_ITEMS: list[dict[str, Any]] = [
    {
        "type": "function_call",
        "status": "completed",
        "call_id": "call_fn",
        "name": "lookup",
        "arguments": '{"word":"stepline"}',
    },
    {
        "type": "function_call",
        "status": "completed",
        "call_id": "call_ns",
        "name": "read",
        "arguments": '{"path":"README.md"}',
        "namespace": "files",
    },
    {
        "type": "custom_tool_call",
        "status": "completed",
        "call_id": "call_note",
        "name": "note",
        "input": NOTE,
    },
    {
        "type": "custom_tool_call",
        "status": "completed",
        "call_id": "call_spell",
        "name": "spell",
        "input": SPELL,
    },
    {
        "type": "local_shell_call",
        "status": "completed",
        "call_id": "call_lsh",
        "action": {
            "type": "exec",
            "command": ["ls", "-la"],
            "timeout_ms": None,
            "working_directory": None,
            "env": {},
            "user": None,
        },
    },
    {
        "type": "shell_call",
        "status": "completed",
        "call_id": "call_sh",
        "action": {"commands": ["pwd", "ls src"], "timeout_ms": None, "max_output_length": None},
        "environment": None,
    },
    {
        "type": "apply_patch_call",
        "status": "completed",
        "call_id": "call_ap",
        "operation": {"type": "create_file", "path": "hello.txt", "diff": "+hello\n"},
    },
    {
        "type": "computer_call",
        "status": "completed",
        "call_id": "call_cu",
        "action": {"type": "click", "x": 10, "y": 20, "button": "left"},
        "pending_safety_checks": [],
    },
    {
        "type": "tool_search_call",
        "status": "completed",
        "call_id": "call_ts",
        "execution": "client",
        "arguments": {"goal": "the weather"},
    },
]

#: the SDK class each of CALL_ITEMS parses as, and its item id prefix
SDK_CLASSES = [
    ("ResponseFunctionToolCall", "fc"),
    ("ResponseFunctionToolCall", "fc"),
    ("ResponseCustomToolCall", "ctc"),
    ("ResponseCustomToolCall", "ctc"),
    ("LocalShellCall", "lsh"),
    ("ResponseFunctionShellToolCall", "sh"),
    ("ResponseApplyPatchToolCall", "apc"),
    ("ResponseComputerToolCall", "cu"),
    ("ResponseToolSearchCall", "tsc"),
]

IMAGE = "data:image/png;base64,iVBORw0KGgo="
SCREENSHOT = "data:image/png;base64,c2NyZWVuc2hvdA=="

#: the client's result of each call, one output item type each
OUTPUTS: list[ResponseInputItemParam] = [
    {
        "type": "function_call_output",
        "call_id": "call_fn",
        "output": [
            {"type": "input_text", "text": "a word"},
            {"type": "input_image", "image_url": IMAGE, "detail": "low"},
        ],
    },
    {"type": "function_call_output", "call_id": "call_ns", "output": "# README"},
    {"type": "custom_tool_call_output", "call_id": "call_note", "output": "noted"},
    {"type": "custom_tool_call_output", "call_id": "call_spell", "output": "spelt"},
    {"type": "local_shell_call_output", "id": "call_lsh", "output": "total 0"},
    {
        "type": "shell_call_output",
        "call_id": "call_sh",
        "output": [
            {"stdout": "/work\n", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}},
            {"stdout": "", "stderr": "no src", "outcome": {"type": "exit", "exit_code": 2}},
        ],
    },
    {
        "type": "apply_patch_call_output",
        "call_id": "call_ap",
        "status": "completed",
        "output": "created hello.txt",
    },
    {
        "type": "computer_call_output",
        "call_id": "call_cu",
        "output": {"type": "computer_screenshot", "image_url": SCREENSHOT},
    },
    {
        "type": "tool_search_output",
        "call_id": "call_ts",
        "execution": "client",
        "status": "completed",
        "tools": [
            # the SDK's FunctionToolParam requires ``strict``; stepline takes a tool without it
            {  # type: ignore[list-item]
                "type": "function",
                "name": "forecast",
                "description": "Tomorrow's weather.",
                "parameters": _object(city={"type": "string"}),
            }
        ],
    },
]

#: what the upstream's next call reads after the assistant's calls: each result keyed by
#: its call id, then the images of the results as one user message (``tool_parts``)
RESULT_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "tool",
        "tool_call_id": "call_fn",
        "content": "a word\n[1 attachment(s) follow in the next user message]",
    },
    {"role": "tool", "tool_call_id": "call_ns", "content": "# README"},
    {"role": "tool", "tool_call_id": "call_note", "content": "noted"},
    {"role": "tool", "tool_call_id": "call_spell", "content": "spelt"},
    {"role": "tool", "tool_call_id": "call_lsh", "content": "total 0"},
    {
        "role": "tool",
        "tool_call_id": "call_sh",
        "content": "/work\n\n[exit code 0]\n\n[stderr]\nno src\n[exit code 2]",
    },
    {"role": "tool", "tool_call_id": "call_ap", "content": "completed: created hello.txt"},
    {
        "role": "tool",
        "tool_call_id": "call_cu",
        "content": "[1 attachment(s) follow in the next user message]",
    },
    {"role": "tool", "tool_call_id": "call_ts", "content": "Tools loaded: forecast"},
    {
        "role": "user",
        "content": [
            {
                "type": "text",
                "text": "The tool call(s) call_fn, call_cu returned these attachments:",
            },
            {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}},
            {"type": "image_url", "image_url": {"url": SCREENSHOT, "detail": "auto"}},
        ],
    },
]


def _without_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in item.items() if key != "id"} for item in items]


def _sdk_view(body: dict[str, Any]) -> list[tuple[str, str]]:
    """Each output item's SDK class (strict validation) and its id prefix."""
    response = Response.model_validate(body)
    return [(type(item).__name__, item.id.split("_")[0]) for item in response.output]  # type: ignore[union-attr]


def _shape(events: list[dict[str, Any]]) -> list[tuple[str, int | None]]:
    """Each event's type and output_index; a run of deltas of one item counts once
    (how many pieces a text streams in is the upstream's business)."""
    shape: list[tuple[str, int | None]] = []
    for event in events:
        pair = (event["type"], event.get("output_index"))
        if not (pair[0].endswith(".delta") and shape and shape[-1] == pair):
            shape.append(pair)
    return shape


async def _every_call(stack: Stack, name: str, **fields: Any) -> Any:
    stack.script(name, [{"tool_calls": CALLS}, {"content": "All done."}])
    return await stack.client.responses.with_raw_response.create(
        model=name, input="Use every tool.", tools=TOOLS, **fields
    )


# -- 1. every tool type is accepted and round-trips ---------------------------


async def test_every_tool_type_is_offered_and_called_as_its_item_type(
    configured: Configured,
) -> None:
    stack = await configured()

    raw = await _every_call(stack, "every")

    assert raw.headers["stepline-dropped-tools"] == "web_search"
    (offered,) = stack.model.requests("every")
    assert offered["tools"] == CHAT_TOOLS
    assert offered["tool_choice"] == "auto"
    body = raw.http_response.json()
    assert body["status"] == "completed"
    assert _without_ids(body["output"]) == CALL_ITEMS
    assert _sdk_view(body) == SDK_CLASSES
    assert [item.call_id for item in raw.parse().output] == [call["id"] for call in CALLS]


@SQLITE_STACK
async def test_every_client_call_streams_as_its_item_type(stack: Stack) -> None:
    stack.script("streamed", [{"tool_calls": CALLS}])

    async with stack.http.stream(
        "POST",
        "/v1/responses",
        json={"model": "streamed", "input": "Use every tool.", "tools": TOOLS, "stream": True},
    ) as reply:
        assert reply.headers["stepline-dropped-tools"] == "web_search"
        events = await read_sse(reply)

    for event in events:
        EVENTS.validate_python(event)
    assert _shape(events) == [
        ("response.created", None),
        ("response.in_progress", None),
        ("response.output_item.added", 0),
        ("response.function_call_arguments.delta", 0),
        ("response.output_item.added", 1),
        ("response.function_call_arguments.delta", 1),
        ("response.output_item.added", 2),
        ("response.custom_tool_call_input.delta", 2),
        ("response.output_item.added", 3),
        ("response.custom_tool_call_input.delta", 3),
        *(
            pair
            for index in range(4, 9)
            for pair in [
                ("response.output_item.added", index),
                ("response.output_item.done", index),
            ]
        ),
        ("response.function_call_arguments.done", 0),
        ("response.output_item.done", 0),
        ("response.function_call_arguments.done", 1),
        ("response.output_item.done", 1),
        ("response.custom_tool_call_input.done", 2),
        ("response.output_item.done", 2),
        ("response.custom_tool_call_input.done", 3),
        ("response.output_item.done", 3),
        ("response.completed", None),
    ]
    for index, text in [(2, NOTE), (3, SPELL)]:
        pieces = [
            e["delta"]
            for e in events
            if e["type"] == "response.custom_tool_call_input.delta" and e["output_index"] == index
        ]
        assert len(pieces) > 1 and "".join(pieces) == text
        (done,) = [
            e
            for e in events
            if e["type"] == "response.custom_tool_call_input.done" and e["output_index"] == index
        ]
        assert done["input"] == text
    final = events[-1]["response"]
    assert _without_ids(final["output"]) == CALL_ITEMS
    assert _sdk_view(final) == SDK_CLASSES
    added = [e["item"]["id"] for e in events if e["type"] == "response.output_item.added"]
    assert added == [item["id"] for item in final["output"]]
    # the SDK's own stream helper assembles the same items
    async with stack.client.responses.stream(
        model="streamed",
        input="Use every tool.",
        tools=TOOLS,
    ) as stream:
        assembled = await stream.get_final_response()
    dumped = [item.model_dump(exclude_unset=True) for item in assembled.output]
    for item in dumped:
        item.pop("parsed_arguments", None)  # the SDK's own addition to a function call
    assert _without_ids(dumped) == CALL_ITEMS


# -- 2. every input item type continues ---------------------------------------

#: the assistant message of CALLS as the upstream reads it back
CALLS_MESSAGE: dict[str, Any] = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": call["id"],
            "type": "function",
            "function": {
                "name": call["name"],
                "arguments": orjson.dumps(call["arguments"]).decode(),
            },
        }
        for call in CALLS
    ],
}


async def _continue(stack: Stack, name: str, how: str) -> dict[str, Any]:
    """Answer every call of CALLS with its output item, the way ``how`` says; return the
    upstream's request for the next turn."""
    if how == "previous_response_id":
        first = (await _every_call(stack, name)).parse()
        follow_up = await stack.client.responses.create(
            model=name, input=OUTPUTS, tools=TOOLS, previous_response_id=first.id
        )
    else:
        first = (await _every_call(stack, name, store=False)).parse()
        history = [
            {"role": "user", "content": "Use every tool."},
            *(item.model_dump(exclude_none=True) for item in first.output),
            *OUTPUTS,
        ]
        follow_up = await stack.client.responses.create(
            model=name, input=history, tools=TOOLS, store=False
        )
    assert (first.status, follow_up.status, follow_up.output_text) == (
        "completed",
        "completed",
        "All done.",
    )
    requests = stack.model.requests(name)
    assert len(requests) == 2
    return requests[1]


@pytest.mark.parametrize("how", ["previous_response_id", "resent_history"])
async def test_every_output_item_type_continues_the_calls(stack: Stack, how: str) -> None:
    sent = await _continue(stack, "continued", how)

    user, calls, *results = sent["messages"]
    assert user == {"role": "user", "content": "Use every tool."}
    assert [(c["id"], c["function"]["name"]) for c in calls["tool_calls"]] == [
        (call["id"], call["name"]) for call in CALLS
    ]
    assert results == RESULT_MESSAGES
    # the tool the tool_search output loaded is offered from now on
    assert sent["tools"][-1] == _chat_function(
        "forecast", "Tomorrow's weather.", _object(city={"type": "string"})
    )


def _read(calls: list[dict[str, Any]]) -> list[tuple[str, str, str, Any]]:
    """Tool calls as the model reads them: the arguments as JSON values (a client that
    resends an item may order its keys otherwise)."""
    return [
        (
            call["id"],
            call["type"],
            call["function"]["name"],
            orjson.loads(call["function"]["arguments"]),
        )
        for call in calls
    ]


@pytest.mark.parametrize("how", ["previous_response_id", "resent_history"])
@SQLITE_STACK
async def test_the_calls_read_back_as_the_model_made_them(stack: Stack, how: str) -> None:
    sent = await _continue(stack, "read_back", how)

    calls = sent["messages"][1]
    assert {key: value for key, value in calls.items() if key != "tool_calls"} == {
        "role": "assistant",
        "content": None,
    }
    assert _read(calls["tool_calls"]) == _read(CALLS_MESSAGE["tool_calls"])
    if how == "previous_response_id":  # the stored call: exactly as the model wrote it
        assert calls == CALLS_MESSAGE


# -- custom tools on an upstream that takes them natively (custom_tools = "native") --

NATIVE_CUSTOM_TOOLS = [
    {
        "type": "custom",
        "custom": {"name": "note", "description": "Write a note.", "format": {"type": "text"}},
    },
    {
        "type": "custom",
        "custom": {
            "name": "spell",
            "description": "Spell it out.",
            "format": {
                "type": "grammar",
                "grammar": {"syntax": "lark", "definition": "start: /[a-z ]+/"},
            },
        },
    },
]

#: the native custom call and its result, as the upstream reads them back
NATIVE_CALL_MESSAGES = [
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_spell", "type": "custom", "custom": {"name": "spell", "input": SPELL}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_spell", "content": "ok"},
]

SPELL_OUTPUT: ResponseInputItemParam = {
    "type": "custom_tool_call_output",
    "call_id": "call_spell",
    "output": "ok",
}


async def _native_stack(configured: Configured, name: str) -> Stack:
    stack = await configured(_upstream(custom_tools="native"))
    call = {"kind": "custom", "id": "call_spell", "name": "spell", "input": SPELL}
    stack.script(name, [{"tool_calls": [call]}, {"content": "Spelt."}])
    return stack


CUSTOM_TOOLS = [tool for tool in TOOLS if tool["type"] == "custom"]


@SQLITE_CONFIGURED
async def test_native_custom_tools_are_offered_as_custom_tools(configured: Configured) -> None:
    stack = await configured(_upstream(custom_tools="native"))
    stack.script("offered_native", [{"content": "Nothing to spell."}])

    response = await stack.client.responses.create(
        model="offered_native",
        input="Spell it.",
        tools=CUSTOM_TOOLS,
    )

    assert response.status == "completed"
    (offered,) = stack.model.requests("offered_native")
    assert offered["tools"] == NATIVE_CUSTOM_TOOLS


@SQLITE_CONFIGURED
async def test_a_native_custom_call_comes_back_as_a_custom_tool_call(
    configured: Configured,
) -> None:
    stack = await _native_stack(configured, "native")

    async with stack.http.stream(
        "POST",
        "/v1/responses",
        json={
            "model": "native",
            "input": "Spell it.",
            "tools": CUSTOM_TOOLS,
            "stream": True,
            "store": False,
        },
    ) as reply:
        events = await read_sse(reply)
    final = events[-1]["response"]
    follow_up = await stack.client.responses.create(
        model="native",
        input=[{"role": "user", "content": "Spell it."}, *final["output"], SPELL_OUTPUT],
        tools=CUSTOM_TOOLS,
        store=False,
    )

    pieces = [e["delta"] for e in events if e["type"] == "response.custom_tool_call_input.delta"]
    assert len(pieces) > 1 and "".join(pieces) == SPELL
    assert _shape(events) == [
        ("response.created", None),
        ("response.in_progress", None),
        ("response.output_item.added", 0),
        ("response.custom_tool_call_input.delta", 0),
        ("response.custom_tool_call_input.done", 0),
        ("response.output_item.done", 0),
        ("response.completed", None),
    ]
    assert _without_ids(final["output"]) == [CALL_ITEMS[3]]
    assert _sdk_view(final) == [SDK_CLASSES[3]]
    assert stack.model.requests("native")[1]["messages"][1:] == NATIVE_CALL_MESSAGES
    assert follow_up.output_text == "Spelt."


@SQLITE_CONFIGURED
async def test_native_custom_call_continues_with_previous_response_id(
    configured: Configured,
) -> None:
    stack = await _native_stack(configured, "native_chain")
    first = await stack.client.responses.create(
        model="native_chain",
        input="Spell it.",
        tools=CUSTOM_TOOLS,
    )

    follow_up = await stack.client.responses.create(
        model="native_chain",
        input=[SPELL_OUTPUT],
        tools=CUSTOM_TOOLS,
        previous_response_id=first.id,
    )

    assert (first.status, follow_up.output_text) == ("completed", "Spelt.")
    assert stack.model.requests("native_chain")[1]["messages"][1:] == NATIVE_CALL_MESSAGES


@SQLITE_CONFIGURED
async def test_native_custom_call_of_earlier_input_reads_back_as_custom(
    configured: Configured,
) -> None:
    stack = await configured(_upstream(custom_tools="native"))
    stack.script("native_input", [{"content": "Spelt."}], repeat_last=True)
    call: ResponseInputItemParam = {
        "type": "custom_tool_call",
        "call_id": "call_spell",
        "name": "spell",
        "input": SPELL,
    }
    first = await stack.client.responses.create(
        model="native_input",
        input=[{"role": "user", "content": "Spell it."}, call, SPELL_OUTPUT],
        tools=CUSTOM_TOOLS,
    )

    await stack.client.responses.create(
        model="native_input",
        input="Thanks.",
        tools=CUSTOM_TOOLS,
        previous_response_id=first.id,
    )

    direct, chained = stack.model.requests("native_input")
    assert direct["messages"][1:] == NATIVE_CALL_MESSAGES
    assert chained["messages"][1:3] == NATIVE_CALL_MESSAGES


# -- 3. item_reference --------------------------------------------------------


async def test_item_reference_names_a_stored_output_item(stack: Stack) -> None:
    stack.script(
        "referenced",
        [
            {"content": "Let me look.", "tool_calls": [CALLS[0]]},
            {"content": "It is a server."},
        ],
    )
    first = await stack.client.responses.create(
        model="referenced",
        input="What is stepline?",
        tools=TOOLS[:1],
    )
    message, call = first.output
    assert message.id is not None and call.id is not None

    second = await stack.client.responses.create(
        model="referenced",
        input=[
            {"role": "user", "content": "What is stepline?"},
            {"type": "item_reference", "id": message.id},
            {"type": "item_reference", "id": call.id},
            {"type": "function_call_output", "call_id": "call_fn", "output": "a server"},
        ],
        tools=TOOLS[:1],
    )

    assert second.output_text == "It is a server."
    assert stack.model.requests("referenced")[1]["messages"] == [
        {"role": "user", "content": "What is stepline?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [CALLS_MESSAGE["tool_calls"][0]],
        },
        {"role": "tool", "tool_call_id": "call_fn", "content": "a server"},
    ]


@SQLITE_STACK
async def test_item_reference_to_an_unknown_item_is_a_400(stack: Stack) -> None:
    reply = await stack.http.post(
        "/v1/responses",
        json={
            "model": "unknown_ref",
            "input": [
                {"role": "user", "content": "Hi."},
                {"type": "item_reference", "id": "msg_nowhere"},
            ],
        },
    )

    assert (reply.status_code, reply.json()) == (
        400,
        {
            "error": {
                "message": "Item with id 'msg_nowhere' not found.",
                "type": "invalid_request_error",
                "param": "input[1].id",
                "code": None,
            }
        },
    )


async def test_item_reference_to_another_keys_item_is_a_400(configured: Configured) -> None:
    tokens = {"alice": new_token(), "bob": new_token()}

    def keys(data: dict[str, Any]) -> None:
        data["keys"] = {name: {"hash": hash_token(token)} for name, token in tokens.items()}

    stack = await configured(keys)
    stack.script("owned", [{"content": "Mine."}], repeat_last=True)
    auth = {name: {"Authorization": f"Bearer {token}"} for name, token in tokens.items()}
    first = await stack.http.post(
        "/v1/responses", json={"model": "owned", "input": "Hi."}, headers=auth["alice"]
    )
    reference: dict[str, Any] = {
        "model": "owned",
        "input": [{"type": "item_reference", "id": first.json()["output"][0]["id"]}],
    }

    by_owner = await stack.http.post("/v1/responses", json=reference, headers=auth["alice"])
    by_other = await stack.http.post("/v1/responses", json=reference, headers=auth["bob"])

    assert by_owner.status_code == 200
    assert (by_other.status_code, by_other.json()) == (
        400,
        {
            "error": {
                "message": f"Item with id '{reference['input'][0]['id']}' not found.",
                "type": "invalid_request_error",
                "param": "input[0].id",
                "code": None,
            }
        },
    )
    assert stack.model.requests("owned")[1]["messages"] == [
        {"role": "assistant", "content": "Mine."}
    ]


# -- 4. reasoning -------------------------------------------------------------

THOUGHT = "Two plus two is four."
THINKING = [{"reasoning": THOUGHT, "content": "4"}]


def _reasoning_item(summary: bool) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "status": "completed",
        "summary": [{"type": "summary_text", "text": THOUGHT}] if summary else [],
        "content": [{"type": "reasoning_text", "text": THOUGHT}],
    }


@SQLITE_STACK
async def test_reasoning_summary_auto_fills_and_streams_the_summary(stack: Stack) -> None:
    stack.script("summarised", THINKING, repeat_last=True)

    plain = await stack.http.post("/v1/responses", json={"model": "summarised", "input": "2+2?"})
    async with stack.http.stream(
        "POST",
        "/v1/responses",
        json={
            "model": "summarised",
            "input": "2+2?",
            "reasoning": {"summary": "auto"},
            "stream": True,
        },
    ) as reply:
        events = await read_sse(reply)

    assert _without_ids(plain.json()["output"])[0] == _reasoning_item(summary=False)
    for event in events:
        EVENTS.validate_python(event)
    assert _shape(events) == [
        ("response.created", None),
        ("response.in_progress", None),
        ("response.output_item.added", 0),
        ("response.reasoning_summary_part.added", 0),
        ("response.content_part.added", 0),
        ("response.reasoning_summary_text.delta", 0),
        ("response.reasoning_summary_text.done", 0),
        ("response.reasoning_summary_part.done", 0),
        ("response.reasoning_text.done", 0),
        ("response.content_part.done", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.content_part.added", 1),
        ("response.output_text.delta", 1),
        ("response.output_text.done", 1),
        ("response.content_part.done", 1),
        ("response.output_item.done", 1),
        ("response.completed", None),
    ]
    pieces = [e["delta"] for e in events if e["type"] == "response.reasoning_summary_text.delta"]
    assert len(pieces) > 1 and "".join(pieces) == THOUGHT
    final = events[-1]["response"]
    assert _without_ids(final["output"])[0] == _reasoning_item(summary=True)
    assert Response.model_validate(final).output[0].summary[0].text == THOUGHT  # type: ignore[union-attr]


@SQLITE_CONFIGURED
async def test_encrypted_reasoning_goes_back_to_the_upstream(configured: Configured) -> None:
    stack = await configured(_upstream(reasoning_replay="reasoning_content"))
    stack.script("sealed", THINKING, repeat_last=True)
    first = await stack.client.responses.create(
        model="sealed", input="2+2?", include=["reasoning.encrypted_content"], store=False
    )
    assert first.status == "completed"
    reasoning, answer = (item.model_dump(exclude_none=True) for item in first.output)
    token = reasoning["encrypted_content"]
    # what a client that keeps its own history sends back: the sealed text only
    sealed = {"type": "reasoning", "id": reasoning["id"], "summary": [], "encrypted_content": token}
    head, body = token.rsplit(".", 1)
    middle = len(body) // 2
    flipped = body[:middle] + ("A" if body[middle] != "A" else "B") + body[middle + 1 :]
    tampered = {**sealed, "encrypted_content": f"{head}.{flipped}"}

    for item in (sealed, tampered):
        again = await stack.client.responses.create(
            model="sealed",
            input=[
                {"role": "user", "content": "2+2?"},
                item,  # type: ignore[list-item]
                answer,  # type: ignore[list-item]
                {"role": "user", "content": "Sure?"},
            ],
            store=False,
        )
        assert again.status == "completed"

    assert token.startswith("sl1.") and THOUGHT not in token
    assert _without_ids([reasoning])[0] == {
        **_reasoning_item(summary=False),
        "encrypted_content": token,
    }
    _, replayed, forged = stack.model.requests("sealed")
    assert replayed["messages"] == [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": THOUGHT},
        {"role": "user", "content": "Sure?"},
    ]
    assert forged["messages"] == [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Sure?"},
    ]


# -- 5. no silent no-ops --------------------------------------------------------


@SQLITE_STACK
async def test_unknown_fields_are_named_in_a_header(stack: Stack) -> None:
    stack.script("lenient", [{"content": "Hi."}], repeat_last=True)
    request = {"model": "lenient", "input": "Hi.", "client_metadata": {"turn": "1"}}

    known = await stack.http.post("/v1/responses", json=request)
    unknown = await stack.http.post(
        "/v1/responses", json={**request, "zeta": 1, "frobnicate": True}
    )
    async with stack.http.stream(
        "POST", "/v1/responses", json={**request, "frobnicate": True, "stream": True}
    ) as streamed:
        await read_sse(streamed)

    assert (known.status_code, unknown.status_code, streamed.status_code) == (200, 200, 200)
    assert "stepline-ignored-fields" not in known.headers
    assert unknown.headers["stepline-ignored-fields"] == "frobnicate, zeta"
    assert streamed.headers["stepline-ignored-fields"] == "frobnicate"


@SQLITE_CONFIGURED
async def test_unknown_fields_and_unplayed_hosted_tools_are_refused_when_configured(
    configured: Configured,
) -> None:
    stack = await configured(_protocol(unknown_fields="reject", unmapped_hosted_tools="reject"))
    stack.script("strict", [{"content": "Hi."}], repeat_last=True)

    known = await stack.http.post(
        "/v1/responses",
        json={"model": "strict", "input": "Hi.", "prompt_cache_key": "k", "client_metadata": {}},
    )
    unknown = await stack.http.post(
        "/v1/responses", json={"model": "strict", "input": "Hi.", "frobnicate": True}
    )
    hosted = await stack.http.post(
        "/v1/responses",
        json={"model": "strict", "input": "Hi.", "tools": [TOOLS[0], {"type": "web_search"}]},
    )

    assert known.status_code == 200
    assert (unknown.status_code, unknown.json()) == (
        400,
        {
            "error": {
                "message": "Unknown parameter: 'frobnicate'.",
                "type": "invalid_request_error",
                "param": "frobnicate",
                "code": "unknown_parameter",
            }
        },
    )
    assert (hosted.status_code, hosted.json()["error"]["param"]) == (400, "tools")
    assert len(stack.model.requests("strict")) == 1


@SQLITE_STACK
async def test_fields_stepline_cannot_honour_are_refused_naming_the_param(stack: Stack) -> None:
    stack.script("refused", [{"content": "Hi."}], repeat_last=True)
    cases: dict[str, dict[str, Any]] = {
        "prompt": {"prompt": {"id": "pmpt_1", "variables": {"city": "Rome"}}},
        "context_management": {"context_management": [{"type": "compaction"}]},
        "truncation": {"truncation": "sometimes"},
        "include": {"include": ["reasoning.encrypted_content", "file_search_call.everything"]},
    }

    seen = {}
    for case, fields in cases.items():
        reply = await stack.http.post(
            "/v1/responses", json={"model": "refused", "input": "Hi.", **fields}
        )
        error = reply.json()["error"]
        seen[case] = (reply.status_code, error["type"], error["param"])

    assert seen == {
        "prompt": (400, "invalid_request_error", "prompt"),
        "context_management": (
            400,
            "invalid_request_error",
            "context_management[0].compact_threshold",
        ),
        "truncation": (400, "invalid_request_error", "truncation"),
        "include": (400, "invalid_request_error", "include[1]"),
    }
    assert stack.model.requests("refused") == []


@SQLITE_STACK
async def test_text_verbosity_logprobs_and_identifiers_reach_the_upstream(stack: Stack) -> None:
    stack.script("forwarded", [{"content": "Hi there."}])

    response = await stack.client.responses.create(
        model="forwarded",
        input="Hi.",
        text={"verbosity": "low"},
        top_logprobs=2,
        prompt_cache_key="thread-1",
        safety_identifier="user-1",
    )

    (body,) = stack.model.requests("forwarded")
    forwarded = ("verbosity", "logprobs", "top_logprobs", "prompt_cache_key", "safety_identifier")
    assert {name: body.get(name) for name in forwarded} == {
        "verbosity": "low",
        "logprobs": True,
        "top_logprobs": 2,
        "prompt_cache_key": "thread-1",
        "safety_identifier": "user-1",
    }
    assert response.text is not None and response.text.verbosity == "low"
    assert (response.top_logprobs, response.prompt_cache_key, response.safety_identifier) == (
        2,
        "thread-1",
        "user-1",
    )
    message = response.output[0]
    assert isinstance(message, ResponseOutputMessage)
    part = message.content[0]
    assert isinstance(part, ResponseOutputText) and part.logprobs is not None
    logprobs = part.logprobs
    assert [[top.token for top in entry.top_logprobs] for entry in logprobs] == [
        ["Hi", "<alt1>"],
        [" there.", "<alt1>"],
    ]


# -- 6. a hosted tool played by a server tool ---------------------------------

SEARCH_TURNS: list[dict[str, Any]] = [
    {"tool_calls": [{"id": "call_ws", "name": "web_search", "arguments": {"query": "rome"}}]},
    {"content": "Rome is sunny."},
]


async def test_web_search_is_played_by_a_server_tool(configured: Configured) -> None:
    stack = await configured(_protocol(hosted_tools={"web_search": "search"}))
    stack.script("searching", SEARCH_TURNS)

    raw = await stack.client.responses.with_raw_response.create(
        model="searching",
        input="Weather in Rome?",
        tools=[{"type": "web_search"}],
        include=["web_search_call.action.sources"],
    )

    assert "stepline-dropped-tools" not in raw.headers
    first, second = stack.model.requests("searching")
    assert first["tools"] == [
        _chat_function("web_search", "Search the web.", _object(query={"type": "string"}))
    ]
    assert stack.tools.bodies["search"] == [{"query": "rome"}]
    results = '{"results":[{"url":"https://example.test/rome","title":"rome"}]}'
    assert second["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_ws",
                    "type": "function",
                    "function": {"name": "web_search", "arguments": '{"query":"rome"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_ws", "content": results},
    ]
    body = raw.http_response.json()
    assert body["status"] == "completed"
    search, answer = body["output"]
    assert re.fullmatch(r"ws_[0-9a-f]{32}", search["id"])  # unique, not the model's call id
    assert search == {
        "id": search["id"],
        "type": "web_search_call",
        "status": "completed",
        "action": {
            "type": "search",
            "query": "rome",
            "sources": [{"type": "url", "url": "https://example.test/rome"}],
        },
    }
    assert answer["content"][0]["text"] == "Rome is sunny."
    assert _sdk_view(body) == [
        ("ResponseFunctionWebSearch", "ws"),
        ("ResponseOutputMessage", "msg"),
    ]


@SQLITE_CONFIGURED
async def test_web_search_streams_its_progress_without_sources_unless_included(
    configured: Configured,
) -> None:
    stack = await configured(_protocol(hosted_tools={"web_search": "search"}))
    stack.script("search_stream", SEARCH_TURNS)

    async with stack.http.stream(
        "POST",
        "/v1/responses",
        json={
            "model": "search_stream",
            "input": "Weather in Rome?",
            "tools": [{"type": "web_search"}],
            "stream": True,
        },
    ) as reply:
        events = await read_sse(reply)

    for event in events:
        EVENTS.validate_python(event)
    assert _shape(events) == [
        ("response.created", None),
        ("response.in_progress", None),
        ("response.output_item.added", 0),
        ("response.web_search_call.in_progress", 0),
        ("response.web_search_call.searching", 0),
        ("response.web_search_call.completed", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.content_part.added", 1),
        ("response.output_text.delta", 1),
        ("response.output_text.done", 1),
        ("response.content_part.done", 1),
        ("response.output_item.done", 1),
        ("response.completed", None),
    ]
    searched = {"type": "search", "query": "rome"}
    done = next(e for e in events if e["type"] == "response.output_item.done")
    ws_id = done["item"]["id"]
    assert re.fullmatch(r"ws_[0-9a-f]{32}", ws_id)
    assert done["item"] == {
        "id": ws_id,
        "type": "web_search_call",
        "status": "completed",
        "action": searched,
    }
    assert events[-1]["response"]["output"][0] == done["item"]
    progress = [e["item_id"] for e in events if e["type"].startswith("response.web_search_call.")]
    assert progress == [ws_id] * 3


@SQLITE_CONFIGURED
async def test_a_hosted_tool_outside_the_keys_tools_is_not_dropped_silently(
    configured: Configured,
) -> None:
    token = new_token()

    def change(data: dict[str, Any]) -> None:
        data["keys"] = {"narrow": {"hash": hash_token(token), "tools": ["weather"]}}
        data["protocol"]["hosted_tools"] = {"web_search": "search"}

    stack = await configured(change)
    stack.script("narrow_search", SEARCH_TURNS)

    reply = await stack.http.post(
        "/v1/responses",
        json={"model": "narrow_search", "input": "Rome?", "tools": [{"type": "web_search"}]},
        headers={"Authorization": f"Bearer {token}"},
    )

    assert stack.model.requests("narrow_search")[0].get("tools") is None  # never offered
    assert reply.status_code == 403 or reply.headers.get("stepline-dropped-tools") == "web_search"
