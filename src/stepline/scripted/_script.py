"""The script format: what a scripted model answers, turn by turn.

A script is a list of turns. The scripted server picks the turn for a request
by counting the ``assistant`` messages already in its ``messages``: the first
call of a conversation gets turn 0, the call after the first tool results gets
turn 1, and so on. The server therefore keeps no conversation state; the same
script can serve many conversations at once.

A script as JSON (``Script.from_json`` / ``Script.from_dict``, or the body of
``POST /v1/scripts``)::

    {
      "repeat_last": false,
      "turns": [
        {
          "reasoning": "The user wants the weather; call the tool.",
          "tool_calls": [
            {"name": "get_weather", "arguments": {"city": "Paris"}},
            {"name": "get_time", "arguments": "{\\"tz\\": \\"Europe/Par", "id": "call_time"},
            {"kind": "custom", "name": "apply_patch", "input": "*** Begin Patch\\n..."}
          ]
        },
        {
          "content": "It is sunny in Paris.",
          "token_delay": 0.01,
          "chunk_size": 2,
          "fault": {"status": 429, "message": "slow down", "retry_after": 1, "times": 2}
        }
      ]
    }

Turn fields (all optional):

* ``content``: the reply text, streamed ``chunk_size`` words per chunk.
* ``reasoning``: streamed before the content as ``delta.reasoning_content``.
* ``tool_calls``: ``name``, ``arguments`` (an object, or a raw string that may
  be deliberately broken JSON) and ``id`` (default ``call_<turn>_<i>``, unique
  within a conversation because the turn index grows with it). A call with
  ``"kind": "custom"`` plays a Chat Completions *custom* tool (freeform text
  input): it has ``input`` (any text, required) instead of ``arguments``.
  ``kind`` defaults to ``function``.
* ``usage``: ``prompt_tokens`` and ``completion_tokens``; by default a rough
  word count of the request and the number of streamed pieces.
* ``finish_reason``: ``stop``, ``tool_calls``, ``length`` or
  ``content_filter``; default ``tool_calls`` when there are tool calls, else
  ``stop``.
* ``delay``: seconds before the first byte; ``token_delay``: seconds between
  streamed chunks (0 means no pause at all).
* ``fault``: makes the turn fail, see below.

Fault fields:

* ``status`` (400-599), ``message``, ``retry_after``: answer with that HTTP
  error, an OpenAI error body and a ``Retry-After`` header.
* ``drop_after``: after that many SSE events, cut the connection mid-body.
* ``stall_after`` + ``stall``: after that many events, send nothing for
  ``stall`` seconds, then carry on.
* ``garbage``: the event after the first is ``data: {not json``.
* ``no_finish``: no chunk carries a ``finish_reason``; ``[DONE]`` still ends
  the stream.
* ``times``: the fault hits only the first N attempts at this turn (counted
  per script and turn index); afterwards the turn answers normally. Default:
  every attempt.

Without ``stream: true`` the stream faults degrade sensibly: ``drop_after``
cuts the JSON body in half, ``stall`` delays the answer, ``garbage`` answers
``{not json`` and ``no_finish`` gives ``finish_reason: null``.

How tool calls go on the wire: a function call streams a first delta
``{"index": i, "id": ..., "type": "function", "function": {"name": ...,
"arguments": ""}}`` and then the arguments in 4 even pieces as
``{"index": i, "function": {"arguments": piece}}``. A custom call does the same
with ``{"index": i, "id": ..., "type": "custom", "custom": {"name": ...,
"input": ""}}`` followed by ``{"index": i, "custom": {"input": piece}}`` (the
openai SDK has no delta type for custom calls; this mirrors its
``ChatCompletionMessageCustomToolCall`` and the function deltas). Without
stream the message has ``{"id", "type": "custom", "custom": {"name", "input"}}``.

Logprobs: a request with ``logprobs: true`` gets fake but deterministic log
probabilities, enough to test the plumbing without a tokenizer. Each streamed
content piece is one token; its chunk carries ``choices[0].logprobs =
{"content": [{"token": piece, "logprob": -0.1, "bytes": <its UTF-8>,
"top_logprobs": [...]}]}``, and the non-streamed choice has ``logprobs =
{"content": [one such entry per piece]}``. ``top_logprobs: N`` (0-20) lists N
candidates: the token itself at -0.1, then ``<alt1>``, ``<alt2>``, ... at
-1.0, -2.0, .... Reasoning and tool calls carry no logprobs. ``top_logprobs``
above 0 without ``logprobs: true`` is a 400, as on OpenAI.

Invariants: the dataclasses here are frozen and already valid; everything
that comes from JSON is checked by ``Script.from_dict``, which raises
:class:`~stepline.errors.InvalidRequest` naming the bad field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stepline.errors import InvalidRequest

__all__ = [
    "Fault",
    "FinishReason",
    "Script",
    "ScriptedCall",
    "ScriptedCustomToolCall",
    "ScriptedToolCall",
    "ScriptedUsage",
    "Turn",
]

FinishReason = Literal["stop", "tool_calls", "length", "content_filter"]


@dataclass(frozen=True, kw_only=True)
class ScriptedToolCall:
    """A function tool call; ``arguments`` is an object or raw (maybe broken) JSON text."""

    name: str
    arguments: Mapping[str, Any] | str = dataclasses.field(default_factory=dict)
    id: str | None = None
    kind: Literal["function"] = "function"

    @property
    def arguments_json(self) -> str:
        """The arguments exactly as they are streamed."""
        if isinstance(self.arguments, str):
            return self.arguments
        return orjson.dumps(self.arguments).decode()


@dataclass(frozen=True, kw_only=True)
class ScriptedCustomToolCall:
    """A custom tool call: the model writes ``input`` as free text, not JSON arguments."""

    name: str
    input: str
    id: str | None = None
    kind: Literal["custom"] = "custom"


#: one tool call of a turn, told apart by ``kind``
ScriptedCall = ScriptedToolCall | ScriptedCustomToolCall


@dataclass(frozen=True, kw_only=True)
class ScriptedUsage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, kw_only=True)
class Fault:
    """How a turn fails; ``times=None`` means on every attempt."""

    status: int | None = None
    message: str = "scripted fault"
    retry_after: float | None = None
    times: int | None = None
    drop_after: int | None = None
    stall_after: int | None = None
    stall: float = 0.0
    garbage: bool = False
    no_finish: bool = False


@dataclass(frozen=True, kw_only=True)
class Turn:
    """One scripted answer of the model."""

    content: str | None = None
    reasoning: str | None = None
    tool_calls: tuple[ScriptedCall, ...] = ()
    usage: ScriptedUsage | None = None
    finish_reason: FinishReason | None = None
    delay: float = 0.0
    token_delay: float = 0.0
    chunk_size: int = 1
    fault: Fault | None = None

    def __post_init__(self) -> None:
        # Guards for turns built in Python; JSON input is checked by from_dict first.
        if self.chunk_size < 1:
            raise InvalidRequest("chunk_size must be at least 1", param="chunk_size")
        if self.delay < 0 or self.token_delay < 0:
            raise InvalidRequest("delays must not be negative", param="delay")


@dataclass(frozen=True, kw_only=True)
class Script:
    """The turns a scripted model plays; ``repeat_last`` answers extra calls with the last."""

    turns: tuple[Turn, ...]
    repeat_last: bool = False

    def __post_init__(self) -> None:
        if not self.turns:
            raise InvalidRequest("a script needs at least one turn", param="turns")

    def turn(self, index: int) -> Turn | None:
        """The turn answering the ``index``-th call, or None when the script is over."""
        if index < len(self.turns):
            return self.turns[index]
        return self.turns[-1] if self.repeat_last else None

    @classmethod
    def from_dict(cls, data: Any) -> Script:
        """Validate a decoded JSON script; raises InvalidRequest naming the bad field."""
        if not isinstance(data, Mapping):
            raise InvalidRequest("a script must be a JSON object with a 'turns' list")
        try:
            spec = _ScriptSpec.model_validate(data)
        except ValidationError as exc:
            raise _invalid(exc) from None
        return spec.build()

    @classmethod
    def from_json(cls, text: str | bytes) -> Script:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"a script must be valid JSON: {exc}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form that ``from_dict`` reads back; None fields are left out."""
        return dataclasses.asdict(self, dict_factory=_without_none)


