"""Usage on every SQL backend, checked against a plain Python reckoning of what was stored."""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence

import pytest

from stepline._protocol.assemble import sum_usage
from stepline._steps import NewStep, StepKind, StepState
from stepline.store import SqlStore
from stepline.store._base import TERMINAL_STATUSES
from stepline.store._usage import read_usage
from stepline.store._usage_values import GROUPS, Group, UsageQuery, UsageRow
from tests.store._stored import Stored, store_response

DAY = 86400.0
#: midnight UTC three days ago: responses that did not complete end at their last step's
#: end, which the store stamps with the real time
MIDNIGHT = datetime.datetime.combine(
    datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=3),
    datetime.time(),
    datetime.UTC,
).timestamp()


def nearest_rank(durations: Sequence[float], percent: int) -> float | None:
    if not durations:
        return None
    ordered = sorted(durations)
    return ordered[math.ceil(percent / 100 * len(ordered)) - 1]


async def durations_of(store: SqlStore, stored: Sequence[Stored]) -> dict[str, float | None]:
    """How long each stored response took, read back the way an operator would reckon it:
    to completion, else to its last step's end; running ones have none."""
    found: dict[str, float | None] = {}
    for response in stored:
        if response.status not in TERMINAL_STATUSES:
            found[response.id] = None
            continue
        ended = response.completed_at
        if ended is None:
            ends = [s.finished_at for s in await store.load_steps(response.id) if s.finished_at]
            ended = max(ends) if ends else None
        found[response.id] = None if ended is None else ended - response.created_at
    return found


def reckon(
    stored: Sequence[Stored], durations: dict[str, float | None], query: UsageQuery
) -> list[UsageRow]:
    """The usage rows a reader expects, computed in Python from what was stored."""
    groups: dict[tuple[object, ...], list[Stored]] = {}
    for response in stored:
        if not query.start <= response.created_at < query.end:
            continue
        if query.key_ids is not None and response.key_id not in query.key_ids:
            continue
        if query.model is not None and response.model != query.model:
            continue
        day = datetime.datetime.fromtimestamp(response.created_at, datetime.UTC).date()
        values = {"day": day, "key": response.key_id, "model": response.model}
        groups.setdefault(tuple(values[name] for name in query.group_by), []).append(response)
    rows = []
    for key, members in groups.items():
        named = dict(zip(query.group_by, key, strict=True))
        timed = [d for m in members if (d := durations[m.id]) is not None]
        rows.append(
            UsageRow(
                day=named.get("day"),  # type: ignore[arg-type]
                key_id=named.get("key"),  # type: ignore[arg-type]
                model=named.get("model"),  # type: ignore[arg-type]
                requests=len(members),
                **{
                    status: sum(m.status == status for m in members)
                    for status in ("completed", "failed", "incomplete", "cancelled")
                },
                **{
                    name: sum(call[index] for m in members for call in m.calls)
                    for index, name in enumerate(
                        ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")
                    )
                },
                latency_p50=nearest_rank(timed, 50),
                latency_p95=nearest_rank(timed, 95),
            )
        )
    return sorted(
        rows,
        key=lambda row: (
            row.day or datetime.date.min,
            (row.key_id is not None, row.key_id or ""),
            row.model or "",
        ),
    )


