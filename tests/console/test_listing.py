"""The console's store reads (``store/_listing.py``), on every backend: memory, SQLite, PostgreSQL.

Each test stores responses and steps through the ordinary store methods, then
checks what ``list_summaries`` and ``response_tree`` return against what was
stored; on the SQL backends, that each answer took exactly one statement.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from stepline._steps import NewStep, StepKind, StepState
from stepline.store import SqlStore, StepStore
from stepline.store._base import ResponseRecord
from stepline.store._listing_values import Cursor, ResponseQuery
from tests._backends import backend_params, store_backend

T0 = 1_800_000_000.0


@pytest.fixture(params=backend_params())
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StepStore]:
    async with store_backend(request.param, tmp_path) as opened:
        yield opened


@contextmanager
def statements(store: StepStore) -> Iterator[list[str]]:
    """The SQL statements the store runs inside the block (none are seen in memory)."""
    seen: list[str] = []
    if not isinstance(store, SqlStore):
        yield seen
        return

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    engine = store.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)


@dataclass(frozen=True)
class Spec:
    id: str
    created_at: float
    status: str
    model: str
    key_id: str | None


#: two share a creation time, so the id breaks the tie
SPECS = [
    Spec("resp_a", T0 + 1, "completed", "alpha", "key_alice"),
    Spec("resp_b", T0 + 2, "failed", "beta", "key_bob"),
    Spec("resp_c", T0 + 3, "completed", "alpha", None),
    Spec("resp_d", T0 + 3, "in_progress", "beta", "key_alice"),
    Spec("resp_e", T0 + 4, "completed", "beta", "key_bob"),
    Spec("resp_f", T0 + 5, "cancelled", "alpha", "key_alice"),
    Spec("resp_g", T0 + 6, "completed", "alpha", "key_bob"),
]


def _result(spec: Spec, index: int) -> dict[str, Any]:
    error = {"code": "server_error", "message": f"upstream down {index}"}
    return {
        "id": spec.id,
        "status": spec.status,
        "usage": {"input_tokens": 10 * index + 1, "output_tokens": index + 2},
        "error": error if spec.status == "failed" else None,
        "output": [{"type": "message", "id": f"msg_{index}", "content": []}],
    }


async def _store_specs(store: StepStore) -> None:
    for index, spec in enumerate(SPECS):
        await store.create_response(
            ResponseRecord(
                id=spec.id,
                created_at=spec.created_at,
                status="in_progress",
                model=spec.model,
                body={"model": spec.model, "input": f"question {index}"},
                key_id=spec.key_id,
                store=index != 2,
            )
        )
        (model_call,) = await store.record_steps(
            spec.id,
            scope=None,
            steps=[NewStep(kind=StepKind.MODEL_CALL, request={"iteration": 1})],
            start=True,
        )
        await store.finish_step(model_call.id, state=StepState.COMPLETED, response={"usage": {}})
        if spec.status != "in_progress":
            await store.finish_response(
                spec.id,
                status=spec.status,
                result=_result(spec, index),
                completed_at=spec.created_at + 1 if spec.status == "completed" else None,
            )


def _newest_first(specs: list[Spec]) -> list[str]:
    return [spec.id for spec in sorted(specs, key=lambda s: (s.created_at, s.id), reverse=True)]


async def _all_pages(store: StepStore, query: ResponseQuery) -> list[list[str]]:
    pages: list[list[str]] = []
    while True:
        with statements(store) as seen:
            page = await store.list_summaries(query)
        if isinstance(store, SqlStore):
            assert len(seen) == 1, seen  # one page, one query
        pages.append([summary.id for summary in page.summaries])
        if page.next is None:
            return pages
        # the cursor survives its trip through a URL
        cursor = Cursor.parse(page.next.encode())
        assert cursor == page.next
        query = ResponseQuery(
            since=query.since,
            status=query.status,
            model=query.model,
            key_ids=query.key_ids,
            before=cursor,
            limit=query.limit,
        )


async def test_pages_run_newest_first_across_keys_and_continue_from_their_cursor(
    store: StepStore,
) -> None:
    await _store_specs(store)
    pages = await _all_pages(store, ResponseQuery(limit=3))
    assert pages == [
        _newest_first(SPECS)[0:3],
        _newest_first(SPECS)[3:6],
        _newest_first(SPECS)[6:7],
    ]
    # a response created while an operator pages does not shift the later pages
    first = await store.list_summaries(ResponseQuery(limit=3))
    await store.create_response(
        ResponseRecord(id="resp_z", created_at=T0 + 9, status="queued", model="alpha", body={})
    )
    assert first.next is not None
    later = await store.list_summaries(ResponseQuery(limit=3, before=first.next))
    assert [summary.id for summary in later.summaries] == _newest_first(SPECS)[3:6]


@pytest.mark.parametrize(
    ("query", "keep"),
    [
        (ResponseQuery(status="completed"), lambda s: s.status == "completed"),
        (ResponseQuery(model="beta"), lambda s: s.model == "beta"),
        (ResponseQuery(key_ids=("key_bob",)), lambda s: s.key_id == "key_bob"),
        (ResponseQuery(key_ids=(None,)), lambda s: s.key_id is None),
        (ResponseQuery(key_ids=("key_alice", None)), lambda s: s.key_id in ("key_alice", None)),
        (ResponseQuery(key_ids=()), lambda s: False),
        (ResponseQuery(since=T0 + 3), lambda s: s.created_at >= T0 + 3),
        (
            ResponseQuery(status="completed", model="alpha", key_ids=("key_bob",)),
            lambda s: (s.status, s.model, s.key_id) == ("completed", "alpha", "key_bob"),
        ),
    ],
)
async def test_filters_combine_and_page_alike(
    store: StepStore, query: ResponseQuery, keep: Any
) -> None:
    await _store_specs(store)
    expected = _newest_first([spec for spec in SPECS if keep(spec)])
    assert [summary.id for summary in (await store.list_summaries(query)).summaries] == expected
    paged = ResponseQuery(
        since=query.since, status=query.status, model=query.model, key_ids=query.key_ids, limit=2
    )
    pages = await _all_pages(store, paged)
    assert [response_id for page in pages for response_id in page] == expected
    assert all(len(page) <= 2 for page in pages)


async def test_a_summary_carries_tokens_error_steps_and_timing(store: StepStore) -> None:
    await _store_specs(store)
    stored_steps = {spec.id: await store.load_steps(spec.id) for spec in SPECS}
    page = await store.list_summaries(ResponseQuery(limit=50))
    by_id = {summary.id: summary for summary in page.summaries}
    assert set(by_id) == {spec.id for spec in SPECS}
    for index, spec in enumerate(SPECS):
        summary = by_id[spec.id]
        record = await store.get_response(spec.id)
        assert record is not None
        (step,) = stored_steps[spec.id]
        assert (summary.status, summary.model, summary.key_id) == (
            spec.status,
            spec.model,
            spec.key_id,
        )
        assert summary.created_at == spec.created_at
        assert summary.store is record.store
        assert summary.step_count == 1
        assert summary.last_step_finished_at == step.finished_at
        if spec.status == "in_progress":
            # running: no result yet, so no tokens and no end
            assert (summary.input_tokens, summary.output_tokens) == (None, None)
            assert summary.ended_at is None
            assert not summary.terminal
            continue
        result = _result(spec, index)
        assert summary.input_tokens == result["usage"]["input_tokens"]
        assert summary.output_tokens == result["usage"]["output_tokens"]
        assert summary.ended_at == step.finished_at
        if spec.status == "failed":
            assert (summary.error_code, summary.error_message) == (
                "server_error",
                f"upstream down {index}",
            )
        else:
            assert (summary.error_code, summary.error_message) == (None, None)


async def test_a_tree_is_the_response_with_every_step_of_every_scope(store: StepStore) -> None:
    body = {"model": "alpha", "input": [{"role": "user", "content": "research this"}]}
    await store.create_response(
        ResponseRecord(
            id="resp_tree", created_at=T0, status="in_progress", model="alpha", body=body
        )
    )
    (call,) = await store.record_steps(
        "resp_tree", scope=None, steps=[NewStep(kind=StepKind.MODEL_CALL, request={"iteration": 1})]
    )
    await store.start_step(call.id)
    await store.finish_step(
        call.id,
        state=StepState.COMPLETED,
        response={"usage": {"input_tokens": 3, "output_tokens": 4}},
    )
    agent, _tool = await store.record_steps(
        "resp_tree",
        scope=None,
        steps=[
            NewStep(kind=StepKind.TOOL_CALL, request={"name": "researcher"}, call_id="c1"),
            NewStep(kind=StepKind.TOOL_CALL, request={"name": "weather"}, call_id="c2"),
        ],
    )
    (inner,) = await store.record_steps(
        "resp_tree",
        scope=agent.id,
        steps=[NewStep(kind=StepKind.MODEL_CALL, request={"iteration": 1})],
        start=True,
    )
    await store.finish_step(inner.id, state=StepState.FAILED, error={"message": "no", "code": "x"})

    with statements(store) as seen:
        tree = await store.response_tree("resp_tree")
    if isinstance(store, SqlStore):
        assert len(seen) == 1, seen
    assert tree is not None
    assert tree.body == body
    assert tree.steps == await store.load_steps("resp_tree")
    assert [step.scope for step in tree.steps] == [None, None, None, agent.id]
    assert tree.summary.id == "resp_tree"
    assert tree.summary.status == "in_progress"
    assert tree.summary.step_count == 4
    assert tree.summary.last_step_finished_at == max(
        step.finished_at for step in tree.steps if step.finished_at is not None
    )

    await store.create_response(
        ResponseRecord(id="resp_bare", created_at=T0, status="queued", model="beta", body=body)
    )
    bare = await store.response_tree("resp_bare")
    assert bare is not None
    assert (bare.body, bare.steps, bare.summary.step_count) == (body, [], 0)
    assert await store.response_tree("resp_missing") is None


async def test_a_finished_tree_carries_its_tokens_once(store: StepStore) -> None:
    await _store_specs(store)
    index = next(i for i, spec in enumerate(SPECS) if spec.status == "failed")
    spec = SPECS[index]
    tree = await store.response_tree(spec.id)
    assert tree is not None
    assert tree.body == {"model": spec.model, "input": f"question {index}"}
    assert tree.summary.input_tokens == _result(spec, index)["usage"]["input_tokens"]
    assert tree.summary.error_code == "server_error"
    assert tree.steps == await store.load_steps(spec.id)


@pytest.mark.parametrize("text", ["", "resp_x", "abc~resp_x", "nan~resp_x", "inf~resp_x", "1.5~"])
def test_a_cursor_that_this_list_did_not_write_is_refused(text: str) -> None:
    assert Cursor.parse(text) is None


def test_a_cursor_round_trips_exactly() -> None:
    cursor = Cursor(created_at=T0 + 0.1234567891, id="resp_~odd")
    assert Cursor.parse(cursor.encode()) == cursor
