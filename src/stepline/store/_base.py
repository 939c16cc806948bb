"""The store interface: the durable truth about responses, steps and events.

Everything a process needs to continue a response another process started is
behind this Protocol: the original request body, every step with its payloads,
the event log, and the lease that says which process runs the loop. The API
keys stored with them sit behind a protocol of their own,
:class:`~stepline.store._keys.KeyStore`, which a store gives as ``keys``.

Invariants every implementation keeps:

* ``record_steps`` allocates ``sequence`` atomically, in the order given, and
  sets each new step's ``previous_step_id`` to the last step of that scope
  recorded before the call (siblings of one fan-out share it).
* ``start_step`` and ``finish_step`` are guarded state transitions:
  ``finish_step`` only changes a step that is ``processing``, so a late
  writer can never overwrite a terminal step.
* ``finish_response`` only changes a response whose status is not terminal.
* Event rows are keyed by (response_id, seq); appending the same key twice
  keeps the first.
* ``append_events`` with ``ends`` commits the rows and those step and
  response ends in one transaction: an event that announces an outcome is
  never durable without it (what a client was told is what the store says).
* ``append_events`` with an ``owner`` is fenced by the lease: the rows and
  ends of a response that ``owner`` does not hold (another process claimed
  it) are not stored, in the same transaction that stores the others, so a
  process that lost a response can never write into its new owner's log.
* A lease is held by one owner until it expires; ``claim_expired`` hands each
  expired lease to exactly one caller.
* Times are POSIX seconds (float).
* A conversation's items have positions that only grow and are never
  reused; one append (``append_conversation_items``, or a ``ResponseEnd``
  with a ``conversation_id``, in the transaction that finishes the response)
  takes a contiguous run of them, so appends never interleave. Item ids are
  unique within a conversation (:func:`unique_item_ids`).
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from stepline._steps import NewStep, Step, StepState
from stepline.store._notify import EventWatch

if TYPE_CHECKING:  # listing.py builds on this module's types
    from stepline.store._keys import KeyStore
    from stepline.store._listing_values import ResponsePage, ResponseQuery, ResponseTree

__all__ = [
    "TERMINAL_STATUSES",
    "Appended",
    "ConversationItem",
    "ConversationRecord",
    "EndResult",
    "EventRow",
    "ResponseEnd",
    "ResponseRecord",
    "StepEnd",
    "StepStore",
    "new_steps",
    "unique_item_ids",
]

#: response statuses after which nothing changes
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "incomplete"})


@dataclass(frozen=True, kw_only=True)
class ResponseRecord:
    """One response as stored: its request, its state, its lease and its result."""

    id: str
    created_at: float
    status: str
    model: str
    body: dict[str, Any]
    previous_response_id: str | None = None
    store: bool = True
    background: bool = False
    owner: str | None = None
    lease_expires_at: float | None = None
    result: dict[str, Any] | None = None
    completed_at: float | None = None
    key_id: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class EventRow:
    """One event of a response's log; ``data`` is the event's JSON, encoded once."""

    response_id: str
    seq: int
    data: bytes
    step_id: str | None = None


def new_steps(
    response_id: str,
    *,
    scope: str | None,
    previous_step_id: str | None,
    last_sequence: int,
    steps: Sequence[NewStep],
    start: bool,
) -> list[Step]:
    """The steps ``record_steps`` inserts: fresh ids, the next sequences, one time."""
    now = time.time()
    return [
        Step(
            id=f"step_{uuid.uuid4().hex}",
            response_id=response_id,
            scope=scope,
            previous_step_id=previous_step_id,
            sequence=last_sequence + offset,
            kind=new.kind,
            state=StepState.PROCESSING if start else StepState.PENDING,
            request=new.request,
            call_id=new.call_id,
            attempt=1 if start else 0,
            created_at=now,
            started_at=now if start else None,
        )
        for offset, new in enumerate(steps, start=1)
    ]


@dataclass(frozen=True, kw_only=True)
class StepEnd:
    """A step's terminal state, stored with the events that announce it."""

    response_id: str
    step_id: str
    state: StepState
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    #: when the step ended (its ``finished_at``); None: when the end is stored
    finished_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class ResponseEnd:
    """A response's terminal status and result, stored with its terminal event."""

    response_id: str
    status: str
    result: dict[str, Any]
    completed_at: float | None
    #: its input and output items, kept for ``item_reference``
    items: Sequence[dict[str, Any]] = ()
    #: the conversation that gets ``conversation_items`` appended when the
    #: response is finished here (not when it was already terminal)
    conversation_id: str | None = None
    conversation_items: Sequence[dict[str, Any]] = ()


