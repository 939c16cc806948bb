"""Observability: /metrics after a known run, request ids, JSON logs, /healthz and /readyz."""

from __future__ import annotations

import gc
import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from stepline._config import Settings
from stepline._server.app import create_app
from stepline._server.logs import JsonFormatter
from stepline.errors import StoreError
from stepline.scripted import serve_app
from stepline.store._memory import MemoryStore
from stepline.store._revisions import head_revision
from tests.gateway.conftest import GatewayFactory, read_sse

pytestmark = pytest.mark.timeout(30)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_a_known_run(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    usage = {"prompt_tokens": 10, "completion_tokens": 5}
    gw.script(
        "tooluser",
        [
            {"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}], "usage": usage},
            {"content": "It is sunny.", "usage": {"prompt_tokens": 20, "completion_tokens": 7}},
        ],
    )
    gw.script("plain", [{"content": "hi", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}])
    gw.script(
        "failing",
        [
            {"tool_calls": [{"name": "fail_auth", "arguments": {}}], "usage": usage},
            {"fault": {"status": 400, "message": "no"}},
        ],
    )
    client = gw.client(None)
    assert (await client.responses.create(model="tooluser", input="weather?")).status == (
        "completed"
    )
    assert (await client.responses.create(model="plain", input="hi")).status == "completed"
    async with gw.http.stream(
        "POST", "/v1/responses", json={"model": "plain", "input": "hi", "stream": True}
    ) as stream:
        events = await read_sse(stream)
    assert events[-1]["type"] == "response.completed"
    assert (await client.responses.create(model="failing", input="go")).status == "failed"
    assert (await gw.http.post("/v1/responses", json={"input": "no model"})).status_code == 400

    reply = await gw.http.get("/metrics")
    assert reply.headers["content-type"].startswith("text/plain")
    samples = _samples(reply.text)
    assert _value(samples, "stepline_responses_total", status="completed") == 3
    assert _value(samples, "stepline_responses_total", status="failed") == 1
    step = "stepline_step_duration_seconds_count"
    assert _value(samples, step, kind="model_call", state="completed") == 5
    assert _value(samples, step, kind="model_call", state="failed") == 1
    assert _value(samples, step, kind="tool_call", state="completed") == 1
    assert _value(samples, step, kind="tool_call", state="failed") == 1
    assert _value(samples, "stepline_tool_duration_seconds_count", tool="weather") == 1
    assert _value(samples, "stepline_tool_duration_seconds_count", tool="fail_auth") == 1
    assert _value(samples, "stepline_tool_errors_total", tool="fail_auth") == 1
    assert _value(samples, "stepline_tool_errors_total", tool="weather") == 0
    assert _value(samples, "stepline_tokens_total", direction="input") == 10 + 20 + 3 + 3 + 10
    assert _value(samples, "stepline_tokens_total", direction="output") == 5 + 7 + 2 + 2 + 5
    upstream = "stepline_upstream_request_duration_seconds_count"
    assert _value(samples, upstream, target="scripted") == 6
    assert (
        _value(samples, "stepline_upstream_errors_total", target="scripted", kind="http_400") == 1
    )
    assert _value(samples, "stepline_open_streams") == 0
    requests = "stepline_http_requests_total"
    assert _value(samples, requests, method="POST", route="/v1/responses", status="200") == 4
    assert _value(samples, requests, method="POST", route="/v1/responses", status="400") == 1


#: methods HTTP knows and no stepline route answers
_UNROUTED_METHODS = (
    "PROPFIND",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "REPORT",
    "PURGE",
    "SEARCH",
    "LINK",
)


async def test_no_request_grows_the_http_metric_labels(gateway_factory: GatewayFactory) -> None:
    """Unrouted methods and made-up paths, without a key, on a server with keys: a
    bounded series. (The HTTP parser answers a method it does not know with a 400
    before any route or metric sees it.)"""
    gw = await gateway_factory(keys={"alice": {}})
    for number in range(25):
        method = _UNROUTED_METHODS[number % len(_UNROUTED_METHODS)]
        for path in ("/v1/responses", f"/v1/nothing-{number}", f"/elsewhere/{number}"):
            reply = await gw.http.request(method, path)
            assert reply.status_code in (401, 404, 405), reply.text
    await gw.http.get("/v1/models", headers=gw.auth("alice"))
    gw.app.state.metrics.http_request("GET", "unmatched", 1234)  # an upstream's odd status

    samples = _samples((await gw.http.get("/metrics")).text)
    series = [dict(labels) for name, labels in samples if name == "stepline_http_requests_total"]
    assert {labels["method"] for labels in series} <= {"GET", "other"}
    assert {labels["route"] for labels in series} <= {"/v1/responses", "/v1/models", "unmatched"}
    assert len(series) <= 5, series
    requests = "stepline_http_requests_total"
    assert _value(samples, requests, method="other", route="unmatched", status="401") == 50
    assert _value(samples, requests, method="other", route="unmatched", status="404") == 25
    assert _value(samples, requests, method="GET", route="/v1/models", status="200") == 1
    assert _value(samples, requests, method="GET", route="unmatched", status="other") == 1


async def test_open_streams_are_counted_while_open(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    gw.script("hanger", [{"tool_calls": [{"name": "hang", "arguments": {}}]}, {"content": "ok"}])
    created = await gw.http.post(
        "/v1/responses", json={"model": "hanger", "input": "go", "background": True}
    )
    response_id = created.json()["id"]
    async with gw.http.stream("GET", f"/v1/responses/{response_id}?stream=true") as stream:
        lines = stream.aiter_lines()
        assert (await anext(lines)) == "event: response.created"
        metrics = _samples((await gw.http.get("/metrics")).text)
        assert _value(metrics, "stepline_open_streams") == 1
        gw.tools.release.set()
        rest = [line async for line in lines]
    assert "event: response.completed" in rest
    assert [line for line in rest if line][-1] == "data: [DONE]"
    metrics = _samples((await gw.http.get("/metrics")).text)
    assert _value(metrics, "stepline_open_streams") == 0


async def test_every_reply_carries_a_request_id(gateway_factory: GatewayFactory) -> None:
    def small(settings: dict[str, Any]) -> None:
        settings["limits"] = {"max_request_bytes": 1024}

    gw = await gateway_factory(change=small)
    replies = [
        await gw.http.get("/v1/models"),
        await gw.http.get("/v1/responses/resp_missing"),
        await gw.http.post("/v1/responses", content=b"x" * 2000),
        await gw.http.post("/v1/responses", content=b"{"),
        await gw.http.get("/nowhere"),
        await gw.http.get("/metrics"),
        await gw.http.get("/healthz"),
        await gw.http.get("/readyz"),
    ]
    assert [reply.status_code for reply in replies] == [200, 404, 413, 400, 404, 200, 200, 200]
    ids = [reply.headers["x-request-id"] for reply in replies]
    assert len(set(ids)) == len(ids)
    async with gw.http.stream(
        "POST", "/v1/responses", json={"model": "beta", "input": "hi", "stream": True}
    ) as stream:
        assert stream.headers["x-request-id"].startswith("req_")
        await stream.aread()
    # a client's own id is kept when it is sane, replaced when it is not
    mine = await gw.http.get("/v1/models", headers={"x-request-id": "client-42.a:b"})
    assert mine.headers["x-request-id"] == "client-42.a:b"
    for odd in ["has space", "x" * 200, "new\\nline"]:
        replaced = await gw.http.get("/v1/models", headers={"x-request-id": odd})
        assert replaced.headers["x-request-id"].startswith("req_")


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every log line of the test, as the server writes it (JSON, secrets masked)."""
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


async def test_logs_are_json_lines_with_request_response_and_step_ids(
    gateway_factory: GatewayFactory, json_log: io.StringIO
) -> None:
    gw = await gateway_factory(keys={"alice": {}})
    gw.script(
        "tooluser",
        [{"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]}, {"content": "ok"}],
    )
    reply = await gw.http.post(
        "/v1/responses", headers=gw.auth("alice"), json={"model": "tooluser", "input": "hi"}
    )
    request_id = reply.headers["x-request-id"]
    response_id = reply.json()["id"]
    lines = [orjson.loads(line) for line in json_log.getvalue().splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)

    (access,) = [
        line for line in lines if line["logger"] == "stepline.access" and line["status"] == 200
    ]
    assert access["request_id"] == request_id
    assert access["response_id"] == response_id
    assert access["key"] == "alice"
    assert access["method"] == "POST" and access["path"] == "/v1/responses"

    steps = [line for line in lines if line["logger"] == "stepline.steps"]
    assert [(s["kind"], s["state"]) for s in steps] == [
        ("model_call", "completed"),
        ("tool_call", "completed"),
        ("model_call", "completed"),
    ]
    for line in steps:
        assert line["response_id"] == response_id
        assert line["step_id"].startswith("step_")
        assert line["request_id"] == request_id  # the loop runs in the request's context
    assert steps[1]["tool"] == "weather"


async def test_a_stream_is_sent_from_the_gateway_and_logged_when_it_ends(
    gateway_factory: GatewayFactory, json_log: io.StringIO
) -> None:
    """While a stream is open its route has returned (no Request of it is alive: the
    routing stack is gone), and its access line is written once it ends."""
    gw = await gateway_factory(keys={"alice": {}})
    gw.script("slow", [{"content": "one two three four", "token_delay": 0.1}])

    def access_lines(request_id: str) -> list[dict[str, Any]]:
        lines = [orjson.loads(line) for line in json_log.getvalue().splitlines()]
        return [
            line
            for line in lines
            if line["logger"] == "stepline.access" and line["request_id"] == request_id
        ]

    async with gw.http.stream(
        "POST",
        "/v1/responses",
        headers=gw.auth("alice"),
        json={"model": "slow", "input": "hi", "stream": True},
    ) as stream:
        assert stream.status_code == 200
        request_id = stream.headers["x-request-id"]
        lines = stream.aiter_lines()
        async for line in lines:
            if line == "event: response.output_text.delta":
                break
        gc.collect()
        requests = [thing for thing in gc.get_objects() if isinstance(thing, Request)]
        assert [r for r in requests if r.scope["path"] == "/v1/responses"] == []
        assert access_lines(request_id) == []
        opened = time.monotonic()
        async for _ in lines:
            pass
        open_for = time.monotonic() - opened
    (access,) = access_lines(request_id)
    assert (access["method"], access["path"], access["status"]) == ("POST", "/v1/responses", 200)
    assert access["key"] == "alice"
    assert access["duration_ms"] >= open_for * 1000


async def test_healthz_and_readyz(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    assert (await gw.http.get("/healthz")).json() == {"status": "ok"}
    ready = await gw.http.get("/readyz")
    assert ready.json() == {"status": "ready", "revision": head_revision()}

    # a database whose schema is behind this version of stepline is not ready
    engine = sa.create_engine(f"sqlite:///{gw.database_path}")
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE stepline_alembic_version SET version_num = 'old'"))
    engine.dispose()
    behind = await gw.http.get("/readyz")
    assert behind.status_code == 503
    assert behind.json() == {
        "status": "unavailable",
        "reason": "database schema is not current",
        "revision": "old",
        "expected": head_revision(),
    }
    assert (await gw.http.get("/healthz")).status_code == 200


class _UnreachableStore(MemoryStore):
    async def current_revision(self) -> str | None:
        raise StoreError("connection refused to postgresql://user:password@db/stepline")


async def test_readyz_says_an_unreachable_database_without_details(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "upstreams": {"u": {"base_url": "http://127.0.0.1:9/v1"}},
            "default_model": {"upstream": "u"},
        }
    )
    app = create_app(settings, store=_UnreachableStore())
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as http:
        reply = await http.get("/readyz")
        assert reply.status_code == 503
        assert reply.json() == {"status": "unavailable", "reason": "database unreachable"}
        assert "password" not in reply.text
        assert (await http.get("/healthz")).status_code == 200


class _BrokenStore(MemoryStore):
    async def get_response(self, response_id: str) -> Any:
        raise RuntimeError(f"boom while reading {response_id}")


async def test_an_unexpected_error_is_a_500_envelope_with_its_request_id(
    json_log: io.StringIO,
) -> None:
    settings = Settings.model_validate(
        {
            "upstreams": {"u": {"base_url": "http://127.0.0.1:9/v1"}},
            "default_model": {"upstream": "u"},
        }
    )
    app = create_app(settings, store=_BrokenStore())
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as http:
        reply = await http.get("/v1/responses/resp_1")
    assert reply.status_code == 500
    assert reply.json() == {
        "error": {
            "message": "The server had an error processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    lines = [orjson.loads(line) for line in json_log.getvalue().splitlines()]
    (failure,) = [line for line in lines if line["level"] == "error"]
    assert failure["request_id"] == reply.headers["x-request-id"]
    assert "boom while reading resp_1" in failure["exception"]
