"""SIGTERM drains: running steps finish, new work is refused, leases are released, and
the process exits 0; the next start resumes the response where it stopped."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.durability.conftest import (
    TERMINAL_EVENTS,
    Harness,
    StreamRead,
    chain_problems,
    output_text,
    read_stream,
    replay,
    seqs_of,
    stored_events,
    stored_response,
)

DRAIN_GRACE = 15.0


#: how a process that stopped taking requests turns one away, short of a 503: the
#: connection refused, or closed before an answer (the listener shut mid-request)
_REFUSED = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)


async def _refused(url: str) -> None:
    """Poll with fresh connections until the process stops taking requests (no other
    signal tells a client that SIGTERM was handled)."""
    async with asyncio.timeout(5), httpx.AsyncClient(base_url=url, timeout=2) as client:
        while True:
            try:
                reply = await client.get("/v1/models")
            except _REFUSED:
                return
            if reply.status_code == 503:
                return
            await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
async def test_sigterm_finishes_the_running_step_and_the_next_start_resumes(
    harness: Harness,
) -> None:
    harness.script(
        "drainer",
        [
            {"tool_calls": [{"name": "block", "arguments": {"x": "d"}}]},
            {"content": "Finished after the restart.", "token_delay": 0.02},
        ],
    )
    tools = harness.tools
    server = await harness.server()

    async def read_live() -> StreamRead:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
            client.stream(
                "POST", "/v1/responses", json={"model": "drainer", "input": "go", "stream": True}
            ) as reply,
        ):
            return await read_stream(reply)

    reader = asyncio.create_task(read_live())
    await tools.wait_calls("block", 1)
    server.terminate()
    await _refused(server.url)

    # a new request during the drain is refused: connection refused or 503
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        try:
            late = await client.post("/v1/responses", json={"model": "drainer", "input": "late"})
        except _REFUSED:
            pass
        else:
            assert late.status_code == 503, late.text
    assert not reader.done(), "the response ended before the drain was observed"

    tools.release.set()
    async with asyncio.timeout(DRAIN_GRACE):
        live = await reader
    code = await server.wait_exit(DRAIN_GRACE)

    events = live.events
    response_id = events[0]["response"]["id"]
    status, _ = stored_response(harness.database, response_id)
    # the running tool step finished; no new step started; the stream just closed
    assert (code, status) == (0, "in_progress"), server.log_tail()
    assert [e["type"] for e in events if e["type"] in TERMINAL_EVENTS] == []
    assert live.done == 0, "[DONE] promises an ended response"
    assert events[-1]["type"] == "response.output_item.done"
    assert events[-1]["item"]["status"] == "completed"
    assert harness.model.requests("drainer")[1:] == []

    await server.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        rest = await replay(client, response_id, starting_after=events[-1]["sequence_number"])
    assert seqs_of(events + rest.events) == list(range(len(events) + len(rest.events)))
    assert rest.events[-1]["type"] == "response.completed"
    assert (rest.done, rest.done_last) == (1, True)
    status, result = stored_response(harness.database, response_id)
    assert status == "completed"
    assert result is not None and output_text(result) == "Finished after the restart."
    assert tools.calls["block"] == 1, "the finished tool step ran again"
    assert [event for _, event in stored_events(harness.database, response_id)] == (
        events + rest.events
    )
    assert chain_problems(harness.database, response_id) == []
