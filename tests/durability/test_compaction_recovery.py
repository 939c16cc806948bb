"""kill -9 while a compaction step summarises; the new process announces it once.

A compaction step announces its item (``output_item.added`` and
``compaction.compacting``) before it asks the model for the summary, and
stores the item's ``done`` event with its end. Killed while the summary is
being written, the step runs again in the process that takes the response
over; the events its first attempt made durable are the client's already,
so the resumed stream must not announce the item a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest

from stepline.scripted import Script
from tests.durability.conftest import (
    DONE,
    TERMINAL_EVENTS,
    Harness,
    client_for,
    replay,
    seqs_of,
    sse_events,
    stored_steps,
    types_of,
)

SUMMARY = "Asked for a quick lookup; the quick tool answered."


def _turns() -> list[dict[str, Any]]:
    """By request: the tool call, a summary that never comes in time, the summary
    the retried step gets, the final answer."""
    return [
        {
            "tool_calls": [{"name": "quick", "arguments": {"x": "a"}}],
            "usage": {"prompt_tokens": 500, "completion_tokens": 10},
        },
        {"content": "too late", "delay": 30},
        {"content": SUMMARY, "usage": {"prompt_tokens": 60, "completion_tokens": 12}},
        {"content": "Done.", "usage": {"prompt_tokens": 30, "completion_tokens": 2}},
    ]


async def _until_requests(harness: Harness, model: str, count: int) -> None:
    """Until the scripted upstream has received ``count`` requests for ``model``."""
    async with asyncio.timeout(20):
        while True:
            if len(harness.model.requests(model)) >= count:
                return
            await asyncio.sleep(0.02)  # the upstream runs in this process: poll it


@pytest.mark.timeout(120)
async def test_kill9_while_a_compaction_summarises(harness: Harness) -> None:
    harness.model.register("compactor", Script.from_dict({"turns": _turns()}), turns="requests")
    server = await harness.server()

    before: list[dict[str, Any]] = []
    async with client_for(server) as client:
        with contextlib.suppress(httpx.HTTPError):
            async with client.stream(
                "POST",
                "/v1/responses",
                json={
                    "model": "compactor",
                    "input": "Look it up.",
                    "stream": True,
                    "context_management": [{"type": "compaction", "compact_threshold": 400}],
                },
            ) as reply:
                assert reply.status_code == 200
                async for item in sse_events(reply):
                    assert item != DONE, "the stream finished before the kill"
                    assert isinstance(item, dict)
                    before.append(item)
                    if item["type"] == "response.compaction.compacting":
                        # the summary is asked for (and will not come): kill the process
                        await _until_requests(harness, "compactor", 2)
                        server.kill9()
    assert not server.running
    response_id = before[0]["response"]["id"]
    [compaction] = [
        s for s in stored_steps(harness.database, response_id) if s.kind == "compaction"
    ]
    assert (compaction.state, compaction.attempt) == ("processing", 1)

    await server.start()
    async with client_for(server) as client:
        resumed = await replay(client, response_id, starting_after=before[-1]["sequence_number"])
        final = (await client.get(f"/v1/responses/{response_id}")).json()
        whole = await replay(client, response_id)

    assert final["status"] == "completed", final
    assert [item["type"] for item in final["output"]] == ["mcp_call", "compaction", "message"]
    events = whole.events
    assert before + resumed.events == events
    assert seqs_of(events) == list(range(len(events)))
    assert [t for t in types_of(events) if t in TERMINAL_EVENTS] == ["response.completed"]
    item_id = final["output"][1]["id"]
    announcing = [
        event["type"]
        for event in events
        if event.get("item_id") == item_id or (event.get("item") or {}).get("id") == item_id
    ]
    # announced once by the first attempt, done once with the retried step's end
    assert announcing == [
        "response.output_item.added",
        "response.compaction.compacting",
        "response.output_item.done",
    ]
    assert [e["item"] for e in events if e["type"] == "response.output_item.done"][1] == (
        final["output"][1]
    )
    assert harness.tools.calls["quick"] == 1
    assert len(harness.model.requests("compactor")) == 4
    # the compaction ran twice, every other step once
    steps = stored_steps(harness.database, response_id)
    assert [(step.kind, step.state, step.attempt) for step in steps] == [
        ("model_call", "completed", 1),
        ("tool_call", "completed", 1),
        ("compaction", "completed", 2),
        ("model_call", "completed", 1),
    ]
