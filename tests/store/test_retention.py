"""Retention on every SQL backend: what a sweep deletes, what it keeps, in what batches."""

from __future__ import annotations

import asyncio

from stepline.store import SqlStore
from stepline.store._retention import expired_counts, purge, purge_batch
from stepline.store._retention_values import PurgeCounts, RetentionPolicy
from tests.store._stored import rows_of, store_response

HOUR = 3600.0
DAY = 24 * HOUR
NOW = 1_800_000_000.0
ONE_DAY = RetentionPolicy(default=DAY)


def gone(counts: dict[str, int]) -> bool:
    return not any(counts.values())


async def test_a_sweep_deletes_old_terminal_responses_whole_and_nothing_else(
    sql_store: SqlStore,
) -> None:
    old = [
        await store_response(
            sql_store, f"resp_old_{status}", created_at=NOW - 2 * DAY, status=status
        )
        for status in ("completed", "failed", "cancelled", "incomplete")
    ]
    running = [
        await store_response(
            sql_store, f"resp_old_{status}", created_at=NOW - 9 * DAY, status=status
        )
        for status in ("in_progress", "queued")
    ]
    young = await store_response(sql_store, "resp_young", created_at=NOW - DAY + 60)
    before = {stored.id: await rows_of(sql_store, stored.id) for stored in [*running, young]}
    doomed_rows = [await rows_of(sql_store, stored.id) for stored in old]
    assert all(rows["steps"] and rows["events"] and rows["items"] for rows in doomed_rows)

    deleted = await purge(sql_store, ONE_DAY, now=NOW)

    for stored in old:
        assert gone(await rows_of(sql_store, stored.id)), stored.id
        assert await sql_store.get_response(stored.id) is None
    for response_id, rows in before.items():
        assert await rows_of(sql_store, response_id) == rows
    assert deleted == PurgeCounts(
        responses=len(old),
        steps=sum(rows["steps"] for rows in doomed_rows),
        events=sum(rows["events"] for rows in doomed_rows),
        items=sum(rows["items"] for rows in doomed_rows),
    )
    # deleting is idempotent: a second sweep finds nothing
    assert await purge(sql_store, ONE_DAY, now=NOW) == PurgeCounts()


async def test_without_retention_nothing_is_deleted(sql_store: SqlStore) -> None:
    stored = await store_response(sql_store, "resp_ancient", created_at=NOW - 900 * DAY)
    rows = await rows_of(sql_store, stored.id)
    policy = RetentionPolicy(keys={"key_a": None})
    assert not policy.enabled
    assert await purge(sql_store, policy, now=NOW) == PurgeCounts()
    assert await expired_counts(sql_store, policy, now=NOW) == PurgeCounts()
    assert await rows_of(sql_store, stored.id) == rows


async def test_a_conversation_still_in_use_is_kept_whole(sql_store: SqlStore) -> None:
    # a <- b <- c: a and b are past their age, but c continues them and is young
    await store_response(sql_store, "resp_a", created_at=NOW - 5 * DAY)
    await store_response(sql_store, "resp_b", created_at=NOW - 4 * DAY, previous="resp_a")
    await store_response(sql_store, "resp_c", created_at=NOW - HOUR, previous="resp_b")
    # p <- q (past its age, nothing continues it) and p <- r (young): q goes, p stays
    await store_response(sql_store, "resp_p", created_at=NOW - 5 * DAY)
    await store_response(sql_store, "resp_q", created_at=NOW - 4 * DAY, previous="resp_p")
    await store_response(sql_store, "resp_r", created_at=NOW - HOUR, previous="resp_p")
    # a response still running keeps what it continues, whatever its own age
    await store_response(sql_store, "resp_x", created_at=NOW - 5 * DAY)
    await store_response(
        sql_store, "resp_y", created_at=NOW - 4 * DAY, previous="resp_x", status="in_progress"
    )
    # w (still running) <- v <- u (young): only v counts as kept past its age
    await store_response(sql_store, "resp_w", created_at=NOW - 5 * DAY, status="in_progress")
    await store_response(sql_store, "resp_v", created_at=NOW - 4 * DAY, previous="resp_w")
    await store_response(sql_store, "resp_u", created_at=NOW - HOUR, previous="resp_v")
    kept = ["resp_a", "resp_b", "resp_c", "resp_p", "resp_r", "resp_x", "resp_y"]
    kept += ["resp_w", "resp_v", "resp_u"]

    planned = await expired_counts(sql_store, ONE_DAY, now=NOW)
    deleted = await purge(sql_store, ONE_DAY, now=NOW)

    assert planned == PurgeCounts(
        responses=1,
        steps=1,
        events=3,
        items=2,
        kept=len(["resp_a", "resp_b", "resp_p", "resp_x", "resp_v"]),
    )
    assert deleted == PurgeCounts(responses=1, steps=1, events=3, items=2)
    assert gone(await rows_of(sql_store, "resp_q"))
    for response_id in kept:
        assert await sql_store.get_response(response_id) is not None, response_id

    # once a whole conversation is past its age, one sweep deletes all of it; what a
    # running response continues stays, and a running response itself
    later = NOW + 2 * DAY
    deleted = await purge(sql_store, ONE_DAY, now=later, batch_size=1)
    gone_later = ["resp_a", "resp_b", "resp_c", "resp_p", "resp_r", "resp_v", "resp_u"]
    assert deleted.responses == len(gone_later)
    remaining = [rid for rid in kept if await sql_store.get_response(rid) is not None]
    assert remaining == ["resp_x", "resp_y", "resp_w"]


