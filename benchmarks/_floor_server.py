"""The floor: the least a Python server on stepline's stack adds to one model call.

``python -m benchmarks._floor_server --port N --upstream URL --client NAME`` serves
a bare ASGI app on uvicorn with the event loop and HTTP parser stepline runs on
(uvloop, httptools). ``POST /v1/responses`` reads the body, sends the one
Chat Completions body the harness gave it (``--body``, streamed), joins the
text of the reply, and answers a small response object. Nothing is parsed,
validated, stored or routed: what it costs over the direct call is what the
HTTP server and the upstream client cost, and no more.

``--client httpx``: an ``httpx.AsyncClient``, reading the SSE lines with
``aiter_lines``; ``--client stepline``: stepline's own upstream client
(:class:`~stepline._upstream.client.ChatClient`, its transport and SSE parser).

``--store sqlite:PATH`` or ``--store postgresql://...`` adds the two durable
writes a plain model call needs however it is built (what stepline makes
them, minus everything else): before the call, the response and its model
call step; after it, the call's events with the step's and the response's
ends. Each is one transaction on the raw driver over three bare tables:
``sqlite3`` on the event loop (WAL, ``synchronous=NORMAL``, as stepline
runs it), or one ``asyncpg`` statement (data-modifying CTEs, prepared).
What that floor costs over the direct call is the least a durable server
on this stack and this machine's disk can add.
"""

from __future__ import annotations

import argparse
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import httpx
import orjson
import uvicorn

from stepline._config import UpstreamConfig
from stepline._upstream.client import ChatClient
from stepline._upstream.routing import UpstreamTarget

