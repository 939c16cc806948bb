"""The StepStore contract, proved on every backend (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import stepline.store
import stepline.store._hot
from stepline._steps import NewStep, Step, StepKind, StepState
from stepline.errors import ConfigError, StoreError
from stepline.store import (
    EventRow,
    ResponseRecord,
    SqlStore,
    StepStore,
    normalize_database_url,
    open_store,
)
from stepline.store._base import ResponseEnd, StepEnd
from stepline.store._migrate import alembic_config
from stepline.store._revisions import (
    current_revision,
    head_revision,
    migrate,
    shipped_revisions,
)
from stepline.store._schema import VERSION_TABLE, metadata
from tests._backends import SQL_KINDS, backend_params, database_url

SUB_SCOPE = "step_parent_tool_call"


def make_record(response_id: str = "resp_1", **fields: Any) -> ResponseRecord:
    values: dict[str, Any] = {
        "created_at": 1_700_000_000.25,
        "status": "in_progress",
        "model": "scripted",
        "body": {"input": "hi"},
    }
    values.update(fields)
    return ResponseRecord(id=response_id, **values)


def model_call(iteration: int = 1) -> NewStep:
    return NewStep(kind=StepKind.MODEL_CALL, request={"model": "scripted", "iteration": iteration})


def tool_call(call_id: str, name: str = "lookup") -> NewStep:
    return NewStep(
        kind=StepKind.TOOL_CALL,
        request={"name": name, "arguments": '{"q": 1}'},
        call_id=call_id,
    )


async def started(store: StepStore, response_id: str = "resp_1") -> Step:
    """A recorded step already in ``processing``."""
    [step] = await store.record_steps(response_id, scope=None, steps=[model_call()])
    return await store.start_step(step.id)


# -- responses -------------------------------------------------------------------


async def test_a_response_round_trips_every_field(store: StepStore) -> None:
    record = make_record(
        status="queued",
        body={
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "héllo ☃"}]}],
            "temperature": 0.1,
            "top_p": 1.0,
            "parallel_tool_calls": False,
            "metadata": {"k": None, "n": -3, "big": 2**53, "nested": [[], {}, [1.5e-9]]},
        },
        previous_response_id="resp_0",
        store=False,
        background=True,
        owner="worker-a",
        lease_expires_at=1_700_000_030.125,
        result={"id": "resp_1", "output": [], "usage": {"total_tokens": 7}},
        completed_at=1_700_000_031.5,
        key_id="key_9",
    )
    await store.create_response(record)
    assert await store.get_response("resp_1") == record


async def test_a_minimal_response_round_trips_its_defaults(store: StepStore) -> None:
    record = make_record()
    await store.create_response(record)
    stored = await store.get_response("resp_1")
    assert stored == record
    assert stored is not None
    assert (stored.owner, stored.result, stored.completed_at, stored.key_id) == (
        None,
        None,
        None,
        None,
    )


async def test_a_missing_response_is_none(store: StepStore) -> None:
    assert await store.get_response("resp_missing") is None


async def test_creating_a_response_twice_raises_store_error(store: StepStore) -> None:
    await store.create_response(make_record())
    with pytest.raises(StoreError):
        await store.create_response(make_record(status="queued"))
    stored = await store.get_response("resp_1")
    assert stored is not None
    assert stored.status == "in_progress"


async def test_the_stored_body_is_a_copy(store: StepStore) -> None:
    body: dict[str, Any] = {"input": ["a"]}
    await store.create_response(make_record(body=body))
    body["input"].append("b")
    stored = await store.get_response("resp_1")
    assert stored is not None
    assert stored.body == {"input": ["a"]}


async def test_list_responses_is_newest_first_and_limited(store: StepStore) -> None:
    for index in range(5):
        await store.create_response(make_record(f"resp_{index}", created_at=1000.0 + index))
    newest = await store.list_responses(limit=3)
    assert [record.id for record in newest] == ["resp_4", "resp_3", "resp_2"]
    assert len(await store.list_responses()) == 5


async def test_set_status_changes_only_live_responses(store: StepStore) -> None:
    await store.create_response(make_record("resp_live", status="queued"))
    await store.create_response(make_record("resp_done", status="completed"))
    await store.set_status("resp_live", "in_progress")
    await store.set_status("resp_done", "in_progress")
    await store.set_status("resp_missing", "in_progress")
    live = await store.get_response("resp_live")
    done = await store.get_response("resp_done")
    assert live is not None
    assert done is not None
    assert (live.status, done.status) == ("in_progress", "completed")


async def test_set_status_refuses_a_terminal_status(store: StepStore) -> None:
    await store.create_response(make_record())
    with pytest.raises(ValueError, match="finish_response"):
        await store.set_status("resp_1", "completed")


async def test_finish_response_happens_once_and_releases_the_lease(store: StepStore) -> None:
    await store.create_response(make_record(owner="worker-a", lease_expires_at=2e9))
    first = {"id": "resp_1", "status": "completed", "output": [{"type": "message"}]}
    assert await store.finish_response(
        "resp_1", status="completed", result=first, completed_at=1_700_000_009.5
    )
    assert not await store.finish_response(
        "resp_1", status="failed", result={"late": True}, completed_at=1.0
    )
    stored = await store.get_response("resp_1")
    assert stored is not None
    assert (stored.status, stored.result, stored.completed_at) == (
        "completed",
        first,
        1_700_000_009.5,
    )
    assert (stored.owner, stored.lease_expires_at) == (None, None)
    assert not await store.finish_response(
        "resp_missing", status="failed", result={}, completed_at=None
    )


async def test_finish_response_refuses_a_live_status(store: StepStore) -> None:
    await store.create_response(make_record())
    with pytest.raises(ValueError, match="terminal"):
        await store.finish_response("resp_1", status="in_progress", result={}, completed_at=None)


async def test_delete_response_removes_its_steps_and_events(store: StepStore) -> None:
    await store.create_response(make_record("resp_1"))
    await store.create_response(make_record("resp_2"))
    for response_id in ("resp_1", "resp_2"):
        [step] = await store.record_steps(response_id, scope=None, steps=[model_call()])
        await store.append_events(
            [EventRow(response_id=response_id, seq=0, data=b"{}", step_id=step.id)]
        )

    assert await store.delete_response("resp_1")

    assert await store.get_response("resp_1") is None
    assert await store.load_steps("resp_1") == []
    assert await store.read_events("resp_1", after=-1, limit=10) == []
    assert await store.last_event_seq("resp_1") == -1
    assert not await store.delete_response("resp_1")
    assert len(await store.load_steps("resp_2")) == 1
    assert await store.last_event_seq("resp_2") == 0


async def test_items_stored_with_a_finished_response_are_found_by_id_for_their_key(
    store: StepStore,
) -> None:
    await store.create_response(make_record("resp_1", key_id="key_a", created_at=1.0))
    await store.create_response(make_record("resp_2", key_id="key_a", created_at=2.0))
    await store.create_response(make_record("resp_3", key_id="key_b", created_at=3.0))
    first = [{"id": "msg_in", "type": "message", "role": "user", "content": "hi"}]
    reply = {"id": "rs_1", "type": "reasoning", "summary": [], "content": []}
    assert await store.finish_response(
        "resp_1", status="completed", result={}, completed_at=1.5, items=[*first, reply]
    )
    # the same client item id again, in a later response: the newest wins
    resent = {**first[0], "content": "hi again"}
    assert await store.finish_response(
        "resp_2", status="completed", result={}, completed_at=2.5, items=[resent]
    )
    assert await store.finish_response(
        "resp_3", status="completed", result={}, completed_at=3.5, items=[{"id": "msg_b"}]
    )

    assert await store.find_items(["rs_1", "msg_in", "msg_b", "nope"], key_id="key_a") == {
        "rs_1": reply,
        "msg_in": resent,
    }
    assert await store.find_items(["msg_b", "rs_1"], key_id="key_b") == {"msg_b": {"id": "msg_b"}}
    assert await store.find_items(["rs_1"], key_id=None) == {}
    assert await store.find_items([], key_id="key_a") == {}

    # a response finished once keeps the items of that finish only; deleting it drops them
    assert not await store.finish_response(
        "resp_1", status="failed", result={}, completed_at=9.0, items=[{"id": "late"}]
    )
    assert await store.find_items(["late"], key_id="key_a") == {}
    assert await store.delete_response("resp_1")
    assert await store.find_items(["rs_1"], key_id="key_a") == {}


# -- steps -----------------------------------------------------------------------


async def test_record_steps_allocates_sequences_and_links_the_chain(store: StepStore) -> None:
    await store.create_response(make_record())
    [first] = await store.record_steps("resp_1", scope=None, steps=[model_call()])
    fan_out = await store.record_steps(
        "resp_1", scope=None, steps=[tool_call("call_a"), tool_call("call_b"), tool_call("call_c")]
    )
    [after] = await store.record_steps("resp_1", scope=None, steps=[model_call(2)])

    assert first.previous_step_id is None
    assert [step.sequence for step in (first, *fan_out, after)] == [1, 2, 3, 4, 5]
    assert {step.previous_step_id for step in fan_out} == {first.id}
    assert after.previous_step_id == fan_out[-1].id
    assert [step.call_id for step in fan_out] == ["call_a", "call_b", "call_c"]

    recorded = [first, *fan_out, after]
    ids = [step.id for step in recorded]
    assert len(set(ids)) == 5
    assert all(step_id.startswith("step_") for step_id in ids)
    for step in recorded:
        assert (step.response_id, step.scope, step.state, step.attempt) == (
            "resp_1",
            None,
            StepState.PENDING,
            0,
        )
        assert step.created_at > 0
        assert (step.started_at, step.finished_at, step.response, step.error) == (
            None,
            None,
            None,
            None,
        )
    assert await store.load_steps("resp_1") == recorded


async def test_record_steps_stores_the_request_payloads(store: StepStore) -> None:
    await store.create_response(make_record())
    await store.record_steps(
        "resp_1", scope=None, steps=[model_call(3), tool_call("call_x", name="search")]
    )
    loaded = await store.load_steps("resp_1")
    assert [(step.kind, step.request, step.call_id) for step in loaded] == [
        (StepKind.MODEL_CALL, {"model": "scripted", "iteration": 3}, None),
        (StepKind.TOOL_CALL, {"name": "search", "arguments": '{"q": 1}'}, "call_x"),
    ]
    assert loaded[1].tool_name == "search"


async def test_recording_no_steps_records_nothing(store: StepStore) -> None:
    await store.create_response(make_record())
    assert await store.record_steps("resp_1", scope=None, steps=[]) == []
    [step] = await store.record_steps("resp_1", scope=None, steps=[model_call()])
    assert step.sequence == 1


async def test_record_steps_for_a_missing_response_raises(store: StepStore) -> None:
    with pytest.raises(StoreError):
        await store.record_steps("resp_missing", scope=None, steps=[model_call()])


async def test_a_failed_transaction_leaves_the_store_usable(store: StepStore) -> None:
    with pytest.raises(StoreError):
        await store.record_steps("resp_missing", scope=None, steps=[model_call()])
    # the failed transaction was rolled back: the next ones begin and commit
    await store.create_response(make_record())
    [step] = await store.record_steps("resp_1", scope=None, steps=[model_call()])
    assert await store.load_steps("resp_1") == [step]
    assert await store.get_response("resp_missing") is None


async def test_sequences_count_per_response_across_scopes(store: StepStore) -> None:
    await store.create_response(make_record("resp_1"))
    await store.create_response(make_record("resp_2"))
    [top] = await store.record_steps("resp_1", scope=None, steps=[model_call()])
    [sub_1] = await store.record_steps("resp_1", scope=SUB_SCOPE, steps=[model_call()])
    [sub_2] = await store.record_steps("resp_1", scope=SUB_SCOPE, steps=[tool_call("c")])
    [top_2] = await store.record_steps("resp_1", scope=None, steps=[model_call(2)])
    [other] = await store.record_steps("resp_2", scope=None, steps=[model_call()])

    assert [s.sequence for s in (top, sub_1, sub_2, top_2)] == [1, 2, 3, 4]
    assert other.sequence == 1
    # the chain links stay inside a scope
    assert sub_1.previous_step_id is None
    assert sub_2.previous_step_id == sub_1.id
    assert top_2.previous_step_id == top.id
    assert (sub_1.scope, top_2.scope) == (SUB_SCOPE, None)


async def test_load_chain_never_mixes_scopes(store: StepStore) -> None:
    await store.create_response(make_record())
    [top] = await store.record_steps("resp_1", scope=None, steps=[tool_call("call_agent")])
    sub = await store.record_steps(
        "resp_1", scope=top.id, steps=[model_call(), tool_call("c1"), tool_call("c2")]
    )
    [other_sub] = await store.record_steps("resp_1", scope="step_other", steps=[model_call()])
    [top_2] = await store.record_steps("resp_1", scope=None, steps=[model_call(2)])

    assert await store.load_chain("resp_1", scope=None) == [top, top_2]
    assert await store.load_chain("resp_1", scope=top.id) == sub
    assert await store.load_chain("resp_1", scope="step_other") == [other_sub]
    assert await store.load_chain("resp_1", scope="step_nobody") == []
    assert await store.load_steps("resp_1") == [top, *sub, other_sub, top_2]


async def test_concurrent_record_steps_never_share_a_sequence(store: StepStore) -> None:
    await store.create_response(make_record())
    calls = 10
    batches = await asyncio.gather(
        *(
            store.record_steps(
                "resp_1",
                scope=None if index % 2 else SUB_SCOPE,
                steps=[tool_call(f"call_{index}_a"), tool_call(f"call_{index}_b")],
            )
            for index in range(calls)
        )
    )

    sequences = sorted(step.sequence for batch in batches for step in batch)
    assert sequences == list(range(1, 2 * calls + 1))
    for batch in batches:
        # one call's steps are allocated together, in the order given
        assert batch[1].sequence == batch[0].sequence + 1
        assert batch[0].previous_step_id == batch[1].previous_step_id
    # in each scope the calls form one chain: each links to the one before it
    for scope in (None, SUB_SCOPE):
        in_scope = sorted(
            (batch for batch in batches if batch[0].scope == scope), key=lambda b: b[0].sequence
        )
        assert in_scope[0][0].previous_step_id is None
        for before, after in itertools.pairwise(in_scope):
            assert after[0].previous_step_id == before[-1].id
    assert len(await store.load_steps("resp_1")) == 2 * calls


async def test_start_step_moves_to_processing_and_counts_attempts(store: StepStore) -> None:
    await store.create_response(make_record())
    [step] = await store.record_steps("resp_1", scope=None, steps=[model_call()])

    first = await store.start_step(step.id)
    assert (first.state, first.attempt) == (StepState.PROCESSING, 1)
    assert first.started_at is not None
    assert first.started_at >= step.created_at
    # a process that takes the response over after a crash starts it again
    retried = await store.start_step(step.id)
    assert (retried.state, retried.attempt) == (StepState.PROCESSING, 2)
    assert await store.load_steps("resp_1") == [retried]


@pytest.mark.parametrize("terminal", [StepState.COMPLETED, StepState.FAILED, StepState.CANCELLED])
async def test_start_step_refuses_a_terminal_step(store: StepStore, terminal: StepState) -> None:
    await store.create_response(make_record())
    step = await started(store)
    if terminal is StepState.CANCELLED:
        await store.cancel_steps("resp_1")
    else:
        await store.finish_step(step.id, state=terminal)
    with pytest.raises(StoreError) as raised:
        await store.start_step(step.id)
    assert raised.value.step_id == step.id
    [stored] = await store.load_steps("resp_1")
    assert (stored.state, stored.attempt) == (terminal, 1)


async def test_start_step_of_a_missing_step_raises(store: StepStore) -> None:
    with pytest.raises(StoreError) as raised:
        await store.start_step("step_missing")
    assert raised.value.step_id == "step_missing"


async def test_finish_step_only_finishes_a_processing_step(store: StepStore) -> None:
    await store.create_response(make_record())
    [step] = await store.record_steps("resp_1", scope=None, steps=[model_call()])
    payload = {"message": {"role": "assistant", "content": "hi"}, "usage": {"total_tokens": 3}}

    assert await store.finish_step(step.id, state=StepState.COMPLETED, response=payload) is None
    [pending] = await store.load_steps("resp_1")
    assert pending.state is StepState.PENDING

    await store.start_step(step.id)
    finished = await store.finish_step(step.id, state=StepState.COMPLETED, response=payload)
    assert finished is not None
    assert (finished.state, finished.response, finished.error) == (
        StepState.COMPLETED,
        payload,
        None,
    )
    assert finished.finished_at is not None
    assert finished.started_at is not None
    assert finished.finished_at >= finished.started_at

    # a late second writer changes nothing
    late = await store.finish_step(step.id, state=StepState.FAILED, error={"message": "late"})
    assert late is None
    assert await store.load_steps("resp_1") == [finished]
    assert await store.finish_step("step_missing", state=StepState.COMPLETED) is None


async def test_finish_step_stores_the_error_of_a_failed_step(store: StepStore) -> None:
    await store.create_response(make_record())
    step = await started(store)
    error = {"message": "upstream answered 500", "code": "model_error", "status": 500}
    failed = await store.finish_step(step.id, state=StepState.FAILED, error=error)
    assert failed is not None
    assert (failed.state, failed.response, failed.error) == (StepState.FAILED, None, error)
    assert await store.load_steps("resp_1") == [failed]


async def test_finish_step_refuses_a_live_state(store: StepStore) -> None:
    await store.create_response(make_record())
    step = await started(store)
    with pytest.raises(ValueError, match="terminal"):
        await store.finish_step(step.id, state=StepState.PENDING)


async def test_cancel_steps_cancels_every_live_step(store: StepStore) -> None:
    await store.create_response(make_record())
    await store.create_response(make_record("resp_2"))
    done, running, waiting = await store.record_steps(
        "resp_1", scope=None, steps=[tool_call("a"), tool_call("b"), tool_call("c")]
    )
    [sub] = await store.record_steps("resp_1", scope=done.id, steps=[model_call()])
    [elsewhere] = await store.record_steps("resp_2", scope=None, steps=[model_call()])
    await store.start_step(done.id)
    completed = await store.finish_step(done.id, state=StepState.COMPLETED, response={"output": ""})
    await store.start_step(running.id)

    assert await store.cancel_steps("resp_1") == 3

    by_id = {step.id: step for step in await store.load_steps("resp_1")}
    assert by_id[done.id] == completed
    for step_id in (running.id, waiting.id, sub.id):
        assert by_id[step_id].state is StepState.CANCELLED
        assert by_id[step_id].finished_at is not None
    assert await store.cancel_steps("resp_1") == 0
    assert await store.finish_step(running.id, state=StepState.COMPLETED) is None
    assert await store.load_steps("resp_2") == [elsewhere]


@pytest.mark.parametrize("through", ["finish_response", "append_events"])
async def test_a_response_finished_cancelled_cancels_its_live_steps_in_the_same_write(
    store: StepStore, through: str
) -> None:
    """Cancelling is one write: a crash can never leave a live response whose steps
    were cancelled (a process resuming it would fail it on a cancelled model call)."""
    await store.create_response(make_record())
    await store.create_response(make_record("resp_2"))
    done, running = await store.record_steps(
        "resp_1", scope=None, steps=[model_call(), tool_call("a")], start=True
    )
    await store.finish_step(done.id, state=StepState.COMPLETED, response={"output": ""})
    [other] = await store.record_steps("resp_2", scope=None, steps=[model_call()], start=True)

    if through == "finish_response":
        assert await store.finish_response(
            "resp_1", status="cancelled", result={}, completed_at=None
        )
        # a response finished any other way leaves its steps to their own ends
        assert await store.finish_response("resp_2", status="failed", result={}, completed_at=None)
    else:
        ends: list[StepEnd | ResponseEnd] = [
            ResponseEnd(response_id="resp_1", status="cancelled", result={}, completed_at=None),
            ResponseEnd(response_id="resp_2", status="failed", result={}, completed_at=None),
        ]
        assert (await store.append_events([], ends=ends)).ends == [True, True]

    states = {step.id: step.state for step in await store.load_steps("resp_1")}
    assert states == {done.id: StepState.COMPLETED, running.id: StepState.CANCELLED}
    [still] = await store.load_steps("resp_2")
    assert (still.id, still.state) == (other.id, StepState.PROCESSING)


# -- events ----------------------------------------------------------------------


def event(
    response_id: str, seq: int, data: bytes | None = None, step_id: str | None = None
) -> EventRow:
    return EventRow(
        response_id=response_id,
        seq=seq,
        data=data if data is not None else b'{"seq":%d}' % seq,
        step_id=step_id,
    )


async def test_append_events_with_an_owner_writes_only_the_responses_it_holds(
    store: StepStore,
) -> None:
    await store.create_response(make_record("resp_1", owner="worker-a", lease_expires_at=100.0))
    await store.create_response(make_record("resp_2", owner="worker-a", lease_expires_at=100.0))
    ours, lost = await started(store, "resp_1"), await started(store, "resp_2")
    # worker-a stopped renewing; worker-b takes resp_2 over
    await store.renew_leases("worker-a", ["resp_1"], expires_at=2e9)
    assert await store.claim_expired("worker-b", now=200.0, expires_at=2e9, limit=10) == ["resp_2"]

    appended = await store.append_events(
        [event("resp_1", 0, step_id=ours.id), event("resp_2", 0, step_id=lost.id)],
        ends=[
            StepEnd(response_id="resp_1", step_id=ours.id, state=StepState.COMPLETED),
            StepEnd(response_id="resp_2", step_id=lost.id, state=StepState.COMPLETED),
            ResponseEnd(response_id="resp_2", status="completed", result={}, completed_at=1.0),
        ],
        owner="worker-a",
    )

    assert appended.fenced == {"resp_2"}
    finished, refused, unfinished = appended.ends
    assert isinstance(finished, Step) and finished.state is StepState.COMPLETED
    assert (refused, unfinished) == (None, False)
    assert await store.read_events("resp_1", after=-1, limit=10) == [
        event("resp_1", 0, step_id=ours.id)
    ]
    assert await store.read_events("resp_2", after=-1, limit=10) == []
    [still] = await store.load_steps("resp_2")
    assert still.state is StepState.PROCESSING
    taken = await store.get_response("resp_2")
    assert taken is not None and (taken.status, taken.owner) == ("in_progress", "worker-b")
    # the new owner writes; without an owner nothing is fenced
    assert (await store.append_events([event("resp_2", 0)], owner="worker-b")).fenced == set()
    assert (await store.append_events([event("resp_1", 1)])).fenced == set()
    assert await store.last_event_seq("resp_2") == 0
    assert await store.last_event_seq("resp_1") == 1


async def test_a_response_end_with_its_events_happens_once_with_its_items(
    store: StepStore,
) -> None:
    """A response's end stored with events (as a run stores it) finishes it once: a
    later end is refused, with none of its items or step ends."""
    await store.create_response(make_record("resp_1", key_id="key_a"))
    step = await started(store, "resp_1")
    kept = {"id": "msg_1", "type": "message"}
    first = await store.append_events(
        [event("resp_1", 0, step_id=step.id)],
        ends=[
            StepEnd(response_id="resp_1", step_id=step.id, state=StepState.COMPLETED),
            ResponseEnd(
                response_id="resp_1",
                status="completed",
                result={"n": 1},
                completed_at=1.0,
                items=[kept],
            ),
        ],
    )
    late = await store.append_events(
        [event("resp_1", 1)],
        ends=[
            StepEnd(response_id="resp_1", step_id=step.id, state=StepState.FAILED),
            ResponseEnd(
                response_id="resp_1",
                status="failed",
                result={"n": 2},
                completed_at=2.0,
                items=[{"id": "msg_late", "type": "message"}],
            ),
        ],
    )

    finished, ended = first.ends
    assert isinstance(finished, Step) and finished.state is StepState.COMPLETED
    assert ended is True
    assert late.ends == [None, False]
    stored = await store.get_response("resp_1")
    assert stored is not None and (stored.status, stored.result) == ("completed", {"n": 1})
    assert await store.find_items(["msg_1", "msg_late"], key_id="key_a") == {"msg_1": kept}
    [step_now] = await store.load_steps("resp_1")
    assert step_now.state is StepState.COMPLETED


async def test_events_alone_with_an_owner_are_written_only_for_the_responses_it_holds(
    store: StepStore,
) -> None:
    """The same fence when a batch holds only events (PostgreSQL writes those in one
    statement of its own)."""
    await store.create_response(make_record("resp_1", owner="worker-a", lease_expires_at=100.0))
    await store.create_response(make_record("resp_2", owner="worker-a", lease_expires_at=100.0))
    await store.renew_leases("worker-a", ["resp_1"], expires_at=2e9)
    assert await store.claim_expired("worker-b", now=200.0, expires_at=2e9, limit=10) == ["resp_2"]

    appended = await store.append_events(
        [event("resp_1", 0), event("resp_2", 0), event("resp_1", 1)], owner="worker-a"
    )

    assert appended.fenced == {"resp_2"}
    assert appended.ends == []
    assert await store.read_events("resp_1", after=-1, limit=10) == [
        event("resp_1", 0),
        event("resp_1", 1),
    ]
    assert await store.read_events("resp_2", after=-1, limit=10) == []
    taken = await store.append_events([event("resp_2", 0, b"new owner")], owner="worker-b")
    assert taken.fenced == set()
    assert await store.read_events("resp_2", after=-1, limit=10) == [
        event("resp_2", 0, b"new owner")
    ]


async def test_append_events_keeps_the_first_row_of_a_key(store: StepStore) -> None:
    await store.append_events(
        [
            event("resp_1", 0, b"first", step_id="step_a"),
            event("resp_2", 0),
            event("resp_1", 1),
            event("resp_1", 0, b"duplicate in the batch"),
        ]
    )
    await store.append_events([event("resp_1", 1, b"duplicate later"), event("resp_1", 2)])

    assert await store.read_events("resp_1", after=-1, limit=10) == [
        event("resp_1", 0, b"first", step_id="step_a"),
        event("resp_1", 1),
        event("resp_1", 2),
    ]
    assert await store.read_events("resp_2", after=-1, limit=10) == [event("resp_2", 0)]


async def test_read_events_pages_in_seq_order(store: StepStore) -> None:
    await store.append_events([event("resp_1", seq) for seq in (5, 0, 9, 3, 1, 2, 8, 4, 6, 7)])
    page = await store.read_events("resp_1", after=3, limit=4)
    assert [row.seq for row in page] == [4, 5, 6, 7]
    assert [row.seq for row in await store.read_events("resp_1", after=7, limit=100)] == [8, 9]
    assert await store.read_events("resp_1", after=9, limit=100) == []
    assert await store.read_events("resp_missing", after=-1, limit=100) == []


async def test_step_events_are_the_rows_one_step_emitted_in_order(store: StepStore) -> None:
    await store.append_events(
        [
            event("resp_1", 2, step_id="step_a"),
            event("resp_1", 0),
            event("resp_1", 1, step_id="step_a"),
            event("resp_1", 3, step_id="step_b"),
            event("resp_2", 0, step_id="step_a"),
        ]
    )
    assert await store.step_events("resp_1", "step_a") == [
        event("resp_1", 1, step_id="step_a"),
        event("resp_1", 2, step_id="step_a"),
    ]
    assert await store.step_events("resp_1", "step_missing") == []


async def test_last_event_seq_is_the_highest_or_minus_one(store: StepStore) -> None:
    assert await store.last_event_seq("resp_1") == -1
    await store.append_events([event("resp_1", 3), event("resp_1", 7), event("resp_1", 5)])
    assert await store.last_event_seq("resp_1") == 7


async def test_append_events_commits_a_large_batch_of_many_responses(store: StepStore) -> None:
    await store.append_events([])
    rows = [event(f"resp_{seq % 5}", seq // 5, step_id=f"step_{seq}") for seq in range(500)]
    await store.append_events(rows)
    for index in range(5):
        stored = await store.read_events(f"resp_{index}", after=-1, limit=1000)
        assert stored == [row for row in rows if row.response_id == f"resp_{index}"]
        assert await store.last_event_seq(f"resp_{index}") == 99


# -- leases ----------------------------------------------------------------------


async def test_renew_leases_extends_only_what_the_owner_still_holds(store: StepStore) -> None:
    await store.create_response(make_record("resp_mine", owner="a", lease_expires_at=10.0))
    await store.create_response(make_record("resp_taken", owner="b", lease_expires_at=10.0))
    await store.create_response(
        make_record("resp_done", status="completed", owner="a", lease_expires_at=10.0)
    )

    held = await store.renew_leases(
        "a", ["resp_mine", "resp_taken", "resp_done", "resp_missing"], expires_at=99.5
    )

    assert held == {"resp_mine"}
    leases = {
        response_id: (record.owner, record.lease_expires_at)
        for response_id in ("resp_mine", "resp_taken", "resp_done")
        if (record := await store.get_response(response_id)) is not None
    }
    assert leases == {
        "resp_mine": ("a", 99.5),
        "resp_taken": ("b", 10.0),
        "resp_done": ("a", 10.0),
    }
    assert await store.renew_leases("a", [], expires_at=100.0) == set()


async def test_release_lease_only_by_its_owner(store: StepStore) -> None:
    await store.create_response(make_record(owner="a", lease_expires_at=10.0))
    await store.release_lease("resp_1", "b")
    stored = await store.get_response("resp_1")
    assert stored is not None
    assert (stored.owner, stored.lease_expires_at) == ("a", 10.0)
    await store.release_lease("resp_1", "a")
    stored = await store.get_response("resp_1")
    assert stored is not None
    assert (stored.owner, stored.lease_expires_at) == (None, None)


async def test_claim_expired_takes_expired_and_unowned_live_responses(store: StepStore) -> None:
    now = 1000.0
    await store.create_response(
        make_record("resp_expired", created_at=1.0, owner="dead", lease_expires_at=now - 1)
    )
    await store.create_response(make_record("resp_unowned", created_at=2.0, status="queued"))
    await store.create_response(
        make_record("resp_held", created_at=3.0, owner="alive", lease_expires_at=now + 30)
    )
    await store.create_response(
        make_record("resp_exactly_now", created_at=4.0, owner="alive", lease_expires_at=now)
    )
    await store.create_response(
        make_record("resp_done", created_at=5.0, status="failed", lease_expires_at=now - 1)
    )

    claimed = await store.claim_expired("me", now=now, expires_at=now + 60, limit=10)

    assert sorted(claimed) == ["resp_expired", "resp_unowned"]
    for response_id in claimed:
        record = await store.get_response(response_id)
        assert record is not None
        assert (record.owner, record.lease_expires_at) == ("me", now + 60)
    held = await store.get_response("resp_held")
    assert held is not None
    assert held.owner == "alive"
    assert await store.claim_expired("other", now=now, expires_at=now + 60, limit=10) == []


async def test_claim_expired_takes_the_oldest_first_up_to_the_limit(store: StepStore) -> None:
    for index in range(5):
        await store.create_response(
            make_record(
                f"resp_{index}", created_at=100.0 - index, owner="dead", lease_expires_at=1.0
            )
        )
    first = await store.claim_expired("me", now=50.0, expires_at=90.0, limit=2)
    assert sorted(first) == ["resp_3", "resp_4"]
    rest = await store.claim_expired("you", now=50.0, expires_at=90.0, limit=10)
    assert sorted(rest) == ["resp_0", "resp_1", "resp_2"]
    assert await store.claim_expired("me", now=50.0, expires_at=90.0, limit=0) == []


async def test_concurrent_claimers_never_take_the_same_response(store: StepStore) -> None:
    ids = {f"resp_{index:02}" for index in range(20)}
    for response_id in sorted(ids):
        await store.create_response(make_record(response_id, owner="dead", lease_expires_at=1.0))
    # open a connection per claimer up front, so the claims run side by side
    await asyncio.gather(*(store.get_response(response_id) for response_id in ids))

    # every round starts when all leases of the round before have expired
    for round_start in (100.0, 200.0, 300.0, 400.0, 500.0):
        first, second = await asyncio.gather(
            store.claim_expired("one", now=round_start, expires_at=round_start + 50, limit=20),
            store.claim_expired("two", now=round_start, expires_at=round_start + 50, limit=20),
        )

        assert set(first).isdisjoint(second)
        assert set(first) | set(second) == ids
        for owner, claimed in (("one", first), ("two", second)):
            for response_id in claimed:
                record = await store.get_response(response_id)
                assert record is not None
                assert (record.owner, record.lease_expires_at) == (owner, round_start + 50)


# -- SQL only --------------------------------------------------------------------


async def test_a_started_write_finishes_when_its_caller_is_cancelled(
    sql_store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await sql_store.create_response(make_record())
    step = await started(sql_store)
    caller: asyncio.Task[Step | None] | None = None
    finish = stepline.store._hot.finish_step

    async def cancel_the_caller_mid_write(*args: Any, **kwargs: Any) -> Step | None:
        assert caller is not None
        caller.cancel()
        await asyncio.sleep(0)  # let the cancellation reach the caller mid-write
        return await finish(*args, **kwargs)

    monkeypatch.setattr(stepline.store._hot, "finish_step", cancel_the_caller_mid_write)
    caller = asyncio.create_task(
        sql_store.finish_step(step.id, state=StepState.COMPLETED, response={"output": "ok"})
    )
    with pytest.raises(asyncio.CancelledError):
        await caller

    [stored] = await sql_store.load_steps("resp_1")
    assert (stored.state, stored.response) == (StepState.COMPLETED, {"output": "ok"})


def test_the_shipped_revisions_are_alembics_line_of_migrations() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())
    walked = [script.revision for script in scripts.walk_revisions()]
    assert shipped_revisions() == tuple(reversed(walked))
    assert head_revision() == scripts.get_current_head()


async def test_the_migrations_build_exactly_the_declared_schema(sql_store: SqlStore) -> None:
    def differences(connection: sa.Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return list(compare_metadata(context, metadata))

    async with sql_store.engine.connect() as connection:
        assert await connection.run_sync(differences) == []
    assert await sql_store.current_revision() == head_revision()


async def test_a_database_error_surfaces_as_store_error(sql_store: SqlStore) -> None:
    async with sql_store.engine.begin() as connection:
        await connection.exec_driver_sql("DROP TABLE events")
    with pytest.raises(StoreError, match="store"):
        await sql_store.append_events([event("resp_1", 0)])
    with pytest.raises(StoreError):
        await sql_store.last_event_seq("resp_1")


@pytest.mark.parametrize("kind", backend_params(SQL_KINDS))
async def test_migrate_brings_a_fresh_database_to_head(kind: str, tmp_path: Path) -> None:
    async with database_url(kind, tmp_path) as url:
        assert await current_revision(url) is None
        await migrate(url)
        await migrate(url)  # a second run finds nothing to do
        assert await current_revision(url) == head_revision()
        store = await open_store(url, migrate=False)
        try:
            await store.create_response(make_record())
            assert await store.get_response("resp_1") == make_record()
        finally:
            await store.close()


@pytest.mark.parametrize("kind", backend_params(SQL_KINDS))
async def test_open_store_migrates_by_default(kind: str, tmp_path: Path) -> None:
    async with database_url(kind, tmp_path) as url:
        store = await open_store(url, pool_size=2)
        try:
            assert await store.current_revision() == head_revision()
            await store.create_response(make_record())
        finally:
            await store.close()


async def test_sqlite_connections_use_wal_and_foreign_keys(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'pragmas.db'}")
    try:
        async with store.engine.connect() as connection:
            pragmas = {
                name: (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
            }
    finally:
        await store.close()
    # synchronous=NORMAL is 1
    assert pragmas == {
        "journal_mode": "wal",
        "synchronous": 1,
        "busy_timeout": 10000,
        "foreign_keys": 1,
    }
    assert sqlite3.sqlite_version_info >= (3, 35)  # UPDATE ... RETURNING


# -- URLs and exports --------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///stepline.db", "sqlite+aiosqlite:///stepline.db"),
        ("sqlite:////var/lib/stepline.db", "sqlite+aiosqlite:////var/lib/stepline.db"),
        ("sqlite+aiosqlite:///stepline.db", "sqlite+aiosqlite:///stepline.db"),
        ("postgresql://user@host/db", "postgresql+asyncpg://user@host/db"),
        ("postgres://user:pw@host:5433/db", "postgresql+asyncpg://user:pw@host:5433/db"),
        ("postgresql+asyncpg://user@host/db", "postgresql+asyncpg://user@host/db"),
    ],
)
def test_normalize_database_url(url: str, expected: str) -> None:
    assert normalize_database_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "mysql://user@host/db",
        "postgresql+psycopg://user@host/db",
        "sqlite://",
        "sqlite:///:memory:",
        "stepline.db",
        "",
    ],
)
def test_normalize_database_url_refuses_other_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="unsupported database URL"):
        normalize_database_url(url)


def test_a_refused_url_never_shows_its_password() -> None:
    with pytest.raises(ConfigError) as raised:
        normalize_database_url("mysql://admin:s3cret@db/app")
    assert "s3cret" not in str(raised.value)
    assert "mysql://admin:***@db/app" in str(raised.value)


def test_the_public_names_of_the_store() -> None:
    assert sorted(stepline.store.__all__) == [
        "EventRow",
        "MemoryStore",
        "ResponseRecord",
        "SqlStore",
        "StepStore",
        "TERMINAL_STATUSES",
        "migrate",
        "normalize_database_url",
        "open_store",
    ]


async def test_a_watch_wakes_when_the_response_gets_events(store: StepStore) -> None:
    with store.watch_events("resp_1") as watch, store.watch_events("resp_2") as other:
        await store.append_events([event("resp_1", 0)])
        # woken: returns long before its bound (a missed wake-up would fail the test)
        await asyncio.wait_for(watch.wait(at_most=60), timeout=10)
        assert not other._woken.is_set()


@pytest.mark.postgres
async def test_a_watch_wakes_for_events_another_process_stored(tmp_path: Path) -> None:
    async with database_url("postgres", tmp_path) as url:
        writer = await open_store(url)
        follower = await open_store(url, migrate=False)
        try:
            await follower.listening()
            with follower.watch_events("resp_1") as watch:
                await writer.append_events([event("resp_1", 0)])
                await asyncio.wait_for(watch.wait(at_most=60), timeout=10)
            assert await follower.read_events("resp_1", after=-1, limit=10) == [event("resp_1", 0)]
        finally:
            await follower.close()
            await writer.close()


async def test_a_response_is_created_with_its_first_steps_already_started(
    store: StepStore,
) -> None:
    first = await store.create_response(make_record(), steps=[model_call()])

    (step,) = first
    assert (step.state, step.attempt, step.sequence, step.scope, step.previous_step_id) == (
        StepState.PROCESSING,
        1,
        1,
        None,
        None,
    )
    assert await store.load_chain("resp_1", scope=None) == first
    # the chain goes on from there, as after record_steps
    (second,) = await store.record_steps("resp_1", scope=None, steps=[model_call(2)])
    assert (second.sequence, second.previous_step_id) == (2, step.id)
    assert await store.create_response(make_record("resp_2")) == []
    assert await store.load_chain("resp_2", scope=None) == []


async def test_a_duplicate_response_records_none_of_its_steps(store: StepStore) -> None:
    await store.create_response(make_record())

    with pytest.raises(StoreError):
        await store.create_response(make_record(), steps=[model_call()])

    assert await store.load_chain("resp_1", scope=None) == []


async def test_record_steps_can_record_them_already_started(store: StepStore) -> None:
    await store.create_response(make_record())

    (step,) = await store.record_steps("resp_1", scope=None, steps=[model_call()], start=True)

    assert (step.state, step.attempt, step.started_at) == (
        StepState.PROCESSING,
        1,
        step.created_at,
    )
    assert await store.load_chain("resp_1", scope=None) == [step]
    finished = await store.finish_step(step.id, state=StepState.COMPLETED, response={"ok": 1})
    assert finished is not None and finished.state is StepState.COMPLETED