#: what ``append_events`` returns per end: the finished step (None when it was no
#: longer processing), or whether the response was finished (False: already terminal)
EndResult = Step | bool | None


@dataclass(frozen=True, kw_only=True)
class Appended:
    """What one ``append_events`` stored: each end's result, in order, and the
    responses it refused because the writer no longer holds their lease (their
    ends' results are None or False, as for an end that came too late)."""

    ends: list[EndResult]
    fenced: frozenset[str] = frozenset()


class StepStore(Protocol):
    """Durable storage for responses, their step chains, event logs and leases."""

    async def create_response(
        self,
        record: ResponseRecord,
        *,
        steps: Sequence[NewStep] = (),
        events: Sequence[EventRow] = (),
    ) -> list[Step]:
        """Store a new response; a second one with its id is a StoreError.

        ``steps``: its first steps, recorded in the same write already
        ``processing`` (attempt 1), as :meth:`record_steps` with ``start=True``
        would, and returned: a run that starts at once costs one write, not two.
        ``events``: its first event rows, stored in the same write (as
        :meth:`append_events` would, without a fence: the response is new).
        """
        ...

    async def get_response(self, response_id: str) -> ResponseRecord | None: ...

    async def list_responses(self, *, limit: int = 20) -> list[ResponseRecord]: ...

    async def set_status(self, response_id: str, status: str) -> None:
        """Move a non-terminal response to another non-terminal status."""
        ...

    async def finish_response(
        self,
        response_id: str,
        *,
        status: str,
        result: dict[str, Any],
        completed_at: float | None,
        items: Sequence[dict[str, Any]] = (),
    ) -> bool:
        """Store the terminal status and result; False if it was already terminal.

        ``items`` (the response's input and output items) are stored with it, in
        the same transaction, for :meth:`find_items`. A response finished
        ``cancelled`` has its live steps cancelled in that transaction too."""
        ...

    async def find_items(
        self, item_ids: Sequence[str], *, key_id: str | None
    ) -> dict[str, dict[str, Any]]:
        """Stored items by id, from responses owned by ``key_id`` (newest response wins)."""
        ...

    async def delete_response(self, response_id: str) -> bool:
        """Delete the response with its steps and events; False if it did not exist."""
        ...

    async def record_steps(
        self, response_id: str, *, scope: str | None, steps: Sequence[NewStep], start: bool = False
    ) -> list[Step]:
        """Insert ``steps`` as ``pending`` with fresh ids and sequences, in order.

        ``start=True`` records them already ``processing`` (attempt 1), as
        :meth:`start_step` would: one write instead of two for a step that
        runs at once.
        """
        ...

    async def start_step(self, step_id: str) -> Step:
        """Mark a non-terminal step ``processing``, add one attempt, stamp started_at."""
        ...

    async def finish_step(
        self,
        step_id: str,
        *,
        state: StepState,
        response: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> Step | None:
        """Move a ``processing`` step to a terminal state; None if it was not processing."""
        ...

    async def cancel_steps(self, response_id: str) -> int:
        """Mark every non-terminal step of the response ``cancelled``; return how many."""
        ...

    async def load_chain(self, response_id: str, *, scope: str | None) -> list[Step]:
        """The steps of one scope, ordered by sequence."""
        ...

    async def load_steps(self, response_id: str) -> list[Step]:
        """Every step of the response, all scopes, ordered by sequence."""
        ...

    async def append_events(
        self,
        rows: Sequence[EventRow],
        *,
        ends: Sequence[StepEnd | ResponseEnd] = (),
        owner: str | None = None,
    ) -> Appended:
        """Persist rows (of any responses) and ``ends`` in one transaction; with an
        ``owner``, only those of the responses it holds the lease of."""
        ...

    async def stored_ids(self, response_ids: Sequence[str]) -> set[str]:
        """Which of these responses exist with ``store`` on (one query)."""
        ...

    async def read_events(self, response_id: str, *, after: int, limit: int) -> list[EventRow]:
        """Rows with ``seq > after``, ascending, at most ``limit``."""
        ...

    async def step_events(self, response_id: str, step_id: str) -> list[EventRow]:
        """The rows a step emitted, ascending (used to resume an interrupted step)."""
        ...

    async def last_event_seq(self, response_id: str) -> int:
        """The highest stored ``seq`` of the response, or -1."""
        ...

    def watch_events(self, response_id: str) -> EventWatch:
        """Register interest in new events of a response, before reading them.

        The watch wakes when events of the response are committed by this
        process, or by any process where the backend carries notifications
        (PostgreSQL); its ``wait`` also ends after a timeout.
        """
        ...

    async def renew_leases(
        self, owner: str, response_ids: Sequence[str], *, expires_at: float
    ) -> set[str]:
        """Extend the leases ``owner`` holds; return the ids it still holds."""
        ...

    async def release_lease(self, response_id: str, owner: str) -> None: ...

    async def claim_expired(
        self, owner: str, *, now: float, expires_at: float, limit: int
    ) -> list[str]:
        """Take over non-terminal responses whose lease expired before ``now``."""
        ...

    async def list_summaries(self, query: ResponseQuery) -> ResponsePage:
        """One page of responses across every key, newest first (the console's list)."""
        ...

    async def response_tree(self, response_id: str) -> ResponseTree | None:
        """A response's summary, request body and every step (the console's tree)."""
        ...

    async def close(self) -> None: ...

    # -- API keys --

    @property
    def keys(self) -> KeyStore:
        """The API keys stored with the responses (``stepline keys create``)."""
        ...

    # -- conversations --

    async def create_conversation(
        self, record: ConversationRecord, items: Sequence[dict[str, Any]] = ()
    ) -> list[ConversationItem]:
        """Store a new conversation with its first items; return them as stored."""
        ...

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None: ...

    async def update_conversation(
        self, conversation_id: str, *, metadata: dict[str, str]
    ) -> ConversationRecord | None:
        """Replace the metadata; None if there is no such conversation."""
        ...

    async def delete_conversation(self, conversation_id: str) -> bool:
        """Delete the conversation and its items; False if it did not exist."""
        ...

    async def append_conversation_items(
        self, conversation_id: str, items: Sequence[dict[str, Any]]
    ) -> list[ConversationItem] | None:
        """Append ``items`` at the end, contiguously; None if there is no such conversation."""
        ...

    async def list_conversation_items(
        self,
        conversation_id: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int | None = None,
        descending: bool = False,
    ) -> list[ConversationItem]:
        """Items whose positions lie strictly between ``after`` and ``before`` (each
        bound optional), in position order (``descending``: newest first), at most
        ``limit``."""
        ...

    async def get_conversation_item(
        self, conversation_id: str, item_id: str
    ) -> ConversationItem | None: ...

    async def delete_conversation_item(self, conversation_id: str, item_id: str) -> bool:
        """Delete one item; False if the conversation has no item with that id."""
        ...


@dataclass(frozen=True, kw_only=True)
class ConversationRecord:
    """A conversation as stored: the key that owns it, its metadata, its next position."""

    id: str
    created_at: float
    metadata: dict[str, str]
    key_id: str | None = None
    #: the position the next appended item takes
    next_position: int = 0


@dataclass(frozen=True, kw_only=True)
class ConversationItem:
    """One item of a conversation: its place, its id and the item itself."""

    position: int
    id: str
    data: dict[str, Any]


def unique_item_ids(
    items: Sequence[dict[str, Any]], taken: Collection[str]
) -> list[dict[str, Any]]:
    """``items`` with ids unique among themselves and against ``taken``: an item whose
    id is taken, or that has none, gets a fresh id with the same prefix (``msg_``)."""
    seen = set(taken)
    unique: list[dict[str, Any]] = []
    for item in items:
        item_id = item.get("id")
        if not isinstance(item_id, str) or not item_id or item_id in seen:
            prefix = item_id.split("_", 1)[0] if isinstance(item_id, str) and item_id else "item"
            item = {**item, "id": f"{prefix}_{secrets.token_hex(16)}"}
        seen.add(item["id"])
        unique.append(item)
    return unique
