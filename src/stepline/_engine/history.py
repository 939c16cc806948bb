"""The conversations a process read lately, and what one is: the engine's memory of history.

A continuation's earlier conversation is read from the store by
``stepline._run.conversation``; what it reads is kept here, in the engine's
own terms (chat messages and the calls held for approval), so the next turn
of the same conversation reads only its last response. The cache is shared
by every run of a process, like the store; nothing in the loop reads it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

__all__ = ["Conversation", "ConversationRead", "HeldCall", "HistoryCache"]


@dataclass(frozen=True, kw_only=True)
class HeldCall:
    """A tool call the previous response held for the client's approval."""

    call_id: str
    name: str
    arguments: str
    server_label: str
    shown_name: str


@dataclass(frozen=True, kw_only=True)
class Conversation:
    """The messages of earlier responses, and the calls the last one held, by request id."""

    history: list[dict[str, Any]]
    held: dict[str, HeldCall]


@dataclass(frozen=True, kw_only=True)
class ConversationRead:
    """A conversation as read up to one response, and the records it was read from."""

    conversation: Conversation
    records: tuple[str, ...]


class HistoryCache:
    """The conversations of recent responses, by (response id, how items read).

    Only the conversation up to a *terminal* response is kept: its records and
    chains no longer change. An entry is used only after the store confirms
    every record it was read from is still there, so a deleted response is
    never read from memory. Least recently used entries go first; nobody
    mutates a cached list (readers copy what they extend).
    """

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[str, Hashable], ConversationRead] = OrderedDict()

    def get(self, response_id: str, reading: Hashable) -> ConversationRead | None:
        found = self._entries.get((response_id, reading))
        if found is not None:
            self._entries.move_to_end((response_id, reading))
        return found

    def put(self, response_id: str, reading: Hashable, read: ConversationRead) -> None:
        self._entries[(response_id, reading)] = read
        self._entries.move_to_end((response_id, reading))
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
