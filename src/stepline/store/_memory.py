"""MemoryStore: the StepStore in a process's memory, for the library and tests.

It keeps exactly the semantics of :class:`~stepline.store._sql.SqlStore` (the
same test suite runs on both) without durability: everything is lost with the
process, so a crash cannot be resumed elsewhere.

Invariants:

* Every method does its work without awaiting, so each call is atomic with
  respect to other tasks on the event loop, as a transaction is in SQL.
* Payloads are copied through JSON on the way in and out, as SQL stores them:
  a caller mutating a dict later never changes what is stored, values that
  cannot be stored in SQL cannot be stored here either, and tuples come back
  as lists.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import orjson

from stepline._steps import NewStep, Step, StepState
from stepline.errors import StoreError
from stepline.store._base import (
    TERMINAL_STATUSES,
    Appended,
    ConversationItem,
    ConversationRecord,
    EndResult,
    EventRow,
    ResponseEnd,
    ResponseRecord,
    StepEnd,
    new_steps,
    unique_item_ids,
)
from stepline.store._keys import KeyStore, MemoryKeyStore
from stepline.store._listing_values import (
    ResponsePage,
    ResponseQuery,
    ResponseTree,
    summaries_in_memory,
    tree_in_memory,
)
from stepline.store._notify import EventNotifier, EventWatch

__all__ = ["MemoryStore"]


def _json_copy(value: Any) -> Any:
    return None if value is None else orjson.loads(orjson.dumps(value))


def _copy_record(record: ResponseRecord) -> ResponseRecord:
    return dataclasses.replace(
        record, body=_json_copy(record.body), result=_json_copy(record.result)
    )


def _copy_conversation(record: ConversationRecord) -> ConversationRecord:
    return dataclasses.replace(record, metadata=_json_copy(record.metadata))


def _copy_item(item: ConversationItem) -> ConversationItem:
    return dataclasses.replace(item, data=_json_copy(item.data))


def _copy_step(step: Step) -> Step:
    return dataclasses.replace(
        step,
        request=_json_copy(step.request),
        response=_json_copy(step.response),
        error=_json_copy(step.error),
    )


class _EventLog:
    """One response's events, kept sorted by seq."""

    __slots__ = ("rows", "seqs")

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.rows: list[EventRow] = []

    def add(self, row: EventRow) -> None:
        index = bisect.bisect_left(self.seqs, row.seq)
        if index < len(self.seqs) and self.seqs[index] == row.seq:
            return  # the first row of a key is kept
        self.seqs.insert(index, row.seq)
        self.rows.insert(index, row)

    def after(self, seq: int, limit: int) -> list[EventRow]:
        start = bisect.bisect_right(self.seqs, seq)
        return self.rows[start : start + max(limit, 0)]