async def test_each_key_keeps_its_responses_as_long_as_its_own_retention_says(
    sql_store: SqlStore,
) -> None:
    policy = RetentionPolicy(default=DAY, keys={"key_short": HOUR, "key_forever": None})
    cases = {
        # (key, age): deleted?
        ("key_short", 2 * HOUR): True,
        ("key_short", HOUR / 2): False,
        ("key_forever", 900 * DAY): False,
        ("key_other", 2 * DAY): True,
        ("key_other", 2 * HOUR): False,
        (None, 2 * DAY): True,
        (None, 2 * HOUR): False,
    }
    ids = {}
    for index, (key_id, age) in enumerate(cases):
        ids[key_id, age] = (
            await store_response(sql_store, f"resp_{index}", created_at=NOW - age, key_id=key_id)
        ).id

    deleted = await purge(sql_store, policy, now=NOW)

    assert deleted.responses == sum(cases.values())
    for case, expect_deleted in cases.items():
        assert (await sql_store.get_response(ids[case]) is None) is expect_deleted, case


async def test_a_batch_deletes_at_most_its_limit_oldest_first(sql_store: SqlStore) -> None:
    ages = [5 * DAY, 4 * DAY, 3 * DAY, 2 * DAY, 1.5 * DAY]
    for index, age in enumerate(ages):
        await store_response(sql_store, f"resp_{index}", created_at=NOW - age)

    first = await purge_batch(sql_store, ONE_DAY, now=NOW, limit=2)

    assert first.responses == 2
    left = [f"resp_{n}" for n in range(len(ages)) if await sql_store.get_response(f"resp_{n}")]
    assert left == ["resp_2", "resp_3", "resp_4"]
    rest = await purge(sql_store, ONE_DAY, now=NOW, batch_size=2)
    assert rest.responses == len(left)
    assert await purge_batch(sql_store, ONE_DAY, now=NOW, limit=2) == PurgeCounts()


async def test_a_dry_run_counts_what_the_sweep_then_deletes(sql_store: SqlStore) -> None:
    # two conversations, oldest first: 0 <- 2 <- 4 (4 is young) and 1 <- 3 <- 5
    ages = [3.0 * DAY, 2.5 * DAY, 2.0 * DAY, 1.5 * DAY, 0.5 * DAY, 1.2 * DAY]
    for index, age in enumerate(ages):
        await store_response(
            sql_store,
            f"resp_{index}",
            created_at=NOW - age,
            calls=[(1, 1, 0, 0)] * (index % 3),
            events=index,
            items=index % 2,
            previous=f"resp_{index - 2}" if index >= 2 else None,
        )
    before = {f"resp_{index}": await rows_of(sql_store, f"resp_{index}") for index in range(6)}

    planned = await expired_counts(sql_store, ONE_DAY, now=NOW)
    assert {rid: await rows_of(sql_store, rid) for rid in before} == before
    deleted = await purge(sql_store, ONE_DAY, now=NOW)

    removed = [rid for rid in before if await sql_store.get_response(rid) is None]
    assert removed == ["resp_1", "resp_3", "resp_5"]
    assert deleted == PurgeCounts(
        responses=len(removed),
        steps=sum(before[rid]["steps"] for rid in removed),
        events=sum(before[rid]["events"] for rid in removed),
        items=sum(before[rid]["items"] for rid in removed),
    )
    assert planned == PurgeCounts(
        responses=deleted.responses,
        steps=deleted.steps,
        events=deleted.events,
        items=deleted.items,
        kept=len(["resp_0", "resp_2"]),
    )


async def test_sweeps_running_at_once_delete_each_response_once(sql_store: SqlStore) -> None:
    total = 30
    for index in range(total):
        await store_response(sql_store, f"resp_{index}", created_at=NOW - 2 * DAY - index)

    results = await asyncio.gather(
        *(purge(sql_store, ONE_DAY, now=NOW, batch_size=4) for _ in range(3))
    )

    assert sum(result.responses for result in results) == total
    assert sum(result.events for result in results) == 3 * total
    assert await expired_counts(sql_store, ONE_DAY, now=NOW) == PurgeCounts()