def _without_none(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # asdict keeps tuples; JSON (and the strict parser) wants lists
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in pairs
        if value is not None
    }


def _invalid(exc: ValidationError) -> InvalidRequest:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] in {"model_type", "model_attributes_type", "dict_type"}:
            message = "should be a JSON object"
        problems.append(f"{where}: {message}" if where else message)
    first = exc.errors()[0]["loc"]
    param = ".".join(str(part) for part in first) or None
    return InvalidRequest("invalid script: " + "; ".join(problems), param=param)


# --- the JSON edge: pydantic models that only exist to validate and convert ---

NonNegative = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _ToolCallSpec(_Spec):
    kind: Literal["function", "custom"] = "function"
    name: str = Field(min_length=1)
    arguments: Any = Field(default_factory=dict)
    input: str | None = None
    id: str | None = Field(default=None, min_length=1)

    @field_validator("arguments")
    @classmethod
    def _object_or_text(cls, value: Any) -> dict[str, Any] | str:
        if not isinstance(value, dict | str):
            raise ValueError("arguments must be a JSON object or a string")
        return value

    @model_validator(mode="after")
    def _fields_of_its_kind(self) -> _ToolCallSpec:
        if self.kind == "custom":
            # to_dict never writes arguments for a custom call, so any is a mistake
            if "arguments" in self.model_fields_set:
                raise ValueError("a custom tool call takes input, not arguments")
            if self.input is None:
                raise ValueError("a custom tool call needs input (a string)")
        elif self.input is not None:
            raise ValueError('input is for custom tool calls ("kind": "custom")')
        return self

    def build(self) -> ScriptedCall:
        if self.input is not None:  # only a custom call has input, checked above
            return ScriptedCustomToolCall(name=self.name, input=self.input, id=self.id)
        return ScriptedToolCall(name=self.name, arguments=self.arguments, id=self.id)


