"""stepline: an Open Responses server that runs the whole agent loop, stored step by step.

The public surface is what this package exports (``__all__``): the library
(:class:`Agent`, :class:`ChatModel`, :func:`tool`, stop policies, run events;
see :mod:`stepline.agent`), the stores it can keep a run in
(:class:`MemoryStore`, :class:`SqlStore` through :func:`open_store`), and the
errors it raises (the tree drawn in :mod:`stepline.errors`). The server is
``stepline serve`` (:mod:`stepline.cli`). Every other module is internal: its
names may change between releases.
"""

# first, so a module that reads it while this package is being imported finds it
__version__ = "0.1.0"


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
from stepline.errors import (
    ConfigError,
    Forbidden,
    InvalidRequest,
    LeaseLost,
    NotFound,
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
