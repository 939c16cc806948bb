"""A continuation reads the conversation it continues in O(1): the history cache.

Every test builds a real chain of stored responses (``previous_response_id``)
in the in-memory store and reads it with and without a cache.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from stepline._engine.history import HistoryCache
from stepline._protocol.client_tools import ClientTools
from stepline._protocol.items import InputContext
from stepline._protocol.request import ResponseRequest
from stepline._run.conversation import load_conversation
from stepline._steps import NewStep, StepKind, StepState
from stepline.errors import NotFound
from stepline.store import MemoryStore
from stepline.store._base import ResponseRecord

READING = (False, False)


class CountingStore(MemoryStore):
    """The in-memory store, counting the reads a conversation costs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    async def get_response(self, response_id: str) -> ResponseRecord | None:
        self.calls["get_response"] += 1
        return await super().get_response(response_id)

    async def load_chain(self, response_id: str, *, scope: str | None) -> Any:
        self.calls["load_chain"] += 1
        return await super().load_chain(response_id, scope=scope)

    async def stored_ids(self, response_ids: Any) -> set[str]:
        self.calls["stored_ids"] += 1
        return await super().stored_ids(response_ids)


async def _turn(store: MemoryStore, index: int, previous: str | None) -> str:
    """Store one finished response: input ``turn N``, answer ``answer N``."""
    response_id = f"resp_{index}"
    body: dict[str, Any] = {"model": "m", "input": f"turn {index}"}
    if previous is not None:
        body["previous_response_id"] = previous
    await store.create_response(
        ResponseRecord(
            id=response_id,
            created_at=float(index),
            status="in_progress",
            model="m",
            body=body,
            previous_response_id=previous,
        )
    )
    [step] = await store.record_steps(
        response_id,
        scope=None,
        steps=[NewStep(kind=StepKind.MODEL_CALL, request={"iteration": 1})],
        start=True,
    )
    message = {"role": "assistant", "content": f"answer {index}"}
    await store.finish_step(
        step.id, state=StepState.COMPLETED, response={"message": message, "items": []}
    )
    await store.finish_response(response_id, status="completed", result={}, completed_at=1.0)
    return response_id


def _expected(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for index in range(turns):
        messages.append({"role": "user", "content": f"turn {index}"})
        messages.append({"role": "assistant", "content": f"answer {index}"})
    return messages


async def test_each_turn_costs_the_same_reads_however_long_the_conversation() -> None:
    store = CountingStore()
    cache = HistoryCache()
    previous: str | None = None
    costs: list[Counter[str]] = []
    read_with: list[str] = []

    def context_for(request: ResponseRequest) -> InputContext:
        read_with.append(str(request.model_dump()["input"][0]["content"][0]["text"]))
        return InputContext(tools=ClientTools.of(request))

    for index in range(30):
        if previous is not None:
            store.calls.clear()
            read_with.clear()
            # what the route (validation) and the loop each read for the new turn
            for _ in range(2):
                read = await load_conversation(
                    store, previous, context_for=context_for, cache=cache, reading=READING
                )
                assert read.history == _expected(index)
            costs.append(store.calls.copy())
            # the one response read anew is read the way this upstream reads items
            assert read_with == [f"turn {index - 1}"], read_with
        previous = await _turn(store, index, previous)

    # the first turn after the start walks the one response; every later one reads
    # only the response it continues, however many came before
    assert all(cost == costs[1] for cost in costs[1:]), costs
    assert costs[-1] == Counter(get_response=1, load_chain=1, stored_ids=2)
    uncached = CountingStore()
    previous = None
    for index in range(30):
        previous = await _turn(uncached, index, previous)
    uncached.calls.clear()
    read = await load_conversation(uncached, previous, reading=READING)
    assert read.history == _expected(30)
    assert uncached.calls == Counter(get_response=30, load_chain=30)


async def test_a_deleted_earlier_response_is_never_read_from_the_cache() -> None:
    store = MemoryStore()
    cache = HistoryCache()
    ids: list[str] = []
    for index in range(4):
        ids.append(await _turn(store, index, ids[-1] if ids else None))
        await load_conversation(store, ids[-1], cache=cache, reading=READING)

    assert await store.delete_response(ids[1])

    with pytest.raises(NotFound, match=ids[1]):
        await load_conversation(store, ids[-1], cache=cache, reading=READING)
    with pytest.raises(NotFound, match=ids[1]):
        await load_conversation(store, ids[-2], cache=cache, reading=READING)


async def test_the_cache_keeps_its_newest_entries_only() -> None:
    store = CountingStore()
    cache = HistoryCache(size=2)
    first = await _turn(store, 0, None)
    second = await _turn(store, 1, first)
    third = await _turn(store, 2, second)
    for response_id in (first, second, third):
        await load_conversation(store, response_id, cache=cache, reading=READING)

    store.calls.clear()
    await load_conversation(store, first, cache=cache, reading=READING)
    assert store.calls["load_chain"] == 1  # evicted: read again
    store.calls.clear()
    await load_conversation(store, third, cache=cache, reading=READING)
    assert store.calls["load_chain"] == 0  # still there