class MemoryStore:
    """A complete in-memory :class:`~stepline.store._base.StepStore`."""

    def __init__(self) -> None:
        self._notifier = EventNotifier()
        self._responses: dict[str, ResponseRecord] = {}
        #: each response's steps in sequence order
        self._steps: dict[str, list[Step]] = {}
        #: step id -> (response id, index in that response's list)
        self._step_index: dict[str, tuple[str, int]] = {}
        self._events: dict[str, _EventLog] = {}
        self._items: dict[str, list[dict[str, Any]]] = {}
        self._conversations: dict[str, ConversationRecord] = {}
        #: each conversation's items in position order
        self._conversation_items: dict[str, list[ConversationItem]] = {}
        self._keys = MemoryKeyStore()

    @property
    def keys(self) -> KeyStore:
        return self._keys

    # -- responses --

    async def create_response(
        self,
        record: ResponseRecord,
        *,
        steps: Sequence[NewStep] = (),
        events: Sequence[EventRow] = (),
    ) -> list[Step]:
        if record.id in self._responses:
            raise StoreError(f"response {record.id!r} already exists")
        self._responses[record.id] = _copy_record(record)
        self._steps[record.id] = []
        recorded = self._record_steps(record.id, scope=None, steps=steps, start=True)
        if events:
            self._append_rows(events)
        return recorded

    async def get_response(self, response_id: str) -> ResponseRecord | None:
        record = self._responses.get(response_id)
        return None if record is None else _copy_record(record)

    async def list_responses(self, *, limit: int = 20) -> list[ResponseRecord]:
        newest = sorted(self._responses.values(), key=lambda r: (r.created_at, r.id), reverse=True)
        return [_copy_record(record) for record in newest[: max(limit, 0)]]

    async def set_status(self, response_id: str, status: str) -> None:
        if status in TERMINAL_STATUSES:
            raise ValueError(f"{status!r} is terminal: use finish_response")
        record = self._responses.get(response_id)
        if record is not None and record.status not in TERMINAL_STATUSES:
            self._responses[response_id] = dataclasses.replace(record, status=status)

    async def finish_response(
        self,
        response_id: str,
        *,
        status: str,
        result: dict[str, Any],
        completed_at: float | None,
        items: Sequence[dict[str, Any]] = (),
    ) -> bool:
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"{status!r} is not a terminal status")
        record = self._responses.get(response_id)
        if record is None or record.status in TERMINAL_STATUSES:
            return False
        if items:
            self._items[response_id] = [_json_copy(item) for item in items]
        self._responses[response_id] = dataclasses.replace(
            record,
            status=status,
            result=_json_copy(result),
            completed_at=completed_at,
            owner=None,
            lease_expires_at=None,
        )
        if status == "cancelled":
            await self.cancel_steps(response_id)
        return True

    async def find_items(
        self, item_ids: Sequence[str], *, key_id: str | None
    ) -> dict[str, dict[str, Any]]:
        wanted = set(item_ids)
        found: dict[str, dict[str, Any]] = {}
        owned = sorted(
            (r for r in self._responses.values() if r.key_id == key_id and r.id in self._items),
            key=lambda r: r.created_at,
        )
        for record in owned:
            for item in self._items[record.id]:
                if item.get("id") in wanted:
                    found[item["id"]] = _json_copy(item)
        return found

    async def delete_response(self, response_id: str) -> bool:
        self._items.pop(response_id, None)
        self._events.pop(response_id, None)
        if self._responses.pop(response_id, None) is None:
            return False
        for step in self._steps.pop(response_id, []):
            del self._step_index[step.id]
        return True

    # -- steps --

    async def record_steps(
        self, response_id: str, *, scope: str | None, steps: Sequence[NewStep], start: bool = False
    ) -> list[Step]:
        return self._record_steps(response_id, scope=scope, steps=steps, start=start)

    def _record_steps(
        self, response_id: str, *, scope: str | None, steps: Sequence[NewStep], start: bool
    ) -> list[Step]:
        """record_steps, for create_response too (one write, as a subclass counts it)."""
        if not steps:
            return []
        if response_id not in self._responses:
            raise StoreError(f"cannot record steps: no response {response_id!r}")
        chain = self._steps[response_id]
        last_sequence = chain[-1].sequence if chain else 0
        previous_step_id = next((step.id for step in reversed(chain) if step.scope == scope), None)
        recorded = new_steps(
            response_id,
            scope=scope,
            previous_step_id=previous_step_id,
            last_sequence=last_sequence,
            steps=[dataclasses.replace(new, request=_json_copy(new.request)) for new in steps],
            start=start,
        )
        for step in recorded:
            self._step_index[step.id] = (response_id, len(chain))
            chain.append(step)
        return [_copy_step(step) for step in recorded]

    async def start_step(self, step_id: str) -> Step:
        step = self._get_step(step_id)
        if step is None:
            raise StoreError(f"cannot start step {step_id!r}: no such step", step_id=step_id)
        if step.state.terminal:
            raise StoreError(
                f"cannot start step {step_id!r}: it is {step.state.value}", step_id=step_id
            )
        started = dataclasses.replace(
            step,
            state=StepState.PROCESSING,
            attempt=step.attempt + 1,
            started_at=time.time(),
        )
        self._put_step(started)
        return _copy_step(started)

    async def finish_step(
        self,
        step_id: str,
        *,
        state: StepState,
        response: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> Step | None:
        return self._finish_step(step_id, state, response, error, time.time())

    def _finish_step(
        self,
        step_id: str,
        state: StepState,
        response: dict[str, Any] | None,
        error: dict[str, Any] | None,
        now: float,
    ) -> Step | None:
        if not state.terminal:
            raise ValueError(f"finish_step needs a terminal state, not {state.value!r}")
        step = self._get_step(step_id)
        if step is None or step.state is not StepState.PROCESSING:
            return None
        finished = dataclasses.replace(
            step,
            state=state,
            response=_json_copy(response),
            error=_json_copy(error),
            finished_at=now,
        )
        self._put_step(finished)
        return _copy_step(finished)

    async def cancel_steps(self, response_id: str) -> int:
        now = time.time()
        chain = self._steps.get(response_id, [])
        cancelled = 0
        for index, step in enumerate(chain):
            if not step.state.terminal:
                chain[index] = dataclasses.replace(step, state=StepState.CANCELLED, finished_at=now)
                cancelled += 1
        return cancelled

    async def load_chain(self, response_id: str, *, scope: str | None) -> list[Step]:
        return [
            _copy_step(step) for step in self._steps.get(response_id, []) if step.scope == scope
        ]

    async def load_steps(self, response_id: str) -> list[Step]:
        return [_copy_step(step) for step in self._steps.get(response_id, [])]

    def _get_step(self, step_id: str) -> Step | None:
        location = self._step_index.get(step_id)
        if location is None:
            return None
        response_id, index = location
        return self._steps[response_id][index]

    def _put_step(self, step: Step) -> None:
        response_id, index = self._step_index[step.id]
        self._steps[response_id][index] = step

    # -- events --

    async def append_events(
        self,
        rows: Sequence[EventRow],
        *,
        ends: Sequence[StepEnd | ResponseEnd] = (),
        owner: str | None = None,
    ) -> Appended:
        fenced: frozenset[str] = frozenset()
        if owner is not None:
            touched = {row.response_id for row in rows} | {end.response_id for end in ends}
            fenced = frozenset(
                response_id
                for response_id in touched
                if (record := self._responses.get(response_id)) is None or record.owner != owner
            )
        results: list[EndResult] = []
        for end in ends:
            if end.response_id in fenced:
                results.append(None if isinstance(end, StepEnd) else False)
            elif isinstance(end, StepEnd):
                now = time.time() if end.finished_at is None else end.finished_at
                results.append(
                    self._finish_step(end.step_id, end.state, end.response, end.error, now)
                )
            else:
                finished = await self.finish_response(
                    end.response_id,
                    status=end.status,
                    result=end.result,
                    completed_at=end.completed_at,
                    items=end.items,
                )
                if finished and end.conversation_id is not None:
                    self._append_conversation(end.conversation_id, end.conversation_items)
                results.append(finished)
        self._append_rows([row for row in rows if row.response_id not in fenced])
        return Appended(ends=results, fenced=fenced)

    def _append_rows(self, rows: Sequence[EventRow]) -> None:
        for row in rows:
            self._events.setdefault(row.response_id, _EventLog()).add(row)
        self._notifier.notify({row.response_id for row in rows})

    async def stored_ids(self, response_ids: Sequence[str]) -> set[str]:
        return {
            response_id
            for response_id in response_ids
            if (record := self._responses.get(response_id)) is not None and record.store
        }

    def watch_events(self, response_id: str) -> EventWatch:
        return self._notifier.watch(response_id)

    async def read_events(self, response_id: str, *, after: int, limit: int) -> list[EventRow]:
        log = self._events.get(response_id)
        return [] if log is None else log.after(after, limit)

    async def step_events(self, response_id: str, step_id: str) -> list[EventRow]:
        log = self._events.get(response_id)
        return [] if log is None else [row for row in log.rows if row.step_id == step_id]

    async def last_event_seq(self, response_id: str) -> int:
        log = self._events.get(response_id)
        return log.seqs[-1] if log is not None and log.seqs else -1

    # -- leases --

    async def renew_leases(
        self, owner: str, response_ids: Sequence[str], *, expires_at: float
    ) -> set[str]:
        held: set[str] = set()
        for response_id in response_ids:
            record = self._responses.get(response_id)
            if record is None or record.owner != owner or record.status in TERMINAL_STATUSES:
                continue
            self._responses[response_id] = dataclasses.replace(record, lease_expires_at=expires_at)
            held.add(response_id)
        return held

    async def release_lease(self, response_id: str, owner: str) -> None:
        record = self._responses.get(response_id)
        if record is not None and record.owner == owner:
            self._responses[response_id] = dataclasses.replace(
                record, owner=None, lease_expires_at=None
            )

    async def claim_expired(
        self, owner: str, *, now: float, expires_at: float, limit: int
    ) -> list[str]:
        claimable = sorted(
            (
                record
                for record in self._responses.values()
                if record.status not in TERMINAL_STATUSES
                and (record.lease_expires_at is None or record.lease_expires_at < now)
            ),
            key=lambda r: (r.created_at, r.id),
        )[: max(limit, 0)]
        for record in claimable:
            self._responses[record.id] = dataclasses.replace(
                record, owner=owner, lease_expires_at=expires_at
            )
        return [record.id for record in claimable]

    async def close(self) -> None:
        """Nothing to release; the data stays readable until the store is dropped."""

    # -- the console's reads (store/listing.py) --

    async def list_summaries(self, query: ResponseQuery) -> ResponsePage:
        return summaries_in_memory(self._responses.values(), self._steps, query)

    async def response_tree(self, response_id: str) -> ResponseTree | None:
        record = self._responses.get(response_id)
        return tree_in_memory(
            None if record is None else _copy_record(record),
            [_copy_step(step) for step in self._steps.get(response_id, [])],
        )

    # -- conversations --

    async def create_conversation(
        self, record: ConversationRecord, items: Sequence[dict[str, Any]] = ()
    ) -> list[ConversationItem]:
        if record.id in self._conversations:
            raise StoreError(f"conversation {record.id!r} already exists")
        self._conversations[record.id] = _copy_conversation(record)
        self._conversation_items[record.id] = []
        return self._append_conversation(record.id, items) or []

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        record = self._conversations.get(conversation_id)
        return None if record is None else _copy_conversation(record)

    async def update_conversation(
        self, conversation_id: str, *, metadata: dict[str, str]
    ) -> ConversationRecord | None:
        record = self._conversations.get(conversation_id)
        if record is None:
            return None
        record = dataclasses.replace(record, metadata=_json_copy(metadata))
        self._conversations[conversation_id] = record
        return _copy_conversation(record)

    async def delete_conversation(self, conversation_id: str) -> bool:
        self._conversation_items.pop(conversation_id, None)
        return self._conversations.pop(conversation_id, None) is not None

    async def append_conversation_items(
        self, conversation_id: str, items: Sequence[dict[str, Any]]
    ) -> list[ConversationItem] | None:
        return self._append_conversation(conversation_id, items)

    async def list_conversation_items(
        self,
        conversation_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int | None = None,
        descending: bool = False,
    ) -> list[ConversationItem]:
        found = [
            _copy_item(item)
            for item in self._conversation_items.get(conversation_id, [])
            if (after is None or item.position > after)
            and (before is None or item.position < before)
        ]
        if descending:
            found.reverse()
        return found if limit is None else found[: max(limit, 0)]

    async def get_conversation_item(
        self, conversation_id: str, item_id: str
    ) -> ConversationItem | None:
        for item in self._conversation_items.get(conversation_id, []):
            if item.id == item_id:
                return _copy_item(item)
        return None

    async def delete_conversation_item(self, conversation_id: str, item_id: str) -> bool:
        items = self._conversation_items.get(conversation_id, [])
        for index, item in enumerate(items):
            if item.id == item_id:
                del items[index]
                return True
        return False

    def _append_conversation(
        self, conversation_id: str, items: Sequence[dict[str, Any]]
    ) -> list[ConversationItem] | None:
        record = self._conversations.get(conversation_id)
        if record is None:
            return None
        stored = self._conversation_items[conversation_id]
        taken = {item.id for item in stored}
        start = record.next_position
        appended = [
            ConversationItem(position=start + offset, id=item["id"], data=_json_copy(item))
            for offset, item in enumerate(unique_item_ids(items, taken))
        ]
        stored.extend(appended)
        self._conversations[conversation_id] = dataclasses.replace(
            record, next_position=start + len(appended)
        )
        return [_copy_item(item) for item in appended]
