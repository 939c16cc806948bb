"""``GET /v1/usage`` and ``stepline usage`` against a real server with keys and real responses."""

from __future__ import annotations

import asyncio
import datetime
import math
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from stepline._config import Settings
from stepline._server.app import create_app
from stepline.errors import NotSupported
from stepline.scripted import serve_app
from stepline.store._memory import MemoryStore
from stepline.store._sql import open_store
from tests.gateway.conftest import Gateway, GatewayFactory

pytestmark = pytest.mark.timeout(60)

KEYS: dict[str, dict[str, Any]] = {"operator": {"admin": True}, "alice": {}, "bob": {}}


def _day(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).date().isoformat()


def _ms(durations: list[float], percent: int) -> float | None:
    if not durations:
        return None
    ordered = sorted(durations)
    return round(ordered[math.ceil(percent / 100 * len(ordered)) - 1] * 1000, 1)


async def _run_traffic(gw: Gateway) -> list[dict[str, Any]]:
    """Responses of two keys on three models, one of them failing; what each returned."""
    gw.script(
        "alpha", [{"content": "one two", "usage": {"prompt_tokens": 11, "completion_tokens": 2}}]
    )
    gw.script("beta", [{"content": "three", "usage": {"prompt_tokens": 7, "completion_tokens": 1}}])
    gw.script("gamma", [{"fault": {"status": 500, "message": "upstream down"}}])
    plan = [
        ("alice", "alpha"),
        ("alice", "alpha"),
        ("alice", "beta"),
        ("bob", "beta"),
        ("bob", "gamma"),
    ]
    made = []
    for key, model in plan:
        response = await gw.client(key).responses.create(model=model, input="hi")
        made.append({"key": key, "model": model, "response": response.model_dump()})
    return made


async def _expected(
    gw: Gateway, made: list[dict[str, Any]], key_ids: dict[str, str]
) -> list[dict[str, Any]]:
    """The rows a reader expects from what the responses said and what the store keeps."""
    store = await open_store(f"sqlite:///{gw.database_path}", migrate=False)
    try:
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for entry in made:
            record = await store.get_response(entry["response"]["id"])
            assert record is not None
            entry["record"] = record
            groups.setdefault((_day(record.created_at), entry["key"], entry["model"]), []).append(
                entry
            )
        ends: dict[str, float | None] = {}
        for entry in made:
            record = entry["record"]
            end = record.completed_at
            if end is None:
                end = max(step.finished_at or 0 for step in await store.load_steps(record.id))
            ends[record.id] = end - record.created_at
    finally:
        await store.close()
    rows = []
    # rows come by day, then key id, then model
    ordered = sorted(
        groups.items(), key=lambda group: (group[0][0], key_ids[group[0][1]], group[0][2])
    )
    for (day, key, model), entries in ordered:
        usages = [e["response"]["usage"] for e in entries]
        durations = [d for e in entries if (d := ends[e["record"].id]) is not None]
        failed = sum(e["response"]["status"] == "failed" for e in entries)
        rows.append(
            {
                "day": day,
                "key": key,
                "key_id": key_ids[key],
                "model": model,
                "requests": len(entries),
                "completed": sum(e["response"]["status"] == "completed" for e in entries),
                "errors": failed,
                "failed": failed,
                "incomplete": 0,
                "cancelled": 0,
                "input_tokens": sum(u["input_tokens"] for u in usages),
                "output_tokens": sum(u["output_tokens"] for u in usages),
                "total_tokens": sum(u["total_tokens"] for u in usages),
                "cached_tokens": sum(u["input_tokens_details"]["cached_tokens"] for u in usages),
                "reasoning_tokens": sum(
                    u["output_tokens_details"]["reasoning_tokens"] for u in usages
                ),
                "latency_ms": {"p50": _ms(durations, 50), "p95": _ms(durations, 95)},
            }
        )
    return rows


