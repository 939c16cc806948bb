"""Helpers of the library suite: scripted agents, comparable event lists, a concurrency gauge.

Every agent here runs on the scripted model in process
(:meth:`ChatModel.scripted`), so a test says exactly what the model answers
and reads back what the model was sent (:meth:`ScriptedModel.requests`).

:func:`shapes` turns a run's events into ``(type, fields)`` tuples with step
ids replaced by ``step-1``, ``step-2``... in order of first appearance, so a
test compares the whole list against the sequence it expects.

:class:`Gauge` measures how many tool bodies run at once without any timing:
each body holds until the test releases it, and :meth:`Gauge.drive` releases
one at a time, only once as many are held as the limit under test allows.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from stepline.agent import ChatModel, RunCompleted, RunEvent, RunStarted
from stepline.scripted import Script, ScriptedModel, ScriptedToolCall, ScriptedUsage, Turn

__all__ = [
    "Gauge",
    "call",
    "model_of",
    "run_alongside",
    "scripted",
    "shapes",
    "step_labels",
    "turn",
]

T = TypeVar("T")


def call(name: str, call_id: str | None = None, **arguments: Any) -> ScriptedToolCall:
    """A scripted tool call of ``name`` with keyword ``arguments``."""
    return ScriptedToolCall(name=name, arguments=arguments, id=call_id)


def turn(
    content: str | None = None,
    *calls: ScriptedToolCall,
    usage: tuple[int, int] | None = None,
) -> Turn:
    """A scripted turn: text, tool calls, and (prompt, completion) usage if given."""
    return Turn(
        content=content,
        tool_calls=calls,
        usage=ScriptedUsage(prompt_tokens=usage[0], completion_tokens=usage[1]) if usage else None,
    )


def scripted(**scripts: Iterable[Turn]) -> ScriptedModel:
    """A scripted model playing each keyword's turns as the model of that name."""
    return ScriptedModel({name: Script(turns=tuple(turns)) for name, turns in scripts.items()})


def model_of(scripted_model: ScriptedModel, name: str) -> ChatModel:
    return ChatModel.scripted(scripted_model, name)


def step_labels(events: Iterable[RunEvent]) -> dict[str, str]:
    """``step-1``, ``step-2``... for each step id, in order of first appearance."""
    labels: dict[str, str] = {}
    for event in events:
        for key in ("step_id", "scope"):
            value = getattr(event, key, None)
            if value is not None and value not in labels:
                labels[value] = f"step-{len(labels) + 1}"
    return labels


def shapes(events: list[RunEvent]) -> list[tuple[str, dict[str, Any]]]:
    """Each event as ``(type, fields)``, step ids normalised.

    ``run_completed`` keeps its response's status and usage only: the rest of
    the response object carries generated ids and timestamps.
    """
    labels = step_labels(events)
    shaped: list[tuple[str, dict[str, Any]]] = []
    for event in events:
        fields = {
            f.name: getattr(event, f.name) for f in dataclasses.fields(event) if f.name != "type"
        }
        for key in ("step_id", "scope"):
            if fields.get(key) is not None:
                fields[key] = labels[fields[key]]
        if isinstance(event, RunStarted):
            # the run's id is generated: checked against run_completed's, then hidden
            completed = [e for e in events if isinstance(e, RunCompleted)]
            assert all(e.response["id"] == event.response_id for e in completed)
            fields["response_id"] = "<run>"
        if isinstance(event, RunCompleted):
            fields["response"] = {
                "status": event.response["status"],
                "usage": event.response["usage"],
            }
        shaped.append((event.type, fields))
    return shaped


class Gauge:
    """Counts tool bodies running at once; each holds until :meth:`drive` releases it."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.entered = 0
        self._held: deque[asyncio.Event] = deque()
        self._released = 0
        self._changed = asyncio.Condition()

    async def hold(self) -> None:
        gate = asyncio.Event()
        async with self._changed:
            self.running += 1
            self.entered += 1
            self.peak = max(self.peak, self.running)
            self._held.append(gate)
            self._changed.notify_all()
        try:
            await gate.wait()
        finally:
            self.running -= 1

    async def drive(self, total: int, width: int) -> None:
        """Release ``total`` bodies one by one, each time once ``width`` (or all left) hold.

        A loop that runs more than ``width`` at once shows it in :attr:`peak`:
        the extra bodies enter before this coroutine wakes up to release one.
        """
        while self._released < total:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: len(self._held) >= min(width, total - self._released)
                )
                self._held.popleft().set()
                self._released += 1


async def run_alongside(run: Awaitable[T], driver: Callable[[], Awaitable[None]]) -> T:
    """Await ``run`` while ``driver`` runs beside it; a run that ends first stops the driver."""
    run_task = asyncio.ensure_future(run)
    driver_task = asyncio.ensure_future(driver())
    try:
        async with asyncio.timeout(10):
            await asyncio.wait({run_task, driver_task}, return_when=asyncio.FIRST_COMPLETED)
            if driver_task.done():
                driver_task.result()  # a driver that failed says why
            return await run_task
    finally:
        for task in (run_task, driver_task):
            task.cancel()
        await asyncio.gather(run_task, driver_task, return_exceptions=True)
