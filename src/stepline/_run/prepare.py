"""What a response's run needs from its request, worked out once for the route and the loop.

The route that accepts a request, the runner that runs it and a process
that resumes it after a crash must agree on its upstream, on which server
tools it is offered (the model route's and the server's defaults, before and
after the caller's key), which tools the client runs, how items are read and
written, what policy its loop runs under and how strictly its transcript is
checked. All of them call :func:`prepare`, so no rule is computed twice.

It lives above the engine and the protocol (``stepline._run``) because it is
where both meet: the engine's limits and routes, the wire's reading of a
request's tools and items.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stepline._engine.limits import Limits
from stepline._engine.policies import ApprovedCall, LoopPolicy
from stepline._engine.spec import RunSpec
from stepline._engine.validate import conversation_problem
from stepline._protocol.chat_request import chat_options
from stepline._protocol.client_tools import ClientTools
from stepline._protocol.items import InputContext
from stepline._protocol.model_events import ItemOptions
from stepline._protocol.request import ResponseRequest, allowed_tool_names
from stepline._upstream.routing import UpstreamTarget

if TYPE_CHECKING:
    from stepline._engine.loop import Engine
    from stepline._tools.registry import ServerTool

__all__ = ["Prepared", "hosted_type", "prepare"]


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """A response's upstream and tools, how its items read and are made, and its policy."""

    #: the upstream serving the request's model; None: no route has it
    target: UpstreamTarget | None
    #: the server tools (and MCP sources) offered, before the caller's key limits them:
    #: the names a client's function may not take
    offered: tuple[str, ...]
    #: the server tools the caller's key may use; None: any
    key_tools: frozenset[str] | None
    limits: Limits
    client_tools: ClientTools
    context: InputContext
    options: ItemOptions
    #: reads an earlier request's items for this response's upstream
    context_for: Callable[[ResponseRequest], InputContext]
    #: names that way of reading (the key of the history cache)
    reading: Hashable
    #: hosted tools the config plays: the name the model calls -> the server tool
    hosted: dict[str, str]
    #: hosted tools the request offered that nothing plays (left out of the model's view)
    dropped: list[str]

    @property
    def usable(self) -> list[str]:
        """The offered names the caller's key may use, in order."""
        return [name for name in self.offered if self.key_tools is None or name in self.key_tools]

    def policy(
        self,
        request: ResponseRequest,
        server_tools: dict[str, ServerTool],
        approved: Sequence[ApprovedCall] = (),
    ) -> LoopPolicy:
        """The top-level loop's policy: the limits, the request's caps, who runs what."""
        limits = self.limits
        return LoopPolicy(
            max_iterations=limits.max_iterations,
            max_tool_calls=request.max_tool_calls,
            fail_on_tool_error=limits.tool_errors == "fail",
            client_tools=self.client_tools.chat_names(request),
            join=limits.tool_join,
            validation=limits.validation,
            approval_tools=frozenset(name for name, tool in server_tools.items() if tool.approval),
            approved_calls=tuple(approved),
            compact_threshold=request.compact_threshold,
        )

    def spec(self, request: ResponseRequest, server_tools: dict[str, ServerTool]) -> RunSpec:
        """What the top-level loop needs of ``request``, read once for every model call."""
        return RunSpec(
            model=request.model,
            chat=chat_options(
                request, client_tools=self.client_tools, server_names=frozenset(server_tools)
            ),
            client_definitions=tuple(self.client_tools.definitions(request)),
            allowed_tools=allowed_tool_names(request),
            truncation=request.truncation,
            max_output_tokens=request.max_output_tokens,
            streamed=request.stream or request.background,
            prompt_cache_key=request.prompt_cache_key,
        )

    def problem(self, transcript: Sequence[dict[str, Any]]) -> str | None:
        """What is wrong with a transcript, as strictly as the loop checks it; or None."""
        return conversation_problem(transcript, self.limits.validation)


def hosted_type(kind: str) -> str:
    """The hosted type a request's tool is played as: dated names fold into their base
    (``web_search_preview_2025_03_11`` is ``web_search_preview``)."""
    for base in ("web_search_preview", "web_search"):
        if kind.startswith(base):
            return base
    return kind


def prepare(
    engine: Engine,
    request: ResponseRequest,
    *,
    key_id: str | None,
    tools: Sequence[str] | None = None,
) -> Prepared:
    """``key_id``: the caller's API key; ``tools``: the server tools the top level offers
    instead of the model route's and the server's defaults (the library's)."""
    target = engine.routes.target(request.model)
    key_tools = engine.key_tools(key_id)
    offered = (
        tuple(tools)
        if tools is not None
        else (*engine.routes.tools(request.model), *engine.default_tools)
    )
    sealer = engine.sealer
    dialect = target.dialect if target is not None else None
    native = bool(dialect and dialect.native_custom)
    file_parts = bool(dialect and dialect.file_parts)

    def context_for(other: ResponseRequest) -> InputContext:
        return InputContext(
            tools=ClientTools.of(other, native_custom=native),
            unseal=sealer.open,
            file_parts=file_parts,
        )

    client = ClientTools.of(request, native_custom=native)
    names = request.reasoning_events or engine.reasoning_events
    options = ItemOptions(
        summary=request.reasoning is not None and request.reasoning.summary is not None,
        seal=sealer.seal if request.includes("reasoning.encrypted_content") else None,
        open_responses_names=names == "open_responses",
        logprobs=bool(request.top_logprobs) or request.includes("message.output_text.logprobs"),
    )
    context = InputContext(tools=client, unseal=sealer.open, file_parts=file_parts)
    hosted: dict[str, str] = {}
    dropped: list[str] = []
    for kind in client.hosted:
        played = engine.hosted_tools.get(hosted_type(kind))
        if played is None or (key_tools is not None and played not in key_tools):
            dropped.append(kind)
        else:
            hosted[hosted_type(kind)] = played
    return Prepared(
        target=target,
        offered=offered,
        key_tools=key_tools,
        limits=engine.limits,
        client_tools=client,
        context=context,
        options=options,
        context_for=context_for,
        reading=(native, file_parts),
        hosted=hosted,
        dropped=dropped,
    )
