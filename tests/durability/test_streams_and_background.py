"""Clients that go away and come back; background responses, their progress and cancel.

stepline runs as its own process here too; nothing is killed. A dropped
stream must not disturb the loop, and ``starting_after`` must hand the
returning client the rest of the stream exactly once.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.durability.conftest import (
    TERMINAL_EVENTS,
    Harness,
    chain_problems,
    client_for,
    deltas_seen,
    message_events,
    output_text,
    read_until,
    replay,
    seqs_of,
    stored_steps,
    text_deltas,
    types_of,
    wait_terminal,
    without_extensions,
)

WORDS = [f"tok{i}" for i in range(30)]
TEXT = " ".join(WORDS)


def _assert_picked_up(
    before: list[dict[str, Any]],
    after: list[dict[str, Any]],
    whole: list[dict[str, Any]],
    final: dict[str, Any],
) -> None:
    """Before the drop plus after the reconnect is the whole stream, each event once."""
    last_seen = before[-1]["sequence_number"]
    assert seqs_of(before) == list(range(last_seen + 1))
    assert seqs_of(after) == list(range(last_seen + 1, last_seen + 1 + len(after)))
    assert before + after == whole
    assert types_of(without_extensions(whole)) == message_events(len(WORDS))
    assert text_deltas(before) + text_deltas(after) == TEXT
    assert [e["type"] for e in after if e["type"] in TERMINAL_EVENTS] == ["response.completed"]
    assert whole[-1]["response"] == final
    assert final["status"] == "completed"
    assert output_text(final) == TEXT


@pytest.mark.timeout(60)
async def test_dropped_foreground_stream_is_picked_up_with_starting_after(
    harness: Harness,
) -> None:
    harness.script("talker", [{"content": TEXT, "token_delay": 0.03}])
    server = await harness.server()
    async with client_for(server) as client:
        async with client.stream(
            "POST", "/v1/responses", json={"model": "talker", "input": "talk", "stream": True}
        ) as reply:
            before = await read_until(reply, deltas_seen(5))
        # the client is gone; the loop goes on
        response_id = before[0]["response"]["id"]
        rest = await replay(client, response_id, starting_after=before[-1]["sequence_number"])
        whole = await replay(client, response_id)
        final = (await client.get(f"/v1/responses/{response_id}")).json()

    assert (rest.done, rest.done_last) == (1, True)
    assert (whole.done, whole.done_last) == (1, True)
    _assert_picked_up(before, rest.events, whole.events, final)
    assert harness.model.attempts("talker", 0) == 1
    assert chain_problems(harness.database, response_id) == []


WAIT_ON_TOOL: list[dict[str, Any]] = [
    {"tool_calls": [{"name": "block", "arguments": {"x": "w"}}]},
    {"content": "The tool answered."},
]


@pytest.mark.timeout(60)
async def test_background_answers_at_once_shows_progress_and_cancels(harness: Harness) -> None:
    harness.script("waiter", WAIT_ON_TOOL)
    tools = harness.tools
    server = await harness.server()
    async with client_for(server) as client:
        created = await client.post(
            "/v1/responses", json={"model": "waiter", "input": "wait", "background": True}
        )
        assert created.status_code == 200, created.text
        queued = created.json()
        assert queued["status"] in ("queued", "in_progress")
        assert queued["background"] is True
        assert queued["output"] == []
        response_id = queued["id"]

        await tools.wait_calls("block", 1)
        progress = (await client.get(f"/v1/responses/{response_id}")).json()
        assert progress["status"] == "in_progress"
        assert [(item["type"], item["name"]) for item in progress["output"]] == [
            ("mcp_call", "block")
        ]
        assert progress["output"][0]["status"] in ("calling", "in_progress")
        assert progress["output"][0]["output"] is None

        cancel = await client.post(f"/v1/responses/{response_id}/cancel")
        assert cancel.status_code == 200, cancel.text
        cancelled = cancel.json()
        assert cancelled["status"] == "cancelled"
        assert cancelled["id"] == response_id

        again = await client.post(f"/v1/responses/{response_id}/cancel")
        assert again.status_code == 200, again.text
        assert again.json() == cancelled

        fetched = (await client.get(f"/v1/responses/{response_id}")).json()
        assert fetched == cancelled
        # a reader of the cancelled response's stream is told it ended
        stream = await replay(client, response_id)
        assert (stream.done, stream.done_last) == (1, True)
        assert seqs_of(stream.events) == list(range(len(stream.events)))

    tools.release.set()
    states = [(step.kind, step.state) for step in stored_steps(harness.database, response_id)]
    assert states == [("model_call", "completed"), ("tool_call", "cancelled")]
    assert harness.model.attempts("waiter", 1) == 0
    assert chain_problems(harness.database, response_id) == []


@pytest.mark.timeout(60)
async def test_cancelling_a_finished_response_leaves_it_unchanged(harness: Harness) -> None:
    harness.script("quickie", [{"content": "Done already."}])
    server = await harness.server()
    async with client_for(server) as client:
        created = await client.post(
            "/v1/responses", json={"model": "quickie", "input": "hi", "background": True}
        )
        assert created.status_code == 200, created.text
        response_id = created.json()["id"]
        finished = await wait_terminal(client, response_id)
        assert finished["status"] == "completed"

        cancel = await client.post(f"/v1/responses/{response_id}/cancel")
        if cancel.status_code == 200:
            assert cancel.json() == finished
        else:
            assert 400 <= cancel.status_code < 500, cancel.text
            error = cancel.json()["error"]
            assert error["message"]
            assert error["type"]
        assert (await client.get(f"/v1/responses/{response_id}")).json() == finished
    assert chain_problems(harness.database, response_id) == []


@pytest.mark.timeout(60)
async def test_background_stream_can_be_dropped_and_picked_up(harness: Harness) -> None:
    harness.script("narrator", [{"content": TEXT, "token_delay": 0.03}])
    server = await harness.server()
    async with client_for(server) as client:
        async with client.stream(
            "POST",
            "/v1/responses",
            json={"model": "narrator", "input": "go", "stream": True, "background": True},
        ) as reply:
            before = await read_until(reply, deltas_seen(4))
        response_id = before[0]["response"]["id"]
        assert before[0]["response"]["background"] is True
        rest = await replay(client, response_id, starting_after=before[-1]["sequence_number"])
        whole = await replay(client, response_id)
        final = (await client.get(f"/v1/responses/{response_id}")).json()

    assert (rest.done, rest.done_last) == (1, True)
    _assert_picked_up(before, rest.events, whole.events, final)
    assert final["background"] is True
    assert harness.model.attempts("narrator", 0) == 1
    assert chain_problems(harness.database, response_id) == []