async def test_usage_reports_each_keys_requests_tokens_errors_and_latency(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    gw = await gateway_factory(keys=KEYS)
    made = await _run_traffic(gw)
    key_ids = {name: gw.app.state.gateway.keys.by_name(name).id for name in KEYS}
    window = {"start": "2000-01-01", "end": _day(datetime.datetime.now(datetime.UTC).timestamp())}

    reply = await gw.http.get("/v1/usage", params=window, headers=gw.auth("operator"))

    assert reply.status_code == 200, reply.text
    document = reply.json()
    expected_rows = await _expected(gw, made, key_ids)
    today = datetime.datetime.fromisoformat(window["end"]).replace(tzinfo=datetime.UTC)
    assert document == {
        "object": "usage",
        "start": int(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC).timestamp()),
        "end": int((today + datetime.timedelta(days=1)).timestamp()),
        "group_by": ["day", "key", "model"],
        "data": expected_rows,
    }
    assert sum(row["input_tokens"] for row in document["data"]) > 0
    assert [row["failed"] for row in document["data"] if row["model"] == "gamma"] == [1]

    # one key, by name; the same rows as the whole minus the others
    alice = await gw.http.get(
        "/v1/usage", params={**window, "key": "alice"}, headers=gw.auth("operator")
    )
    assert alice.json()["data"] == [row for row in expected_rows if row["key"] == "alice"]
    by_id = await gw.http.get(
        "/v1/usage", params={**window, "key": key_ids["bob"], "model": "beta"},
        headers=gw.auth("operator"),
    )  # fmt: skip
    assert by_id.json()["data"] == [
        row for row in expected_rows if row["key"] == "bob" and row["model"] == "beta"
    ]
    # one total, nothing grouped
    total = await gw.http.get(
        "/v1/usage", params={**window, "group_by": ""}, headers=gw.auth("operator")
    )
    [overall] = total.json()["data"]
    assert overall["requests"] == len(made)
    assert overall["input_tokens"] == sum(e["response"]["usage"]["input_tokens"] for e in made)
    assert set(overall) == set(expected_rows[0]) - {"day", "key", "key_id", "model"}

    # the CLI reads the same figures from the database
    config = tmp_path / "stepline.toml"
    config.write_text(
        "".join(
            f'[keys.{name}]\nhash = "{gw.app.state.gateway.keys.by_name(name).config.hash}"\n'
            for name in KEYS
        )
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stepline", "usage", "--json",
        "--config", str(config), "--database", f"sqlite:///{gw.database_path}",
        "--start", window["start"], "--end", window["end"],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    assert orjson.loads(stdout) == document


async def test_only_an_admin_key_reads_usage(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(keys=KEYS)
    refused = await gw.http.get("/v1/usage", headers=gw.auth("alice"))
    assert refused.status_code == 403
    assert refused.json() == {
        "error": {
            "message": "This endpoint needs an admin API key (admin = true in its [keys.NAME]).",
            "type": "invalid_request_error",
            "param": None,
            "code": "admin_key_required",
        }
    }
    assert (await gw.http.get("/v1/usage")).status_code == 401
    with pytest.raises(openai.PermissionDeniedError):
        await gw.client("bob").get("/usage", cast_to=object)


async def test_usage_on_a_memory_store_is_a_501_of_the_error_tree() -> None:
    settings = Settings.model_validate(
        {
            "upstreams": {"u": {"base_url": "http://127.0.0.1:9/v1"}},
            "default_model": {"upstream": "u"},
        }
    )
    app = create_app(settings, store=MemoryStore())
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as http:
        reply = await http.get("/v1/usage")  # loopback, no keys: an operator
    assert reply.status_code == NotSupported.status_code == 501
    assert reply.json() == {
        "error": {
            "message": "Usage is read from a SQL store; this server keeps responses in memory.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"start": "2026-13-01"}, "start"),
        ({"start": "yesterday"}, "start"),
        ({"end": "-5"}, "end"),
        ({"start": "2026-02-02", "end": "2026-02-01"}, "start"),
        ({"group_by": "day,week"}, "group_by"),
        ({"group_by": "day,day"}, "group_by"),
    ],
)
async def test_a_bad_usage_parameter_is_a_400_naming_it(
    gateway_factory: GatewayFactory, params: dict[str, str], param: str
) -> None:
    gw = await gateway_factory(keys=KEYS)
    reply = await gw.http.get("/v1/usage", params=params, headers=gw.auth("operator"))
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, None)
    assert param in error["message"]


async def test_the_cli_says_what_is_wrong_with_an_option_in_one_line(tmp_path: Path) -> None:
    from stepline.store._revisions import migrate

    url = f"sqlite:///{tmp_path / 'usage.db'}"
    await migrate(url)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stepline", "usage", "--database", url, "--group-by", "week",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    [line] = stderr.decode().splitlines()
    assert line.startswith("error: Invalid 'group_by': 'week'")
    assert stdout == b""
