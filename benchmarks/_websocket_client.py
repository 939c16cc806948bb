"""The client of the WebSocket scenario: a client-side tool loop, over each transport.

``python -m benchmarks._websocket_client`` reads one JSON job from the first
line of stdin: ``host``, ``port``, ``model``, ``tools``, ``transports``,
``loops`` and ``warmup``. One *loop* is what an agent does with a model that
calls a client-side tool 20 turns in a row: create a response, then 20 times
answer its ``function_call`` with a ``function_call_output`` in a response
that continues it through ``previous_response_id``, until the model answers
with text. A loop opens its own connection and uses it for all its turns:

* ``websocket``: one WebSocket, one ``response.create`` per turn, each turn
  read up to its terminal event;
* ``websocket-store-false``: the same with ``store: false``, so each turn
  continues from the connection's memory of the previous response;
* ``http-stream``: one keep-alive connection, ``POST /v1/responses`` with
  ``stream: true`` per turn (the same events as the WebSocket sends);
* ``http``: the same, without ``stream`` (one JSON body per turn).

The transports take turns loop by loop, so a drift of the machine hits each
alike. Around each measured loop the client writes ``{"mark": "start"|"end",
"transport"}`` on stdout and waits for a line on stdin, so the harness reads
every process's CPU time while nothing runs. Last it writes ``{"result":
{transport: {"loops": [seconds], "turns": [seconds]}}}``.

Only a turn's terminal event is parsed (its ``function_call`` gives the next
``call_id``); a turn that ends otherwise than ``completed`` with the expected
output fails the run.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from benchmarks._http import Connection

__all__ = ["main"]

_now = time.perf_counter
_TERMINAL = (b'"type":"response.completed"', b'"type":"response.failed"')
_SSE_COMPLETED = b"event: response.completed\ndata: "

#: one turn: the body to send -> the terminal response object
Send = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(message).decode() + "\n")
    sys.stdout.flush()


def _wait_for_harness() -> None:
    if sys.stdin.readline() == "":
        raise RuntimeError("the harness went away")


def _next_body(job: dict[str, Any], response: dict[str, Any] | None) -> dict[str, Any] | None:
    """The next turn's body, or None when ``response`` was the model's answer."""
    body: dict[str, Any] = {"model": job["model"], "tools": job["tools"]}
    if response is None:
        return {**body, "input": "Look the key up, twenty times."}
    if response["status"] != "completed":
        raise RuntimeError(f"a turn ended {response['status']}: {response.get('error')}")
    calls = [item for item in response["output"] if item["type"] == "function_call"]
    if not calls:
        return None
    return {
        **body,
        "previous_response_id": response["id"],
        "input": [
            {"type": "function_call_output", "call_id": call["call_id"], "output": "found"}
            for call in calls
        ],
    }


def _websocket_turns(socket: ClientConnection, store: bool) -> Send:
    async def send(body: dict[str, Any]) -> dict[str, Any]:
        await socket.send(
            orjson.dumps({"type": "response.create", **body, "store": store}).decode()
        )
        while True:
            message = await socket.recv(decode=False)
            head = message[:64]
            if any(marker in head for marker in _TERMINAL) or head.startswith(b'{"type":"error"'):
                event = orjson.loads(message)
                if event["type"] == "error":
                    raise RuntimeError(f"refused: {event}")
                response: dict[str, Any] = event["response"]
                return response

    return send


def _http_turns(connection: Connection, stream: bool) -> Send:
    async def send(body: dict[str, Any]) -> dict[str, Any]:
        sent = orjson.dumps({**body, "stream": True} if stream else body)
        _, reply = await connection.request("POST", "/v1/responses", sent)
        if not stream:
            response: dict[str, Any] = orjson.loads(reply)
            return response
        start = reply.rindex(_SSE_COMPLETED) + len(_SSE_COMPLETED)
        streamed: dict[str, Any] = orjson.loads(reply[start : reply.index(b"\n", start)])
        return dict(streamed["response"])

    return send


async def _loop(job: dict[str, Any], transport: str, turns: list[float]) -> float:
    """One whole loop on a new connection; appends each turn's latency to ``turns``."""
    started = _now()
    if transport.startswith("websocket"):
        url = f"ws://{job['host']}:{job['port']}/v1/responses"
        async with connect(url, max_size=None, compression=None) as socket:
            send = _websocket_turns(socket, store=transport == "websocket")
            await _turns(job, send, turns)
    else:
        connection = Connection(job["host"], job["port"])
        try:
            await _turns(job, _http_turns(connection, stream=transport == "http-stream"), turns)
        finally:
            await connection.close()
    return _now() - started


async def _turns(job: dict[str, Any], send: Send, turns: list[float]) -> None:
    body = _next_body(job, None)
    count = 0
    while body is not None:
        begun = _now()
        response = await send(body)
        turns.append(_now() - begun)
        count += 1
        body = _next_body(job, response)
    if count != job["calls"] + 1:
        raise RuntimeError(f"a loop took {count} responses, not {job['calls'] + 1}")


async def _run(job: dict[str, Any]) -> dict[str, Any]:
    transports: list[str] = job["transports"]
    for _ in range(job["warmup"]):
        for transport in transports:
            await _loop(job, transport, [])
    measured: dict[str, dict[str, list[float]]] = {
        transport: {"loops": [], "turns": []} for transport in transports
    }
    for _ in range(job["loops"]):
        for transport in transports:
            _emit({"mark": "start", "transport": transport})
            _wait_for_harness()
            seconds = await _loop(job, transport, measured[transport]["turns"])
            _emit({"mark": "end", "transport": transport})
            _wait_for_harness()
            measured[transport]["loops"].append(seconds)
    return measured


def main() -> None:
    job = orjson.loads(sys.stdin.readline())
    _emit({"result": asyncio.run(_run(job))})


if __name__ == "__main__":
    main()
