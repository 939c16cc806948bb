"""The real Codex CLI (``@openai/codex`` 0.171) drives a real stepline process.

Codex runs ``codex exec`` with its whole tool set against ``stepline serve``,
whose upstream is the scripted model served by ``stepline mock-upstream``;
each test plays its own script under its own model name (see ``_codex.py``)
and checks both what Codex did and what reached the upstream model.

The contract these tests hold stepline to: a function call comes back to
Codex as a ``function_call`` item and its ``function_call_output`` reaches the
model as the tool result of that ``call_id``; the freeform ``apply_patch``
custom tool is offered to the model as a function with one string argument
``input`` and comes back to Codex as a ``custom_tool_call``; namespace tools
are offered as ``<namespace>__<name>`` functions; ``web_search`` is left out
of what the model sees; ``view_image``'s picture reaches the model as an image
part.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._clients import client_bin
from tests.e2e._codex import (
    Codex,
    CodexStack,
    assistant_calls,
    image_urls_after,
    png,
    start_stack,
    text_of,
    tool_results,
    upstream_tools,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CodexStack]:
    codex_bin = client_bin("codex")
    with start_stack(codex_bin, tmp_path_factory.mktemp("codex-stack")) as started:
        yield started


@pytest.fixture
def codex(stack: CodexStack, tmp_path: Path, request: pytest.FixtureRequest) -> Codex:
    return Codex(stack, tmp_path, request.node.name.removeprefix("test_").replace("_", "-"))


def _call(call_id: str, name: str, **arguments: object) -> dict[str, object]:
    """A scripted tool call."""
    return {"name": name, "arguments": arguments, "id": call_id}


def _exec(call_id: str, command: str) -> dict[str, object]:
    return _call(call_id, "exec_command", cmd=command)


def test_plain_answer(codex: Codex) -> None:
    codex.script({"content": "Hello from the scripted model."})

    run = codex.run("Say hello.", json_events=False)

    assert run.stdout.strip() == "Hello from the scripted model."
    [request] = codex.upstream_requests()
    assert text_of(request["messages"][-1]) == "Say hello."
    assert request["messages"][-1]["role"] == "user"
    offered = upstream_tools(request)
    assert {"exec_command", "write_stdin", "view_image", "apply_patch"} <= set(offered)
    assert "web_search" not in offered


def test_exec_command_round_trip(codex: Codex) -> None:
    # the marker is only in the command's output, never in its arguments
    codex.script(
        {"tool_calls": [_exec("call_exec", "printf '%s-%s\\n' stepline 4711")]},
        {"content": "The command ran."},
    )

    run = codex.run("Run the marker command.")

    [command] = run.items("command_execution")
    assert (command["exit_code"], command["aggregated_output"]) == (0, "stepline-4711\n")
    assert run.messages == ["The command ran."]
    first, second = codex.upstream_requests()
    assert assistant_calls(first) == []
    assert assistant_calls(second) == [
        ("call_exec", "exec_command", {"cmd": "printf '%s-%s\\n' stepline 4711"})
    ]
    results = tool_results(second)
    assert list(results) == ["call_exec"]
    assert "stepline-4711" in results["call_exec"]


def test_parallel_exec_commands(codex: Codex) -> None:
    codex.script(
        {
            "tool_calls": [
                _exec("call_alpha", "printf '%s-%s\\n' alpha 1"),
                _exec("call_beta", "printf '%s-%s\\n' beta 2"),
            ]
        },
        {"content": "Both commands ran."},
    )

    run = codex.run("Run both commands.")

    outputs = sorted(item["aggregated_output"] for item in run.items("command_execution"))
    assert outputs == ["alpha-1\n", "beta-2\n"]
    assert run.messages == ["Both commands ran."]
    _, second = codex.upstream_requests()
    [turn] = [message for message in second["messages"] if message["role"] == "assistant"]
    assert [call["id"] for call in turn["tool_calls"]] == ["call_alpha", "call_beta"]
    results = tool_results(second)
    assert set(results) == {"call_alpha", "call_beta"}
    assert "alpha-1" in results["call_alpha"] and "beta-2" not in results["call_alpha"]
    assert "beta-2" in results["call_beta"] and "alpha-1" not in results["call_beta"]


def test_resume_last_continues_the_session(codex: Codex) -> None:
    codex.script({"content": "First answer."}, {"content": "Second answer."})

    first = codex.run("First prompt.")
    second = codex.run("Second prompt.", resume_last=True)

    assert first.messages == ["First answer."]
    assert second.messages == ["Second answer."]
    assert second.thread_id == first.thread_id
    one, two = codex.upstream_requests()
    # the first run's whole conversation, then its answer, then the new prompt
    assert two["messages"][: len(one["messages"])] == one["messages"]
    assert [(m["role"], text_of(m)) for m in two["messages"][len(one["messages"]) :]] == [
        ("assistant", "First answer."),
        ("user", "Second prompt."),
    ]


def test_output_schema(codex: Codex) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["answer", "count"],
        "additionalProperties": False,
    }
    schema_file = codex.work / "schema.json"
    schema_file.write_text(json.dumps(schema))
    codex.script({"content": '{"answer": "forty-two", "count": 42}'})

    run = codex.run("Answer in JSON.", "--output-schema", str(schema_file), json_events=False)

    assert json.loads(run.stdout) == {"answer": "forty-two", "count": 42}
    [request] = codex.upstream_requests()
    response_format = request["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["schema"] == schema
    assert response_format["json_schema"]["strict"] is True


def test_view_image_reaches_the_model(codex: Codex) -> None:
    picture = png(3, 2, (200, 30, 60))
    path = codex.work / "pixel.png"
    path.write_bytes(picture)
    codex.script(
        {"tool_calls": [_call("call_image", "view_image", path=str(path))]},
        {"content": "A small red picture."},
    )

    run = codex.run("Look at pixel.png.")

    assert run.messages == ["A small red picture."]
    _, second = codex.upstream_requests()
    assert "call_image" in tool_results(second)
    data_url = "data:image/png;base64," + base64.b64encode(picture).decode()
    assert image_urls_after(second, "call_image") == [data_url]


def test_apply_patch_custom_tool(codex: Codex) -> None:
    patch = "*** Begin Patch\n*** Add File: greeting.txt\n+hello from stepline\n*** End Patch\n"
    codex.script(
        {"tool_calls": [_call("call_patch", "apply_patch", input=patch)]},
        {"content": "Created greeting.txt."},
    )

    run = codex.run("Create greeting.txt.")

    assert (codex.work / "greeting.txt").read_text() == "hello from stepline\n"
    [change] = run.items("file_change")
    assert change["status"] == "completed"
    assert [(c["kind"], Path(c["path"]).name) for c in change["changes"]] == [
        ("add", "greeting.txt")
    ]
    assert run.messages == ["Created greeting.txt."]
    first, second = codex.upstream_requests()
    parameters = upstream_tools(first)["apply_patch"]["parameters"]
    assert parameters["properties"]["input"]["type"] == "string"
    assert parameters["required"] == ["input"]
    assert assistant_calls(second) == [("call_patch", "apply_patch", {"input": patch})]
    assert "greeting.txt" in tool_results(second)["call_patch"]  # Codex's report of the patch


def test_namespace_tool_round_trip(codex: Codex) -> None:
    # a model name Codex does not know: it sends the multi_agent_v1 namespace
    codex.script(
        {"tool_calls": [_call("call_close", "multi_agent_v1__close_agent", target="nobody")]},
        {"content": "There is no such agent."},
        known_model=False,
    )

    run = codex.run("Close the agent called nobody.")

    assert run.messages == ["There is no such agent."]
    first, second = codex.upstream_requests()
    assert {"multi_agent_v1__spawn_agent", "multi_agent_v1__close_agent"} <= set(
        upstream_tools(first)
    )
    assert assistant_calls(second) == [
        ("call_close", "multi_agent_v1__close_agent", {"target": "nobody"})
    ]
    # Codex ran its own close_agent (a flattened name would be an "unsupported call")
    result = tool_results(second)["call_close"]
    assert "nobody" in result
    assert "unsupported call" not in result
