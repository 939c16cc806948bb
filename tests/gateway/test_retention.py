"""Retention in a running server, on SQLite and PostgreSQL: the background sweep deletes
old responses while new ones are created and streamed, and ``stepline gc`` runs it once.

Responses are made old by moving their ``created_at`` back in the database, the
one thing a test cannot wait for.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline._config import Settings
from stepline._server.app import create_app
from stepline._server.auth import config_key_id
from stepline._server.retention import RetentionWorker, retention_policy
from stepline.scripted import Script, ScriptedModel, create_scripted_app, serve_app
from stepline.store._engines import create_store_engine
from stepline.store._retention_values import RetentionPolicy
from stepline.store._revisions import migrate
from stepline.store._schema import responses
from stepline.store._sql import open_store
from tests._backends import SQL_KINDS, backend_params, database_url
from tests.e2e.conftest import normalise_ids, read_sse
from tests.store._stored import rows_of, store_response

pytestmark = pytest.mark.timeout(120)

DAY = 86400.0


@dataclass
class Gate:
    """An HTTP tool that holds every call until released."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> Starlette:
        async def hang(_: Request) -> Response:
            self.entered.set()
            await self.release.wait()
            return Response("released")

        return Starlette(routes=[Route("/hang", hang, methods=["POST"])])


@dataclass
class Server:
    url: str
    http: httpx.AsyncClient
    retention: RetentionWorker
    database_url: str
    gate: Gate

    async def create(self, **body: Any) -> httpx.Response:
        return await self.http.post("/v1/responses", json={"input": "hi", **body})

    async def stream(self, **body: Any) -> list[dict[str, Any]]:
        async with self.http.stream(
            "POST", "/v1/responses", json={"input": "hi", "stream": True, **body}
        ) as reply:
            assert reply.status_code == 200
            return await read_sse(reply)


@pytest.fixture(params=backend_params(SQL_KINDS))
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Server]:
    """stepline with a one-day retention swept every 50 ms, the scripted model and a gate."""
    async with AsyncExitStack() as exits:
        url = await exits.enter_async_context(database_url(request.param, tmp_path))
        model = ScriptedModel(demo_token_delay=0)
        model.register(
            "chat",
            Script.from_dict({"turns": [{"content": "one two three four"}], "repeat_last": True}),
        )
        model.register(
            "hanger",
            Script.from_dict(
                {"turns": [{"tool_calls": [{"name": "hang", "arguments": {}}]}, {"content": "ok"}]}
            ),
        )
        upstream = await exits.enter_async_context(serve_app(create_scripted_app(model)))
        gate = Gate()
        exits.callback(gate.release.set)
        tools = await exits.enter_async_context(serve_app(gate.app()))
        settings = Settings.model_validate(
            {
                "database_url": url,
                "upstreams": {"scripted": {"base_url": f"{upstream}/v1", "max_retries": 0}},
                "default_model": {"upstream": "scripted", "tools": ["hang"]},
                "tools": {"hang": {"type": "http", "url": f"{tools}/hang", "timeout": 60}},
                "retention": "1d",
                "retention_interval": 0.05,
            }
        )
        app = create_app(settings, shutdown_grace=5)
        base = await exits.enter_async_context(serve_app(app))
        http = httpx.AsyncClient(base_url=base, timeout=30)
        exits.push_async_callback(http.aclose)
        retention: RetentionWorker = app.state.retention
        retention.batch_size = 2  # many small batches, interleaved with the load's writes
        yield Server(url=base, http=http, retention=retention, database_url=url, gate=gate)


async def _age(database: str, ids: list[str], seconds: float) -> None:
    """Move the responses' creation ``seconds`` into the past."""
    engine = create_store_engine(database, pool_size=1)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                sa.update(responses)
                .where(responses.c.id.in_(ids))
                .values(created_at=responses.c.created_at - seconds)
            )
    finally:
        await engine.dispose()


_TIMES = re.compile(r"^(created_at|completed_at)$")


