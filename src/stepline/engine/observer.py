"""What the loop reports as it goes, for metrics, logs and traces; it never changes a run.

The loop calls an observer when a response's run begins, when each step
starts and after it is recorded finished, and once a response has its
terminal state. Observers are called inline on the loop's task (a tool
call's on its own task), so they must be cheap and must not raise; nothing
is reported per streamed delta. :class:`NullObserver` is the default, and
:class:`Observers` calls several in order.

A start is not always followed by its finish: a run that stops (drain, lost
lease, cancellation) leaves its running steps unreported; and a model call
refused before it reached the upstream finishes without a start.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from stepline.engine.steps import Step
from stepline.store.base import ResponseRecord
from stepline.upstream.routing import UpstreamTarget

__all__ = ["LoopObserver", "NullObserver", "Observers"]


class LoopObserver(Protocol):
    def response_started(self, record: ResponseRecord, *, resumed: bool) -> None:
        """A response's run began in this process; ``resumed``: an earlier run stopped."""
        ...

    def model_call_started(
        self, step: Step, *, target: UpstreamTarget, payload: Mapping[str, Any]
    ) -> None:
        """A model call is about to be sent to ``target`` with this Chat Completions body."""
        ...

    def model_call_finished(self, step: Step, *, target: str) -> None:
        """A model call step reached a terminal state; ``target`` names its upstream."""
        ...

    def tool_call_started(self, step: Step) -> None:
        """A tool call step started running."""
        ...

    def tool_call_finished(self, step: Step) -> None:
        """A tool call step reached a terminal state."""
        ...

    def response_finished(self, response: dict[str, Any]) -> None:
        """A response reached its terminal state (the response object)."""
        ...


class NullObserver:
    def response_started(self, record: ResponseRecord, *, resumed: bool) -> None:
        return None

    def model_call_started(
        self, step: Step, *, target: UpstreamTarget, payload: Mapping[str, Any]
    ) -> None:
        return None

    def model_call_finished(self, step: Step, *, target: str) -> None:
        return None

    def tool_call_started(self, step: Step) -> None:
        return None

    def tool_call_finished(self, step: Step) -> None:
        return None

    def response_finished(self, response: dict[str, Any]) -> None:
        return None


class Observers:
    """Several observers as one, each told in the order given."""

    def __init__(self, *observers: LoopObserver) -> None:
        self.observers = observers

    def response_started(self, record: ResponseRecord, *, resumed: bool) -> None:
        for observer in self.observers:
            observer.response_started(record, resumed=resumed)

    def model_call_started(
        self, step: Step, *, target: UpstreamTarget, payload: Mapping[str, Any]
    ) -> None:
        for observer in self.observers:
            observer.model_call_started(step, target=target, payload=payload)

    def model_call_finished(self, step: Step, *, target: str) -> None:
        for observer in self.observers:
            observer.model_call_finished(step, target=target)

    def tool_call_started(self, step: Step) -> None:
        for observer in self.observers:
            observer.tool_call_started(step)

    def tool_call_finished(self, step: Step) -> None:
        for observer in self.observers:
            observer.tool_call_finished(step)

    def response_finished(self, response: dict[str, Any]) -> None:
        for observer in self.observers:
            observer.response_finished(response)
