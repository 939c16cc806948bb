"""Upstream faults from the scripted model's ``fault`` field, against the real process.

The upstream is configured with ``max_retries = 3`` and a 0.5 s chunk
timeout. Retryable statuses before any output are retried and the response
completes as if nothing happened (its stream shows no trace of the failed
attempts); once output has been forwarded a failure is final; a 400 is
final at once. Every failure names its cause in ``response.error`` and in
the stream's ``error`` event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.durability.conftest import (
    TERMINAL_EVENTS,
    Harness,
    chain_problems,
    client_for,
    message_events,
    output_text,
    read_stream,
    replay,
    seqs_of,
    types_of,
    without_extensions,
)

UPSTREAM = {
    "max_retries": 3,
    "timeouts": {"connect": 2, "first_byte": 5, "chunk": 0.5, "total": 30},
}
CONTENT = "one two three four five six"


@dataclass(frozen=True)
class Case:
    fault: dict[str, Any]
    status: str
    attempts: int
    message: tuple[str, ...] = ()  # what the error message names


CASES = {
    "429-retry-after-once": Case(
        {"status": 429, "message": "slow down", "retry_after": 0.2, "times": 1},
        "completed",
        2,
    ),
    "500-twice": Case(
        {"status": 500, "message": "the GPU caught fire", "times": 2}, "completed", 3
    ),
    "drop-mid-stream": Case({"drop_after": 3}, "failed", 1, ("dropped",)),
    "stall-past-chunk-timeout": Case(
        {"stall_after": 3, "stall": 5.0}, "failed", 1, ("chunk", "timeout", "0.5")
    ),
    "garbage-json": Case({"garbage": True}, "failed", 1, ("invalid JSON", "{not json")),
    # (a 400 that says the context is too long is context_length_exceeded: test_compaction)
    "400": Case(
        {"status": 400, "message": "tools[0].parameters is not a JSON schema"},
        "failed",
        1,
        ("tools[0].parameters is not a JSON schema",),
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(CASES))
async def test_upstream_fault(harness: Harness, name: str) -> None:
    case = CASES[name]
    harness.script(name, [{"content": CONTENT, "fault": case.fault}])
    server = await harness.server(upstream=UPSTREAM)
    async with client_for(server) as client:
        reply = await client.post("/v1/responses", json={"model": name, "input": "hi"})
        assert reply.status_code == 200, reply.text
        response = reply.json()
        stream = await replay(client, response["id"])

    assert response["status"] == case.status, response
    assert harness.model.attempts(name, 0) == case.attempts
    events = stream.events
    assert (stream.done, stream.done_last) == (1, True)
    assert seqs_of(events) == list(range(len(events)))
    assert events[-1]["response"] == response
    assert [e["type"] for e in events if e["type"] in TERMINAL_EVENTS] == [
        f"response.{case.status}"
    ]
    if case.status == "completed":
        assert output_text(response) == CONTENT
        assert response["error"] is None
        assert types_of(without_extensions(events)) == message_events(len(CONTENT.split()))
    else:
        error = response["error"]
        assert error is not None
        for words in case.message:
            assert words in error["message"], error
        assert error["code"] == "server_error"
        assert error["type"] == "model_error"
        assert response["output"] == []
        assert types_of(events)[-2:] == ["error", "response.failed"]
        assert events[-2]["message"] == error["message"]
        assert events[-2]["code"] == error["code"]
    assert chain_problems(harness.database, response["id"]) == []


@pytest.mark.timeout(60)
async def test_400_stream_is_created_in_progress_error_failed(harness: Harness) -> None:
    harness.script(
        "refused", [{"content": CONTENT, "fault": {"status": 400, "message": "bad tool schema"}}]
    )
    server = await harness.server(upstream=UPSTREAM)
    async with (
        client_for(server) as client,
        client.stream(
            "POST", "/v1/responses", json={"model": "refused", "input": "hi", "stream": True}
        ) as reply,
    ):
        live = await read_stream(reply)

    assert types_of(live.events) == [
        "response.created",
        "response.in_progress",
        "error",
        "response.failed",
    ]
    assert "bad tool schema" in live.events[2]["message"]
    assert live.events[3]["response"]["error"]["message"] == live.events[2]["message"]
    assert harness.model.attempts("refused", 0) == 1
