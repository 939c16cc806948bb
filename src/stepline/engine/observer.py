"""What the loop reports as it goes, for metrics and logs; it never changes a run.

The loop calls an observer after each step is recorded and once a response
has its terminal state. Observers are called inline on the loop's task, so
they must be cheap and must not raise; :class:`NullObserver` is the default.
"""

from __future__ import annotations

from typing import Any, Protocol

from stepline.engine.steps import Step

__all__ = ["LoopObserver", "NullObserver"]


class LoopObserver(Protocol):
    def model_call_finished(self, step: Step, *, target: str) -> None:
        """A model call step reached a terminal state; ``target`` names its upstream."""
        ...

    def tool_call_finished(self, step: Step) -> None:
        """A tool call step reached a terminal state."""
        ...

    def response_finished(self, response: dict[str, Any]) -> None:
        """A response reached its terminal state (the response object)."""
        ...


class NullObserver:
    def model_call_finished(self, step: Step, *, target: str) -> None:
        return None

    def tool_call_finished(self, step: Step) -> None:
        return None

    def response_finished(self, response: dict[str, Any]) -> None:
        return None
