"""What a response's run needs from its request, worked out once for the route and the loop.

The route that accepts a request and the loop that runs it (here or, after
a crash, in another process) must agree on which tools the client runs and
how items are read and written; both call :func:`prepare`, so no rule is
computed twice.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stepline.protocol.client_tools import ClientTools
from stepline.protocol.items import InputContext
from stepline.protocol.model_events import ItemOptions
from stepline.protocol.request import ResponseRequest
from stepline.protocol.sealing import Sealer
from stepline.upstream.routing import UpstreamTarget

if TYPE_CHECKING:
    from stepline.engine.loop import Engine

__all__ = ["Prepared", "hosted_type", "prepare"]


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """The client's tools, how its input items read, and how output items are made."""

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
    target: UpstreamTarget | None,
    *,
    key_tools: frozenset[str] | None = None,
) -> Prepared:
    """``key_tools``: the server tools the caller's key may use (None: any)."""
    sealer: Sealer = engine.sealer
    dialect = target.dialect if target is not None else None
    native = bool(dialect and dialect.native_custom)
    file_parts = bool(dialect and dialect.file_parts)

    def context_for(other: ResponseRequest) -> InputContext:
        return InputContext(
            tools=ClientTools.of(other, native_custom=native),
            unseal=sealer.open,
            file_parts=file_parts,
        )

    tools = ClientTools.of(request, native_custom=native)
    names = request.reasoning_events or engine.reasoning_events
    options = ItemOptions(
        summary=request.reasoning is not None and request.reasoning.summary is not None,
        seal=sealer.seal if request.includes("reasoning.encrypted_content") else None,
        open_responses_names=names == "open_responses",
        logprobs=bool(request.top_logprobs) or request.includes("message.output_text.logprobs"),
    )
    context = InputContext(tools=tools, unseal=sealer.open, file_parts=file_parts)
    hosted: dict[str, str] = {}
    dropped: list[str] = []
    for kind in tools.hosted:
        played = engine.hosted_tools.get(hosted_type(kind))
        if played is None or (key_tools is not None and played not in key_tools):
            dropped.append(kind)
        else:
            hosted[hosted_type(kind)] = played
    return Prepared(
        client_tools=tools,
        context=context,
        options=options,
        context_for=context_for,
        reading=(native, file_parts),
        hosted=hosted,
        dropped=dropped,
    )
