"""The loop of one scope (a response's top level, or a sub-agent): where it does I/O.

Around the pure :func:`~stepline.engine.transition.next_action`, the loop
records the steps it is told to append (in order, before running them), runs
them — one model call, or a fan-out of tool calls in a task group bounded by
``tool_concurrency`` —, records each outcome, and appends every event to the
response's log. It never writes to a socket.

Invariants:

* A step is recorded before it runs and its outcome is recorded before the
  loop looks at the chain again; a process that dies between any two lines
  leaves a chain that :func:`~stepline.run.response.run_response`
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
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

import httpx
import orjson

from stepline.chat.body import chat_body
from stepline.chat.messages import chain_messages, leading_tool_messages
from stepline.chat.stream import ChatStreamAccumulator, DeltaSink
from stepline.engine.compaction import (
    CONTEXT_OVERFLOW,
    fit_context,
    is_context_overflow,
    summarise,
)
from stepline.engine.history import HistoryCache
from stepline.engine.limits import Limits
from stepline.engine.policies import LoopPolicy, RunState, StopPolicy
from stepline.engine.routes import ModelRoutes
from stepline.engine.run_events import (
    RunEvent,
    StepCompleted,
    StepStarted,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
    UsageDelta,
)
from stepline.engine.sealing import Sealing
from stepline.engine.sinks import (
    ModelCallSending,
    NullSink,
    RunSink,
    StepEnded,
    ToolCallRunning,
)
from stepline.engine.spec import RunSpec
from stepline.engine.transition import next_action
from stepline.engine.validate import conversation_problem
from stepline.engine.view import CLIENT, SERVER, ResponseView, ToolShown, ToolView
from stepline.errors import StoreError, ToolError, UpstreamError
from stepline.steps import (
    AppendSteps,
    CompactionResult,
    Complete,
    Fail,
    Finish,
    ModelCallResult,
    RunSteps,
    Step,
    StepError,
    StepKind,
    StepResult,
    StepState,
    ToolCallResult,
)
from stepline.store.base import StepEnd, StepStore
from stepline.tools.http import truncate_output
from stepline.tools.mcp_tools import McpListing, McpTools
from stepline.tools.registry import AgentSpec, ServerTool, ToolCallContext, ToolRegistry
from stepline.upstream.routing import UpstreamTarget

__all__ = [
    "ChatStreamer",
    "Engine",
    "Failure",
    "LoopDrained",
    "Outcome",
    "ScopeLoop",
]

logger = logging.getLogger(__name__)

#: the longest a model call relays chunks without letting other tasks run
_YIELD_SECONDS = 0.001


class ChatStreamer(Protocol):
    """The upstream seam: yields Chat Completions chunk dicts for one model call."""

    def stream(
        self, target: UpstreamTarget, payload: dict[str, Any], *, step_id: str
    ) -> AsyncIterator[dict[str, Any]]: ...


def _ended(state: StepState) -> Literal["completed", "failed", "cancelled"]:
    assert state.terminal
    return cast(Literal["completed", "failed", "cancelled"], state.value)


class _SiblingFailed(Exception):
    """A fail_fast fan-out: a tool call failed, so the task group cancels its siblings."""


class _ReportedText:
    """A delta sink that also reports text deltas to the run's sink (when one asks)."""

    def __init__(
        self,
        sink: DeltaSink,
        report: RunSink,
        *,
        step_id: str,
        scope: str | None,
    ) -> None:
        self._sink = sink
        self._report = report
        self._step_id = step_id
        self._scope = scope

    def on_reasoning(self, text: str) -> None:
        self._sink.on_reasoning(text)

    def on_text(self, text: str) -> None:
        self._sink.on_text(text)
        self._report.emit(TextDelta(step_id=self._step_id, scope=self._scope, text=text))

    def on_tool_call(self, index: int, call_id: str, name: str) -> None:
        self._sink.on_tool_call(index, call_id, name)

    def on_tool_arguments(self, index: int, text: str) -> None:
        self._sink.on_tool_arguments(index, text)

    def on_logprobs(self, entries: list[dict[str, Any]]) -> None:
        self._sink.on_logprobs(entries)


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


