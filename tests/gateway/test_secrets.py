"""Secrets planted in the config never leave: not in a reply, a stored row, a log line,
nor the CLI's output, even when an upstream or a tool echoes them back."""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from typer.testing import CliRunner

from stepline import _masking as masking
from stepline._chat.stream import ChatStreamAccumulator
from stepline._cli import app as cli
from stepline._config import UpstreamConfig, load_settings
from stepline._server.logs import JsonFormatter
from stepline._upstream import ChatClient, UpstreamTarget
from stepline.errors import ConfigError, UpstreamError
from stepline.scripted import serve_app
from tests.gateway.conftest import GatewayFactory, read_sse

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "STEPLINE_TEST_UPSTREAM_KEY": f"sk-upstream-{secrets.token_hex(16)}",
        "STEPLINE_TEST_TOOL_TOKEN": f"tool-secret-{secrets.token_hex(16)}",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def all_logs() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _leaky_upstream() -> Starlette:
    """An upstream that refuses every call, quoting the credentials it got."""

    async def completions(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        body = {"error": {"message": f"Incorrect API key provided: {auth}", "code": "bad_key"}}
        return Response(orjson.dumps(body), status_code=401, media_type="application/json")

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


async def test_planted_secrets_never_show(
    gateway_factory: GatewayFactory,
    planted: dict[str, str],
    all_logs: io.StringIO,
    tmp_path: Path,
) -> None:
    upstream_key = planted["STEPLINE_TEST_UPSTREAM_KEY"]
    tool_token = planted["STEPLINE_TEST_TOOL_TOKEN"]

    async with serve_app(_leaky_upstream()) as leaky_url:

        def plant(settings: dict[str, Any]) -> None:
            settings["upstreams"]["scripted"]["api_key_env"] = "STEPLINE_TEST_UPSTREAM_KEY"
            settings["upstreams"]["leaky"] = {
                "base_url": f"{leaky_url}/v1",
                "api_key": "env:STEPLINE_TEST_UPSTREAM_KEY",
                "max_retries": 0,
            }
            settings["models"].append({"name": "leaky", "upstream": "leaky"})
            for tool in settings["tools"].values():
                tool["headers"] = {"Authorization": "env:STEPLINE_TEST_TOOL_TOKEN"}

        gw = await gateway_factory(keys={"alice": {}}, change=plant)
        auth = gw.auth("alice")
        # a model that repeats the secrets it should never have seen: in its reasoning,
        # its text and a tool call's arguments (streamed in pieces that split the secret)
        gw.script(
            "tooluser",
            [
                {
                    "reasoning": f"the key is {upstream_key}, the token {tool_token}",
                    "tool_calls": [
                        {"name": "echo_auth", "arguments": {}},
                        {"name": "fail_auth", "arguments": {}},
                        {"name": "weather", "arguments": {"city": f"Oslo {upstream_key}"}},
                    ],
                },
                {"content": f"done: key {upstream_key} token {tool_token}."},
            ],
            repeat_last=True,
        )
        replies: list[httpx.Response] = []

        async def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
            reply = await gw.http.request(method, path, headers=auth, **kwargs)
            await reply.aread()
            replies.append(reply)
            return reply

        plain = await call("POST", "/v1/responses", json={"model": "tooluser", "input": "go"})
        response_id = plain.json()["id"]
        outputs = {item["name"]: item for item in plain.json()["output"] if "name" in item}
        assert outputs["echo_auth"]["output"] == "you sent ***"
        assert "denied for ***" in str(outputs["fail_auth"]["error"])
        assert orjson.loads(outputs["weather"]["arguments"]) == {"city": "Oslo ***"}
        by_type = {item["type"]: item for item in plain.json()["output"]}
        assert by_type["message"]["content"][0]["text"] == "done: key *** token ***."
        assert by_type["reasoning"]["content"][0]["text"] == "the key is ***, the token ***"

        async with gw.http.stream(
            "POST",
            "/v1/responses",
            headers=auth,
            json={"model": "tooluser", "input": "go", "stream": True},
        ) as stream:
            streamed = await read_sse(stream)
        replay_text = orjson.dumps(streamed).decode()

        background = await call(
            "POST", "/v1/responses", json={"model": "tooluser", "input": "go", "background": True}
        )
        background_id = background.json()["id"]
        async with gw.http.stream(
            "GET", f"/v1/responses/{background_id}?stream=true", headers=auth
        ) as stream:
            replay_text += orjson.dumps(await read_sse(stream)).decode()
        await call("GET", f"/v1/responses/{background_id}")
        await call("GET", f"/v1/responses/{response_id}/input_items")

        failed = await call("POST", "/v1/responses", json={"model": "leaky", "input": "hi"})
        assert failed.json()["status"] == "failed"
        assert "Incorrect API key provided: Bearer ***" in failed.json()["error"]["message"]
        passthrough = await call(
            "POST",
            "/v1/chat/completions",
            json={"model": "leaky", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert passthrough.status_code == 401
        assert "Bearer ***" in passthrough.text
        chat = await call(
            "POST",
            "/v1/chat/completions",
            json={"model": "tooluser", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 200
        assert orjson.loads(chat.text)["choices"][0]["message"]["reasoning_content"] == (
            "the key is ***, the token ***"
        )
        streamed_chat = await call(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "tooluser",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            },
        )
        chunks = [
            orjson.loads(line[6:])
            for line in streamed_chat.text.splitlines()
            if line.startswith("data: {")
        ]
        assert streamed_chat.text.rstrip().endswith("data: [DONE]")
        # the weather call's arguments come in pieces that split the key: masked all the same
        arguments = "".join(
            piece["function"].get("arguments") or ""
            for chunk in chunks
            for piece in chunk["choices"][0]["delta"].get("tool_calls") or []
            if piece["index"] == 2
        )
        assert orjson.loads(arguments) == {"city": "Oslo ***"}
        await call("GET", "/v1/models")
        await call("GET", "/metrics")
        await call("GET", "/readyz")
        await call("POST", "/v1/responses", json={"model": "tooluser"})

    # the secrets were used where they belong...
    assert f"Bearer {upstream_key}" in gw.upstream.seen
    assert gw.tools.headers["echo_auth"][0]["authorization"] == tool_token
    assert gw.tools.headers["weather"][0]["authorization"] == tool_token

    # ...and nowhere else
    reply_text = "\n".join(
        f"{reply.status_code} {dict(reply.headers)} {reply.text}" for reply in replies
    )
    logs = all_logs.getvalue()
    assert "stepline.access" in logs and "stepline.steps" in logs
    rows = _every_stored_value(gw.database_path)
    assert response_id in rows
    raw_files = b"".join(
        path.read_bytes() for path in gw.database_path.parent.glob(f"{gw.database_path.name}*")
    )
    # the CLI runs its own event loop: in a thread, as it would in its own process
    cli_output = await asyncio.to_thread(
        _cli_output, gw.database_path, [response_id, background_id]
    )
    assert response_id in cli_output
    for secret in (upstream_key, tool_token):
        assert secret not in reply_text
        assert secret not in replay_text
        assert secret not in logs
        assert secret not in rows
        assert secret.encode() not in raw_files
        assert secret not in cli_output


def _every_stored_value(database: Path) -> str:
    connection = sqlite3.connect(database)
    try:
        tables = [
            name
            for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        values: list[str] = []
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                values.extend(
                    value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                    for value in row
                )
        return "\n".join(values)
    finally:
        connection.close()


def _cli_output(database: Path, response_ids: list[str]) -> str:
    runner = CliRunner()
    url = f"sqlite:///{database}"
    outputs = [runner.invoke(cli, ["responses", "list", "--database", url])]
    outputs += [
        runner.invoke(cli, ["responses", "show", response_id, "--database", url])
        for response_id in response_ids
    ]
    outputs.append(runner.invoke(cli, ["keys", "list", "--database", url]))
    for result in outputs:
        assert result.exit_code == 0, result.output
    return "\n".join(result.output for result in outputs)


def test_a_config_error_never_quotes_the_bad_value(tmp_path: Path) -> None:
    secret = f"sk-literal-{secrets.token_hex(8)}"
    config = tmp_path / "stepline.toml"
    config.write_text(
        f'[upstreams.u]\nbase_url = "http://u/v1"\napi_key = ["{secret}"]\n'
        f'[tools.t]\ntype = "http"\nurl = "http://t"\nheaders = {{ A = 1 }}\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    assert secret not in str(raised.value)
    assert "api_key" in str(raised.value)
    result = CliRunner().invoke(cli, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert secret not in result.output
    assert os.environ.get("STEPLINE_TEST_UPSTREAM_KEY") is None


# -- the mask itself ------------------------------------------------------------------

SECRET = "sk-live-0123456789abcdef"
OTHER = "tok-9876543210"


@pytest.fixture(autouse=True)
def _own_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets a test registers are forgotten after it (they would mask other tests)."""
    monkeypatch.setattr(masking, "_secrets", masking._secrets)


def _masked(text: str) -> str:
    return text.replace(SECRET, "***").replace(OTHER, "***")


class _Deltas:
    """A DeltaSink that keeps what reached it, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def on_reasoning(self, text: str) -> None:
        self.seen.append(("reasoning", text))

    def on_text(self, text: str) -> None:
        self.seen.append(("text", text))

    def on_tool_call(self, index: int, call_id: str, name: str) -> None:
        self.seen.append(("call", name))

    def on_tool_arguments(self, index: int, text: str) -> None:
        self.seen.append(("arguments", text))

    def on_logprobs(self, entries: list[dict[str, Any]]) -> None:
        return None


def _delta_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _cut(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *(cut % (len(text) + 1) for cut in cuts)})
    return [text[start:end] for start, end in itertools.pairwise(points)]


#: secrets, their beginnings (which must come out unharmed) and plain text
_PIECES = st.sampled_from([SECRET, OTHER, "s", "sk-", "sk-live-01", "tok-98", " plain ", "ü"])
_TEXT = st.lists(_PIECES, max_size=8).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    reasoning=_TEXT,
    text=_TEXT,
    arguments=_TEXT,
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12),
)
def test_a_secret_split_anywhere_across_chunks_is_masked(
    reasoning: str, text: str, arguments: str, cuts: list[int]
) -> None:
    chunks = [_delta_chunk({"role": "assistant", "content": ""})]
    chunks += [_delta_chunk({"reasoning_content": piece}) for piece in _cut(reasoning, cuts)]
    chunks += [_delta_chunk({"content": piece}) for piece in _cut(text, cuts)]
    opening = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f"}}
    chunks.append(_delta_chunk({"tool_calls": [opening]}))
    chunks += [
        _delta_chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        for piece in _cut(arguments, cuts)
    ]
    chunks.append(_delta_chunk({}, finish="tool_calls"))

    masker = masking.StreamMasker((SECRET, OTHER))
    sink = _Deltas()
    stream = ChatStreamAccumulator(sink)
    for chunk in chunks:
        masker.chunk(chunk)
        stream.feed(chunk)
    turn = stream.result()

    assert turn.reasoning == _masked(reasoning)
    assert turn.text == _masked(text)
    assert turn.tool_calls[0].arguments == _masked(arguments)
    # nothing comes out of its order: all reasoning, then all text, then the call
    kinds = [kind for kind, _ in sink.seen]
    assert kinds == sorted(kinds, key=["reasoning", "text", "call", "arguments"].index)


def test_a_whole_reply_in_one_delta_is_masked_field_by_field() -> None:
    """A non-streamed reply is one delta of every field, then the finish."""
    delta = {
        "reasoning_content": f"think {SECRET[:5]}",  # ends like the secret begins
        "content": f"say {SECRET} then {OTHER[:4]}",
        "tool_calls": [
            {"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}
        ],
    }
    chunks = [_delta_chunk(delta), _delta_chunk({}, finish="stop")]
    masker = masking.StreamMasker((SECRET, OTHER))
    stream = ChatStreamAccumulator(_Deltas())
    for chunk in chunks:
        masker.chunk(chunk)
        stream.feed(chunk)
    turn = stream.result()
    assert turn.reasoning == f"think {SECRET[:5]}"
    assert turn.text == f"say *** then {OTHER[:4]}"
    assert turn.tool_calls[0].arguments == "{"


@pytest.mark.parametrize("streamed", [True, False], ids=["sse", "json"])
async def test_the_upstream_client_masks_what_the_model_says(streamed: bool) -> None:
    masking.register_secrets([SECRET])
    arguments = orjson.dumps({"key": SECRET}).decode()
    if streamed:
        events = [_delta_chunk({"content": piece}) for piece in _cut(f"a {SECRET} b", [4, 9])]
        events.append(
            _delta_chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "c", "type": "function", "function": {"name": "f"}}
                    ]
                }
            )
        )
        events += [
            _delta_chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in _cut(arguments, [10, 20])
        ]
        events.append(_delta_chunk({}, finish="tool_calls"))
        body = b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in events)
        reply = httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=body + b"data: [DONE]\n\n"
        )
    else:
        message = {
            "role": "assistant",
            "content": f"a {SECRET} b",
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
            ],
        }
        reply = httpx.Response(
            200, json={"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        )

    async def handle(request: httpx.Request) -> httpx.Response:
        return reply

    config = UpstreamConfig(base_url="http://upstream.test/v1", stream=streamed)
    target = UpstreamTarget(
        name="u", base_url=config.base_url, api_key=None, upstream_model="m", config=config
    )
    stream = ChatStreamAccumulator(_Deltas())
    async with ChatClient(transport=httpx.MockTransport(handle)) as client:
        async for chunk in client.stream(target, {"messages": []}, step_id="step_1"):
            stream.feed(chunk)
    turn = stream.result()
    assert turn.text == "a *** b"
    assert orjson.loads(turn.tool_calls[0].arguments) == {"key": "***"}


@pytest.mark.parametrize(
    "reply",
    [
        httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=b'event: error\ndata: {"error": {"message": "bad '
            + SECRET.encode()
            + b'"}}\n\n',
        ),
        httpx.Response(
            200,
            headers={"content-type": "text/event-stream"},
            content=b"data: {" + SECRET.encode() + b"\n\n",
        ),
        httpx.Response(200, json={"error": {"message": f"bad {SECRET}"}}),
        httpx.Response(200, json={"choices": [f"not a choice {SECRET}"]}),
        httpx.Response(200, json={"id": SECRET, "choices": []}),
        httpx.Response(401, json={"error": {"message": f"bad {SECRET}"}}),
    ],
    ids=["error-event", "bad-json-event", "error-body", "bad-choice", "no-choices", "status"],
)
async def test_an_upstream_error_never_quotes_a_secret(reply: httpx.Response) -> None:
    masking.register_secrets([SECRET])

    async def handle(request: httpx.Request) -> httpx.Response:
        return reply

    streamed = reply.headers["content-type"] == "text/event-stream"
    config = UpstreamConfig(base_url="http://upstream.test/v1", stream=streamed, max_retries=0)
    target = UpstreamTarget(
        name="u", base_url=config.base_url, api_key=None, upstream_model="m", config=config
    )
    async with ChatClient(transport=httpx.MockTransport(handle)) as client:
        with pytest.raises(UpstreamError) as raised:
            async for _ in client.stream(target, {"messages": []}, step_id="step_1"):
                pass
    assert "***" in str(raised.value)
    assert SECRET not in str(raised.value) and SECRET not in (raised.value.body or "")


def test_a_short_secret_is_never_masked() -> None:
    """``--upstream-api-key s`` must not turn every ``s`` of every line into ``***``."""
    assert masking.register_secrets(["s", "ollama", "", "x", SECRET]) == ("s", "ollama", "x")
    line = "stepline serves 'ollama' on localhost: yes, x marks the spot"
    assert masking.mask(line) == line
    assert masking.mask(f"{line} {SECRET}") == f"{line} ***"
    masker = masking.stream_masker()
    assert masker is not None
    chunk = _delta_chunk({"content": "yes sir"}, finish="stop")
    masker.chunk(chunk)
    assert chunk["choices"][0]["delta"]["content"] == "yes sir"


def test_without_secrets_there_is_no_stream_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(masking, "_secrets", ())
    assert masking.stream_masker() is None
    assert masking.mask("anything") == "anything"


async def test_a_short_secret_is_named_once_at_start_and_left_alone(
    gateway_factory: GatewayFactory, all_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPLINE_TEST_SHORT_TOKEN", "qz9")

    def plant(settings: dict[str, Any]) -> None:
        settings["upstreams"]["scripted"]["api_key"] = "xq7"  # like --upstream-api-key x
        settings["tools"]["weather"]["headers"] = {"X-Token": "env:STEPLINE_TEST_SHORT_TOKEN"}

    gw = await gateway_factory(change=plant)
    gw.script("plain", [{"content": "xq7 and qz9 stay as they are"}])
    reply = await gw.http.post("/v1/responses", json={"model": "plain", "input": "hi"})
    assert reply.json()["output"][0]["content"][0]["text"] == "xq7 and qz9 stay as they are"
    assert "Bearer xq7" in gw.upstream.seen

    warnings = [
        orjson.loads(line) for line in all_logs.getvalue().splitlines() if "not masking" in line
    ]
    assert len(warnings) == 1, warnings
    message = warnings[0]["message"]
    assert warnings[0]["level"] == "warning"
    assert "upstreams.scripted.api_key" in message
    assert "tools.weather.headers.X-Token" in message
    assert "xq7" not in message and "qz9" not in message
    assert "stepline.access" in all_logs.getvalue()  # the log lines themselves are whole
    assert "***" not in "".join(
        orjson.loads(line)["message"] for line in all_logs.getvalue().splitlines()
    )