async def varied_responses(store: SqlStore) -> list[Stored]:
    """Three days, three keys (one of them none), two models, every status."""
    statuses = ["completed", "completed", "failed", "incomplete", "cancelled", "in_progress"]
    keys = ["key_a", "key_b", None]
    stored = []
    for index in range(36):
        stored.append(
            await store_response(
                store,
                f"resp_{index:02d}",
                created_at=MIDNIGHT + (index % 3) * DAY + index * 60,
                status=statuses[index % len(statuses)],
                key_id=keys[index // 3 % len(keys)],
                model="alpha" if index % 4 else "beta",
                calls=[(index, index % 7, index % 2, index % 3)] * (index % 3 + 1),
                duration=0.5 + index * 0.25,
            )
        )
    return stored


@pytest.mark.parametrize(
    "group_by",
    [GROUPS, ("day",), ("key",), ("model", "key"), ()],
    ids=["day-key-model", "day", "key", "model-key", "none"],
)
async def test_usage_is_grouped_as_asked(sql_store: SqlStore, group_by: tuple[Group, ...]) -> None:
    stored = await varied_responses(sql_store)
    durations = await durations_of(sql_store, stored)
    query = UsageQuery(start=MIDNIGHT, end=MIDNIGHT + 3 * DAY, group_by=group_by)

    rows = await read_usage(sql_store, query)

    assert rows == reckon(stored, durations, query)
    assert sum(row.requests for row in rows) == len(stored)


async def test_usage_filters_by_window_key_and_model(sql_store: SqlStore) -> None:
    stored = await varied_responses(sql_store)
    durations = await durations_of(sql_store, stored)
    # the window starts at the second day's first response and ends at the third day
    second_day = [s for s in stored if MIDNIGHT + DAY <= s.created_at < MIDNIGHT + 2 * DAY]
    start = min(s.created_at for s in second_day)
    queries = [
        UsageQuery(start=start, end=MIDNIGHT + 2 * DAY),
        UsageQuery(start=MIDNIGHT, end=MIDNIGHT + 3 * DAY, key_ids=("key_b",)),
        UsageQuery(start=MIDNIGHT, end=MIDNIGHT + 3 * DAY, key_ids=("key_a", "key_b")),
        UsageQuery(start=MIDNIGHT, end=MIDNIGHT + 3 * DAY, model="beta", group_by=("key",)),
        # the end is exclusive: a response created at it is not counted
        UsageQuery(start=MIDNIGHT, end=stored[7].created_at, group_by=()),
        UsageQuery(start=MIDNIGHT + 5 * DAY, end=MIDNIGHT + 6 * DAY),
    ]
    for query in queries:
        rows = await read_usage(sql_store, query)
        assert rows == reckon(stored, durations, query), query
    assert await read_usage(sql_store, queries[-1]) == []
    assert await read_usage(sql_store, UsageQuery(start=0, end=1, group_by=())) == []


async def test_latency_quantiles_are_nearest_rank(sql_store: SqlStore) -> None:
    # twenty completed responses lasting 1 s, 2 s, ... 20 s, stored out of order
    for seconds in [7, 3, 20, 1, 15, 9, 12, 2, 18, 5, 11, 4, 16, 8, 19, 6, 14, 10, 17, 13]:
        await store_response(
            sql_store, f"resp_{seconds}", created_at=MIDNIGHT + seconds, duration=float(seconds)
        )
    await store_response(sql_store, "resp_running", created_at=MIDNIGHT, status="in_progress")

    [row] = await read_usage(sql_store, UsageQuery(start=MIDNIGHT, end=MIDNIGHT + DAY))

    # the 10th and 19th of 20: at least half, and at least 95 %, are no longer
    assert (row.latency_p50, row.latency_p95) == (10.0, 19.0)
    assert (row.requests, row.completed) == (21, 20)


async def test_a_response_without_model_calls_counts_as_a_request_with_no_tokens(
    sql_store: SqlStore,
) -> None:
    stored = await store_response(
        sql_store, "resp_empty", created_at=MIDNIGHT, status="failed", calls=[]
    )
    [row] = await read_usage(sql_store, UsageQuery(start=MIDNIGHT, end=MIDNIGHT + DAY))
    assert (
        row == reckon([stored], {stored.id: None}, UsageQuery(start=MIDNIGHT, end=MIDNIGHT + 1))[0]
    )
    assert (row.requests, row.failed, row.errors, row.input_tokens) == (1, 1, 1, 0)
    assert row.latency_p50 is None


async def test_tokens_are_those_the_response_objects_usage_sums(sql_store: SqlStore) -> None:
    """Usage counts what the response's own ``usage`` (``sum_usage``) counts: never a
    tool call's."""
    await store_response(sql_store, "resp_1", created_at=MIDNIGHT, calls=[(40, 4, 0, 0)])
    await store_response(sql_store, "resp_2", created_at=MIDNIGHT + 1, calls=[(5, 6, 1, 2)])
    # a tool call never counts, whatever its result holds
    [tool] = await sql_store.record_steps(
        "resp_2",
        scope=None,
        steps=[NewStep(kind=StepKind.TOOL_CALL, request={"name": "t"}, call_id="call_1")],
        start=True,
    )
    await sql_store.finish_step(
        tool.id,
        state=StepState.COMPLETED,
        response={"output": "o", "usage": {"input_tokens": 500, "output_tokens": 500}},
    )
    usage = [sum_usage(await sql_store.load_steps(rid)) for rid in ("resp_1", "resp_2")]

    [row] = await read_usage(sql_store, UsageQuery(start=MIDNIGHT, end=MIDNIGHT + DAY))

    assert (row.input_tokens, row.output_tokens) == (
        sum(u["input_tokens"] for u in usage),
        sum(u["output_tokens"] for u in usage),
    )
    assert (row.cached_tokens, row.reasoning_tokens) == (
        sum(u["input_tokens_details"]["cached_tokens"] for u in usage),
        sum(u["output_tokens_details"]["reasoning_tokens"] for u in usage),
    )
