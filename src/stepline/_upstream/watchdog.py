"""A single lazily re-armed timer that bounds each network wait of one call.

Used by the upstream client's read loop: each wait for the upstream gets its
own deadline, and no timeout scope ever spans a ``yield`` to the consumer.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

__all__ = ["Watchdog"]


class Watchdog:
    """Bounds each network wait of one call with a single lazily re-armed timer.

    An ``asyncio.timeout`` scope per read costs a timer handle per chunk; here
    arming is a few attribute writes, and the timer only fires (and moves
    itself forward) about once per deadline period. It cancels the task only
    while it is ``armed``, i.e. suspended in a network read, so the
    cancellation always lands inside that read and never in the consumer's
    code between chunks.
    """

    __slots__ = (
        "_cancelling",
        "_deadline",
        "_expired",
        "_handle",
        "_loop",
        "_task",
        "_when",
        "armed",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._when = math.inf
        self._deadline = math.inf
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._expired = False
        self.armed = False

    def arm(self, deadline: float) -> None:
        """Allow the next wait to last until ``deadline`` (loop time)."""
        self._deadline = deadline
        self._task = task = asyncio.current_task()
        self._cancelling = task.cancelling() if task is not None else 0
        self.armed = True
        if deadline < self._when:
            if self._handle is not None:
                self._handle.cancel()
            self._when = deadline
            self._handle = self._loop.call_at(deadline, self._fire)

    def disarm(self) -> bool:
        """End the wait; True when it was this watchdog that cancelled it."""
        self.armed = False
        if not self._expired:
            return False
        self._expired = False
        # A cancellation from outside that arrived as well still wins.
        return self._task is not None and self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        scheduled, self._when = self._when, math.inf
        if not self.armed:
            return  # between waits; the next arm() schedules the timer again
        if self._deadline > scheduled:  # the deadline moved on since we were scheduled
            self._when = self._deadline
            self._handle = self._loop.call_at(self._deadline, self._fire)
            return
        if self._task is not None:
            self._expired = True
            self._task.cancel()
