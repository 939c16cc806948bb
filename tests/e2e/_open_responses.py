"""The Open Responses (2026-04-24) wire shapes, as strict pydantic models, for tests.

The specification's schema is stricter than the OpenAI SDK's types: every field
of a response object must be present (``null`` where it has no value), a
function tool echoed in ``tools`` carries ``description``, ``parameters`` and
``strict``, and only its own item types (``message``, ``function_call``,
``function_call_output``, ``reasoning``, ``compaction``) may appear in
``output``. These models say the same thing in Python, written from the
specification's schema: a required field has no default (``X | None`` still
has to be sent), numbers are checked strictly (a bool is not an int), and
extra fields are allowed, as the specification allows extensions.

:func:`response_problems`, :func:`compaction_problems` and
:func:`event_problems` return what is wrong with a payload (empty when it
conforms), so a test can assert ``== []`` and see every problem at once.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

__all__ = ["compaction_problems", "event_problems", "response_problems"]


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _InputText(_Shape):
    type: Literal["input_text"]
    text: str


class _OutputText(_Shape):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[Any] = []


class _Text(_Shape):
    type: Literal["text", "summary_text", "reasoning_text"]
    text: str


class _Refusal(_Shape):
    type: Literal["refusal"]
    refusal: str


class _InputImage(_Shape):
    type: Literal["input_image"]
    image_url: str | None
    detail: Literal["low", "high", "auto"]


_Part = Annotated[
    _InputText | _OutputText | _Text | _Refusal | _InputImage, Field(discriminator="type")
]
_Status = Literal["in_progress", "completed", "incomplete"]


class _Message(_Shape):
    type: Literal["message"]
    id: str
    status: _Status
    role: Literal["user", "assistant", "system", "developer"]
    content: list[_Part]
    phase: Literal["commentary", "final_answer"] = "final_answer"


class _FunctionCall(_Shape):
    type: Literal["function_call"]
    id: str
    call_id: str
    name: str
    arguments: str
    status: _Status


class _FunctionCallOutput(_Shape):
    type: Literal["function_call_output"]
    id: str
    call_id: str
    output: str | list[_Part]
    status: _Status


class _Reasoning(_Shape):
    type: Literal["reasoning"]
    id: str
    summary: list[_Part]
    content: list[_Part] = []
    encrypted_content: str = ""


class _Compaction(_Shape):
    type: Literal["compaction"]
    id: str
    encrypted_content: str
    created_by: str = ""


_Item = Annotated[
    _Message | _FunctionCall | _FunctionCallOutput | _Reasoning | _Compaction,
    Field(discriminator="type"),
]


class _FunctionTool(_Shape):
    type: Literal["function"]
    name: str
    description: str | None
    parameters: dict[str, Any] | None
    strict: bool | None


class _FunctionToolChoice(_Shape):
    type: Literal["function"]
    name: str


class _AllowedTools(_Shape):
    type: Literal["allowed_tools"]
    tools: list[Any]
    mode: Literal["none", "auto", "required"]


class _Format(_Shape):
    type: Literal["text", "json_object", "json_schema"]


class _TextField(_Shape):
    format: _Format


class _ReasoningField(_Shape):
    effort: Literal["none", "low", "medium", "high", "xhigh"] | None
    summary: Literal["concise", "detailed", "auto"] | None


class _CachedTokens(_Shape):
    cached_tokens: int


class _ReasoningTokens(_Shape):
    reasoning_tokens: int


class _Usage(_Shape):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: _CachedTokens
    output_tokens_details: _ReasoningTokens


class _IncompleteDetails(_Shape):
    reason: str


class _Error(_Shape):
    code: str
    message: str


class _Response(_Shape):
    id: str
    object: Literal["response"]
    created_at: int
    completed_at: int | None
    status: str
    incomplete_details: _IncompleteDetails | None
    model: str
    previous_response_id: str | None
    instructions: str | None
    output: list[_Item]
    error: _Error | None
    tools: list[_FunctionTool]
    tool_choice: Literal["none", "auto", "required"] | _FunctionToolChoice | _AllowedTools
    truncation: Literal["auto", "disabled"]
    parallel_tool_calls: bool
    text: _TextField
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    top_logprobs: int
    temperature: float
    reasoning: _ReasoningField | None
    usage: _Usage | None
    max_output_tokens: int | None
    max_tool_calls: int | None
    store: bool
    background: bool
    service_tier: str
    metadata: dict[str, Any]
    safety_identifier: str | None
    prompt_cache_key: str | None


class _CompactResource(_Shape):
    id: str
    object: Literal["response.compaction"]
    output: list[_Item]
    created_at: int
    usage: _Usage


class _Event(_Shape):
    sequence_number: int


class _ResponseEvent(_Event):
    type: Literal[
        "response.created",
        "response.queued",
        "response.in_progress",
        "response.completed",
        "response.failed",
        "response.incomplete",
    ]
    response: _Response


class _ItemEvent(_Event):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: int
    item: _Item | None


class _PartEvent(_Event):
    type: Literal["response.content_part.added", "response.content_part.done"]
    item_id: str
    output_index: int
    content_index: int
    part: _Part


class _TextDelta(_Event):
    type: Literal["response.output_text.delta"]
    item_id: str
    output_index: int
    content_index: int
    delta: str


class _TextDone(_Event):
    type: Literal["response.output_text.done"]
    item_id: str
    output_index: int
    content_index: int
    text: str


class _ArgumentsDelta(_Event):
    type: Literal["response.function_call_arguments.delta"]
    item_id: str
    output_index: int
    delta: str


class _ArgumentsDone(_Event):
    type: Literal["response.function_call_arguments.done"]
    item_id: str
    output_index: int
    arguments: str


class _ErrorPayload(_Shape):
    type: str
    code: str | None
    message: str
    param: str | None


class _ErrorEvent(_Event):
    type: Literal["error"]
    error: _ErrorPayload


class _WebSocketErrorPayload(_Shape):
    code: str
    message: str
    type: str = ""
    param: str | None = None


class _WebSocketError(_Shape):
    """The WebSocket transport's error envelope: ``status`` instead of a sequence number."""

    type: Literal["error"]
    status: int
    error: _WebSocketErrorPayload


