"""``ClientTools``: the client's tools as the upstream sees them, and their calls as items."""

from __future__ import annotations

import itertools
import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepline._protocol.client_tools import (
    ClientTool,
    ClientTools,
    CustomInputDecoder,
    call_item,
    custom_input,
)
from stepline._protocol.request import ResponseRequest, parse_request
from stepline.errors import InvalidRequest


def request(
    *tools: dict[str, Any], tool_choice: Any = "auto", input: Any = "hi"
) -> ResponseRequest:
    return parse_request(
        {"model": "m", "input": input, "tools": list(tools), "tool_choice": tool_choice}
    )


def tools_of(*tools: dict[str, Any], native_custom: bool = False) -> ClientTools:
    return ClientTools.of(request(*tools), native_custom=native_custom)


def only_definition(tool: dict[str, Any], *, native_custom: bool = False) -> dict[str, Any]:
    req = request(tool)
    definitions = ClientTools.of(req, native_custom=native_custom).definitions(req)
    assert len(definitions) == 1
    return definitions[0]


def function(name: str, **fields: Any) -> dict[str, Any]:
    return {"type": "function", "name": name, **fields}


def as_input_item(item: dict[str, Any]) -> Any:
    """A call item as a client sends it back in ``input``."""
    return parse_request({"model": "m", "input": [item]}).input[0]


def with_parsed_arguments(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """A chat ``tool_calls`` entry with its arguments parsed, to compare JSON by value."""
    if entry is None or entry["type"] != "function":
        return entry
    function_ = entry["function"]
    return {**entry, "function": {**function_, "arguments": orjson.loads(function_["arguments"])}}


# -- definitions ------------------------------------------------------------------


def test_function_definition_keeps_description_parameters_and_strict() -> None:
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}}
    assert only_definition(
        function("weather", description="Weather now.", parameters=parameters, strict=True)
    ) == {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Weather now.",
            "parameters": parameters,
            "strict": True,
        },
    }


def test_bare_function_gets_empty_object_parameters_and_no_description_or_strict() -> None:
    assert only_definition(function("ping")) == {
        "type": "function",
        "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}},
    }


def test_strict_false_is_sent_not_dropped() -> None:
    assert only_definition(function("ping", strict=False)) == {
        "type": "function",
        "function": {
            "name": "ping",
            "parameters": {"type": "object", "properties": {}},
            "strict": False,
        },
    }


def test_namespace_tools_are_named_namespace__name_and_keep_their_namespace() -> None:
    tools = tools_of(
        {
            "type": "namespace",
            "name": "agents",
            "description": "Sub-agents.",
            "tools": [
                function("spawn", description="Start one."),
                {"type": "custom", "name": "note"},
            ],
        }
    )
    assert tools.by_chat_name == {
        "agents__spawn": ClientTool(
            kind="function",
            chat_name="agents__spawn",
            name="spawn",
            namespace="agents",
            definition={
                "type": "function",
                "function": {
                    "name": "agents__spawn",
                    "description": "Start one.",
                    "parameters": {"type": "object", "properties": {}},
                },
            },
        ),
        "agents__note": ClientTool(
            kind="custom",
            chat_name="agents__note",
            name="note",
            namespace="agents",
            definition={
                "type": "function",
                "function": {
                    "name": "agents__note",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "input": {
                                "type": "string",
                                "description": "The tool's input, as free text.",
                            }
                        },
                        "required": ["input"],
                        "additionalProperties": False,
                    },
                },
            },
        ),
    }


def _custom_as_function(name: str, described: str, description: str | None) -> dict[str, Any]:
    function_: dict[str, Any] = {
        "name": name,
        "parameters": {
            "type": "object",
            "properties": {"input": {"type": "string", "description": described}},
            "required": ["input"],
            "additionalProperties": False,
        },
    }
    if description is not None:
        function_["description"] = description
    return {"type": "function", "function": function_}


GRAMMAR = {"type": "grammar", "syntax": "lark", "definition": 'start: "a"+'}


@pytest.mark.parametrize(
    ("tool", "definition"),
    [
        (
            {"type": "custom", "name": "patch", "description": "Apply a patch."},
            _custom_as_function("patch", "The tool's input, as free text.", "Apply a patch."),
        ),
        (
            {"type": "custom", "name": "patch", "format": {"type": "text"}},
            _custom_as_function("patch", "The tool's input, as free text.", None),
        ),
        (
            {"type": "custom", "name": "patch", "format": GRAMMAR},
            _custom_as_function(
                "patch",
                'The tool\'s input, as free text that follows this lark grammar:\nstart: "a"+',
                None,
            ),
        ),
    ],
    ids=["no-format", "text", "grammar"],
)
def test_custom_tool_as_a_function_with_one_input_string(
    tool: dict[str, Any], definition: dict[str, Any]
) -> None:
    assert only_definition(tool) == definition
    assert tools_of(tool).get("patch") == ClientTool(
        kind="custom", chat_name="patch", name="patch", definition=definition, native=False
    )