__all__ = ["main"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


_TABLES = (
    "CREATE TABLE IF NOT EXISTS floor_responses"
    " (id TEXT PRIMARY KEY, created_at REAL, status TEXT, body TEXT, result TEXT)",
    "CREATE TABLE IF NOT EXISTS floor_steps (id TEXT PRIMARY KEY, response_id TEXT,"
    " state TEXT, request TEXT, response TEXT, finished_at REAL)",
    "CREATE TABLE IF NOT EXISTS floor_events"
    " (response_id TEXT, seq INTEGER, data BYTEA, PRIMARY KEY (response_id, seq))",
)


class _Store(Protocol):
    async def begin(self, response_id: str, body: bytes, step_id: str) -> None: ...

    async def end(
        self, response_id: str, step_id: str, events: list[bytes], result: bytes
    ) -> None: ...


class _Sqlite:
    """The two writes on ``sqlite3``, on the event loop (nothing else writes)."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for statement in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            # as stepline: no commit pays for a checkpoint (the WAL grows for the run)
            "PRAGMA wal_autocheckpoint=0",
            *_TABLES,
        ):
            self.db.execute(statement.replace("BYTEA", "BLOB"))

    async def begin(self, response_id: str, body: bytes, step_id: str) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO floor_responses VALUES (?, ?, 'in_progress', ?, NULL)",
            (response_id, time.time(), body),
        )
        db.execute(
            "INSERT INTO floor_steps VALUES (?, ?, 'processing', ?, NULL, NULL)",
            (step_id, response_id, body),
        )
        db.execute("COMMIT")

    async def end(self, response_id: str, step_id: str, events: list[bytes], result: bytes) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO floor_events VALUES (?, ?, ?)",
            [(response_id, seq, data) for seq, data in enumerate(events)],
        )
        db.execute(
            "UPDATE floor_steps SET state = 'completed', response = ?, finished_at = ?"
            " WHERE id = ?",
            (result, time.time(), step_id),
        )
        db.execute(
            "UPDATE floor_responses SET status = 'completed', result = ? WHERE id = ?",
            (result, response_id),
        )
        db.execute("COMMIT")


class _Postgres:
    """The two writes as one asyncpg statement each, on a small pool."""

    _BEGIN = (
        "WITH r AS (INSERT INTO floor_responses VALUES ($1, $2, 'in_progress', $3, NULL))"
        " INSERT INTO floor_steps VALUES ($4, $1, 'processing', $3, NULL, NULL)"
    )
    _END = (
        "WITH e AS (INSERT INTO floor_events"
        " SELECT $1, seq - 1, data FROM unnest($3::bytea[]) WITH ORDINALITY AS u(data, seq)),"
        " s AS (UPDATE floor_steps SET state = 'completed', response = $4, finished_at = $5"
        " WHERE id = $2)"
        " UPDATE floor_responses SET status = 'completed', result = $4 WHERE id = $1"
    )

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.pool: Any = None

    async def _pool(self) -> Any:
        if self.pool is None:
            import asyncpg

            self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
            async with self.pool.acquire() as connection:
                for statement in _TABLES:
                    await connection.execute(statement)
        return self.pool

    async def begin(self, response_id: str, body: bytes, step_id: str) -> None:
        pool = await self._pool()
        async with pool.acquire() as connection:
            await connection.execute(self._BEGIN, response_id, time.time(), body.decode(), step_id)

    async def end(self, response_id: str, step_id: str, events: list[bytes], result: bytes) -> None:
        pool = await self._pool()
        async with pool.acquire() as connection:
            await connection.execute(
                self._END, response_id, step_id, events, result.decode(), time.time()
            )


def _store(where: str | None) -> _Store | None:
    if where is None:
        return None
    if where.startswith("sqlite:"):
        return _Sqlite(where.removeprefix("sqlite:"))
    return _Postgres(where)


def _app(
    upstream: str, body: bytes, client: str, store: _Store | None = None
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    payload = orjson.loads(body)
    http = httpx.AsyncClient(timeout=30) if client == "httpx" else None
    chat = ChatClient() if client == "stepline" else None
    target = UpstreamTarget(
        name="floor",
        base_url=f"{upstream}/v1",
        api_key=None,
        upstream_model=payload["model"],
        config=UpstreamConfig(base_url=f"{upstream}/v1"),
    )

    async def call_httpx() -> str:
        assert http is not None
        text: list[str] = []
        headers = {"content-type": "application/json"}
        url = f"{upstream}/v1/chat/completions"
        async with http.stream("POST", url, content=body, headers=headers) as reply:
            async for line in reply.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    for choice in orjson.loads(line[6:]).get("choices", ()):
                        if content := choice.get("delta", {}).get("content"):
                            text.append(content)
        return "".join(text)

    async def call_stepline() -> str:
        assert chat is not None
        text: list[str] = []
        async for chunk in chat.stream(target, payload, step_id="floor"):
            for choice in chunk.get("choices", ()):
                if content := choice.get("delta", {}).get("content"):
                    text.append(content)
        return "".join(text)

    call = call_httpx if client == "httpx" else call_stepline

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        received = b""
        while True:
            message = await receive()
            received += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "GET":
            reply = b'{"object":"list","data":[]}'
        else:
            request = orjson.loads(received)
            response_id, step_id = f"resp_{secrets.token_hex(16)}", f"step_{secrets.token_hex(16)}"
            if store is not None:
                await store.begin(response_id, received, step_id)
            text = await call()
            response = {
                "id": response_id,
                "object": "response",
                "status": "completed",
                "model": request.get("model"),
                "output": [{"type": "message", "content": [{"type": "output_text", "text": text}]}],
            }
            reply = orjson.dumps(response)
            if store is not None:
                # the events a client of the response could read, one row each
                item: dict[str, Any] = {"type": "message", "id": "msg_floor", "output_index": 0}
                shown: list[dict[str, Any]] = [
                    {"type": "response.created", "response": response},
                    {"type": "response.in_progress", "response": response},
                    *(
                        {"type": f"response.{kind}", **item}
                        for kind in (
                            "output_item.added",
                            "content_part.added",
                            "output_text.delta",
                            "output_text.done",
                            "content_part.done",
                            "output_item.done",
                        )
                    ),
                    {"type": "response.completed", "response": response},
                ]
                events = [
                    orjson.dumps({**event, "sequence_number": seq})
                    for seq, event in enumerate(shown)
                ]
                await store.end(response_id, step_id, events, reply)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(reply))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--body", required=True, help="the Chat Completions body, JSON")
    parser.add_argument("--client", choices=("httpx", "stepline"), required=True)
    parser.add_argument(
        "--store", help="sqlite:PATH or a postgresql:// URL: the two durable writes as well"
    )
    args = parser.parse_args()
    app = _app(args.upstream, args.body.encode(), args.client, _store(args.store))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
