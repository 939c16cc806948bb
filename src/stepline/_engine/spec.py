"""What one scope's loop needs of its request, typed: the engine reads no wire request.

A response's top level gets its :class:`RunSpec` from ``stepline._run``, which
reads it once per run from the parsed request (``Prepared.spec``); a
sub-agent's is the plain one of its agent's model. Everything in it is
decided before the loop starts and the same for every model call of the
scope, so a call only adds its messages and which ``tool_choice`` binds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from stepline._chat.body import ChatOptions

__all__ = ["RunSpec"]


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """A scope's model, its calls' options and tools, and what bounds them."""

    #: the model name the client asked for (its route says the context window)
    model: str
    #: what every model call sends besides its messages and tools
    chat: ChatOptions = field(default_factory=ChatOptions)
    #: the tools the client runs, as the model is offered them (``allowed_tools`` applied)
    client_definitions: tuple[dict[str, Any], ...] = ()
    #: the tool names ``tool_choice: allowed_tools`` permits; None: any
    allowed_tools: frozenset[str] | None = None
    #: ``auto``: drop the oldest messages to fit the context window; ``disabled``: fail
    truncation: Literal["auto", "disabled"] = "disabled"
    #: room kept for the answer when fitting the context window
    max_output_tokens: int | None = None
    #: a client reads the events as they come (stream or background), not only the end
    streamed: bool = False
    #: passed to the compaction call too, so it shares the conversation's prompt cache
    prompt_cache_key: str | None = None
