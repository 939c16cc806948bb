"""Real clients over the WebSocket transport, against a real ``stepline serve`` process.

The stack is two processes on real sockets, as in ``_codex.py``: the scripted
model (``stepline mock-upstream``) and ``stepline serve`` routing every model
name to it. Each test registers its script under its own model name and
checks what the client got, what reached the model, and that the client used
the WebSocket: stepline's ``/metrics`` counts HTTP requests by route, and a
client that fell back to ``POST /v1/responses`` would show there.

The clients: the OpenAI SDK's ``client.responses.connect()`` running a
client-side tool loop, the Agents SDK's ``responses_websocket_session()``
(which sends ``stream: true`` on every ``response.create``), and the Codex
CLI with ``supports_websockets = true`` in its model provider.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from agents import Agent, function_tool, responses_websocket_session, set_tracing_disabled
from websockets.asyncio.client import connect

from tests._clients import client_bin
from tests.durability.conftest import ServerProcess, free_port, message_events, to_toml
from tests.e2e._codex import Codex, CodexStack, ScriptedUpstreamProcess, tool_results
from tests.e2e.conftest import first_text

#: the longest one receive may wait
RECEIVE_SECONDS = 10.0

_HTTP_CREATE = 'stepline_http_requests_total{method="POST",route="/v1/responses"'


class Processes:
    """The scripted model and stepline, each its own process."""

    def __init__(self, directory: Path) -> None:
        self.upstream = ScriptedUpstreamProcess(
            config=directory / "no-config",
            database=directory / "no-database",
            port=free_port(),
            log_dir=directory,
        )
        self.config = directory / "stepline.toml"
        self.stepline = ServerProcess(
            config=self.config,
            database=directory / "stepline.db",
            port=free_port(),
            log_dir=directory,
        )

    async def start(self) -> None:
        await self.upstream.start()
        upstream = {"base_url": f"{self.upstream.url}/v1", "max_retries": 0}
        settings = {"upstreams": {"scripted": upstream}, "default_model": {"upstream": "scripted"}}
        self.config.write_text(to_toml(settings))
        await self.stepline.start()

    def stop(self) -> None:
        self.stepline.stop()
        self.upstream.stop()

    def script(self, model: str, *turns: dict[str, Any]) -> str:
        reply = httpx.post(
            f"{self.upstream.url}/v1/scripts",
            json={"name": model, "script": {"turns": list(turns)}},
            timeout=10,
        )
        assert reply.status_code == 200, reply.text
        return model

    def requests(self, model: str) -> list[dict[str, Any]]:
        reply = httpx.get(f"{self.upstream.url}/v1/requests", params={"model": model}, timeout=10)
        assert reply.status_code == 200, reply.text
        sent: list[dict[str, Any]] = reply.json()
        return sent

    def http_creates(self) -> list[str]:
        """The ``POST /v1/responses`` counters in stepline's metrics (none: all over WebSocket)."""
        metrics = httpx.get(f"{self.stepline.url}/metrics", timeout=10).text
        return [line for line in metrics.splitlines() if line.startswith(_HTTP_CREATE)]


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    started = Processes(tmp_path_factory.mktemp("websocket-clients"))
    try:
        asyncio.run(started.start())
        yield started
    finally:
        started.stop()


@pytest.fixture
async def client(processes: Processes) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{processes.stepline.url}/v1", api_key="unused", max_retries=0
    ) as opened:
        yield opened


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


async def _until_terminal(connection: Any) -> list[Any]:
    events: list[Any] = []
    while not events or events[-1].type not in (
        "response.completed",
        "response.failed",
        "response.incomplete",
        "error",
    ):
        async with asyncio.timeout(RECEIVE_SECONDS):
            events.append(await connection.recv())
    return events


