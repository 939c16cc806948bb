"""Parse and validate a ``POST /v1/responses`` body into a :class:`ResponseRequest`.

This is the edge where untrusted JSON becomes a typed request; nothing past
it re-validates. Every refusal is an :class:`~stepline.errors.InvalidRequest`
whose ``param`` names the bad field the way OpenAI does (``input[2].call_id``,
``tools[0].type``). Unknown top-level fields are ignored, as clients send
fields that only some servers use.

A request's ``input`` is normalised here into a list of items, each with an
``id``, so that the stored body can answer ``GET .../input_items`` and rebuild
the conversation without the original text.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stepline.errors import InvalidRequest

__all__ = [
    "CompactionItem",
    "ContextManagement",
    "ConversationRef",
    "FunctionTool",
    "McpTool",
    "ResponseRequest",
    "allowed_tool_names",
    "load_body",
    "new_id",
    "parse_request",
    "references",
    "unknown_fields",
]


def new_id(prefix: str) -> str:
    """A fresh id like OpenAI's: ``prefix_`` then 32 hex characters."""
    return f"{prefix}_{secrets.token_hex(16)}"


class _Lenient(BaseModel):
    """Items clients send back carry extra fields (``status``, ``id``...): keep them."""

    model_config = ConfigDict(extra="allow")


class InputText(_Lenient):
    type: Literal["input_text"]
    text: str


class InputImage(_Lenient):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    #: ``original`` (full resolution, Codex's ``view_image``) goes upstream as ``high``
    detail: Literal["low", "high", "auto", "original"] = "auto"

    @model_validator(mode="after")
    def _needs_url(self) -> InputImage:
        if not self.image_url:
            raise ValueError("input_image needs image_url (file_id is not supported)")
        return self


class InputFile(_Lenient):
    """A file given inline (``file_data``, a data URL or base64) or by ``file_url``."""

    type: Literal["input_file"]
    file_data: str | None = None
    file_url: str | None = None
    file_id: str | None = None
    filename: str | None = None

    @model_validator(mode="after")
    def _needs_data(self) -> InputFile:
        if self.file_id and not (self.file_data or self.file_url):
            raise ValueError("input_file needs file_data or file_url (file_id is not supported)")
        if not (self.file_data or self.file_url):
            raise ValueError("input_file needs file_data or file_url")
        return self


class OutputText(_Lenient):
    type: Literal["output_text"]
    text: str


class Refusal(_Lenient):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[
    InputText | InputImage | InputFile | OutputText | Refusal, Field(discriminator="type")
]


class MessageItem(_Lenient):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]


class FunctionCallItem(_Lenient):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    #: the ``namespace`` tool the function belongs to, if any
    namespace: str | None = None


class FunctionCallOutputItem(_Lenient):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[ContentPart]