@pytest.mark.parametrize(
    ("tool", "definition"),
    [
        (
            {"type": "custom", "name": "patch", "description": "Apply a patch."},
            {
                "type": "custom",
                "custom": {
                    "name": "patch",
                    "description": "Apply a patch.",
                    "format": {"type": "text"},
                },
            },
        ),
        (
            {"type": "custom", "name": "patch", "format": GRAMMAR},
            {
                "type": "custom",
                "custom": {
                    "name": "patch",
                    "format": {
                        "type": "grammar",
                        "grammar": {"syntax": "lark", "definition": 'start: "a"+'},
                    },
                },
            },
        ),
    ],
    ids=["text", "grammar"],
)
def test_custom_tool_as_a_native_custom_tool(
    tool: dict[str, Any], definition: dict[str, Any]
) -> None:
    assert only_definition(tool, native_custom=True) == definition
    assert tools_of(tool, native_custom=True).get("patch") == ClientTool(
        kind="custom", chat_name="patch", name="patch", definition=definition, native=True
    )


def test_native_custom_leaves_functions_functions() -> None:
    assert only_definition(function("ping"), native_custom=True) == {
        "type": "function",
        "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}},
    }


BUILTIN_DEFINITIONS: dict[str, dict[str, Any]] = {
    "local_shell": {
        "type": "function",
        "function": {
            "name": "local_shell",
            "description": "Run a command on the user's machine.",
            "parameters": {
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
        },
    },
    "shell": {
        "type": "function",
        "function": {
            "name": "shell",
            "description": "Run shell commands on the user's machine.",
            "parameters": {
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
        },
    },
    "apply_patch": {
        "type": "function",
        "function": {
            "name": "apply_patch",
            "description": "Create, update or delete a file in the user's workspace.",
            "parameters": {
                "type": "object",
                "properties": {
                    "type": {
                        "type": "string",
                        "enum": ["create_file", "update_file", "delete_file"],
                    },
                    "path": {
                        "type": "string",
                        "description": "The file, relative to the workspace.",
                    },
                    "diff": {
                        "type": "string",
                        "description": "The change as a V4A diff (not for delete_file).",
                    },
                },
                "required": ["type", "path"],
            },
        },
    },
}

COMPUTER_PARAMETERS = {
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
}
COMPUTER_DESCRIPTION = "Control the user's computer: one mouse, keyboard or screenshot action."


@pytest.mark.parametrize("kind", sorted(BUILTIN_DEFINITIONS))
def test_builtin_definition(kind: str) -> None:
    assert only_definition({"type": kind}) == BUILTIN_DEFINITIONS[kind]
    assert tools_of({"type": kind}).get(kind) == ClientTool(
        kind=kind,  # type: ignore[arg-type]
        chat_name=kind,
        name=kind,
        definition=BUILTIN_DEFINITIONS[kind],
    )


@pytest.mark.parametrize("kind", ["computer", "computer_use_preview"])
def test_computer_is_offered_as_computer_with_its_display(kind: str) -> None:
    tool = {"type": kind, "display_width": 1280, "display_height": 800, "environment": "linux"}
    definition = {
        "type": "function",
        "function": {
            "name": "computer",
            "description": COMPUTER_DESCRIPTION + " The display is 1280x800 (linux).",
            "parameters": COMPUTER_PARAMETERS,
        },
    }
    assert tools_of(tool).by_chat_name == {
        "computer": ClientTool(
            kind="computer", chat_name="computer", name="computer", definition=definition
        )
    }


def test_computer_without_a_display_has_the_plain_description() -> None:
    assert only_definition({"type": "computer"}) == {
        "type": "function",
        "function": {
            "name": "computer",
            "description": COMPUTER_DESCRIPTION,
            "parameters": COMPUTER_PARAMETERS,
        },
    }


def test_computer_display_without_environment_says_unknown() -> None:
    definition = only_definition({"type": "computer", "display_width": 10, "display_height": 20})
    assert definition["function"]["description"] == (
        COMPUTER_DESCRIPTION + " The display is 10x20 (unknown)."
    )


def test_client_tool_search_has_default_description_and_parameters() -> None:
    tools = tools_of({"type": "tool_search", "execution": "client"})
    assert tools.by_chat_name == {
        "tool_search": ClientTool(
            kind="tool_search",
            chat_name="tool_search",
            name="tool_search",
            definition={
                "type": "function",
                "function": {
                    "name": "tool_search",
                    "description": "Find more tools for the next step.",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "query": {"type": "string", "description": "What the tools should do."}
                        },
                        "required": ["query"],
                    },
                },
            },
        )
    }
    assert tools.hosted == []


