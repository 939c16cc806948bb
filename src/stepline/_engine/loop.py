"""The loop of one scope (a response's top level, or a sub-agent): where it does I/O.

Around the pure :func:`~stepline._engine.transition.next_action`, the loop
records the steps it is told to append (in order, before running them), runs
them — one model call (:mod:`stepline._engine.model_call`), or a fan-out of
tool calls (:mod:`stepline._engine.tool_call`) —, stores each outcome
(:meth:`ScopeLoop.end_step`, with the events that announce it), and looks at
the chain again. It never writes to a socket.

Invariants:

* A step is recorded before it runs and its outcome is recorded before the
  loop looks at the chain again; a process that dies between any two lines
  leaves a chain that :func:`~stepline._run.response.run_response`
  resumes from.
* A failing step is recorded as failed and the transition decides what
  follows; only a storage failure aborts the loop (the lease then lets a
  later run resume it).
* A sub-agent is a nested :class:`ScopeLoop` whose steps carry the calling
  step's id as their scope; its model calls emit no events of their own.
* A step's events are durable before its end is stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from stepline._chat.messages import chain_messages, leading_tool_messages
from stepline._engine.creation import Unstored
from stepline._engine.history import HistoryCache
from stepline._engine.limits import Limits
from stepline._engine.model_call import ChatStreamer, run_compaction, run_model_call
from stepline._engine.policies import LoopPolicy, RunState, StopPolicy
from stepline._engine.routes import ModelRoutes
from stepline._engine.run_events import RunEvent
from stepline._engine.run_log import RunLog
from stepline._engine.sealing import Sealing
from stepline._engine.sinks import NullSink, RunSink, StepEnded
from stepline._engine.spec import RunSpec
from stepline._engine.tool_call import run_tool_calls
from stepline._engine.transition import next_action
from stepline._steps import (
    AppendSteps,
    Complete,
    Fail,
    Finish,
    RunSteps,
    Step,
    StepError,
    StepKind,
    StepResult,
    StepState,
)
from stepline._tools.mcp_tools import McpListing, McpTools
from stepline._tools.registry import ServerTool, ToolRegistry
from stepline._upstream.routing import UpstreamTarget
from stepline.store._base import StepEnd, StepStore

__all__ = [
    "Engine",
    "Failure",
    "LoopDrained",
    "Outcome",
    "ScopeLoop",
]

logger = logging.getLogger(__name__)


class LoopDrained(Exception):
    """The process is draining: the loop stopped between steps; the response goes on later.

    Raised by a top-level loop instead of starting new steps once
    :attr:`Engine.draining` is set; the response stays non-terminal and its
    lease is released, so another process (or the next start) resumes it.
    """


@dataclass(kw_only=True)
class Engine:
    """What every loop of a process shares."""

    store: StepStore
    chat: ChatStreamer
    #: which upstream serves a model, and what its route offers
    routes: ModelRoutes
    tools: ToolRegistry
    http: httpx.AsyncClient
    #: seals and opens the ``encrypted_content`` clients carry between turns
    sealer: Sealing
    limits: Limits = field(default_factory=Limits)
    clock: Callable[[], float] = time.time
    #: what watches every run (taps, metrics, traces): typed events, in order
    sink: RunSink = field(default_factory=NullSink)
    #: the server tools a caller (API key id) may use; None means no restriction
    key_tools: Callable[[str | None], frozenset[str] | None] = lambda key_id: None
    #: headers the requests a step sends carry (its trace context), by step id
    step_headers: Callable[[str], Mapping[str, str]] = lambda step_id: {}
    #: set when the process drains: running steps finish, no new step starts
    draining: bool = False
    #: MCP servers: configured sources, and request-level ones
    mcp: McpTools | None = None
    #: server tools offered to every model, beside its route's (``serve --tools``)
    default_tools: tuple[str, ...] = ()
    #: server tools that play hosted tools, by hosted type (``web_search`` -> a tool)
    hosted_tools: Mapping[str, str] = field(default_factory=dict)
    #: how reasoning stream events are named unless a request says
    reasoning_events: Literal["openai", "open_responses"] = "openai"
    #: conversations read lately, so a continuation reads only its last turn
    history: HistoryCache = field(default_factory=HistoryCache)


@dataclass(frozen=True, kw_only=True)
class Failure:
    """Why a run failed, as the engine knows it; the wire words it (``protocol``)."""

    #: the failed step's error code (``model_error``, ``context_length_exceeded``...)
    code: str
    message: str
    #: the upstream's HTTP status, when an upstream answer failed it
    status: int | None = None


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How a scope's loop ended."""

    status: Literal["completed", "failed", "incomplete"]
    #: what ended the run: a policy's name, a cap, or why it completed
    stop_reason: str
    text: str = ""
    failure: Failure | None = None
    incomplete_details: dict[str, Any] | None = None


