"""Secrets planted in the config never leave: not in a reply, a stored row, a log line,
nor the CLI's output, even when an upstream or a tool echoes them back."""

from __future__ import annotations

import asyncio
import io
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
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from typer.testing import CliRunner

from stepline.cli import app as cli
from stepline.config import load_settings
from stepline.errors import ConfigError
from stepline.scripted import serve_app
from stepline.server.logs import JsonFormatter
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
        gw.script(
            "tooluser",
            [
                {
                    "tool_calls": [
                        {"name": "echo_auth", "arguments": {}},
                        {"name": "fail_auth", "arguments": {}},
                        {"name": "weather", "arguments": {"city": "Oslo"}},
                    ]
                },
                {"content": "done"},
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