@dataclass(kw_only=True)
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
    #: what the response shows of this scope: its events and output items
    view: ResponseView
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
    #: steps that ended in memory, their ends stored with the response's (see _finish)
    deferred: list[Step] = field(default_factory=list)
    _chain: dict[str, Step] = field(default_factory=dict)
    _failing_fast: bool = False

    # -- the loop ----------------------------------------------------------

    async def run(self) -> Outcome:
        store = self.engine.store
        started = self.engine.clock() - self.state.elapsed
        chain = self.chain
        if chain is None:
            chain = await store.load_chain(self.response_id, scope=self.scope)
        self._chain = {s.id: s for s in chain}
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
                # a sub-agent is part of its running step and finishes with it
                raise LoopDrained(self.response_id)
            if isinstance(action, AppendSteps):
                # a model call runs at once: record it started, one write instead of two
                runs_at_once = all(new.kind is not StepKind.TOOL_CALL for new in action.steps)
                recorded = await store.record_steps(
                    self.response_id, scope=self.scope, steps=action.steps, start=runs_at_once
                )
                self._chain.update((step.id, step) for step in recorded)
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
        if not self.stops or not any(s.state.terminal for s in self._chain.values()):
            return None
        for policy in self.stops:
            reason = policy(self.state)
            if reason:
                return reason
        return None

    def _tap(self, event: RunEvent) -> None:
        if self.engine.sink.run_events:
            self.engine.sink.emit(event)

    def _ordered(self) -> list[Step]:
        return sorted(self._chain.values(), key=lambda step: step.sequence)

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
                await self._record(await self._run_compaction(step, started=started))
                continue
            done = await self._run_model_call(step, started=started)
            if done is not None:
                self.engine.sink.emit(StepEnded(step=done, target=self.target.name))
            await self._record(done)
        if not tool_calls:
            return
        limit = asyncio.Semaphore(self.engine.limits.tool_concurrency)
        fail_fast = self.policy.join == "fail_fast"

        async def bounded(step: Step) -> None:
            async with limit:
                done = await self._run_tool_call(step)
                if done is not None:
                    self.engine.sink.emit(StepEnded(step=done))
                await self._record(done)
            if fail_fast and done is not None and done.state is StepState.FAILED:
                self._failing_fast = True
                raise _SiblingFailed(step.id)

        self._failing_fast = False
        try:
            async with asyncio.TaskGroup() as group:
                for step in tool_calls:
                    group.create_task(bounded(step))
        except ExceptionGroup as failed:
            # fail_fast: the group cancelled the siblings, which recorded it
            errors = [e for e in failed.exceptions if not isinstance(e, _SiblingFailed)]
            # a sibling's storage failure must stay a storage failure for run_response
            for error in errors:
                if isinstance(error, StoreError):
                    raise error from failed
            if errors:
                raise

    async def _record(self, step: Step | None) -> None:
        if step is None:
            # the guarded finish found the step no longer processing: re-read the truth
            chain = await self.engine.store.load_chain(self.response_id, scope=self.scope)
            self._chain = {s.id: s for s in chain}
        else:
            self._chain[step.id] = step

    async def _finish(
        self,
        step: Step,
        state: StepState,
        *,
        result: StepResult | None = None,
        failure: StepError | None = None,
    ) -> Step | None:
        """Store a step's end: its typed result or error, as the store keeps them (JSON)."""
        response = None if result is None else result.payload()
        error = None if failure is None else failure.payload()
        if self.view.commits:
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
                self.view.defer(end)
                self.deferred.append(ended)
                return ended
            # a write that started completes even if the loop is cancelled meanwhile
            stored = await asyncio.shield(self.view.commit(end))
            assert stored is None or isinstance(stored, Step)
            return stored
        # without a log's commit: the step's events are stored before its end is, so a
        # resumed run never misses the events of a step it will not run again
        await self.view.durable()
        return await asyncio.shield(
            self.engine.store.finish_step(step.id, state=state, response=response, error=error)
        )

    def _ends_the_run(self, ended: Step) -> bool:
        """Whether the top-level run ends right after ``ended``, a model call: the
        transition, given the chain with it, completes, finishes or fails."""
        if self.scope is not None or ended.kind is not StepKind.MODEL_CALL:
            return False
        chain = sorted({**self._chain, ended.id: ended}.values(), key=lambda s: s.sequence)
        return isinstance(next_action(self.policy, chain), Complete | Finish | Fail)

    # -- model calls -------------------------------------------------------

    def _describe(self, name: str) -> ToolView:
        if name in self.policy.client_tools:
            return CLIENT
        tool = self.server_tools.get(name)
        if tool is None:
            return SERVER
        kind: Literal["server", "approval"] = (
            "approval" if name in self.policy.approval_tools else "server"
        )
        return ToolView(
            kind=kind, label=tool.label, shown_name=tool.display_name, hosted=tool.hosted
        )

    def _listed(self, listing: McpListing) -> list[dict[str, Any]]:
        """A listing's tools as an ``mcp_list_tools`` item shows them."""
        allowed = self.spec.allowed_tools
        return [
            {
                "name": tool.display_name or name,
                "description": tool.description,
                "input_schema": tool.parameters,
                "annotations": None,
            }
            for name, tool in listing.tools.items()
            if allowed is None or name in allowed
        ]

    def _tool_definitions(self, allowed: frozenset[str] | None) -> list[dict[str, Any]]:
        server = [
            tool.chat_definition()
            for name, tool in self.server_tools.items()
            if allowed is None or name in allowed
        ]
        return [*server, *self.spec.client_definitions]

    async def _run_model_call(self, step: Step, *, started: bool = False) -> Step | None:
        if not started:
            step = await self.engine.store.start_step(step.id)
        self._tap(
            StepStarted(step_id=step.id, kind="model_call", scope=self.scope, attempt=step.attempt)
        )
        messages = self._messages_before(step)
        problem = conversation_problem(messages, self.policy.validation)
        if problem is not None:
            done = await self._finish(
                step,
                StepState.FAILED,
                failure=StepError(
                    message=f"invalid conversation: {problem}", code="invalid_conversation"
                ),
            )
            self._model_call_done(done)
            return done
        spec = self.spec
        payload = chat_body(
            spec.chat,
            model=self.target.upstream_model,
            messages=messages,
            tools=self._tool_definitions(spec.allowed_tools),
            first_call=step.request.get("iteration", 1) == 1,
            dialect=self.target.dialect,
        )
        fitted = await fit_context(
            self.engine.http,
            self.target,
            window=self.engine.routes.context_window(spec.model, self.target),
            truncation=spec.truncation,
            payload=payload,
            max_output_tokens=spec.max_output_tokens,
        )
        if fitted.overflow is not None:
            error = StepError(message=fitted.overflow, code=CONTEXT_OVERFLOW)
            done = await self._finish(step, StepState.FAILED, failure=error)
            self._model_call_done(done)
            return done
        payload = fitted.payload
        items_sink = await self.view.model_call(step, describe=self._describe)
        if self.scope is None and step.request.get("iteration") == 1:
            for listing in self.listings:
                items_sink.list_tools(listing.label, self._listed(listing), listing.error)
        sink: DeltaSink = items_sink
        if self.engine.sink.run_events:
            sink = _ReportedText(sink, self.engine.sink, step_id=step.id, scope=self.scope)
        accumulator = ChatStreamAccumulator(sink)
        self.engine.sink.emit(ModelCallSending(step=step, target=self.target, payload=payload))
        try:
            clock = asyncio.get_running_loop().time
            next_yield = 0.0
            # a plain request's client reads only the end: nobody waits for its first events
            streamed = spec.streamed
            view = self.view
            first_seq = view.next_seq if view.sends and streamed else None
            async for chunk in self.engine.chat.stream(self.target, payload, step_id=step.id):
                accumulator.feed(chunk)
                if first_seq is not None:
                    if view.next_seq > first_seq:
                        # clients see only stored events: store the first ones of
                        # this call before relaying the rest (time to first token)
                        await view.durable()
                        first_seq = None
                elif clock() >= next_yield:
                    # one network read can carry hundreds of chunks: let the event
                    # writer and the readers run at least every millisecond
                    await asyncio.sleep(0)
                    next_yield = clock() + _YIELD_SECONDS
            turn = accumulator.result()
        except UpstreamError as exc:
            self.view.hold()
            items_sink.abort()
            code = CONTEXT_OVERFLOW if is_context_overflow(exc) else exc.code
            done = await self._finish(
                step,
                StepState.FAILED,
                failure=StepError(message=exc.message, code=code, status=exc.status),
            )
            self._model_call_done(done)
            return done
        # the items' done events are stored with the step's end (see _finish)
        self.view.hold()
        items = items_sink.close(turn)
        message = turn.message()
        if turn.reasoning:
            message["reasoning_content"] = turn.reasoning
        done = await self._finish(
            step,
            StepState.COMPLETED,
            result=ModelCallResult(
                message=message,
                items=items,
                call_items=items_sink.call_items,
                usage=turn.usage,
                finish_reason=turn.finish_reason,
                model=turn.model,
            ),
        )
        self._model_call_done(done)
        return done

    def _messages_before(self, step: Step) -> list[dict[str, Any]]:
        """The conversation a step of this scope continues: everything recorded before it."""
        chain = [s for s in self._ordered() if s.sequence < step.sequence]
        at = len(self.base_messages) if self.results_at is None else self.results_at
        return [
            *self.base_messages[:at],
            *leading_tool_messages(chain),
            *self.base_messages[at:],
            *chain_messages(chain),
        ]

    async def _run_compaction(self, step: Step, *, started: bool = False) -> Step | None:
        """Have the model summarise the conversation so far; later calls see the summary.

        Shown as a ``compaction`` item (added, ``response.compaction.compacting``,
        done with the sealed summary); the item's done event is stored with the
        step's end, and a rerun after a crash does not announce it twice."""
        if not started:
            step = await self.engine.store.start_step(step.id)
        await self.view.compaction_started(step)
        try:
            summary = await summarise(
                self.engine.chat,
                self.target,
                self._messages_before(step),
                step_id=step.id,
                prompt_cache_key=self.spec.prompt_cache_key,
            )
        except UpstreamError as exc:
            error = StepError(
                message=f"compaction failed: {exc.message}", code=exc.code, status=exc.status
            )
            return await self._finish(step, StepState.FAILED, failure=error)
        # the item's done event is stored with the step's end (see _finish)
        done_item = self.view.compaction_done(step, summary.text)
        self.state.input_tokens += summary.usage.get("input_tokens", 0)
        self.state.output_tokens += summary.usage.get("output_tokens", 0)
        return await self._finish(
            step,
            StepState.COMPLETED,
            result=CompactionResult(summary=summary.text, items=[done_item], usage=summary.usage),
        )

    def _model_call_done(self, step: Step | None) -> None:
        if step is None:
            return
        usage = (step.response or {}).get("usage") or {}
        calls = ((step.response or {}).get("message") or {}).get("tool_calls") or ()
        self.state.model_calls += 1
        self.state.input_tokens += int(usage.get("input_tokens", 0))
        self.state.output_tokens += int(usage.get("output_tokens", 0))
        if self.scope is None:
            self.state.wants_tools = bool(calls)
        if usage:
            self._tap(
                UsageDelta(
                    step_id=step.id,
                    scope=self.scope,
                    input_tokens=int(usage.get("input_tokens", 0)),
                    output_tokens=int(usage.get("output_tokens", 0)),
                )
            )
        self._tap(
            StepCompleted(
                step_id=step.id, kind="model_call", scope=self.scope, state=_ended(step.state)
            )
        )

    # -- tool calls --------------------------------------------------------

    async def _run_tool_call(self, step: Step) -> Step | None:
        step = await self.engine.store.start_step(step.id)
        assert step.call_id is not None
        self.engine.sink.emit(ToolCallRunning(step=step))
        self._tap(
            StepStarted(step_id=step.id, kind="tool_call", scope=self.scope, attempt=step.attempt)
        )
        self._tap(
            ToolCallStarted(
                step_id=step.id,
                scope=self.scope,
                call_id=step.call_id,
                name=step.tool_name,
                arguments=step.arguments,
            )
        )
        ending = await self.view.tool_started(step, self._item_of_call(step))
        try:
            result = await self._execute_tool(step)
        except ToolError as exc:
            error = StepError(message=exc.message, code=exc.code, status=exc.status)
            return await self._end_tool_call(step, StepState.FAILED, None, error, ending)
        except asyncio.CancelledError:
            if self._failing_fast:
                # a sibling failed: this call is abandoned, and says so
                error = StepError(
                    message="tool call cancelled: a sibling call failed", code="cancelled"
                )
                done = await self._end_tool_call(step, StepState.CANCELLED, None, error, ending)
                if done is not None:
                    self._chain[step.id] = done
            # otherwise the run itself stops (shutdown, lost lease, a consumer gone):
            # the step stays processing, and whoever resumes the run runs it again
            raise
        return await self._end_tool_call(
            step, StepState.COMPLETED, ToolCallResult(output=result), None, ending
        )

    async def _end_tool_call(
        self,
        step: Step,
        state: StepState,
        result: ToolCallResult | None,
        error: StepError | None,
        ending: ToolShown,
    ) -> Step | None:
        """Show how a tool call ended, then store it (its events first, see ``_finish``)."""
        assert step.call_id is not None
        ended = dataclasses.replace(
            step,
            state=state,
            response=None if result is None else result.payload(),
            error=None if error is None else error.payload(),
        )
        # the item's done events are stored with the step's end (see _finish)
        self.view.tool_ended(ended, ending)
        done = await self._finish(step, state, result=result, failure=error)
        if done is None:
            return None
        self.state.tool_invocations += 1
        self.state.tools_called.append(step.tool_name)
        failure = error.message if error is not None and state is not StepState.COMPLETED else None
        self._tap(
            ToolCallFinished(
                step_id=step.id,
                scope=self.scope,
                call_id=step.call_id,
                name=step.tool_name,
                output=result.output if result is not None and failure is None else None,
                error=failure,
            )
        )
        self._tap(
            StepCompleted(step_id=step.id, kind="tool_call", scope=self.scope, state=_ended(state))
        )
        return done

    def _item_of_call(self, step: Step) -> str | None:
        """The output item of the model call this tool step answers."""
        model_calls = [
            s
            for s in self._chain.values()
            if s.kind is StepKind.MODEL_CALL and s.sequence < step.sequence
        ]
        if not model_calls:
            return None
        answered = max(model_calls, key=lambda s: s.sequence)
        assert answered.response is not None and step.call_id is not None
        item_id: str | None = answered.response["call_items"].get(step.call_id)
        return item_id

    async def _execute_tool(self, step: Step) -> str:
        name = step.tool_name
        tool = self.server_tools.get(name)
        if tool is None:
            offered = ", ".join(sorted(self.server_tools)) or "none"
            raise ToolError(
                f"tool {name!r} does not exist; the tools you may call are: {offered}",
                tool=name,
            )
        allowed = self.spec.allowed_tools
        if allowed is not None and name not in allowed:
            raise ToolError(f"tool {name!r} is not allowed in this response", tool=name)
        arguments = tool.parse_arguments(step.arguments)
        if tool.agent is not None:
            output = await self._run_agent(step, tool.name, tool.agent, arguments)
        else:
            assert tool.run is not None
            output = await tool.run(
                arguments,
                ToolCallContext(
                    step_id=step.id,
                    http=self.engine.http,
                    headers=self.engine.step_headers(step.id),
                ),
            )
        if tool.limits_output:
            return output
        return truncate_output(output, self.engine.limits.max_tool_output_chars)

    async def _run_agent(
        self, step: Step, name: str, config: AgentSpec, arguments: dict[str, Any]
    ) -> str:
        limits = self.engine.limits
        if self.depth + 1 > limits.max_depth:
            raise ToolError(
                f"agent {name!r} not run: max_depth {limits.max_depth} reached",
                tool=name,
            )
        target = self.engine.routes.target(config.model)
        if target is None:
            raise ToolError(
                f"agent {name!r} names model {config.model!r} with no upstream", tool=name
            )
        task = arguments.get("input")
        text = task if isinstance(task, str) else orjson.dumps(arguments).decode()
        # the agent's instructions, then its task as the one user message
        system = [{"role": "system", "content": config.instructions}] if config.instructions else []
        sub = ScopeLoop(
            engine=self.engine,
            response_id=self.response_id,
            scope=step.id,
            spec=RunSpec(model=config.model),
            target=target,
            server_tools=self.engine.tools.select(
                [name for name in config.tools if self.key_tools is None or name in self.key_tools]
            ),
            key_tools=self.key_tools,
            base_messages=[*system, {"role": "user", "content": text}],
            policy=LoopPolicy(
                max_iterations=limits.max_iterations,
                fail_on_tool_error=limits.tool_errors == "fail",
                join=limits.tool_join,
                validation=limits.validation,
            ),
            view=self.view.nested(),
            depth=self.depth + 1,
            state=self.state,
        )
        outcome = await sub.run()
        if outcome.status != "completed":
            detail = (
                outcome.failure.message
                if outcome.failure is not None
                else (outcome.incomplete_details or {}).get("reason", "")
            )
            raise ToolError(f"agent {name!r} ended {outcome.status}: {detail}", tool=name)
        return outcome.text
