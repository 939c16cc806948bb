"""A soak: 200 responses of every kind, one kill -9 and restart in the middle.

The mix: plain, streaming and background requests; single answers, streamed
answers, tool fan-outs (one tool slow), a sub-agent, upstream faults (500s
past the retries, garbage JSON, a dropped stream) and background responses
cancelled right after they start. When about a third of the responses
exist, stepline is killed with SIGKILL and started again; requests that
could not connect are sent again once it is back (they never reached it),
requests the kill cut off are not.

Afterwards every stored response must reach its expected terminal state,
and the database, read directly, must hold a consistent chain and event log
for each (see ``chain_problems``); no completed tool step may have been
called twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import closing
from typing import Any

import httpx
import pytest

from tests.durability.conftest import (
    DONE,
    TERMINAL_STATUSES,
    Harness,
    chain_problems,
    client_for,
    describe,
    output_text,
    read_only,
    sse_events,
    stored_events,
    stored_response_ids,
)

TOTAL = 200
KILL_AFTER = 70  # responses known to the clients
CONCURRENCY = 16
STREAMED = " ".join(f"s{i}" for i in range(12))

#: kind -> (turns, expected status, expected final text)
KINDS: dict[str, tuple[list[dict[str, Any]], str, str | None]] = {
    "plain": ([{"content": "plain answer"}], "completed", "plain answer"),
    "stream": ([{"content": STREAMED, "token_delay": 0.02}], "completed", STREAMED),
    "fan": (
        [
            {
                "tool_calls": [
                    {"name": "quick", "arguments": {"x": "a"}},
                    {"name": "slow", "arguments": {"x": "b"}},
                    {"name": "quick", "arguments": {"x": "c"}},
                ]
            },
            {"content": "fan done"},
        ],
        "completed",
        "fan done",
    ),
    "agent": (
        [
            {"tool_calls": [{"name": "helper", "arguments": {"input": "help me"}}]},
            {"content": "agent done"},
        ],
        "completed",
        "agent done",
    ),
    "fail500": ([{"fault": {"status": 500, "message": "overloaded"}}], "failed", None),
    "garbage": ([{"content": "never", "fault": {"garbage": True}}], "failed", None),
    "drop": ([{"content": "a b c d e", "fault": {"drop_after": 3}}], "failed", None),
    "cancel": (
        [
            {"tool_calls": [{"name": "slow", "arguments": {"x": "c"}}]},
            {"content": "not cancelled in time"},
        ],
        "cancelled",
        "not cancelled in time",
    ),
}
HELPER: list[dict[str, Any]] = [
    {"tool_calls": [{"name": "quick", "arguments": {"x": "h"}}]},
    {"content": "helper done"},
]
CYCLE = [
    "plain",
    "fan",
    "stream",
    "agent",
    "fan",
    "plain",
    "stream",
    "fan",
    "fail500",
    "garbage",
    "drop",
    "cancel",
]
MODES = ["plain", "stream", "background"]


class Soak:
    """The clients of the soak and what they learnt."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.up = asyncio.Event()
        self.up.set()
        self.enough = asyncio.Event()
        self.kinds: dict[str, str] = {}  # response id -> kind, as the clients learnt them
        self.cancelled: set[str] = set()  # a cancel answered ``cancelled``
        self.live_streams: dict[str, list[dict[str, Any]]] = {}  # uncut streams
        self.cut = 0  # requests the kill cut off
        self.resent = 0  # requests sent again after a connect error
        self.limit = asyncio.Semaphore(CONCURRENCY)
        self.unfinished: dict[int, str] = {}  # request number -> what it waits for

    def learnt(self, response_id: str, kind: str) -> None:
        self.kinds[response_id] = kind
        if len(self.kinds) >= KILL_AFTER:
            self.enough.set()

    async def request(self, number: int) -> None:
        kind = CYCLE[number % len(CYCLE)]
        mode = "background" if kind == "cancel" else MODES[number % len(MODES)]
        body: dict[str, Any] = {"model": f"soak-{kind}", "input": f"request {number}"}
        if mode != "plain":
            body[mode] = True
        self.unfinished[number] = f"{mode} {kind}"
        async with self.limit:
            while True:
                await self.up.wait()
                try:
                    await self._send(number, kind, mode, body)
                    break
                except httpx.ConnectError:
                    self.resent += 1  # it never reached the server: send it again
                except httpx.TransportError:
                    self.cut += 1
                    break
        del self.unfinished[number]

    async def _send(self, number: int, kind: str, mode: str, body: dict[str, Any]) -> None:
        client = self.client
        if mode == "stream":
            async with client.stream("POST", "/v1/responses", json=body) as reply:
                assert reply.status_code == 200, await reply.aread()
                events: list[dict[str, Any]] = []
                async for item in sse_events(reply):
                    if item == DONE:
                        continue
                    assert isinstance(item, dict)
                    if not events:
                        response_id = item["response"]["id"]
                        self.learnt(response_id, kind)
                        self.unfinished[number] = f"{mode} {kind} {response_id}"
                    events.append(item)
            self.live_streams[events[0]["response"]["id"]] = events
            return
        reply = await client.post("/v1/responses", json=body)
        assert reply.status_code == 200, reply.text
        response_id = reply.json()["id"]
        self.learnt(response_id, kind)
        if kind == "cancel":
            cancel = await client.post(f"/v1/responses/{response_id}/cancel")
            assert cancel.status_code == 200, cancel.text
            if cancel.json()["status"] == "cancelled":
                self.cancelled.add(response_id)