def test_client_tool_search_keeps_its_own_description_and_parameters() -> None:
    parameters = {"type": "object", "properties": {"goal": {"type": "string"}}}
    assert only_definition(
        {
            "type": "tool_search",
            "execution": "client",
            "description": "Look up tools.",
            "parameters": parameters,
        }
    ) == {
        "type": "function",
        "function": {
            "name": "tool_search",
            "description": "Look up tools.",
            "parameters": parameters,
        },
    }


def test_hosted_tools_and_server_tool_search_are_listed_as_hosted_not_offered() -> None:
    req = request(
        {"type": "web_search"},
        {"type": "tool_search"},
        function("ping"),
        {"type": "file_search", "vector_store_ids": ["vs_1"]},
        {"type": "tool_search", "execution": "server"},
        {"type": "web_search_preview_2025_03_11"},
        {"type": "code_interpreter", "container": {"type": "auto"}},
        {"type": "image_generation"},
        {"type": "mcp", "server_label": "docs", "server_url": "https://mcp.test"},
    )
    tools = ClientTools.of(req)
    assert tools.hosted == [
        "web_search",
        "tool_search",
        "file_search",
        "tool_search",
        "web_search_preview_2025_03_11",
        "code_interpreter",
        "image_generation",
    ]
    assert list(tools.by_chat_name) == ["ping"]
    assert tools.definitions(req) == [
        {
            "type": "function",
            "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}},
        }
    ]


def test_definitions_keep_the_request_order() -> None:
    req = request({"type": "shell"}, function("b"), {"type": "apply_patch"}, function("a"))
    assert [d["function"]["name"] for d in ClientTools.of(req).definitions(req)] == [
        "shell",
        "b",
        "apply_patch",
        "a",
    ]