class CustomToolCallItem(_Lenient):
    """A call of a ``custom`` (freeform) tool: its ``input`` is plain text."""

    type: Literal["custom_tool_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: str
    namespace: str | None = None


class CustomToolCallOutputItem(_Lenient):
    type: Literal["custom_tool_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[ContentPart]


class ClientCallItem(_Lenient):
    """A call of a built-in client tool (shell, apply_patch, computer, tool_search).

    Its payload (``action``, ``operation``, ``arguments``) stays in the extra
    fields; :mod:`stepline._protocol.client_tools` reads it.
    """

    type: Literal[
        "local_shell_call", "shell_call", "apply_patch_call", "computer_call", "tool_search_call"
    ]
    call_id: str = Field(min_length=1)
    id: str | None = None

    @property
    def key(self) -> str:
        return self.call_id


class ClientCallOutputItem(_Lenient):
    """The client's result of a built-in client tool call, keyed by ``call_id``
    (``local_shell_call_output`` names the call by ``id``)."""

    type: Literal[
        "local_shell_call_output",
        "shell_call_output",
        "apply_patch_call_output",
        "computer_call_output",
        "tool_search_output",
    ]
    call_id: str | None = None
    id: str | None = None
    output: Any = None

    @model_validator(mode="after")
    def _needs_call_id(self) -> ClientCallOutputItem:
        # every id is set by then (input items get one): only local_shell names its call by id
        if not self.call_id and self.type != "local_shell_call_output":
            raise ValueError(f"{self.type} needs call_id")
        return self

    @property
    def key(self) -> str:
        return str(self.call_id or self.id)


class McpCallItem(_Lenient):
    """A tool call that a server ran, sent back by a client that keeps its own history."""

    type: Literal["mcp_call"]
    name: str
    arguments: str
    id: str | None = None
    server_label: str | None = None
    output: str | None = None
    error: Any = None


class SummaryText(_Lenient):
    type: Literal["summary_text"] = "summary_text"
    text: str


class ReasoningText(_Lenient):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningItem(_Lenient):
    """Earlier reasoning: its text (``content``), ``summary``, or the
    ``encrypted_content`` stepline sealed when the client asked for it."""

    type: Literal["reasoning"]
    summary: list[SummaryText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None


class CompactionItem(_Lenient):
    """A summary of the conversation before it, sealed by stepline (``/responses/compact``
    or ``context_management``); only stepline can open it."""

    type: Literal["compaction"]
    encrypted_content: str = Field(min_length=1, max_length=10_485_760)
    id: str | None = None


class McpApprovalResponseItem(_Lenient):
    """The client's answer to an ``mcp_approval_request`` of the previous response."""

    type: Literal["mcp_approval_response"]
    approval_request_id: str = Field(min_length=1)
    approve: bool
    reason: str | None = None


class EchoedItem(_Lenient):
    """Output items a client sends back that carry nothing for the model."""

    type: Literal["mcp_approval_request", "mcp_list_tools"]


class HostedCallItem(_Lenient):
    """A hosted tool's call item sent back (``web_search_call``...): when it holds a
    result (``output``, ``results``), the model sees the call and that result."""

    type: Literal[
        "web_search_call", "file_search_call", "code_interpreter_call", "image_generation_call"
    ]


InputItem = Annotated[
    MessageItem
    | FunctionCallItem
    | FunctionCallOutputItem
    | CustomToolCallItem
    | CustomToolCallOutputItem
    | ClientCallItem
    | ClientCallOutputItem
    | McpCallItem
    | ReasoningItem
    | CompactionItem
    | McpApprovalResponseItem
    | EchoedItem
    | HostedCallItem,
    Field(discriminator="type"),
]


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9_.:-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class McpToolNames(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tool_names: list[str] = Field(default_factory=list)


class McpApprovalFilter(BaseModel):
    model_config = ConfigDict(extra="ignore")

    always: McpToolNames | None = None
    never: McpToolNames | None = None


class McpTool(BaseModel):
    """A request-level MCP server (OpenAI's hosted-MCP tool shape).

    Accepted only for a ``server_url`` on the config's allow-list; the check
    is the server's, as it needs the config.
    """

    model_config = ConfigDict(extra="ignore")

    type: Literal["mcp"]
    server_label: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    server_url: str = Field(min_length=1)
    headers: dict[str, str] | None = None
    allowed_tools: list[str] | McpToolNames | None = None
    require_approval: Literal["always", "never"] | McpApprovalFilter | None = "always"
    server_description: str | None = None

    def allowed_names(self) -> list[str] | None:
        if isinstance(self.allowed_tools, McpToolNames):
            return self.allowed_tools.tool_names
        return self.allowed_tools

    def needs_approval(self, tool_name: str) -> bool:
        rule = self.require_approval
        if rule is None or rule == "always":
            return True
        if rule == "never":
            return False
        if rule.never is not None and tool_name in rule.never.tool_names:
            return False
        if rule.always is not None:
            return tool_name in rule.always.tool_names
        return True

    def public(self) -> dict[str, Any]:
        """The tool as echoed in a response: without its headers, which may hold secrets."""
        return self.model_dump(exclude={"headers"}, exclude_none=True)


class CustomTool(BaseModel):
    """A freeform tool: the model answers with plain text, optionally in a ``grammar``."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["custom"]
    name: str = Field(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9_.:-]+$")
    description: str | None = None
    #: ``{"type": "text"}`` or ``{"type": "grammar", "syntax": "lark", "definition": ...}``
    format: dict[str, Any] | None = None


class NamespaceTool(BaseModel):
    """A named group of functions (Codex's ``multi_agent_v1``); calls keep the namespace."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["namespace"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    tools: list[Annotated[FunctionTool | CustomTool, Field(discriminator="type")]]


#: built-in tools the client runs, with the item type of their calls
BUILTIN_CLIENT_TOOLS = {
    "local_shell": "local_shell_call",
    "shell": "shell_call",
    "apply_patch": "apply_patch_call",
    "computer": "computer_call",
    "computer_use_preview": "computer_call",
}


class BuiltinTool(_Lenient):
    """A built-in tool the client runs (its options, e.g. ``display_width``, kept)."""

    type: Literal["local_shell", "shell", "apply_patch", "computer", "computer_use_preview"]


class ToolSearchTool(_Lenient):
    """Tool discovery: ``execution: client`` is run by the client like a function."""

    type: Literal["tool_search"]
    execution: Literal["client", "server"] = "server"
    description: str | None = None
    parameters: dict[str, Any] | None = None


class HostedTool(_Lenient):
    """A tool OpenAI hosts (``web_search``...): a deployment maps it to a server tool."""

    type: Literal[
        "web_search",
        "web_search_preview",
        "web_search_2025_08_26",
        "web_search_preview_2025_03_11",
        "file_search",
        "code_interpreter",
        "image_generation",
    ]


RequestTool = Annotated[
    FunctionTool | McpTool | CustomTool | NamespaceTool | BuiltinTool | ToolSearchTool | HostedTool,
    Field(discriminator="type"),
]


class ToolChoiceFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function", "custom"]
    name: str


class ToolChoiceBuiltin(BaseModel):
    """Force one built-in or hosted tool, e.g. ``{"type": "apply_patch"}``."""

    model_config = ConfigDict(extra="ignore")

    type: Literal[
        "local_shell",
        "shell",
        "apply_patch",
        "computer",
        "computer_use_preview",
        "tool_search",
        "web_search",
        "web_search_preview",
        "web_search_2025_08_26",
        "web_search_preview_2025_03_11",
        "file_search",
        "code_interpreter",
        "image_generation",
    ]


class AllowedTool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str = "function"
    name: str | None = None


class ToolChoiceAllowed(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"] = "auto"
    tools: list[AllowedTool]


ToolChoice = (
    Literal["auto", "none", "required"]
    | Annotated[
        ToolChoiceFunction | ToolChoiceAllowed | ToolChoiceBuiltin, Field(discriminator="type")
    ]
)


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_schema", "json_object"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _schema_for_json_schema(self) -> TextFormat:
        if self.type == "json_schema" and (not self.name or self.schema_ is None):
            raise ValueError("json_schema format needs name and schema")
        return self


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: TextFormat = Field(default_factory=TextFormat)
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class ContextManagement(BaseModel):
    """``context_management`` entry: compact inside the loop once the context passes
    ``compact_threshold`` tokens (the last model call's input plus output tokens)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["compaction"]
    compact_threshold: int = Field(ge=1)


class ConversationRef(BaseModel):
    """The conversation a response belongs to, sent as its id or as ``{"id": ...}``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    #: where the conversation's next item went when the response was accepted: the
    #: response sees the items before it, the same ones when it is resumed later
    #: (set by the server, whatever a client sends)
    upto: int | None = Field(default=None, alias="stepline:upto")

    @model_validator(mode="before")
    @classmethod
    def _from_id(cls, value: Any) -> Any:
        return {"id": value} if isinstance(value, str) else value


class ResponseRequest(BaseModel):
    """A validated ``POST /v1/responses`` body; ``input`` is always a list of items."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str = Field(min_length=1)
    input: list[InputItem]
    instructions: str | None = None
    tools: list[RequestTool] = Field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    max_tool_calls: int | None = Field(default=None, ge=1)
    previous_response_id: str | None = None
    #: the conversation whose items come before ``input``, and that its items join
    conversation: ConversationRef | None = None
    store: bool = True
    stream: bool = False
    background: bool = False
    metadata: dict[str, str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_output_tokens: int | None = Field(default=None, ge=1)
    text: TextConfig = Field(default_factory=TextConfig)
    reasoning: ReasoningConfig | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    #: ``auto``: the oldest items are dropped when the model's configured context window
    #: would overflow; ``disabled``: an overflow fails with ``context_length_exceeded``
    truncation: Literal["auto", "disabled"] = "disabled"
    context_management: list[ContextManagement] | None = Field(default=None, max_length=1)
    #: what the response adds to its items on request (see :data:`INCLUDABLE`)
    include: list[str] = Field(default_factory=list)
    #: a client's own labels for the request (Codex's thread and turn ids), stored
    client_metadata: dict[str, Any] | None = None
    stream_options: dict[str, Any] | None = None
    #: how reasoning events are named for this request (set by the
    #: ``Stepline-Reasoning-Events`` header); None: the server's default
    reasoning_events: Literal["openai", "open_responses"] | None = Field(
        default=None, alias="stepline:reasoning_events"
    )
    #: ``input`` already holds the conversation ``previous_response_id`` names (a
    #: WebSocket continuation from its connection's memory): nothing is loaded for it
    history_inline: bool = Field(default=False, alias="stepline:history_inline")

    @model_validator(mode="after")
    def _check(self) -> ResponseRequest:
        if self.conversation is not None and self.previous_response_id is not None:
            raise _ParamError(
                "conversation",
                "Mutually exclusive parameters: send either 'previous_response_id' or "
                "'conversation', not both.",
            )
        if self.metadata is not None:
            if len(self.metadata) > 16:
                raise _ParamError("metadata", "metadata may have at most 16 keys")
            for key, value in self.metadata.items():
                if len(key) > 64 or len(value) > 512:
                    raise _ParamError(
                        "metadata", "metadata keys are at most 64 characters, values 512"
                    )
        for index, value in enumerate(self.include):
            if value not in INCLUDABLE:
                raise _ParamError(
                    f"include[{index}]",
                    f"include value {value!r} is not supported; stepline supports "
                    + ", ".join(sorted(INCLUDABLE)),
                )
        names = [
            *(tool.name for tool in self.function_tools()),
            *(tool.name for tool in self.tools if isinstance(tool, CustomTool)),
        ]
        if len(set(names)) != len(names):
            raise _ParamError("tools", "tool names must be unique")
        labels = [tool.server_label for tool in self.mcp_tools()]
        if len(set(labels)) != len(labels):
            raise _ParamError("tools", "mcp server_label values must be unique")
        if (
            isinstance(self.tool_choice, ToolChoiceFunction)
            and self.tool_choice.name not in names
            and not any(
                self.tool_choice.name == inner.name
                for tool in self.tools
                if isinstance(tool, NamespaceTool)
                for inner in tool.tools
            )
        ):
            raise _ParamError(
                "tool_choice", f"tool_choice names unknown tool {self.tool_choice.name!r}"
            )
        return self

    def function_tools(self) -> list[FunctionTool]:
        return [tool for tool in self.tools if isinstance(tool, FunctionTool)]

    def mcp_tools(self) -> list[McpTool]:
        return [tool for tool in self.tools if isinstance(tool, McpTool)]

    def includes(self, value: str) -> bool:
        return value in self.include

    @property
    def compact_threshold(self) -> int | None:
        """The token count past which the loop compacts, if the request asks for it."""
        entries = self.context_management or ()
        return min((entry.compact_threshold for entry in entries), default=None)

    @property
    def stored_previous_id(self) -> str | None:
        """The earlier response whose conversation is read from the store, if any."""
        return None if self.history_inline else self.previous_response_id


#: ``include`` values stepline honours; any other is a 400
INCLUDABLE = frozenset(
    {
        "reasoning.encrypted_content",
        "message.output_text.logprobs",
        "web_search_call.action.sources",
        "web_search_call.results",
        "file_search_call.results",
        "code_interpreter_call.outputs",
        "computer_call_output.output.image_url",
        "message.input_image.image_url",
    }
)

#: request fields stepline refuses with a 400 rather than ignore, and why
REFUSED_FIELDS = {
    "prompt": "no prompt templates are configured on this server",
}


class _ParamError(ValueError):
    """A cross-field check that knows which param is at fault."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def allowed_tool_names(request: ResponseRequest) -> frozenset[str] | None:
    """The names ``tool_choice: allowed_tools`` permits, or None when unrestricted."""
    if isinstance(request.tool_choice, ToolChoiceAllowed):
        return frozenset(tool.name or tool.type for tool in request.tool_choice.tools)
    return None


def _tags(*models: Any) -> set[str]:
    found: set[str] = set()
    for model in models:
        annotation = model.model_fields["type"].annotation
        found.update(getattr(annotation, "__args__", ()))
    return found


#: loc segments pydantic adds for union branches and tags; they name no field
_UNION_TAGS = frozenset(
    {
        *_tags(
            MessageItem,
            FunctionCallItem,
            FunctionCallOutputItem,
            CustomToolCallItem,
            CustomToolCallOutputItem,
            ClientCallItem,
            ClientCallOutputItem,
            McpCallItem,
            ReasoningItem,
            CompactionItem,
            McpApprovalResponseItem,
            EchoedItem,
            HostedCallItem,
            InputText,
            InputImage,
            InputFile,
            OutputText,
            Refusal,
            FunctionTool,
            McpTool,
            CustomTool,
            NamespaceTool,
            BuiltinTool,
            ToolSearchTool,
            HostedTool,
            ToolChoiceFunction,
            ToolChoiceAllowed,
            ToolChoiceBuiltin,
        ),
        "str",
    }
)


def _param_of(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for piece in loc:
        if isinstance(piece, int):
            parts.append(f"[{piece}]")
        elif piece in _UNION_TAGS or "[" in piece:
            continue
        else:
            parts.append(("." if parts else "") + piece)
    return "".join(parts) or "body"


def _normalise_input(raw: Any) -> Any:
    """A string input becomes one user message; every item gets an id."""
    if isinstance(raw, str):
        raw = [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}
        ]
    if not isinstance(raw, list):
        return raw
    items: list[Any] = []
    for item in raw:
        if isinstance(item, dict):
            item = dict(item)
            if "type" not in item and "role" in item:
                item["type"] = "message"
            elif "type" not in item and set(item) == {"id"}:
                item["type"] = "item_reference"
            if not item.get("id"):
                prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}
                item["id"] = new_id(prefix.get(str(item.get("type")), "item"))
        items.append(item)
    return items


#: every tool type a request may declare
_TOOL_TYPES = frozenset(
    _tags(FunctionTool, McpTool, CustomTool, NamespaceTool, BuiltinTool, ToolSearchTool, HostedTool)
)


def unknown_fields(body: dict[str, Any]) -> list[str]:
    """Top-level fields of a request body that stepline does not know."""
    known = set(ResponseRequest.model_fields)
    return sorted(name for name in body if name not in known)


def load_body(body: bytes | dict[str, Any]) -> dict[str, Any]:
    """The JSON object of a request body; InvalidRequest when it is not one."""
    if isinstance(body, bytes | bytearray):
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"request body is not valid JSON: {exc}", param="body") from None
    else:
        data = body
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", param="body")
    return data


def references(data: dict[str, Any]) -> list[tuple[int, str]]:
    """The ``item_reference`` items of a body's input: (position, id)."""
    raw = data.get("input")
    found: list[tuple[int, str]] = []
    for index, item in enumerate(raw if isinstance(raw, list) else ()):
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "item_reference" or (kind is None and "role" not in item and "id" in item):
            found.append((index, str(item.get("id"))))
    return found


def parse_request(body: bytes | dict[str, Any]) -> ResponseRequest:
    """Validate a request body; raise InvalidRequest naming the bad param."""
    data = load_body(body)
    if "input" not in data:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    for name, why in REFUSED_FIELDS.items():
        if data.get(name) is not None:
            raise InvalidRequest(f"'{name}' is not supported: {why}.", param=name)
    for index, tool in enumerate(data["tools"] if isinstance(data.get("tools"), list) else ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(kind, str) or kind not in _TOOL_TYPES:
            raise InvalidRequest(
                f"tool type {kind!r} is not supported; stepline accepts "
                + ", ".join(sorted(_TOOL_TYPES)),
                param=f"tools[{index}].type",
            )
    data = {**data, "input": _normalise_input(data["input"])}
    for index, item in enumerate(data["input"] if isinstance(data["input"], list) else ()):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "item_reference":
            raise InvalidRequest(
                f"No stored item with id '{item.get('id')}'.", param=f"input[{index}].id"
            )
    try:
        return ResponseRequest.model_validate(data)
    except ValidationError as exc:
        # for a union, the branch that got furthest explains the refusal best
        error = max(exc.errors(), key=lambda e: len(e["loc"]))
        ctx_error = (error.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _ParamError):
            raise InvalidRequest(ctx_error.message, param=ctx_error.param) from None
        param = _param_of(tuple(error["loc"]))
        raise InvalidRequest(f"Invalid '{param}': {error['msg']}", param=param) from None
