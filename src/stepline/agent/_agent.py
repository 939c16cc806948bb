"""``Agent``: the agent loop as a Python API, on the server's own engine.

An agent is a model (any OpenAI-compatible Chat Completions endpoint, or the
scripted model in process), instructions, and tools: Python functions
(``@tool``), HTTP tools, and other agents (sub-agents). ``await
agent.run(input)`` returns a :class:`RunResult`; ``agent.stream(input)``
yields the run's typed events as they happen, and :func:`collect` turns such
a stream into the same result ``run`` returns.

There is no second loop here: a run is a response in a store (in memory by
default), driven by :func:`stepline._run.response.run_response` with the
agent's tools in a registry and its models as upstreams — what the server
does, without HTTP. Pass a SQL store to keep every step durably;
:meth:`Agent.resume` continues a run from its stored steps.

Taps are called with every event of a run, in order, inline on the run's
task: they see the run unbuffered and cannot change it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from stepline._chat.stream import DeltaSink, Discard
from stepline._config import HttpToolConfig, UpstreamConfig
from stepline._engine.limits import Limits
from stepline._engine.loop import Engine
from stepline._engine.policies import StopPolicy
from stepline._engine.run_events import RUN_EVENT_TYPES, RunCompleted, RunEvent, TextDelta
from stepline._engine.sinks import ModelCallStreaming, SinkEvent
from stepline._protocol.request import ResponseRequest, new_id, parse_request
from stepline._protocol.sealing import Sealer
from stepline._run.response import run_response
from stepline._tools.registry import AgentSpec, ServerTool, ToolRegistry, configured_tool
from stepline._upstream.client import ChatClient
from stepline._upstream.routing import UpstreamTarget
from stepline.agent._function_tool import FunctionTool
from stepline.errors import ConfigError, RunError
from stepline.scripted import ScriptedModel, create_scripted_app
from stepline.store._base import ResponseRecord, StepStore
from stepline.store._memory import MemoryStore

logger = logging.getLogger(__name__)

__all__ = ["Agent", "ChatModel", "HttpTool", "RunResult", "Usage", "collect"]

#: library runs are never taken over by a server sharing the store (resume them
#: with Agent.resume); their lease outlives any run
_LIBRARY_LEASE_SECONDS = 100 * 365 * 24 * 3600.0
_AGENT_PARAMETERS = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "The task for the agent."}},
    "required": ["input"],
}


@dataclass(frozen=True, kw_only=True)
class ChatModel:
    """An OpenAI-compatible Chat Completions endpoint and the model name it serves."""

    model: str
    base_url: str
    api_key: str | None = None
    stream: bool = True
    max_retries: int = 2
    transport: httpx.AsyncBaseTransport | None = field(default=None, compare=False)

    @classmethod
    def scripted(cls, scripted: ScriptedModel, model: str) -> ChatModel:
        """The scripted model, called in process (no socket); ``model`` picks its script."""
        return cls(
            model=model,
            base_url="http://scripted.invalid/v1",
            transport=httpx.ASGITransport(app=create_scripted_app(scripted)),
        )


@dataclass(frozen=True, kw_only=True)
class HttpTool:
    """A tool the loop calls by POSTing the model's arguments as JSON to ``url``."""

    name: str
    url: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 30.0