class _UsageSpec(_Spec):
    prompt_tokens: Count
    completion_tokens: Count


class _FaultSpec(_Spec):
    status: int | None = Field(default=None, ge=400, le=599)
    message: str = "scripted fault"
    retry_after: NonNegative | None = None
    times: int | None = Field(default=None, ge=1)
    drop_after: Count | None = None
    stall_after: Count | None = None
    stall: NonNegative = 0.0
    garbage: bool = False
    no_finish: bool = False

    @model_validator(mode="after")
    def _coherent(self) -> _FaultSpec:
        stream_faults = (
            self.drop_after is not None,
            self.stall_after is not None,
            self.garbage,
            self.no_finish,
        )
        if self.status is None and not any(stream_faults):
            raise ValueError("a fault needs status, drop_after, stall_after, garbage or no_finish")
        if self.status is not None and any(stream_faults):
            raise ValueError("status cannot be combined with stream faults")
        if self.retry_after is not None and self.status is None:
            raise ValueError("retry_after needs a status")
        if (self.stall_after is None) != (self.stall == 0):
            raise ValueError("stall_after and a positive stall go together")
        return self


class _TurnSpec(_Spec):
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[_ToolCallSpec] = Field(default_factory=list)
    usage: _UsageSpec | None = None
    finish_reason: FinishReason | None = None
    delay: NonNegative = 0.0
    token_delay: NonNegative = 0.0
    chunk_size: int = Field(default=1, ge=1)
    fault: _FaultSpec | None = None

    def build(self) -> Turn:
        return Turn(
            content=self.content,
            reasoning=self.reasoning,
            tool_calls=tuple(call.build() for call in self.tool_calls),
            usage=ScriptedUsage(**self.usage.model_dump()) if self.usage else None,
            finish_reason=self.finish_reason,
            delay=self.delay,
            token_delay=self.token_delay,
            chunk_size=self.chunk_size,
            fault=Fault(**self.fault.model_dump()) if self.fault else None,
        )


class _ScriptSpec(_Spec):
    turns: list[_TurnSpec] = Field(min_length=1)
    repeat_last: bool = False

    def build(self) -> Script:
        return Script(
            turns=tuple(turn.build() for turn in self.turns), repeat_last=self.repeat_last
        )