def _comparable(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events with generated ids and times replaced, so two runs of one script compare."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: "<time>" if _TIMES.match(k) else strip(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(item) for item in value]
        return value

    normalised: list[dict[str, Any]] = strip(normalise_ids(events))
    return normalised


async def test_the_sweep_deletes_old_responses_while_new_ones_run(server: Server) -> None:
    reference = _comparable(await server.stream(model="chat"))
    assert reference[-1]["type"] == "response.completed"

    async def plain(**body: Any) -> str:
        reply = await server.create(**body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["status"] == "completed"
        return str(reply.json()["id"])

    old_done = [await plain(model="chat") for _ in range(5)]
    chain_a = await plain(model="chat")
    chain_c = await plain(model="chat")
    chain_d = await plain(model="chat", previous_response_id=chain_c)
    running = await server.create(model="hanger", background=True)
    running_id = running.json()["id"]
    await server.gate.entered.wait()
    young_b = await plain(model="chat", previous_response_id=chain_a)
    await _age(server.database_url, [*old_done, chain_a, chain_c, chain_d, running_id], 3 * DAY)

    async def streamer() -> list[str]:
        made = []
        for _ in range(3):
            events = await server.stream(model="chat")
            assert _comparable(events) == reference
            made.append(events[0]["response"]["id"])
        return made

    async def continuer(previous: str) -> list[str]:
        made = []
        for _ in range(2):
            previous = await plain(model="chat", previous_response_id=previous)
            made.append(previous)
        return made

    async def ager() -> list[str]:
        """Responses that grow old while the others stream: each round's go."""
        for _ in range(3):
            doomed = [await plain(model="chat") for _ in range(3)]
            await _age(server.database_url, doomed, 3 * DAY)
            assert await server.retention.next_sweep() is not None  # it did not fail
            for response_id in doomed:
                assert (await server.http.get(f"/v1/responses/{response_id}")).status_code == 404
        return []

    made = await asyncio.gather(
        *(streamer() for _ in range(6)), continuer(young_b), continuer(young_b), ager()
    )
    new = [response_id for batch in made for response_id in batch]
    # one more sweep that started after all of them
    assert await server.retention.next_sweep() is not None

    store = await open_store(server.database_url, migrate=False)
    try:
        for response_id in [*old_done, chain_c, chain_d]:
            reply = await server.http.get(f"/v1/responses/{response_id}")
            assert reply.status_code == 404
            assert reply.json()["error"] == {
                "message": f"Response with id '{response_id}' not found.",
                "type": "not_found",
                "param": "response_id",
                "code": None,
            }
            assert not any((await rows_of(store, response_id)).values()), response_id
        # a conversation still in use is kept whole, and goes on
        for response_id in [chain_a, young_b, *new]:
            reply = await server.http.get(f"/v1/responses/{response_id}")
            assert reply.status_code == 200, response_id
            assert reply.json()["status"] == "completed"
        assert (await plain(model="chat", previous_response_id=young_b)).startswith("resp_")
        # continuing a deleted response is a 404 naming it, plain or streamed
        for stream in (False, True):
            reply = await server.create(model="chat", previous_response_id=chain_d, stream=stream)
            assert reply.status_code == 404
            assert reply.json() == {
                "error": {
                    "message": f"Previous response with id '{chain_d}' not found.",
                    "type": "not_found",
                    "param": "previous_response_id",
                    "code": "previous_response_not_found",
                }
            }
        # the old response still running was never touched; it ends normally
        held = await rows_of(store, running_id)
        assert held["responses"] == 1 and held["steps"] >= 2 and held["events"] > 0
        server.gate.release.set()
        async with server.http.stream("GET", f"/v1/responses/{running_id}?stream=true") as reply:
            events = await read_sse(reply)
        assert events[-1]["type"] == "response.completed"
        # ended, and old: the next sweep takes it
        assert await server.retention.next_sweep() is not None
        assert (await server.http.get(f"/v1/responses/{running_id}")).status_code == 404
        assert not any((await rows_of(store, running_id)).values())
    finally:
        await store.close()


# -- stepline gc ------------------------------------------------------------------


async def _stepline(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stepline", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


_COUNTS = re.compile(
    r"(would delete|deleted) (\d+) responses \((\d+) steps, (\d+) events, (\d+) items\); "
    r"kept (\d+) past their age that newer responses continue"
)


@pytest.mark.parametrize("kind", backend_params(SQL_KINDS))
async def test_gc_deletes_once_and_dry_run_only_counts(kind: str, tmp_path: Path) -> None:
    import time

    async with database_url(kind, tmp_path) as url:
        await migrate(url)
        store = await open_store(url, migrate=False)
        try:
            now = time.time()
            old = [
                await store_response(store, f"resp_old_{n}", created_at=now - 2 * DAY - n)
                for n in range(4)
            ]
            kept = await store_response(store, "resp_kept", created_at=now - 3 * DAY)
            young = await store_response(store, "resp_young", created_at=now - 60, previous=kept.id)
            rows = {s.id: await rows_of(store, s.id) for s in [*old, kept, young]}
        finally:
            await store.close()
        config = tmp_path / "stepline.toml"
        config.write_text('retention = "1d"\n')
        doomed = [rows[s.id] for s in old]
        expected = [
            str(len(old)),
            str(sum(r["steps"] for r in doomed)),
            str(sum(r["events"] for r in doomed)),
            str(sum(r["items"] for r in doomed)),
            "1",
        ]

        code, out, err = await _stepline(
            "gc", "--dry-run", "--config", str(config), "--database", url
        )
        assert (code, err) == (0, "")
        match = _COUNTS.search(" ".join(out.split()))
        assert match is not None, out
        assert [match[1], *match.groups()[1:]] == ["would delete", *expected]

        code, out, err = await _stepline("gc", "--config", str(config), "--database", url)
        assert (code, err) == (0, "")
        match = _COUNTS.search(" ".join(out.split()))
        assert match is not None, out
        assert [match[1], *match.groups()[1:]] == ["deleted", *expected]

        store = await open_store(url, migrate=False)
        try:
            for stored in old:
                assert not any((await rows_of(store, stored.id)).values())
            for stored in (kept, young):
                assert await rows_of(store, stored.id) == rows[stored.id]
        finally:
            await store.close()

        code, out, _ = await _stepline("gc", "--config", str(config), "--database", url)
        match = _COUNTS.search(" ".join(out.split()))
        assert code == 0 and match is not None
        assert match.groups()[1:] == ("0", "0", "0", "0", "1")


async def test_gc_without_retention_deletes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gc.db'}"
    await migrate(url)
    store = await open_store(url, migrate=False)
    try:
        ancient = await store_response(store, "resp_ancient", created_at=1.0)
        before = await rows_of(store, ancient.id)
    finally:
        await store.close()
    code, out, err = await _stepline("gc", "--database", url)
    assert (code, err) == (0, "")
    assert "retention is off" in out
    store = await open_store(url, migrate=False)
    try:
        assert await rows_of(store, ancient.id) == before
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ('retention = "soon"\n', "retention"),
        ("retention = -3\n", "retention"),
        ('retention_interval = "0s"\n', "retention_interval"),
        (
            '[keys.alice]\nhash = "sha256:' + "0" * 64 + '"\nretention = "30x"\n',
            "keys.alice.retention",
        ),
    ],
)
async def test_a_bad_retention_stops_the_server_at_start_with_one_line(
    tmp_path: Path, toml: str, field: str
) -> None:
    config = tmp_path / "stepline.toml"
    config.write_text(toml + '[upstreams.u]\nbase_url = "http://127.0.0.1:9/v1"\n')
    database = f"sqlite:///{tmp_path / 'never.db'}"
    for command in (["serve", "--port", "0"], ["gc"]):
        code, out, err = await _stepline(*command, "--config", str(config), "--database", database)
        assert code == 2, (command, out, err)
        [line] = err.splitlines()
        assert line.startswith(
            f"error: invalid config {config}: {field}: expected a positive duration"
        )
        assert out == ""
    assert not (tmp_path / "never.db").exists()


def test_each_config_key_keeps_its_own_retention_under_its_id_and_its_name() -> None:
    hashes = {name: "sha256:" + str(n) * 64 for n, name in enumerate(["alice", "bob", "carol"])}
    settings = Settings.model_validate(
        {
            "retention": "1d",
            "keys": {
                "alice": {"hash": hashes["alice"], "retention": "1h"},
                "bob": {"hash": hashes["bob"], "retention": "off"},
                "carol": {"hash": hashes["carol"]},
            },
        }
    )
    policy = retention_policy(settings)
    assert policy == RetentionPolicy(
        default=DAY,
        keys={
            config_key_id(hashes["alice"]): 3600.0,
            "alice": 3600.0,
            config_key_id(hashes["bob"]): None,
            "bob": None,
        },
    )
    assert not retention_policy(Settings()).enabled