@dataclass(frozen=True, kw_only=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_invocations: int = 0


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """What a run did: its final text, transcript, steps, stop reason and usage."""

    text: str
    messages: list[dict[str, Any]]
    steps: int
    stop_reason: str
    status: Literal["completed", "failed", "incomplete"]
    usage: Usage
    response: dict[str, Any]
    error: str | None = None

    @property
    def response_id(self) -> str:
        return str(self.response["id"])


async def collect(events: AsyncIterator[RunEvent]) -> RunResult:
    """Read a run's event stream to its end; the same result ``Agent.run`` returns."""
    completed: RunCompleted | None = None
    async for event in events:
        if isinstance(event, RunCompleted):
            completed = event
    if completed is None:
        raise RunError("the run ended without a run_completed event")
    response = completed.response
    usage = response.get("usage") or {}
    error = response.get("error")
    return RunResult(
        text=_output_text(response),
        messages=completed.messages,
        steps=completed.steps,
        stop_reason=completed.stop_reason,
        status=completed.status,
        usage=Usage(
            prompt_tokens=int(usage.get("input_tokens", 0)),
            completion_tokens=int(usage.get("output_tokens", 0)),
            tool_invocations=completed.tool_invocations,
        ),
        response=response,
        error=error["message"] if error else None,
    )


def _output_text(response: dict[str, Any]) -> str:
    texts = [
        part["text"]
        for item in response.get("output", ())
        if item.get("type") == "message" and item.get("status") == "completed"
        for part in item.get("content", ())
        if part.get("type") == "output_text"
    ]
    return texts[-1] if texts else ""


@dataclass(frozen=True, kw_only=True)
class AgentTool:
    """Another agent offered as a tool; its final text is the tool's output."""

    agent: Agent
    name: str
    description: str


class Agent:
    """A model, instructions and tools, run as a loop until a stop policy says stop."""

    def __init__(
        self,
        *,
        model: ChatModel,
        instructions: str | None = None,
        tools: Sequence[FunctionTool | HttpTool | Agent | AgentTool] = (),
        name: str = "agent",
        description: str = "",
        stop: StopPolicy | Sequence[StopPolicy] = (),
        max_iterations: int = 50,
        parallel_tools: bool = True,
        tool_concurrency: int = 8,
        join: Literal["all", "fail_fast"] = "all",
        tool_errors: Literal["model", "fail"] = "model",
        validation: Literal["strict", "lenient", "off"] = "strict",
        max_depth: int = 8,
        store: StepStore | None = None,
        taps: Sequence[Callable[[RunEvent], None]] = (),
    ) -> None:
        self.model = model
        self.instructions = instructions
        self.tools = tuple(tools)
        self.name = name
        self.description = description or f"The {name} agent."
        self.stops: tuple[StopPolicy, ...] = (stop,) if callable(stop) else tuple(stop)
        self.max_iterations = max_iterations
        self.parallel_tools = parallel_tools
        self.tool_concurrency = tool_concurrency if parallel_tools else 1
        self.join = join
        # fail_fast means the first failure ends the run
        self.tool_errors: Literal["model", "fail"] = "fail" if join == "fail_fast" else tool_errors
        self.validation = validation
        self.max_depth = max_depth
        self.store = store
        self.taps = tuple(taps)

    def as_tool(self, name: str | None = None, description: str | None = None) -> AgentTool:
        return AgentTool(
            agent=self, name=name or self.name, description=description or self.description
        )

    async def run(self, input: str | list[dict[str, Any]]) -> RunResult:
        """Run to the end and return what happened."""
        return await collect(self.stream(input))

    def stream(self, input: str | list[dict[str, Any]]) -> AsyncIterator[RunEvent]:
        """The run's events as they happen; the last is ``run_completed``."""
        return _Run(self).events(input=input)

    def resume(self, response_id: str) -> AsyncIterator[RunEvent]:
        """Continue a run kept in this agent's store (after a crash), from its stored steps."""
        if self.store is None:
            raise ConfigError("resume needs the agent's store")
        return _Run(self).events(response_id=response_id)


class _TextDeltas(Discard):
    """A model call's text, delta by delta, as the library's ``TextDelta`` events."""

    def __init__(self, taps: _Taps, *, step_id: str, scope: str | None) -> None:
        self._taps = taps
        self._step_id = step_id
        self._scope = scope

    def on_text(self, text: str) -> None:
        self._taps.emit(TextDelta(step_id=self._step_id, scope=self._scope, text=text))


class _Taps:
    """The sink of a library run: its events to ``stream()``'s queue, then to each tap."""

    run_events = True

    def __init__(
        self,
        queue: asyncio.Queue[RunEvent | None],
        taps: Sequence[Callable[[RunEvent], None]],
    ) -> None:
        self.queue = queue
        self.taps = taps

    def deltas(self, call: ModelCallStreaming) -> DeltaSink:
        return _TextDeltas(self, step_id=call.step.id, scope=call.step.scope)

    def emit(self, event: SinkEvent) -> None:
        if not isinstance(event, RUN_EVENT_TYPES):
            return  # the stored records metrics and traces read
        self.queue.put_nowait(event)
        for tap in self.taps:
            try:
                tap(event)
            except Exception:
                # a tap observes; its failure is logged, never the run's
                logger.exception("tap %r failed on %s", tap, event.type)


class _Run:
    """One run of an agent: its model routes, registry and engine, made for this run.

    Each agent of the tree (the root and every sub-agent) is a model route of
    its own (``name#n``) with one upstream target; the engine asks this object
    for them (``engine.routes.ModelRoutes``), so no config is made up for a run.
    """

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.targets: dict[str, UpstreamTarget] = {}
        self.clients: dict[str, ChatClient] = {}
        self.registry = ToolRegistry()
        self._route_of: dict[int, str] = {}
        self._tool_of: dict[int, str] = {}
        self._names = itertools.count()
        self.root_route, self.root_tools = self._add_agent(agent)

    # -- the agent tree as settings and a registry ---------------------------

    def _add_agent(self, agent: Agent) -> tuple[str, list[str]]:
        if id(agent) in self._route_of:
            raise ConfigError(f"agent {agent.name!r} is its own sub-agent")
        route = f"{agent.name}#{next(self._names)}"
        self._route_of[id(agent)] = route
        upstream = f"upstream-{route}"
        model = agent.model
        config = UpstreamConfig(
            base_url=model.base_url,
            api_key=model.api_key,
            stream=model.stream,
            max_retries=model.max_retries,
        )
        self.targets[route] = UpstreamTarget(
            name=upstream,
            base_url=model.base_url.rstrip("/"),
            api_key=config.resolved_api_key(),
            upstream_model=model.model,
            config=config,
        )
        self.clients[upstream] = ChatClient(transport=model.transport)
        return route, [self._add_tool(tool) for tool in agent.tools]

    def _add_tool(self, tool: FunctionTool | HttpTool | Agent | AgentTool) -> str:
        if id(tool) in self._tool_of:
            return self._tool_of[id(tool)]
        if isinstance(tool, Agent):
            tool = tool.as_tool()
        server_tool: ServerTool
        if isinstance(tool, FunctionTool):
            server_tool = tool.server_tool()
        elif isinstance(tool, HttpTool):
            server_tool = configured_tool(
                tool.name,
                HttpToolConfig(
                    description=tool.description,
                    parameters=tool.parameters,
                    url=tool.url,
                    headers=tool.headers,
                    timeout=tool.timeout,
                ),
            )
        else:
            route, tools = self._add_agent(tool.agent)
            server_tool = ServerTool.build(
                tool.name,
                description=tool.description,
                parameters=_AGENT_PARAMETERS,
                agent=AgentSpec(
                    model=route, instructions=tool.agent.instructions, tools=tuple(tools)
                ),
            )
        self.registry.add(server_tool)
        self._tool_of[id(tool)] = server_tool.name
        return server_tool.name

    def limits(self) -> Limits:
        agent = self.agent
        return Limits(
            max_iterations=agent.max_iterations,
            max_depth=agent.max_depth,
            tool_concurrency=agent.tool_concurrency,
            tool_errors=agent.tool_errors,
            tool_join=agent.join,
            validation=agent.validation,
        )

    # -- the agent tree as model routes (engine.routes.ModelRoutes) -----------

    def target(self, model: str) -> UpstreamTarget | None:
        return self.targets.get(model)

    def tools(self, model: str) -> tuple[str, ...]:
        # the root's tools are named to run_response; a sub-agent's by its AgentSpec
        return ()

    def context_window(self, model: str, target: UpstreamTarget) -> int | None:
        return None

    def stream(
        self, target: UpstreamTarget, payload: dict[str, Any], *, step_id: str
    ) -> AsyncIterator[dict[str, Any]]:
        return self.clients[target.name].stream(target, payload, step_id=step_id)

    # -- running -------------------------------------------------------------

    def _request(self, input: str | list[dict[str, Any]]) -> ResponseRequest:
        if isinstance(input, list) and self.agent.instructions is not None:
            # the agent's instructions replace any system message the input had
            input = [m for m in input if m.get("role") not in ("system", "developer")]
        # validated as a body is (the same normalised items), without going through bytes
        return parse_request(
            {
                "model": self.root_route,
                "input": input,
                "instructions": self.agent.instructions,
                "parallel_tool_calls": self.agent.parallel_tools,
            }
        )

    def _record(self, request: ResponseRequest, now: float) -> ResponseRecord:
        return ResponseRecord(
            id=new_id("resp"),
            created_at=now,
            status="in_progress",
            model=self.root_route,
            body=request.model_dump(mode="json", by_alias=True, exclude_unset=True),
            owner="stepline-library",
            lease_expires_at=now + _LIBRARY_LEASE_SECONDS,
        )

    async def events(
        self, *, input: str | list[dict[str, Any]] | None = None, response_id: str | None = None
    ) -> AsyncIterator[RunEvent]:
        queue: asyncio.Queue[RunEvent | None] = asyncio.Queue()

        store = self.agent.store or MemoryStore()
        async with httpx.AsyncClient() as http:
            engine = Engine(
                store=store,
                chat=self,
                routes=self,
                limits=self.limits(),
                tools=self.registry,
                http=http,
                # a run's encrypted_content opens only in this run (no key is configured)
                sealer=Sealer.ephemeral(),
                sink=_Taps(queue, self.agent.taps),
            )
            request: ResponseRequest | None = None
            if response_id is None:
                assert input is not None
                request = self._request(input)
                record = self._record(request, time.time())
                await store.create_response(record)
            else:
                found = await store.get_response(response_id)
                if found is None:
                    raise ConfigError(f"no stored run {response_id!r} to resume")
                record = found
            task = asyncio.create_task(
                run_response(
                    engine,
                    record,
                    None,
                    stops=self.agent.stops,
                    tools=self.root_tools,
                    fresh=response_id is None,
                    request=request,
                )
            )
            task.add_done_callback(lambda _: queue.put_nowait(None))
            try:
                while (event := await queue.get()) is not None:
                    yield event
                await task
            finally:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                for client in self.clients.values():
                    await client.aclose()
