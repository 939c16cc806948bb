"""stepline: an Open Responses server that runs the whole agent loop, stored step by step.

The public surface is what this package exports (``__all__``): the library
(:class:`Agent`, :class:`ChatModel`, :func:`tool`, stop policies, run events;
see :mod:`stepline.agent`), the stores it can keep a run in
(:class:`MemoryStore`, :class:`SqlStore` through :func:`open_store`), and the
errors it raises (the tree drawn in :mod:`stepline.errors`). The server is
``stepline serve`` (:mod:`stepline._cli`). The modules a user imports are
this one, :mod:`stepline.agent`, :mod:`stepline.store`, :mod:`stepline.scripted`
(the scripted model, for tests) and :mod:`stepline.errors`; every other
module's name, or its package's, starts with ``_``: it is internal, and its
names may change between releases.

The library's names are loaded on their first use (``__getattr__``), the
errors and the stores at once.
"""

import typing

from stepline._version import __version__
from stepline.errors import (
    ConfigError,
    Forbidden,
    InvalidRequest,
    LeaseLost,
    NotFound,
    NotSupported,
    RateLimited,
    RequestError,
    RunError,
    StepLineError,
    StoreError,
    ToolError,
    Unauthorized,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
    UsageError,
)
from stepline.store import MemoryStore, SqlStore, StepStore, migrate, open_store

if typing.TYPE_CHECKING:
    from stepline.agent import (
        Agent,
        AgentTool,
        ChatModel,
        FunctionTool,
        HttpTool,
        RunCompleted,
        RunEvent,
        RunFailed,
        RunResult,
        RunStarted,
        RunState,
        StepCompleted,
        StepStarted,
        StopPolicy,
        TextDelta,
        ToolCallFinished,
        ToolCallStarted,
        Usage,
        UsageDelta,
        any_of,
        budget,
        collect,
        max_steps,
        tool,
        until_no_tool_calls,
        until_tool_called,
    )

#: the library's names load on first use: a process that only serves (``stepline
#: serve``) needs neither the library nor the scripted model it brings (~2 MB)
_AGENT_NAMES = frozenset(
    {
        "Agent",
        "AgentTool",
        "ChatModel",
        "FunctionTool",
        "HttpTool",
        "RunCompleted",
        "RunEvent",
        "RunFailed",
        "RunResult",
        "RunStarted",
        "RunState",
        "StepCompleted",
        "StepStarted",
        "StopPolicy",
        "TextDelta",
        "ToolCallFinished",
        "ToolCallStarted",
        "Usage",
        "UsageDelta",
        "any_of",
        "budget",
        "collect",
        "max_steps",
        "tool",
        "until_no_tool_calls",
        "until_tool_called",
    }
)


def __getattr__(name: str) -> object:
    if name not in _AGENT_NAMES:
        raise AttributeError(f"module 'stepline' has no attribute {name!r}")
    import stepline.agent

    value = getattr(stepline.agent, name)
    globals()[name] = value  # loaded once: later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | _AGENT_NAMES)


__all__ = [
    "Agent",
    "AgentTool",
    "ChatModel",
    "ConfigError",
    "Forbidden",
    "FunctionTool",
    "HttpTool",
    "InvalidRequest",
    "LeaseLost",
    "MemoryStore",
    "NotFound",
    "NotSupported",
    "RateLimited",
    "RequestError",
    "RunCompleted",
    "RunError",
    "RunEvent",
    "RunFailed",
    "RunResult",
    "RunStarted",
    "RunState",
    "SqlStore",
    "StepCompleted",
    "StepLineError",
    "StepStarted",
    "StepStore",
    "StopPolicy",
    "StoreError",
    "TextDelta",
    "ToolCallFinished",
    "ToolCallStarted",
    "ToolError",
    "Unauthorized",
    "Unavailable",
    "UpstreamError",
    "UpstreamTimeout",
    "Usage",
    "UsageDelta",
    "UsageError",
    "__version__",
    "any_of",
    "budget",
    "collect",
    "max_steps",
    "migrate",
    "open_store",
    "tool",
    "until_no_tool_calls",
    "until_tool_called",
]
