"""``input_messages`` for every input item type, and ``finalize_messages`` per upstream."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from stepline._chat.messages import finalize_messages
from stepline._protocol.client_tools import ClientTools
from stepline._protocol.items import InputContext, input_messages
from stepline._protocol.request import InputItem, parse_request
from stepline._protocol.sealing import Sealer
from stepline.errors import InvalidRequest

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"
PNG_B64 = base64.b64encode(PNG).decode()
IMAGE_URL = "data:image/png;base64,iVBORw0KGgo="


def items(*raw: dict[str, Any]) -> list[InputItem]:
    """Typed input items, parsed the way a request body is."""
    return parse_request({"model": "m", "input": list(raw)}).input


def messages(*raw: dict[str, Any], **context: Any) -> list[dict[str, Any]]:
    return input_messages(items(*raw), None, InputContext(**context))


def call(call_id: str, name: str, arguments: str = "{}") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def assistant_calls(*calls: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": None, **fields, "tool_calls": list(calls)}


def tool(call_id: str, content: Any) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def user_file(**part: Any) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "input_file", **part}]}


def image_part(url: str, detail: str = "auto") -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, "detail": detail}}


# -- messages --------------------------------------------------------------------------------------


def test_message_roles_and_text_parts() -> None:
    assert messages(
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "S"}]},
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "Hi.", "annotations": []},
                {"type": "refusal", "refusal": " No."},
            ],
        },
        {"role": "assistant", "content": "Again."},
    ) == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "S"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "Hi. No."},
        {"role": "assistant", "content": "Again."},
    ]


@pytest.mark.parametrize(("detail", "sent"), [("original", "high"), ("low", "low"), (None, "auto")])
def test_image_parts_keep_their_detail_and_original_goes_as_high(
    detail: str | None, sent: str
) -> None:
    image: dict[str, Any] = {"type": "input_image", "image_url": IMAGE_URL}
    if detail is not None:
        image["detail"] = detail
    assert messages(
        {"role": "user", "content": [{"type": "input_text", "text": "look"}, image]}
    ) == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "look"}, image_part(IMAGE_URL, sent)],
        }
    ]


@pytest.mark.parametrize(
    ("part", "text"),
    [
        # plain base64
        (
            {"filename": "notes.txt", "file_data": base64.b64encode(b"hello\n").decode()},
            "[file notes.txt]\nhello\n",
        ),
        # a base64 data URL of a text type
        (
            {
                "filename": "a.json",
                "file_data": "data:application/json;base64,"
                + base64.b64encode(b'{"a": 1}').decode(),
            },
            '[file a.json]\n{"a": 1}',
        ),
        # not base64 at all: the text as given
        ({"filename": "raw.txt", "file_data": "just words"}, "[file raw.txt]\njust words"),
        # no name
        ({"file_data": base64.b64encode("é".encode()).decode()}, "[file file]\né"),
    ],
    ids=["base64", "data-url", "raw", "unnamed"],
)
def test_text_files_become_text(part: dict[str, Any], text: str) -> None:
    expected = [{"role": "user", "content": text}]
    assert messages(user_file(**part)) == expected
    assert messages(user_file(**part), file_parts=True) == expected


def test_a_text_file_beside_text_collapses_to_one_string() -> None:
    data = base64.b64encode(b"x = 1").decode()
    assert messages(
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Review:\n"},
                {"type": "input_file", "filename": "a.py", "file_data": data},
            ],
        }
    ) == [{"role": "user", "content": "Review:\n[file a.py]\nx = 1"}]


@pytest.mark.parametrize(
    ("file_data", "sent"),
    [
        (PNG_B64, f"data:application/octet-stream;base64,{PNG_B64}"),
        (f"data:image/png;base64,{PNG_B64}", f"data:image/png;base64,{PNG_B64}"),
        # a binary type is a file even when its bytes decode as text
        (
            "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4").decode(),
            "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4").decode(),
        ),
        # text with a NUL byte is binary
        (
            base64.b64encode(b"ab\x00cd").decode(),
            "data:application/octet-stream;base64," + base64.b64encode(b"ab\x00cd").decode(),
        ),
    ],
    ids=["base64", "data-url", "pdf", "nul"],
)
def test_binary_files_become_file_parts_where_the_upstream_takes_them(
    file_data: str, sent: str
) -> None:
    assert messages(
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "see"},
                {"type": "input_file", "filename": "f.bin", "file_data": file_data},
            ],
        },
        file_parts=True,
    ) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "see"},
                {"type": "file", "file": {"file_data": sent, "filename": "f.bin"}},
            ],
        }
    ]


@pytest.mark.parametrize(
    ("file_data", "kind"),
    [(PNG_B64, "binary"), (f"data:image/png;base64,{PNG_B64}", "image/png")],
)
def test_binary_files_are_refused_where_the_upstream_takes_text_only(
    file_data: str, kind: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        messages(user_file(filename="f.bin", file_data=file_data))
    assert (caught.value.message, caught.value.param) == (
        f"input_file 'f.bin' ({kind}) cannot be sent to this model's upstream: it takes text "
        "files only (set file_parts = true on an upstream that takes files)",
        "input",
    )


@pytest.mark.parametrize("file_parts", [False, True])
def test_file_urls_are_refused(file_parts: bool) -> None:
    with pytest.raises(InvalidRequest) as caught:
        messages(
            user_file(filename="r.pdf", file_url="https://x.test/r.pdf"), file_parts=file_parts
        )
    assert (caught.value.message, caught.value.param) == (
        "input_file 'r.pdf': file_url is not supported; send the file as file_data",
        "input",
    )


@pytest.mark.parametrize(
    ("file_data", "text"),
    [
        # "test" is valid base64 too: without ";base64" it must not be decoded as such
        ("data:text/plain,test", "test"),
        ("data:text/plain;charset=utf-8,a%20b%0A", "a b\n"),
        ("data:text/plain;charset=utf-8;base64," + base64.b64encode(b"test").decode(), "test"),
    ],
    ids=["plain", "percent-encoded", "base64-after-charset"],
)
def test_a_data_url_is_base64_only_when_it_says_so(file_data: str, text: str) -> None:
    assert messages(user_file(filename="a.txt", file_data=file_data)) == [
        {"role": "user", "content": f"[file a.txt]\n{text}"}
    ]


# -- function and custom tool calls ----------------------------------------------------------------


def test_function_calls_with_namespace_and_their_outputs() -> None:
    assert messages(
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": '{"c": "P"}'},
        {
            "type": "function_call",
            "call_id": "c2",
            "name": "spawn",
            "namespace": "agents",
            "arguments": "{}",
        },
        {"type": "function_call_output", "call_id": "c2", "output": "spawned"},
        {
            "type": "function_call_output",
            "call_id": "c1",
            "output": [
                {"type": "input_text", "text": "sunny, "},
                {"type": "input_text", "text": "20C"},
            ],
        },
    ) == [
        {"role": "user", "content": "go"},
        assistant_calls(call("c1", "weather", '{"c": "P"}'), call("c2", "agents__spawn")),
        tool("c2", "spawned"),
        tool("c1", "sunny, 20C"),
    ]


def test_a_function_output_with_an_image_keeps_its_parts() -> None:
    assert messages(
        {"type": "function_call", "call_id": "c1", "name": "view_image", "arguments": "{}"},
        {
            "type": "function_call_output",
            "call_id": "c1",
            "output": [
                {"type": "input_text", "text": "the image:"},
                {"type": "input_image", "image_url": IMAGE_URL, "detail": "original"},
            ],
        },
    ) == [
        assistant_calls(call("c1", "view_image")),
        tool("c1", [{"type": "text", "text": "the image:"}, image_part(IMAGE_URL, "high")]),
    ]


@pytest.mark.parametrize("output_type", ["function_call_output", "custom_tool_call_output"])
def test_a_tool_output_with_a_binary_file_follows_the_upstreams_file_parts(
    output_type: str,
) -> None:
    output = {
        "type": output_type,
        "call_id": "c1",
        "output": [{"type": "input_file", "filename": "r.png", "file_data": PNG_B64}],
    }
    assert messages(output, file_parts=True) == [
        tool(
            "c1",
            [
                {
                    "type": "file",
                    "file": {
                        "file_data": f"data:application/octet-stream;base64,{PNG_B64}",
                        "filename": "r.png",
                    },
                }
            ],
        )
    ]
    with pytest.raises(InvalidRequest):
        messages(output)


def test_custom_tool_calls_go_as_functions_with_one_input() -> None:
    assert messages(
        {"type": "custom_tool_call", "call_id": "c1", "name": "apply", "input": 'a "b"\n'},
        {
            "type": "custom_tool_call",
            "call_id": "c2",
            "name": "note",
            "namespace": "ns",
            "input": "hi",
        },
        {"type": "custom_tool_call_output", "call_id": "c1", "output": "applied"},
        {
            "type": "custom_tool_call_output",
            "call_id": "c2",
            "output": [{"type": "input_text", "text": "noted"}],
        },
    ) == [
        assistant_calls(
            call("c1", "apply", '{"input":"a \\"b\\"\\n"}'),
            call("c2", "ns__note", '{"input":"hi"}'),
        ),
        tool("c1", "applied"),
        tool("c2", "noted"),
    ]


def test_custom_tool_calls_go_as_custom_calls_to_a_native_upstream() -> None:
    request = parse_request(
        {"model": "m", "input": "x", "tools": [{"type": "custom", "name": "apply"}]}
    )
    tools = ClientTools.of(request, native_custom=True)
    assert messages(
        {"type": "custom_tool_call", "call_id": "c1", "name": "apply", "input": "raw"},
        {"type": "custom_tool_call_output", "call_id": "c1", "output": "ok"},
        tools=tools,
    ) == [
        assistant_calls(
            {"id": "c1", "type": "custom", "custom": {"name": "apply", "input": "raw"}}
        ),
        tool("c1", "ok"),
    ]


# -- built-in client tools -------------------------------------------------------------------------


def test_local_shell_call_and_output() -> None:
    assert messages(
        {
            "type": "local_shell_call",
            "id": "lsh_1",
            "call_id": "call_ls",
            "status": "completed",
            "action": {
                "type": "exec",
                "command": ["ls", "-la"],
                "timeout_ms": None,
                "working_directory": "/w",
                "env": {},
                "user": None,
            },
        },
        # the output names its call by ``id``
        {"type": "local_shell_call_output", "id": "call_ls", "output": "a.txt\n"},
    ) == [
        assistant_calls(
            call("call_ls", "local_shell", '{"command":["ls","-la"],"working_directory":"/w"}')
        ),
        tool("call_ls", "a.txt\n"),
    ]


def test_shell_call_and_its_runs() -> None:
    assert messages(
        {
            "type": "shell_call",
            "id": "sh_1",
            "call_id": "call_sh",
            "status": "completed",
            "action": {"commands": ["ls", "sleep 9"], "timeout_ms": 100, "max_output_length": None},
            "environment": None,
        },
        {
            "type": "shell_call_output",
            "call_id": "call_sh",
            "output": [
                {"stdout": "a\n", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}},
                {"stdout": "", "stderr": "boom", "outcome": {"type": "timeout"}},
                {"stdout": "x", "outcome": {"type": "exit", "exit_code": 2}},
            ],
        },
    ) == [
        assistant_calls(call("call_sh", "shell", '{"commands":["ls","sleep 9"],"timeout_ms":100}')),
        tool(
            "call_sh",
            "a\n\n[exit code 0]\n\n[stderr]\nboom\n[timed out]\nx\n[exit code 2]",
        ),
    ]


@pytest.mark.parametrize(
    ("output", "text"),
    [("done", "done"), ({"exit": 0}, '{"exit":0}'), ([], ""), (None, "null")],
)
def test_shell_output_that_is_not_a_list_of_runs(output: Any, text: str) -> None:
    assert messages(
        {"type": "shell_call", "call_id": "c", "action": {"commands": ["ls"]}},
        {"type": "shell_call_output", "call_id": "c", "output": output},
    ) == [assistant_calls(call("c", "shell", '{"commands":["ls"]}')), tool("c", text)]


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"status": "failed", "output": "no such file"}, "failed: no such file"),
        ({"status": "completed"}, "completed"),
        ({"output": "Done!"}, "completed: Done!"),
    ],
)
def test_apply_patch_call_and_output(fields: dict[str, Any], text: str) -> None:
    operation = {"type": "update_file", "path": "a.py", "diff": "-a\n+b\n"}
    assert messages(
        {
            "type": "apply_patch_call",
            "id": "apc_1",
            "call_id": "call_ap",
            "status": "completed",
            "operation": operation,
        },
        {"type": "apply_patch_call_output", "call_id": "call_ap", **fields},
    ) == [
        assistant_calls(
            call(
                "call_ap",
                "apply_patch",
                '{"type":"update_file","path":"a.py","diff":"-a\\n+b\\n"}',
            )
        ),
        tool("call_ap", text),
    ]


def test_computer_call_and_its_screenshot() -> None:
    assert messages(
        {
            "type": "computer_call",
            "id": "cu_1",
            "call_id": "call_cu",
            "status": "completed",
            "action": {"type": "click", "x": 1, "y": 2},
            "pending_safety_checks": [],
        },
        {
            "type": "computer_call_output",
            "call_id": "call_cu",
            "output": {"type": "computer_screenshot", "image_url": IMAGE_URL},
        },
        {"type": "computer_call", "call_id": "call_2", "action": {"type": "wait"}},
        {
            "type": "computer_call_output",
            "call_id": "call_2",
            "output": {"type": "computer_screenshot"},
        },
    ) == [
        assistant_calls(call("call_cu", "computer", '{"action":{"type":"click","x":1,"y":2}}')),
        tool("call_cu", [image_part(IMAGE_URL)]),
        assistant_calls(call("call_2", "computer", '{"action":{"type":"wait"}}')),
        tool("call_2", "(no screenshot)"),
    ]


def test_tool_search_call_and_the_tools_it_loaded() -> None:
    assert messages(
        {
            "type": "tool_search_call",
            "call_id": "call_ts",
            "execution": "client",
            "arguments": {"query": "mail"},
            "status": "completed",
        },
        {
            "type": "tool_search_output",
            "call_id": "call_ts",
            "execution": "client",
            "tools": [
                {"type": "function", "name": "calendar"},
                {"type": "namespace", "name": "mail", "tools": []},
                "junk",
            ],
        },
        {"type": "tool_search_call", "call_id": "call_2", "arguments": {"query": "x"}},
        {"type": "tool_search_output", "call_id": "call_2", "tools": []},
    ) == [
        assistant_calls(call("call_ts", "tool_search", '{"query":"mail"}')),
        tool("call_ts", "Tools loaded: calendar, mail"),
        assistant_calls(call("call_2", "tool_search", '{"query":"x"}')),
        tool("call_2", "Tools loaded: none"),
    ]


@pytest.mark.parametrize(
    "item",
    [
        {"type": "shell_call", "action": {"commands": ["ls"]}},
        {"type": "shell_call_output", "output": "x"},
        {"type": "apply_patch_call_output", "status": "completed"},
    ],
    ids=["call", "output", "patch-output"],
)
def test_a_builtin_call_or_output_without_call_id_is_refused(item: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        items(item)
    assert caught.value.param in ("input[0]", "input[0].call_id")
    assert "call_id" in caught.value.param + caught.value.message


# -- server-run tools ------------------------------------------------------------------------------


def test_mcp_calls_with_an_output_and_with_an_error() -> None:
    assert messages(
        {
            "type": "mcp_call",
            "id": "mcp_1",
            "server_label": "docs",
            "name": "search",
            "arguments": '{"q": "x"}',
            "output": "found",
        },
        {
            "type": "mcp_call",
            "id": "mcp_2",
            "server_label": "docs",
            "name": "fetch",
            "arguments": "{}",
            "error": {"message": "timed out"},
        },
        {"type": "mcp_call", "id": "mcp_3", "name": "noop", "arguments": "{}"},
    ) == [
        assistant_calls(call("mcp_1", "search", '{"q": "x"}')),
        tool("mcp_1", "found"),
        assistant_calls(call("mcp_2", "fetch")),
        tool("mcp_2", "Error: timed out"),
        assistant_calls(call("mcp_3", "noop")),
        tool("mcp_3", ""),
    ]


def test_a_refused_approval_answers_its_held_call() -> None:
    raw = (
        {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": False},
        {
            "type": "mcp_approval_response",
            "approval_request_id": "mcpr_2",
            "approve": False,
            "reason": "too risky",
        },
        {"type": "mcp_approval_response", "approval_request_id": "mcpr_3", "approve": True},
        {"type": "mcp_approval_response", "approval_request_id": "mcpr_9", "approve": False},
    )
    approvals = {"mcpr_1": "call_1", "mcpr_2": "call_2", "mcpr_3": "call_3"}
    assert input_messages(items(*raw), approvals, InputContext()) == [
        tool("call_1", "The user refused this tool call."),
        tool("call_2", "The user refused this tool call. Reason: too risky"),
    ]
    assert input_messages(items(*raw)) == []


def test_hosted_calls_with_a_result_show_the_call_and_the_result() -> None:
    assert messages(
        {"role": "user", "content": "news?"},
        {
            "type": "web_search_call",
            "id": "ws_1",
            "status": "completed",
            "action": {"type": "search", "query": "news"},
            "results": [{"url": "https://n.test", "title": "N"}],
        },
        # without its results the model saw nothing
        {
            "type": "web_search_call",
            "id": "ws_2",
            "status": "completed",
            "action": {"type": "search", "query": "more"},
        },
        {
            "type": "code_interpreter_call",
            "id": "ci_1",
            "code": "print(1)",
            "container_id": "cntr",
            "outputs": [{"type": "logs", "logs": "1\n"}],
        },
        {"type": "file_search_call", "id": "fs_1", "queries": ["q"], "output": "text result"},
        {"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": "iVBO"},
        {"type": "message", "role": "assistant", "content": "Here."},
    ) == [
        {"role": "user", "content": "news?"},
        assistant_calls(call("ws_1", "web_search", '{"action":{"type":"search","query":"news"}}')),
        tool("ws_1", '[{"url":"https://n.test","title":"N"}]'),
        assistant_calls(call("ci_1", "code_interpreter", '{"code":"print(1)"}')),
        tool("ci_1", '[{"type":"logs","logs":"1\\n"}]'),
        assistant_calls(call("fs_1", "file_search", '{"queries":["q"]}')),
        tool("fs_1", "text result"),
        assistant_calls(call("ig_1", "image_generation")),
        tool("ig_1", "iVBO"),
        {"role": "assistant", "content": "Here."},
    ]


def test_a_web_search_call_without_results_adds_nothing() -> None:
    assert (
        messages(
            {
                "type": "web_search_call",
                "id": "ws_1",
                "status": "completed",
                "action": {"type": "search", "query": "q", "sources": []},
            }
        )
        == []
    )


def test_mcp_list_tools_and_approval_requests_carry_nothing() -> None:
    assert messages(
        {"role": "user", "content": "hi"},
        {"type": "mcp_list_tools", "id": "ml_1", "server_label": "docs", "tools": []},
        {
            "type": "mcp_approval_request",
            "id": "mcpr_1",
            "server_label": "docs",
            "name": "delete",
            "arguments": "{}",
        },
        {"role": "assistant", "content": "ok"},
    ) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]


# -- reasoning -------------------------------------------------------------------------------------


def reasoning(**fields: Any) -> dict[str, Any]:
    return {"type": "reasoning", "id": "rs", "summary": [], **fields}


def text_parts(*texts: str, kind: str) -> list[dict[str, Any]]:
    return [{"type": kind, "text": text} for text in texts]


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"content": text_parts("a", "b", kind="reasoning_text")}, "ab"),
        ({"summary": text_parts("s1", "s2", kind="summary_text")}, "s1\ns2"),
        # the full text over its summary
        (
            {
                "content": text_parts("full", kind="reasoning_text"),
                "summary": text_parts("short", kind="summary_text"),
            },
            "full",
        ),
    ],
    ids=["content", "summary", "content-over-summary"],
)
def test_reasoning_rides_on_the_next_assistant_message(fields: dict[str, Any], text: str) -> None:
    assert messages(
        {"role": "user", "content": "q"},
        reasoning(**fields),
        {"role": "assistant", "content": "a"},
    ) == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "reasoning_content": text},
    ]


def test_sealed_reasoning_is_opened_and_unopenable_reasoning_is_dropped() -> None:
    sealer = Sealer.ephemeral()
    stranger = Sealer.ephemeral()
    assert messages(
        reasoning(encrypted_content=sealer.seal("sealed thoughts")),
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "r"},
        reasoning(encrypted_content=stranger.seal("not ours")),
        {"role": "assistant", "content": "done"},
        unseal=sealer.open,
    ) == [
        assistant_calls(call("c1", "f"), reasoning_content="sealed thoughts"),
        tool("c1", "r"),
        {"role": "assistant", "content": "done"},
    ]


def test_sealed_reasoning_is_dropped_without_an_unseal() -> None:
    token = Sealer.ephemeral().seal("x")
    assert messages(reasoning(encrypted_content=token), {"role": "assistant", "content": "a"}) == [
        {"role": "assistant", "content": "a"}
    ]


def test_consecutive_reasoning_items_join_and_trailing_reasoning_is_dropped() -> None:
    assert messages(
        reasoning(content=text_parts("one ", kind="reasoning_text")),
        reasoning(summary=text_parts("two", kind="summary_text")),
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "1"},
        {"type": "function_call_output", "call_id": "c2", "output": "2"},
        reasoning(content=text_parts("left over", kind="reasoning_text")),
    ) == [
        assistant_calls(call("c1", "f"), call("c2", "g"), reasoning_content="one two"),
        tool("c1", "1"),
        tool("c2", "2"),
    ]


def test_reasoning_before_a_call_after_text_rides_on_that_assistant_message() -> None:
    assert messages(
        {"role": "assistant", "content": "Let me check."},
        reasoning(content=text_parts("think", kind="reasoning_text")),
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    ) == [
        {
            "role": "assistant",
            "content": "Let me check.",
            "reasoning_content": "think",
            "tool_calls": [call("c1", "f")],
        }
    ]


def test_a_second_reasoning_for_one_assistant_message_adds_to_the_first() -> None:
    assert messages(
        reasoning(content=text_parts("r1", kind="reasoning_text")),
        {"role": "assistant", "content": "m1"},
        reasoning(content=text_parts("r2", kind="reasoning_text")),
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    ) == [
        {
            "role": "assistant",
            "content": "m1",
            "reasoning_content": "r1r2",
            "tool_calls": [call("c1", "f")],
        }
    ]


def test_a_whole_codex_turn() -> None:
    sealer = Sealer.ephemeral()
    assert messages(
        {"role": "developer", "content": "You are Codex."},
        {"role": "user", "content": [{"type": "input_text", "text": "fix it"}]},
        reasoning(encrypted_content=sealer.seal("look first")),
        {"type": "shell_call", "call_id": "c1", "action": {"commands": ["cat a.py"]}},
        {
            "type": "shell_call_output",
            "call_id": "c1",
            "output": [{"stdout": "x=1", "outcome": {"type": "exit", "exit_code": 0}}],
        },
        reasoning(summary=text_parts("patch it", kind="summary_text")),
        {"role": "assistant", "content": [{"type": "output_text", "text": "Patching."}]},
        {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** P"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": "Done"},
        {"role": "assistant", "content": "Fixed."},
        unseal=sealer.open,
    ) == [
        {"role": "system", "content": "You are Codex."},
        {"role": "user", "content": "fix it"},
        assistant_calls(
            call("c1", "shell", '{"commands":["cat a.py"]}'), reasoning_content="look first"
        ),
        tool("c1", "x=1\n[exit code 0]"),
        {
            "role": "assistant",
            "content": "Patching.",
            "reasoning_content": "patch it",
            "tool_calls": [call("c2", "apply_patch", '{"input":"*** P"}')],
        },
        tool("c2", "Done"),
        {"role": "assistant", "content": "Fixed."},
    ]


# -- finalize_messages -----------------------------------------------------------------------------


REASONED: list[dict[str, Any]] = [
    {"role": "user", "content": "q"},
    {
        "role": "assistant",
        "content": None,
        "reasoning_content": "r",
        "tool_calls": [call("c", "f")],
    },
    tool("c", "1"),
    {"role": "assistant", "content": "a"},
]


def test_reasoning_is_dropped_without_a_reasoning_key() -> None:
    assert finalize_messages(REASONED) == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [call("c", "f")]},
        tool("c", "1"),
        {"role": "assistant", "content": "a"},
    ]


@pytest.mark.parametrize("key", ["reasoning", "reasoning_content"])
def test_reasoning_goes_under_the_upstreams_key(key: str) -> None:
    assert finalize_messages(REASONED, reasoning_key=key) == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, key: "r", "tool_calls": [call("c", "f")]},
        tool("c", "1"),
        {"role": "assistant", "content": "a"},
    ]


def test_empty_reasoning_is_not_sent() -> None:
    assert finalize_messages(
        [{"role": "assistant", "content": "a", "reasoning_content": ""}], reasoning_key="reasoning"
    ) == [{"role": "assistant", "content": "a"}]


SCREENSHOT = image_part("data:image/png;base64,AAAA")
CHART = image_part("data:image/png;base64,BBBB", "high")

PARALLEL: list[dict[str, Any]] = [
    {"role": "user", "content": "compare"},
    assistant_calls(call("call_a", "shot"), call("call_b", "chart"), call("call_c", "plain")),
    tool("call_a", [SCREENSHOT]),
    tool("call_b", [{"type": "text", "text": "the chart"}, CHART]),
    tool("call_c", "just text"),
    {"role": "assistant", "content": "Both seen."},
]


def test_tool_images_follow_the_run_of_tool_messages_in_one_user_message() -> None:
    assert finalize_messages(PARALLEL, tool_parts="user_message") == [
        {"role": "user", "content": "compare"},
        assistant_calls(call("call_a", "shot"), call("call_b", "chart"), call("call_c", "plain")),
        tool("call_a", "[1 attachment(s) follow in the next user message]"),
        tool("call_b", "the chart\n[1 attachment(s) follow in the next user message]"),
        tool("call_c", "just text"),
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "The tool call(s) call_a, call_b returned these attachments:",
                },
                SCREENSHOT,
                CHART,
            ],
        },
        {"role": "assistant", "content": "Both seen."},
    ]


def test_tool_images_at_the_end_still_get_their_user_message() -> None:
    assert finalize_messages(PARALLEL[:3]) == [
        {"role": "user", "content": "compare"},
        assistant_calls(call("call_a", "shot"), call("call_b", "chart"), call("call_c", "plain")),
        tool("call_a", "[1 attachment(s) follow in the next user message]"),
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "The tool call(s) call_a returned these attachments:"},
                SCREENSHOT,
            ],
        },
    ]


def test_each_run_of_tool_messages_gets_its_own_attachments() -> None:
    assert finalize_messages(
        [
            assistant_calls(call("a", "f")),
            tool("a", [SCREENSHOT, CHART]),
            assistant_calls(call("b", "f")),
            tool("b", [CHART]),
        ]
    ) == [
        assistant_calls(call("a", "f")),
        tool("a", "[2 attachment(s) follow in the next user message]"),
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "The tool call(s) a returned these attachments:"},
                SCREENSHOT,
                CHART,
            ],
        },
        assistant_calls(call("b", "f")),
        tool("b", "[1 attachment(s) follow in the next user message]"),
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "The tool call(s) b returned these attachments:"},
                CHART,
            ],
        },
    ]


def test_a_text_only_part_list_becomes_a_string() -> None:
    assert finalize_messages(
        [tool("a", [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}])]
    ) == [tool("a", "xy")]


def test_native_tool_parts_stay_in_the_tool_message() -> None:
    assert finalize_messages(PARALLEL, tool_parts="native") == PARALLEL


def test_user_images_are_left_where_they_are() -> None:
    user = {"role": "user", "content": [{"type": "text", "text": "see"}, SCREENSHOT]}
    assert finalize_messages([user]) == [user]


@pytest.mark.parametrize("tool_parts", ["native", "user_message"])
@pytest.mark.parametrize("key", [None, "reasoning"])
def test_finalize_leaves_its_input_untouched(tool_parts: Any, key: str | None) -> None:
    given = [*copy.deepcopy(REASONED), *copy.deepcopy(PARALLEL)]
    before = copy.deepcopy(given)
    finalize_messages(given, reasoning_key=key, tool_parts=tool_parts)
    assert given == before