@dataclass(kw_only=True, slots=True)
class ScopeLoop:
    """The loop of one scope: the top level of a response, or one sub-agent run."""

    engine: Engine
    response_id: str
    scope: str | None
    #: what the scope's request asks of its model calls
    spec: RunSpec
    target: UpstreamTarget
    server_tools: dict[str, ServerTool]
    base_messages: list[dict[str, Any]]
    policy: LoopPolicy
    #: where the response's stream appends what it shows, and when that is stored
    log: RunLog
    #: what watches and shows this run: the engine's sink, and the response's stream
    sink: RunSink
    depth: int = 0
    #: stop policies, checked after every step of this scope
    stops: tuple[StopPolicy, ...] = ()
    #: what the whole run did so far; sub-agents share their parent's
    state: RunState = field(default_factory=RunState)
    #: where in ``base_messages`` the results of approved calls go (right after
    #: the call they answer); None: at the end
    results_at: int | None = None
    #: the MCP servers this response lists on its first model call
    listings: list[McpListing] = field(default_factory=list)
    #: the scope's chain when the caller has just read it (saves reading it again)
    chain: list[Step] | None = None
    #: the server tools the caller's key may use, for sub-agents too; None: any
    key_tools: frozenset[str] | None = None
    #: steps that ended in memory, their ends stored with the response's (see end_step)
    deferred: list[Step] = field(default_factory=list)
    #: the response, while it is not stored yet: the loop stores it with its first
    #: steps (see :mod:`stepline._engine.creation`)
    creating: Unstored | None = None
    #: whether a sub-agent ran here: its steps are in another scope's chain
    ran_sub_agents: bool = field(default=False, init=False)
    #: the scope's steps as last recorded, by id
    recorded: dict[str, Step] = field(default_factory=dict, init=False)
    #: a fail_fast fan-out is cancelling the siblings of a failed call
    failing_fast: bool = field(default=False, init=False)

    # -- the loop ----------------------------------------------------------

    async def run(self) -> Outcome:
        store = self.engine.store
        started = self.engine.clock() - self.state.elapsed
        chain = self.chain
        if chain is None:
            chain = await store.load_chain(self.response_id, scope=self.scope)
        self.recorded = {s.id: s for s in chain}
        while True:
            self.state.elapsed = self.engine.clock() - started
            stop = self._stop_reason()
            if stop is not None:
                return Outcome(
                    status="incomplete",
                    stop_reason=stop,
                    text=self._final_text(),
                    incomplete_details={"reason": stop},
                )
            action = next_action(self.policy, self._ordered())
            if (
                self.scope is None
                and self.engine.draining
                and isinstance(action, AppendSteps | RunSteps)
            ):
                # a sub-agent is part of its running step and finishes with it; the
                # response is stored first, for the process that goes on with it
                await self.store_record()
                raise LoopDrained(self.response_id)
            if isinstance(action, AppendSteps):
                # steps that run at once are recorded started, one write instead of two:
                # a model call, or a fan-out of tool calls within the concurrency limit
                calls = sum(1 for new in action.steps if new.kind is StepKind.TOOL_CALL)
                runs_at_once = calls <= self.engine.limits.tool_concurrency and calls in (
                    0,
                    len(action.steps),
                )
                if self.creating is not None and not self.creating.done and runs_at_once:
                    recorded = await self.creating.store(store, action.steps)
                else:
                    await self.store_record()
                    recorded = await store.record_steps(
                        self.response_id, scope=self.scope, steps=action.steps, start=runs_at_once
                    )
                self.recorded.update((step.id, step) for step in recorded)
                await self._run_steps(recorded, started=runs_at_once)
            elif isinstance(action, RunSteps):
                await self._run_steps(action.steps)
            elif isinstance(action, Complete):
                reason = "client_tool_calls" if action.client_call_ids else "until_no_tool_calls"
                return Outcome(status="completed", stop_reason=reason, text=self._final_text())
            elif isinstance(action, Finish):
                return Outcome(
                    status="incomplete",
                    stop_reason=action.reason,
                    text=self._final_text(),
                    incomplete_details={"reason": action.reason},
                )
            else:
                assert isinstance(action, Fail)
                return Outcome(
                    status="failed",
                    stop_reason="error",
                    failure=Failure(
                        code=action.code,
                        message=action.message,
                        status=action.details.get("status"),
                    ),
                )

    def _stop_reason(self) -> str | None:
        """The first stop policy that fires, once a step has run since the last check."""
        if not self.stops or not any(s.state.terminal for s in self.recorded.values()):
            return None
        for policy in self.stops:
            reason = policy(self.state)
            if reason:
                return reason
        return None

    async def store_record(self) -> None:
        """Store the response if it is not stored yet (see ``creating``)."""
        if self.creating is not None and not self.creating.done:
            await self.creating.store(self.engine.store)

    def tap(self, event: RunEvent) -> None:
        if self.sink.run_events:
            self.sink.emit(event)

    def _ordered(self) -> list[Step]:
        return sorted(self.recorded.values(), key=lambda step: step.sequence)

    def steps(self) -> list[Step] | None:
        """Every step of the response as the store has it (deferred ends included),
        when this scope's chain is all of them: a top level whose run recorded every
        step and ran no sub-agent. None: read them from the store."""
        if self.scope is not None or self.ran_sub_agents or self.chain != []:
            return None
        return self._ordered()

    def _final_text(self) -> str:
        for step in reversed(self._ordered()):
            if step.kind is StepKind.MODEL_CALL and step.response is not None:
                return str(step.response["message"].get("content") or "")
        return ""

    async def _run_steps(self, steps: Sequence[Step], *, started: bool = False) -> None:
        """Run recorded steps; ``started``: they were just recorded already processing."""
        model_calls = [step for step in steps if step.kind is not StepKind.TOOL_CALL]
        tool_calls = [step for step in steps if step.kind is StepKind.TOOL_CALL]
        for step in model_calls:
            if step.kind is StepKind.COMPACTION:
                await self.record(await run_compaction(self, step, started=started))
                continue
            done = await run_model_call(self, step, started=started)
            if done is not None:
                self.sink.emit(StepEnded(step=done, target=self.target.name))
            await self.record(done)
        if tool_calls:
            await run_tool_calls(self, tool_calls, started=started)

    async def record(self, step: Step | None) -> None:
        if step is None:
            # the guarded finish found the step no longer processing: re-read the truth
            chain = await self.engine.store.load_chain(self.response_id, scope=self.scope)
            self.recorded = {s.id: s for s in chain}
        else:
            self.recorded[step.id] = step

    async def end_step(
        self,
        step: Step,
        state: StepState,
        *,
        result: StepResult | None = None,
        failure: StepError | None = None,
    ) -> Step | None:
        """Store a step's end: its typed result or error, as the store keeps them (JSON),
        with what the run's stream attached to the step."""
        shown = self.log.attached(step.id)
        response = None if result is None else {**result.payload(), **shown}
        error = None if failure is None else failure.payload()
        if self.log.sends:
            # the end is stored in one transaction with the events held since hold():
            # a client is told of an outcome exactly when the store has it
            # stamped as the store stamps a step's start: the wall clock, not the run's
            ended = dataclasses.replace(
                step, state=state, response=response, error=error, finished_at=time.time()
            )
            end = StepEnd(
                response_id=self.response_id,
                step_id=step.id,
                state=state,
                response=response,
                error=error,
                finished_at=ended.finished_at,
            )
            if self._ends_the_run(ended):
                # the run ends here: this end is stored with the response's, in the one
                # transaction that stores the result (a crash before it runs the step
                # again, and no client was told of its outcome)
                self.log.defer(end)
                self.deferred.append(ended)
                return ended
            # a write that started completes even if the loop is cancelled meanwhile
            stored = await asyncio.shield(self.log.commit(end))
            assert stored is None or isinstance(stored, Step)
            return stored
        # without a log's commit: the step's events are stored before its end is, so a
        # resumed run never misses the events of a step it will not run again
        await self.log.durable()
        return await asyncio.shield(
            self.engine.store.finish_step(step.id, state=state, response=response, error=error)
        )

    def _ends_the_run(self, ended: Step) -> bool:
        """Whether the top-level run ends right after ``ended``, a model call: the
        transition, given the chain with it, completes, finishes or fails."""
        if self.scope is not None or ended.kind is not StepKind.MODEL_CALL:
            return False
        chain = sorted({**self.recorded, ended.id: ended}.values(), key=lambda s: s.sequence)
        return isinstance(next_action(self.policy, chain), Complete | Finish | Fail)

    def messages_before(self, step: Step) -> list[dict[str, Any]]:
        """The conversation a step of this scope continues: everything recorded before it."""
        chain = [s for s in self._ordered() if s.sequence < step.sequence]
        at = len(self.base_messages) if self.results_at is None else self.results_at
        return [
            *self.base_messages[:at],
            *leading_tool_messages(chain),
            *self.base_messages[at:],
            *chain_messages(chain),
        ]

    def nested(
        self,
        *,
        scope: str,
        spec: RunSpec,
        target: UpstreamTarget,
        server_tools: dict[str, ServerTool],
        base_messages: list[dict[str, Any]],
        policy: LoopPolicy,
    ) -> ScopeLoop:
        """A sub-agent's loop inside this one: its steps carry ``scope`` (the calling
        step's id); it shares this run's state and caller's key, and shows no events."""
        self.ran_sub_agents = True
        return ScopeLoop(
            engine=self.engine,
            response_id=self.response_id,
            scope=scope,
            spec=spec,
            target=target,
            server_tools=server_tools,
            key_tools=self.key_tools,
            base_messages=base_messages,
            policy=policy,
            log=self.log.nested(),
            sink=self.sink,
            depth=self.depth + 1,
            state=self.state,
        )