@pytest.mark.parametrize(
    "tools",
    [
        [function("shell"), {"type": "shell"}],
        [function("computer"), {"type": "computer_use_preview"}],
        [function("ns__f"), {"type": "namespace", "name": "ns", "tools": [function("f")]}],
        [
            {"type": "custom", "name": "tool_search"},
            {"type": "tool_search", "execution": "client"},
        ],
    ],
    ids=["function-vs-shell", "function-vs-computer", "function-vs-namespace", "custom-vs-search"],
)
def test_two_tools_of_one_chat_name_are_refused(tools: list[dict[str, Any]]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        ClientTools.of(request(*tools))
    assert caught.value.param == "tools"


@pytest.mark.parametrize(
    ("kind", "item_type"),
    [
        ("function", "function_call"),
        ("custom", "custom_tool_call"),
        ("local_shell", "local_shell_call"),
        ("shell", "shell_call"),
        ("apply_patch", "apply_patch_call"),
        ("computer", "computer_call"),
        ("tool_search", "tool_search_call"),
    ],
)
def test_item_type_of_each_kind(kind: Any, item_type: str) -> None:
    assert ClientTool(kind=kind, chat_name="x", name="x", definition={}).item_type == item_type


# -- allowed_tools, forced, get ------------------------------------------------------

ALL_KINDS = (
    function("weather"),
    {"type": "custom", "name": "patch"},
    {"type": "namespace", "name": "agents", "tools": [function("spawn"), function("wait")]},
    {"type": "local_shell"},
    {"type": "shell"},
    {"type": "apply_patch"},
    {"type": "computer"},
    {"type": "tool_search", "execution": "client"},
)
ALL_CHAT_NAMES = [
    "weather",
    "patch",
    "agents__spawn",
    "agents__wait",
    "local_shell",
    "shell",
    "apply_patch",
    "computer",
    "tool_search",
]


def allowed(
    *allowed_tools: dict[str, Any], declared: tuple[dict[str, Any], ...] = ALL_KINDS
) -> Any:
    req = request(*declared, tool_choice={"type": "allowed_tools", "tools": list(allowed_tools)})
    tools = ClientTools.of(req)
    return [d["function"]["name"] for d in tools.definitions(req)], tools.chat_names(req)


@pytest.mark.parametrize("tool_choice", ["auto", "required", "none", {"type": "shell"}])
def test_without_allowed_tools_every_client_tool_is_offered(tool_choice: Any) -> None:
    req = request(*ALL_KINDS, tool_choice=tool_choice)
    tools = ClientTools.of(req)
    assert [d["function"]["name"] for d in tools.definitions(req)] == ALL_CHAT_NAMES
    assert tools.chat_names(req) == frozenset(ALL_CHAT_NAMES)


@pytest.mark.parametrize(
    ("allowed_tools", "names"),
    [
        ([function("weather")], ["weather"]),
        ([{"type": "custom", "name": "patch"}], ["patch"]),
        # a namespace's function by its own name or by its chat name
        ([function("spawn")], ["agents__spawn"]),
        ([function("agents__wait")], ["agents__wait"]),
        # built-ins by type
        ([{"type": "shell"}, {"type": "apply_patch"}], ["shell", "apply_patch"]),
        ([{"type": "local_shell"}], ["local_shell"]),
        ([{"type": "computer"}], ["computer"]),
        ([{"type": "tool_search"}], ["tool_search"]),
        ([function("unknown")], []),
    ],
)
def test_allowed_tools_offers_only_the_tools_it_names(
    allowed_tools: list[dict[str, Any]], names: list[str]
) -> None:
    assert allowed(*allowed_tools) == (names, frozenset(names))


def test_allowed_tools_names_computer_by_its_preview_type() -> None:
    declared = ({"type": "computer_use_preview", "display_width": 1, "display_height": 1},)
    assert allowed({"type": "computer_use_preview"}, declared=declared) == (
        ["computer"],
        frozenset({"computer"}),
    )


@pytest.mark.parametrize(
    ("name", "kind", "chat_name"),
    [
        ("weather", "function", "weather"),
        ("patch", "custom", "patch"),
        ("spawn", "function", "agents__spawn"),
        ("agents__wait", "function", "agents__wait"),
        (None, "shell", "shell"),
        (None, "apply_patch", "apply_patch"),
        (None, "local_shell", "local_shell"),
        (None, "computer", "computer"),
        (None, "tool_search", "tool_search"),
        ("nope", "function", None),
        (None, "web_search", None),
    ],
)
def test_forced_finds_a_tool_by_name_or_by_type(
    name: str | None, kind: str, chat_name: str | None
) -> None:
    tools = tools_of(*ALL_KINDS)
    found = tools.forced(name, kind)
    assert (found.chat_name if found else None) == chat_name


def test_get_by_chat_name_only() -> None:
    tools = tools_of(*ALL_KINDS)
    assert tools.get("agents__spawn") == ClientTool(
        kind="function",
        chat_name="agents__spawn",
        name="spawn",
        namespace="agents",
        definition={
            "type": "function",
            "function": {
                "name": "agents__spawn",
                "parameters": {"type": "object", "properties": {}},
            },
        },
    )
    assert tools.get("spawn") is None
    assert tools.get("missing") is None


# -- call_item ------------------------------------------------------------------------


def call_of(
    declared: dict[str, Any],
    chat_name: str,
    arguments: str,
    *,
    status: str = "completed",
    native_custom: bool = False,
) -> dict[str, Any]:
    tool = tools_of(declared, native_custom=native_custom).get(chat_name)
    assert tool is not None
    return call_item(tool, item_id="it_1", call_id="call_1", arguments=arguments, status=status)


def test_function_call_item() -> None:
    assert call_of(function("weather"), "weather", '{"city": "Paris"}') == {
        "id": "it_1",
        "type": "function_call",
        "status": "completed",
        "call_id": "call_1",
        "name": "weather",
        "arguments": '{"city": "Paris"}',
    }


def test_namespace_function_call_item_names_the_function_and_its_namespace() -> None:
    declared = {"type": "namespace", "name": "agents", "tools": [function("spawn")]}
    assert call_of(declared, "agents__spawn", "{}", status="in_progress") == {
        "id": "it_1",
        "type": "function_call",
        "status": "in_progress",
        "call_id": "call_1",
        "name": "spawn",
        "namespace": "agents",
        "arguments": "{}",
    }


@pytest.mark.parametrize(
    ("arguments", "text"),
    [
        ('{"input": "*** Begin Patch\\n"}', "*** Begin Patch\n"),
        # a model that wrote the text bare: the text is the input
        ("*** Begin Patch", "*** Begin Patch"),
        ('{"other": "x"}', '{"other": "x"}'),
    ],
)
def test_custom_call_item_carries_the_decoded_input(arguments: str, text: str) -> None:
    assert call_of({"type": "custom", "name": "patch"}, "patch", arguments) == {
        "id": "it_1",
        "type": "custom_tool_call",
        "status": "completed",
        "call_id": "call_1",
        "name": "patch",
        "input": text,
    }


def test_native_custom_call_item_takes_the_input_raw() -> None:
    assert call_of(
        {"type": "custom", "name": "patch"}, "patch", '{"input": "x"}', native_custom=True
    ) == {
        "id": "it_1",
        "type": "custom_tool_call",
        "status": "completed",
        "call_id": "call_1",
        "name": "patch",
        "input": '{"input": "x"}',
    }


def test_namespace_custom_call_item() -> None:
    declared = {"type": "namespace", "name": "ns", "tools": [{"type": "custom", "name": "note"}]}
    assert call_of(declared, "ns__note", '{"input": "hello"}') == {
        "id": "it_1",
        "type": "custom_tool_call",
        "status": "completed",
        "call_id": "call_1",
        "name": "note",
        "namespace": "ns",
        "input": "hello",
    }


def test_local_shell_call_item_is_an_exec_action() -> None:
    arguments = {
        "command": ["ls", "-la"],
        "working_directory": "/tmp",
        "timeout_ms": 5000,
        "env": {"A": "1"},
    }
    assert call_of({"type": "local_shell"}, "local_shell", orjson.dumps(arguments).decode()) == {
        "id": "it_1",
        "type": "local_shell_call",
        "status": "completed",
        "call_id": "call_1",
        "action": {
            "type": "exec",
            "command": ["ls", "-la"],
            "timeout_ms": 5000,
            "working_directory": "/tmp",
            "env": {"A": "1"},
            "user": None,
        },
    }


def test_local_shell_call_item_fills_what_the_model_left_out() -> None:
    assert call_of({"type": "local_shell"}, "local_shell", '{"command": ["pwd", 3]}') == {
        "id": "it_1",
        "type": "local_shell_call",
        "status": "completed",
        "call_id": "call_1",
        "action": {
            "type": "exec",
            "command": ["pwd", "3"],
            "timeout_ms": None,
            "working_directory": None,
            "env": {},
            "user": None,
        },
    }


def test_shell_call_item_carries_the_commands() -> None:
    arguments = '{"commands": ["cd src", "ls"], "timeout_ms": 100, "max_output_length": 4096}'
    assert call_of({"type": "shell"}, "shell", arguments) == {
        "id": "it_1",
        "type": "shell_call",
        "status": "completed",
        "call_id": "call_1",
        "action": {"commands": ["cd src", "ls"], "timeout_ms": 100, "max_output_length": 4096},
        "environment": None,
    }


@pytest.mark.parametrize("arguments", ["not json", "[1, 2]", '{"commands": "ls"}', ""])
def test_shell_call_item_from_unusable_arguments_has_no_commands(arguments: str) -> None:
    assert call_of({"type": "shell"}, "shell", arguments) == {
        "id": "it_1",
        "type": "shell_call",
        "status": "completed",
        "call_id": "call_1",
        "action": {"commands": [], "timeout_ms": None, "max_output_length": None},
        "environment": None,
    }


@pytest.mark.parametrize(
    ("arguments", "operation"),
    [
        (
            {"type": "create_file", "path": "a.py", "diff": "+print(1)\n"},
            {"type": "create_file", "path": "a.py", "diff": "+print(1)\n"},
        ),
        (
            {"type": "update_file", "path": "b.py", "diff": "-x\n+y\n"},
            {"type": "update_file", "path": "b.py", "diff": "-x\n+y\n"},
        ),
        # a deletion carries no diff, even when the model wrote one
        (
            {"type": "delete_file", "path": "c.py", "diff": "ignored"},
            {"type": "delete_file", "path": "c.py"},
        ),
        # no type: an update; no diff: an empty one
        ({"path": "d.py"}, {"type": "update_file", "path": "d.py", "diff": ""}),
    ],
)
def test_apply_patch_call_item_carries_the_operation(
    arguments: dict[str, Any], operation: dict[str, Any]
) -> None:
    assert call_of({"type": "apply_patch"}, "apply_patch", orjson.dumps(arguments).decode()) == {
        "id": "it_1",
        "type": "apply_patch_call",
        "status": "completed",
        "call_id": "call_1",
        "operation": operation,
    }


@pytest.mark.parametrize(
    ("status", "shown"),
    [("completed", "completed"), ("in_progress", "in_progress"), ("incomplete", "in_progress")],
)
def test_apply_patch_call_status_is_in_progress_or_completed(status: str, shown: str) -> None:
    item = call_of({"type": "apply_patch"}, "apply_patch", '{"path": "a"}', status=status)
    assert item["status"] == shown


def test_only_apply_patch_rewrites_its_status() -> None:
    assert call_of({"type": "shell"}, "shell", "{}", status="incomplete")["status"] == "incomplete"


@pytest.mark.parametrize(
    ("arguments", "action"),
    [
        (
            '{"action": {"type": "click", "x": 1, "y": 2, "button": "left"}}',
            {"type": "click", "x": 1, "y": 2, "button": "left"},
        ),
        ('{"action": "click"}', {"type": "screenshot"}),
        ("{}", {"type": "screenshot"}),
    ],
)
def test_computer_call_item_carries_one_action(arguments: str, action: dict[str, Any]) -> None:
    assert call_of({"type": "computer"}, "computer", arguments) == {
        "id": "it_1",
        "type": "computer_call",
        "status": "completed",
        "call_id": "call_1",
        "action": action,
        "pending_safety_checks": [],
    }


def test_tool_search_call_item_is_client_executed_with_the_arguments() -> None:
    declared = {"type": "tool_search", "execution": "client"}
    assert call_of(declared, "tool_search", '{"query": "calendar"}') == {
        "id": "it_1",
        "type": "tool_search_call",
        "status": "completed",
        "call_id": "call_1",
        "execution": "client",
        "arguments": {"query": "calendar"},
    }


@pytest.mark.parametrize(
    ("arguments", "text"),
    [
        ('{"input": "a\\"b"}', 'a"b'),
        ('{"input": ""}', ""),
        ('{"input": 3}', '{"input": 3}'),
        ("[]", "[]"),
        ("", ""),
        ("plain text", "plain text"),
        ('{"input": "x", "extra": 1}', "x"),
    ],
)
def test_custom_input(arguments: str, text: str) -> None:
    assert custom_input(arguments) == text


# -- round trip: an item the client sends back is the call the model made -----------------

ROUND_TRIPS = [
    pytest.param(function("weather"), "weather", '{"city": "Paris"}', id="function"),
    pytest.param(
        {"type": "namespace", "name": "agents", "tools": [function("spawn")]},
        "agents__spawn",
        '{"task": "x"}',
        id="namespace-function",
    ),
    pytest.param({"type": "custom", "name": "patch"}, "patch", '{"input": "a\\nb"}', id="custom"),
    pytest.param(
        {"type": "namespace", "name": "ns", "tools": [{"type": "custom", "name": "note"}]},
        "ns__note",
        '{"input": "hi"}',
        id="namespace-custom",
    ),
    pytest.param(
        {"type": "local_shell"},
        "local_shell",
        '{"command": ["ls", "-la"], "working_directory": "/w", "timeout_ms": 9, "env": {"A": "1"}}',
        id="local_shell",
    ),
    pytest.param(
        {"type": "local_shell"},
        "local_shell",
        '{"command": ["ls"]}',
        id="local_shell-minimal",
    ),
    pytest.param({"type": "shell"}, "shell", '{"commands": ["ls", "pwd"]}', id="shell"),
    pytest.param(
        {"type": "shell"},
        "shell",
        '{"commands": ["ls"], "timeout_ms": 10, "max_output_length": 20}',
        id="shell-options",
    ),
    pytest.param(
        {"type": "apply_patch"},
        "apply_patch",
        '{"type": "create_file", "path": "a.py", "diff": "+x\\n"}',
        id="apply_patch-create",
    ),
    pytest.param(
        {"type": "apply_patch"},
        "apply_patch",
        '{"type": "delete_file", "path": "a.py"}',
        id="apply_patch-delete",
    ),
    pytest.param(
        {"type": "computer"},
        "computer",
        '{"action": {"type": "type", "text": "hello"}}',
        id="computer",
    ),
    pytest.param(
        {"type": "computer_use_preview", "display_width": 1, "display_height": 1},
        "computer",
        '{"action": {"type": "screenshot"}}',
        id="computer_use_preview",
    ),
    pytest.param(
        {"type": "tool_search", "execution": "client"},
        "tool_search",
        '{"query": "calendar"}',
        id="tool_search",
    ),
]


@pytest.mark.parametrize(("declared", "chat_name", "arguments"), ROUND_TRIPS)
def test_a_call_item_sent_back_is_the_call_the_model_made(
    declared: dict[str, Any], chat_name: str, arguments: str
) -> None:
    tools = tools_of(declared)
    tool = tools.get(chat_name)
    assert tool is not None
    item = call_item(
        tool, item_id="it_9", call_id="call_9", arguments=arguments, status="completed"
    )
    # a client that keeps its own history resends the item; a fresh ClientTools reads it
    entry = tools_of(declared).chat_call(as_input_item(item))
    assert with_parsed_arguments(entry) == {
        "id": "call_9",
        "type": "function",
        "function": {"name": chat_name, "arguments": orjson.loads(arguments)},
    }


def test_a_function_call_sent_back_keeps_its_arguments_verbatim() -> None:
    tool = tools_of(function("f")).get("f")
    assert tool is not None
    arguments = '{ "b": 1,   "a": 2 }'
    item = call_item(tool, item_id="it", call_id="call", arguments=arguments, status="completed")
    assert tools_of(function("f")).chat_call(as_input_item(item)) == {
        "id": "call",
        "type": "function",
        "function": {"name": "f", "arguments": arguments},
    }


def test_a_native_custom_call_sent_back_is_a_custom_tool_call() -> None:
    declared = {"type": "custom", "name": "patch"}
    tools = tools_of(declared, native_custom=True)
    tool = tools.get("patch")
    assert tool is not None
    item = call_item(tool, item_id="it", call_id="call", arguments="raw\ntext", status="completed")
    assert tools.chat_call(as_input_item(item)) == {
        "id": "call",
        "type": "custom",
        "custom": {"name": "patch", "input": "raw\ntext"},
    }


def test_a_custom_call_of_an_undeclared_tool_goes_back_as_a_function() -> None:
    item = {"type": "custom_tool_call", "call_id": "c", "name": "gone", "input": "x"}
    assert ClientTools(native_custom=True).chat_call(as_input_item(item)) == {
        "id": "c",
        "type": "function",
        "function": {"name": "gone", "arguments": '{"input":"x"}'},
    }


def test_items_that_are_not_calls_have_no_chat_call() -> None:
    message = {"type": "message", "role": "user", "content": "hi"}
    output = {"type": "function_call_output", "call_id": "c", "output": "x"}
    assert [ClientTools().chat_call(as_input_item(raw)) for raw in (message, output)] == [
        None,
        None,
    ]


# -- tools loaded by tool_search -----------------------------------------------------------


def search_output(*loaded: Any) -> dict[str, Any]:
    return {
        "type": "tool_search_output",
        "call_id": "ts_1",
        "execution": "client",
        "status": "completed",
        "tools": list(loaded),
    }


def test_tool_search_output_loads_functions_namespaces_and_custom_tools() -> None:
    req = request(
        {"type": "tool_search", "execution": "client"},
        input=[
            {"role": "user", "content": "book a meeting"},
            search_output(
                function("calendar", description="Book."),
                {"type": "namespace", "name": "mail", "tools": [function("send")]},
                {"type": "custom", "name": "script"},
                "not a tool",
                {"type": "function"},
                {"type": "web_search"},
            ),
        ],
    )
    tools = ClientTools.of(req)
    assert [(t.kind, t.chat_name, t.name, t.namespace) for t in tools.by_chat_name.values()] == [
        ("tool_search", "tool_search", "tool_search", None),
        ("function", "calendar", "calendar", None),
        ("function", "mail__send", "send", "mail"),
        ("custom", "script", "script", None),
    ]
    assert tools.get("calendar") == ClientTool(
        kind="function",
        chat_name="calendar",
        name="calendar",
        definition={
            "type": "function",
            "function": {
                "name": "calendar",
                "description": "Book.",
                "parameters": {"type": "object", "properties": {}},
            },
        },
    )
    assert tools.hosted == []


def test_loaded_tools_come_from_the_given_items_instead_of_the_request_input() -> None:
    req = request(input=[search_output(function("from_input"))])
    items = parse_request({"model": "m", "input": [search_output(function("from_history"))]}).input
    assert list(ClientTools.of(req, items=items).by_chat_name) == ["from_history"]
    assert list(ClientTools.of(req).by_chat_name) == ["from_input"]


def test_a_declared_tool_wins_over_a_loaded_one_of_the_same_name() -> None:
    req = request(
        function("calendar", description="declared"),
        input=[search_output(function("calendar", description="loaded"))],
    )
    definitions = ClientTools.of(req).definitions(req)
    assert [d["function"].get("description") for d in definitions] == ["declared"]


def test_loaded_custom_tools_follow_the_native_dialect() -> None:
    req = request(input=[search_output({"type": "custom", "name": "script"})])
    assert ClientTools.of(req, native_custom=True).definitions(req) == [
        {"type": "custom", "custom": {"name": "script", "format": {"type": "text"}}}
    ]


def test_a_loaded_tool_no_model_could_call_is_skipped() -> None:
    req = request(
        input=[
            search_output(
                function("bad name"),
                {"type": "namespace", "name": "ns"},
                {"type": "custom", "name": ""},
                function("good"),
            )
        ]
    )
    assert list(ClientTools.of(req).by_chat_name) == ["good"]


# -- CustomInputDecoder ------------------------------------------------------------------


def feed_all(pieces: list[str]) -> list[str]:
    decoder = CustomInputDecoder()
    return [decoder.feed(piece) for piece in pieces]


def split(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted({c % (len(text) + 1) for c in cuts}), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@given(text=st.text(), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_decoder_pieces_add_up_to_the_input_for_any_split(text: str, cuts: list[int]) -> None:
    encoded = orjson.dumps({"input": text}).decode()
    assert "".join(feed_all(split(encoded, cuts))) == text


@given(
    text=st.text(st.characters(codec="utf-16")),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
    spaced=st.booleans(),
)
def test_decoder_reads_ascii_escapes_surrogate_pairs_and_spacing(
    text: str, cuts: list[int], spaced: bool
) -> None:
    encoded = json.dumps({"input": text}, ensure_ascii=True)
    if spaced:
        encoded = encoded.replace('{"input": ', ' {\n  "input" :\t', 1)
    assert "".join(feed_all(split(encoded, cuts))) == text


def test_decoder_returns_each_character_as_soon_as_it_is_whole() -> None:
    encoded = '{"input":"a\\n\\u00e9\\ud83d\\ude00b"}'
    assert feed_all(list(encoded)) == [
        *[""] * len('{"input":"'),
        "a",
        "",
        "\n",
        *[""] * 5,
        "\u00e9",
        *[""] * 11,
        "\U0001f600",
        "b",
        "",
        "",
    ]


def test_decoder_reads_upper_case_hex_escapes() -> None:
    assert feed_all(['{"input":"\\u00E9\\uD83D\\uDE00"}']) == ["\u00e9\U0001f600"]


def test_decoder_ignores_what_follows_the_closing_quote() -> None:
    assert feed_all(['{"input": "ab', 'c", "x": "more"', '"}']) == ["ab", "c", ""]


@pytest.mark.parametrize(
    "pieces",
    [
        ['{"other": "x"}'],
        ['{"inputs": "x"}'],
        ['{"inputs', '": "x"}'],
        ['{"in', 'put_x": "x"}'],
        ['{"input": 3}'],
        ['{"input": null}'],
        ['{"input" "x"}'],
        ['["input", "x"]'],
        ['["input": "x"]'],
        ['x"input": "x"'],
        ["plain text"],
        ['{"x": 1, "input": "late"}'],
        ["  ", '  x{"input": "y"}'],
    ],
)
def test_decoder_returns_nothing_for_other_shapes(pieces: list[str]) -> None:
    assert feed_all(pieces) == [""] * len(pieces)


def test_a_broken_decoder_stays_broken() -> None:
    assert feed_all(["[", '{"input": "x"}']) == ["", ""]


def test_decoder_waits_on_whitespace_and_partial_keys() -> None:
    assert feed_all([" ", "{", ' "in', 'put"', " ", ":", " ", '"', "z"]) == [""] * 8 + ["z"]


@pytest.mark.parametrize(
    "pieces",
    [
        ['{"input":"a', '\\uzzzz"}', "more"],
        ['{"input":"a', '\\u12g4"}', "more"],
        # a lone low surrogate
        ['{"input":"a', '\\udc00"}', "more"],
        # a high surrogate without its low half
        ['{"input":"a', '\\ud83d\\u0041"}', "more"],
        ['{"input":"a', '\\ud83dxxxxxx"}', "more"],
    ],
    ids=["not-hex", "not-hex-2", "lone-low", "high-then-non-low", "high-then-text"],
)
def test_decoder_stops_at_an_escape_no_string_can_hold(pieces: list[str]) -> None:
    assert feed_all(pieces) == ["a", "", ""]


def test_decoder_waits_for_the_second_half_of_a_surrogate_pair() -> None:
    assert feed_all(['{"input":"a\\ud83d', "\\u", "de00", 'b"}']) == ["a", "", "\U0001f600", "b"]