async def test_the_sdk_connection_runs_a_client_tool_loop(
    processes: Processes, client: openai.AsyncOpenAI
) -> None:
    model = processes.script(
        "sdk-loop",
        {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Lima"}, "id": "call_1"}]},
        {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Quito"}, "id": "call_2"}]},
        {"content": "Lima and Quito are sunny."},
    )

    turns: list[list[Any]] = []
    async with client.responses.connect() as connection:
        await connection.response.create(model=model, input="Weather?", tools=[WEATHER])  # type: ignore[list-item]
        turns.append(await _until_terminal(connection))
        for _ in range(2):
            previous = turns[-1][-1].response
            [call] = [item for item in previous.output if item.type == "function_call"]
            await connection.response.create(
                model=model,
                previous_response_id=previous.id,
                input=[
                    {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
                ],
                tools=[WEATHER],  # type: ignore[list-item]
            )
            turns.append(await _until_terminal(connection))

    finals = [turn[-1].response for turn in turns]
    assert [turn[-1].type for turn in turns] == ["response.completed"] * 3
    assert [response.previous_response_id for response in finals] == [
        None,
        finals[0].id,
        finals[1].id,
    ]
    assert finals[-1].output_text == "Lima and Quito are sunny."
    last = processes.requests(model)[-1]["messages"]
    assert [message["role"] for message in last] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
    ]
    assert tool_results({"messages": last}) == {"call_1": "sunny", "call_2": "sunny"}
    # stored: each turn reads back over HTTP as the WebSocket sent it
    for response in finals:
        assert (await client.responses.retrieve(response.id)) == response
    assert processes.http_creates() == []


async def test_the_agents_sdk_websocket_session_runs_its_tool_and_continues(
    processes: Processes,
) -> None:
    set_tracing_disabled(True)
    model = processes.script(
        "agents-ws",
        {"tool_calls": [{"name": "local_time", "arguments": {"city": "Lima"}}]},
        {"content": "It is 09:30 in Lima."},
        {"content": "Still 09:30."},
    )
    calls: list[str] = []

    @function_tool
    def local_time(city: str) -> str:
        """The local time in a city."""
        calls.append(city)
        return "09:30"

    agent = Agent(name="clock", instructions="Use your tool.", tools=[local_time], model=model)
    async with responses_websocket_session(
        api_key="unused", base_url=f"{processes.stepline.url}/v1"
    ) as session:
        first = await session.run(agent, "What time is it in Lima?")
        streamed = session.run_streamed(
            agent, "And now?", previous_response_id=first.last_response_id
        )
        kinds = [event.type async for event in streamed.stream_events()]

    assert (first.final_output, calls) == ("It is 09:30 in Lima.", ["Lima"])
    assert streamed.final_output == "Still 09:30."
    assert "raw_response_event" in kinds
    sent = processes.requests(model)
    assert [[m["role"] for m in request["messages"]] for request in sent] == [
        ["system", "user"],
        ["system", "user", "assistant", "tool"],
        ["system", "user", "assistant", "tool", "assistant", "user"],
    ]
    assert sent[1]["messages"][3]["content"] == "09:30"
    assert processes.http_creates() == []


async def test_stream_true_is_what_a_websocket_does_and_is_accepted(
    processes: Processes,
) -> None:
    model = processes.script("stream-true", {"content": "yes"})
    url = processes.stepline.url.replace("http://", "ws://", 1) + "/v1/responses"

    async with connect(url) as socket:
        await socket.send(
            orjson.dumps(
                {"type": "response.create", "model": model, "input": "x", "stream": True}
            ).decode()
        )
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] not in ("response.completed", "error"):
            async with asyncio.timeout(RECEIVE_SECONDS):
                events.append(orjson.loads(await socket.recv()))

    assert [event["type"] for event in events] == message_events(1)


def test_codex_with_supports_websockets_runs_a_command_over_the_websocket(
    processes: Processes, tmp_path: Path
) -> None:
    stack = CodexStack(
        codex_bin=client_bin("codex"), upstream=processes.upstream, stepline=processes.stepline
    )
    codex = Codex(stack, tmp_path, "websocket")
    command = {"name": "exec_command", "arguments": {"cmd": "echo ws-$((6 * 7))"}, "id": "call_ws"}
    codex.script({"tool_calls": [command]}, {"content": "The command printed ws-42."})
    config = tomllib.loads((codex.codex_home / "config.toml").read_text())
    config["model_providers"]["stepline"]["supports_websockets"] = True
    (codex.codex_home / "config.toml").write_text(to_toml(config))

    run = codex.run("Run the command.")

    assert run.messages == ["The command printed ws-42."]
    [executed] = run.items("command_execution")
    assert (executed["exit_code"], executed["aggregated_output"]) == (0, "ws-42\n")
    first, second = codex.upstream_requests()
    assert tool_results(second)["call_ws"].strip().endswith("ws-42")
    assert len(second["messages"]) > len(first["messages"])
    assert processes.http_creates() == []


async def test_a_stored_continuation_is_stored_as_over_http(
    processes: Processes, client: openai.AsyncOpenAI
) -> None:
    model = processes.script("stored-ws", {"content": "a1"}, {"content": "a2"})
    url = processes.stepline.url.replace("http://", "ws://", 1) + "/v1/responses"

    finals: list[dict[str, Any]] = []
    async with connect(url) as socket:
        for text in ("u1", "u2"):
            previous = {"previous_response_id": finals[-1]["id"]} if finals else {}
            body = {"type": "response.create", "model": model, "input": text, **previous}
            await socket.send(orjson.dumps(body).decode())
            events: list[dict[str, Any]] = []
            while not events or events[-1]["type"] not in ("response.completed", "error"):
                async with asyncio.timeout(RECEIVE_SECONDS):
                    events.append(orjson.loads(await socket.recv()))
            finals.append(events[-1]["response"])

    # the second response holds only its own input, not a copy of the first's
    items = await client.responses.input_items.list(finals[1]["id"], order="asc")
    assert [(item.type, first_text(item)) for item in items.data] == [("message", "u2")]
    assert processes.requests(model)[1]["messages"] == [
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
    ]
