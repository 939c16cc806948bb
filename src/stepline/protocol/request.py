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
    "FunctionTool",
    "McpTool",
    "ResponseRequest",
    "allowed_tool_names",
    "new_id",
    "parse_request",
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
    detail: Literal["low", "high", "auto"] = "auto"

    @model_validator(mode="after")
    def _needs_url(self) -> InputImage:
        if not self.image_url:
            raise ValueError("input_image needs image_url (file_id is not supported)")
        return self


class OutputText(_Lenient):
    type: Literal["output_text"]
    text: str


class Refusal(_Lenient):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[InputText | InputImage | OutputText | Refusal, Field(discriminator="type")]


class MessageItem(_Lenient):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]


class FunctionCallItem(_Lenient):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str


class FunctionCallOutputItem(_Lenient):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[ContentPart]


class McpCallItem(_Lenient):
    """A tool call that a server ran, sent back by a client that keeps its own history."""

    type: Literal["mcp_call"]
    name: str
    arguments: str
    id: str | None = None
    server_label: str | None = None
    output: str | None = None
    error: Any = None


class ReasoningItem(_Lenient):
    type: Literal["reasoning"]


class McpApprovalResponseItem(_Lenient):
    """The client's answer to an ``mcp_approval_request`` of the previous response."""

    type: Literal["mcp_approval_response"]
    approval_request_id: str = Field(min_length=1)
    approve: bool
    reason: str | None = None


class EchoedItem(_Lenient):
    """Output items a client sends back that carry nothing for the model."""

    type: Literal["mcp_approval_request", "mcp_list_tools"]


InputItem = Annotated[
    MessageItem
    | FunctionCallItem
    | FunctionCallOutputItem
    | McpCallItem
    | ReasoningItem
    | McpApprovalResponseItem
    | EchoedItem,
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


RequestTool = Annotated[FunctionTool | McpTool, Field(discriminator="type")]


class ToolChoiceFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    name: str


class AllowedTool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"] = "function"
    name: str


class ToolChoiceAllowed(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"] = "auto"
    tools: list[AllowedTool]


ToolChoice = (
    Literal["auto", "none", "required"]
    | Annotated[ToolChoiceFunction | ToolChoiceAllowed, Field(discriminator="type")]
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

    format: TextFormat = TextFormat()
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


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
    text: TextConfig = TextConfig()
    reasoning: ReasoningConfig | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    truncation: Literal["auto", "disabled"] = "disabled"

    @model_validator(mode="after")
    def _check(self) -> ResponseRequest:
        if self.metadata is not None:
            if len(self.metadata) > 16:
                raise _ParamError("metadata", "metadata may have at most 16 keys")
            for key, value in self.metadata.items():
                if len(key) > 64 or len(value) > 512:
                    raise _ParamError(
                        "metadata", "metadata keys are at most 64 characters, values 512"
                    )
        names = [tool.name for tool in self.function_tools()]
        if len(set(names)) != len(names):
            raise _ParamError("tools", "tool names must be unique")
        labels = [tool.server_label for tool in self.mcp_tools()]
        if len(set(labels)) != len(labels):
            raise _ParamError("tools", "mcp server_label values must be unique")
        if isinstance(self.tool_choice, ToolChoiceFunction) and self.tool_choice.name not in names:
            raise _ParamError(
                "tool_choice", f"tool_choice names unknown tool {self.tool_choice.name!r}"
            )
        return self

    def function_tools(self) -> list[FunctionTool]:
        return [tool for tool in self.tools if isinstance(tool, FunctionTool)]

    def mcp_tools(self) -> list[McpTool]:
        return [tool for tool in self.tools if isinstance(tool, McpTool)]


class _ParamError(ValueError):
    """A cross-field check that knows which param is at fault."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def allowed_tool_names(request: ResponseRequest) -> frozenset[str] | None:
    """The names ``tool_choice: allowed_tools`` permits, or None when unrestricted."""
    if isinstance(request.tool_choice, ToolChoiceAllowed):
        return frozenset(tool.name for tool in request.tool_choice.tools)
    return None


#: loc segments pydantic adds for union branches and tags; they name no field
_UNION_TAGS = frozenset(
    {
        "message",
        "function_call",
        "function_call_output",
        "mcp_call",
        "reasoning",
        "mcp_approval_response",
        "mcp_approval_request",
        "mcp_list_tools",
        "input_text",
        "input_image",
        "output_text",
        "refusal",
        "function",
        "allowed_tools",
        "str",
        "mcp",
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
            if not item.get("id"):
                prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}
                item["id"] = new_id(prefix.get(str(item.get("type")), "item"))
        items.append(item)
    return items


def parse_request(body: bytes | dict[str, Any]) -> ResponseRequest:
    """Validate a request body; raise InvalidRequest naming the bad param."""
    if isinstance(body, bytes | bytearray):
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"request body is not valid JSON: {exc}", param="body") from None
    else:
        data = body
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", param="body")
    if "input" not in data:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    data = {**data, "input": _normalise_input(data["input"])}
    if isinstance(data.get("tools"), list):
        for index, tool in enumerate(data["tools"]):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind not in ("function", "mcp"):
                raise InvalidRequest(
                    f"tool type {kind!r} is not supported; stepline accepts function and mcp "
                    "tools and runs its own server tools from its config",
                    param=f"tools[{index}].type",
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