_StreamEvent = Annotated[
    _ResponseEvent
    | _ItemEvent
    | _PartEvent
    | _TextDelta
    | _TextDone
    | _ArgumentsDelta
    | _ArgumentsDone
    | _ErrorEvent,
    Field(discriminator="type"),
]
_EVENT = TypeAdapter[Any](_StreamEvent)


def _problems(model: type[_Shape] | TypeAdapter[Any], payload: Any, where: str) -> list[str]:
    try:
        if isinstance(model, TypeAdapter):
            model.validate_python(payload)
        else:
            model.model_validate(payload)
    except ValidationError as exc:
        return [
            f"{where}{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        ]
    return []


def response_problems(response: Any) -> list[str]:
    """What keeps ``response`` from being an Open Responses response object."""
    return _problems(_Response, response, "")


def compaction_problems(compacted: Any) -> list[str]:
    """What keeps ``compacted`` from being an Open Responses ``response.compaction``."""
    return _problems(_CompactResource, compacted, "")


def event_problems(
    events: list[dict[str, Any]], *, transport: Literal["http", "websocket"] = "http"
) -> list[str]:
    """What keeps each event from being an Open Responses streaming event.

    Over a WebSocket an ``error`` with a ``status`` is the transport's error
    envelope; over HTTP every event must be a streaming event.
    """
    problems: list[str] = []
    for index, event in enumerate(events):
        where = f"event {index} ({event.get('type')}): "
        if transport == "websocket" and event.get("type") == "error" and "status" in event:
            problems += _problems(_WebSocketError, event, where)
        else:
            problems += _problems(_EVENT, event, where)
    return problems
