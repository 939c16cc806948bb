"""The limits a loop runs under, and the stop policies a run can add.

A :class:`LoopPolicy` is fixed when a loop starts and goes to the pure
transition: caps, which tools belong to the client, and what a tool error
does. Stop policies are checked by the loop after every step (a model call,
or a whole fan-out of tool calls) against a :class:`RunState`; they compose
— the first that says stop ends the run — and the reason each returns names
it, so a run says exactly which one fired. A stop policy never interrupts a
step that is running.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from stepline._engine.limits import Strictness

__all__ = [
    "ApprovedCall",
    "LoopPolicy",
    "RunState",
    "StopPolicy",
    "any_of",
    "budget",
    "max_steps",
    "until_no_tool_calls",
    "until_tool_called",
]


@dataclass(frozen=True, kw_only=True)
class ApprovedCall:
    """A held tool call the client approved; the next response runs it first."""

    call_id: str
    name: str
    arguments: str
    approval_request_id: str
    #: what its ``mcp_call`` item shows
    server_label: str
    shown_name: str


@dataclass(frozen=True, kw_only=True)
class LoopPolicy:
    """Caps and the split between tools the server runs and tools the client runs."""

    #: model calls one scope may make before the response ends ``incomplete``
    max_iterations: int = 10
    #: tool calls the server may run for the response (the request's ``max_tool_calls``)
    max_tool_calls: int | None = None
    #: a failed tool step fails the response instead of going back to the model
    fail_on_tool_error: bool = False
    #: tool names whose calls go back to the client as ``function_call`` items
    client_tools: frozenset[str] = frozenset()
    #: ``all``: a fan-out runs to the end; ``fail_fast``: the first failed call
    #: cancels its still-running siblings
    join: Literal["all", "fail_fast"] = "all"
    #: how strictly a transcript is checked before each model call
    validation: Strictness = "lenient"
    #: server tools whose calls wait for the client's approval (``mcp_approval_request``)
    approval_tools: frozenset[str] = frozenset()
    #: approved calls of the previous response, run before the first model call
    approved_calls: tuple[ApprovedCall, ...] = ()
    #: compact before a follow-up model call once the last one's input plus output
    #: tokens reach this (the request's ``context_management``); None: never
    compact_threshold: int | None = None


@dataclass(kw_only=True)
class RunState:
    """What a run has done so far, as stop policies see it (sub-agents included)."""

    model_calls: int = 0
    tool_invocations: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    elapsed: float = 0.0
    tools_called: list[str] = field(default_factory=list)
    #: whether the latest model call asked for tools
    wants_tools: bool = False


class StopPolicy(Protocol):
    def __call__(self, state: RunState) -> str | None:
        """The reason to stop now, naming the policy, or None to go on."""
        ...


def until_no_tool_calls() -> StopPolicy:
    """Stop once a model call asks for no tool (what every loop does anyway)."""

    def check(state: RunState) -> str | None:
        if state.model_calls and not state.wants_tools:
            return "until_no_tool_calls"
        return None

    return check


def max_steps(n: int) -> StopPolicy:
    """Stop after ``n`` model calls (their tool calls are not run)."""

    def check(state: RunState) -> str | None:
        return f"max_steps({n})" if state.model_calls >= n else None

    return check


def until_tool_called(name: str) -> StopPolicy:
    """Stop once the tool ``name`` has run, before the model sees its result."""

    def check(state: RunState) -> str | None:
        return f"until_tool_called({name})" if name in state.tools_called else None

    return check


def budget(
    *,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    tool_invocations: int | None = None,
    seconds: float | None = None,
) -> StopPolicy:
    """Stop once any given budget is reached (checked between steps)."""

    def check(state: RunState) -> str | None:
        if prompt_tokens is not None and state.input_tokens >= prompt_tokens:
            return f"budget(prompt_tokens={prompt_tokens})"
        if completion_tokens is not None and state.output_tokens >= completion_tokens:
            return f"budget(completion_tokens={completion_tokens})"
        if tool_invocations is not None and state.tool_invocations >= tool_invocations:
            return f"budget(tool_invocations={tool_invocations})"
        if seconds is not None and state.elapsed >= seconds:
            return f"budget(seconds={seconds:g})"
        return None

    return check


def any_of(*policies: StopPolicy | Sequence[StopPolicy]) -> StopPolicy:
    """Stop at the first policy that says stop, in the order given."""
    flat: list[Callable[[RunState], str | None]] = []
    for policy in policies:
        if callable(policy):
            flat.append(policy)
        else:
            flat.extend(policy)

    def check(state: RunState) -> str | None:
        for policy in flat:
            reason = policy(state)
            if reason:
                return reason
        return None

    return check