async def _all_terminal(
    client: httpx.AsyncClient, ids: list[str], within: float
) -> dict[str, dict[str, Any]]:
    """Poll GET for every id until each is terminal (no other signal for background ones)."""
    final: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(within):
        while len(final) < len(ids):
            waiting = [response_id for response_id in ids if response_id not in final]
            replies = await asyncio.gather(
                *(client.get(f"/v1/responses/{response_id}") for response_id in waiting)
            )
            for response_id, reply in zip(waiting, replies, strict=True):
                assert reply.status_code == 200, reply.text
                if reply.json()["status"] in TERMINAL_STATUSES:
                    final[response_id] = reply.json()
            if len(final) < len(ids):
                await asyncio.sleep(0.2)
    return final


@pytest.mark.timeout(120)
async def test_soak_with_a_kill9_in_the_middle(harness: Harness) -> None:
    for kind, (turns, _, _) in KINDS.items():
        harness.script(f"soak-{kind}", turns)
    harness.script("helper", HELPER)
    server = await harness.server(
        upstream={
            "max_retries": 1,
            "timeouts": {"connect": 2, "first_byte": 10, "chunk": 5, "total": 60},
        }
    )

    async with client_for(server, timeout=60) as client:
        soak = Soak(client)

        async def kill_and_restart() -> None:
            await soak.enough.wait()
            soak.up.clear()
            server.kill9()
            await server.start()
            soak.up.set()

        restarter = asyncio.create_task(kill_and_restart())
        requests = asyncio.gather(*(soak.request(number) for number in range(TOTAL)))
        try:
            async with asyncio.timeout(45):
                await requests
                await restarter
        except TimeoutError:
            requests.cancel()
            restarter.cancel()
            await asyncio.gather(requests, restarter, return_exceptions=True)
            pytest.fail(f"requests still waiting after 45 s: {soak.unfinished}")

        stored = stored_response_ids(harness.database)
        final = await _all_terminal(client, list(stored), within=30)

    assert server.starts == 2
    assert set(soak.kinds) <= set(stored)
    assert TOTAL - soak.cut <= len(stored) <= TOTAL
    # every response ends as its script says (a cancel that lost the race may complete)
    wrong: list[str] = []
    for response_id, model in stored.items():
        kind = model.removeprefix("soak-")
        _, status, text = KINDS[kind]
        response = final[response_id]
        expected = {status}
        if kind == "cancel" and response_id not in soak.cancelled:
            expected = {"cancelled", "completed"}
        if response["status"] not in expected:
            wrong.append(f"{kind} {response_id}: {response['status']} {response['error']}")
        elif response["status"] == "completed" and output_text(response) != text:
            wrong.append(f"{kind} {response_id}: text {output_text(response)!r}")
    assert wrong == []

    problems = {
        response_id: found
        for response_id in stored
        if (found := chain_problems(harness.database, response_id))
    }
    assert problems == {}, "\n".join(
        f"{found}\n    {describe(harness.database, response_id)}"
        for response_id, found in problems.items()
    )

    # a stream the kill did not cut is exactly the stored log
    for response_id, events in soak.live_streams.items():
        assert [event for _, event in stored_events(harness.database, response_id)] == events

    # tools: every call carries a step id; a step that ran once was called at most once
    with closing(read_only(harness.database)) as connection:
        tool_steps = {
            row["id"]: (row["state"], row["attempt"])
            for row in connection.execute(
                "SELECT id, state, attempt FROM steps WHERE kind = 'tool_call'"
            )
        }
        reruns = connection.execute("SELECT count(*) FROM steps WHERE attempt > 1").fetchone()[0]
    calls = Counter(key for name in ("quick", "slow") for key in harness.tools.keys.get(name, []))
    assert set(calls) <= set(tool_steps)
    over = {key: (n, tool_steps[key]) for key, n in calls.items() if n > tool_steps[key][1]}
    assert over == {}
    # the kill hit work in flight, which a second process ran again
    assert reruns > 0
