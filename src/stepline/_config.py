"""Configuration: one TOML file plus environment variables, validated once at start-up.

The file names upstreams, models and server tools; the environment fills in
secrets (``api_key_env``, ``env:NAME`` header values) so the file itself can
be committed. Command-line flags (``--upstream``, ``--database``...) override
the file. Every validation error is a :class:`~stepline.errors.ConfigError`
that names the bad field.

Example::

    [limits]
    max_iterations = 10

    [upstreams.local]
    base_url = "http://127.0.0.1:8000/v1"
    api_key_env = "LOCAL_API_KEY"

    [[models]]
    name = "llama"
    upstream = "local"
    upstream_model = "meta-llama/Llama-3.1-8B-Instruct"
    tools = ["weather"]

    [default_model]          # any other model name
    upstream = "local"

    [[models]]               # several weighted targets, with failover
    name = "big"
    targets = [
      { upstream = "local", weight = 3, upstream_model = "qwen3-32b" },
      { upstream = "spare", weight = 1 },
    ]

    [tools.weather]
    type = "http"
    description = "Current weather for a city"
    url = "http://127.0.0.1:9000/weather"
    parameters = { type = "object", properties = { city = { type = "string" } } }

    [keys.alice]             # an API key; only its SHA-256 hash is stored
    hash = "sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
    models = ["llama", "big"]
    tools = ["weather"]
    rate = { requests_per_second = 5, burst = 10 }
    max_concurrent = 4
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from stepline.errors import ConfigError

__all__ = [
    "AgentToolConfig",
    "HttpToolConfig",
    "KeyConfig",
    "LimitsConfig",
    "McpSourceConfig",
    "ModelRoute",
    "ProtocolConfig",
    "RateConfig",
    "Settings",
    "TargetConfig",
    "TimeoutsConfig",
    "ToolConfig",
    "TracingConfig",
    "UpstreamConfig",
    "load_settings",
    "parse_duration",
    "resolve_secret",
]

DEFAULT_DATABASE_URL = "sqlite:///stepline.db"

#: the hosted tool types a server tool may play (``protocol.hosted_tools``)
_HOSTED_TYPES = frozenset(
    {
        "web_search",
        "web_search_preview",
        "file_search",
        "code_interpreter",
        "image_generation",
    }
)


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?)\s*([smhdw]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: Any) -> float:
    """Seconds from a duration: a positive number of seconds, or text with a unit
    (``"90s"``, ``"15m"``, ``"12h"``, ``"30d"``, ``"2w"``); a ValueError otherwise."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value.strip().lower())
        if match is not None:
            seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if seconds is None or not 0 < seconds < float("inf"):
        raise ValueError(
            "expected a positive duration: seconds, or a number with a unit "
            "(s, m, h, d, w) such as '30d' or '12h'"
        )
    return seconds


def _retention(value: Any) -> Any:
    """A ``retention`` value: ``"off"`` (kept as is), None, or a duration in seconds."""
    if value is None or value == "off":
        return value
    return parse_duration(value)


def _global_retention(value: Any) -> float | None:
    retention = _retention(value)
    return None if retention == "off" else retention


#: how long a response is stored after it was created: seconds; ``"off"`` never deletes
Retention = Annotated[float | Literal["off"] | None, BeforeValidator(_retention)]


class _Strict(BaseModel):
    # A rejected value is never echoed in the error: it may be a secret.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


def resolve_secret(value: str) -> str:
    """``env:NAME`` reads the environment variable NAME; anything else is literal."""
    if value.startswith("env:"):
        name = value[4:]
        try:
            return os.environ[name]
        except KeyError:
            raise ConfigError(f"environment variable {name} is not set") from None
    return value


class TimeoutsConfig(_Strict):
    """Upstream timeouts in seconds, one per phase of a call."""

    connect: float = 10.0
    first_byte: float = 120.0
    chunk: float = 60.0
    total: float = 600.0


class UpstreamConfig(_Strict):
    """One OpenAI-compatible Chat Completions endpoint."""

    base_url: str
    #: a literal key (or ``env:NAME``); never shown in a repr
    api_key: str | None = Field(default=None, repr=False)
    api_key_env: str | None = None
    stream: bool = True
    timeouts: TimeoutsConfig = TimeoutsConfig()
    max_retries: int = Field(default=2, ge=0)
    retry_deadline: float = Field(default=30.0, ge=0)
    #: forward ``reasoning.effort`` as ``reasoning_effort``
    reasoning_effort: bool = False
    #: ``custom`` (freeform) tools: ``function`` offers each as a function with one
    #: string argument ``input``; ``native`` as a Chat Completions custom tool
    custom_tools: Literal["function", "native"] = "function"
    #: a tool result's images and files: in the tool message (``native``), or in a
    #: user message right after the tool messages (``user_message``, for upstreams
    #: whose tool messages take text only)
    tool_parts: Literal["native", "user_message"] = "user_message"
    #: send earlier reasoning back on assistant messages, in this field (``none``: don't)
    reasoning_replay: Literal["none", "reasoning_content", "reasoning"] = "none"
    #: the upstream takes Chat Completions ``file`` parts (PDFs...); text files always go
    file_parts: bool = False
    #: calls in flight to this upstream at once (from every route); None: no cap
    max_concurrent: int | None = Field(default=None, ge=1)
    #: consecutive failures (connection, timeout, 429, 5xx) that take it out of rotation
    cooldown_after: int = Field(default=3, ge=1)
    #: seconds it stays out before it is tried again
    cooldown_seconds: float = Field(default=30.0, ge=0)
    #: the model's context window in tokens (``truncation: "auto"`` keeps within it, and
    #: ``"disabled"`` fails before calling when it would overflow); None: the upstream decides
    context_window: int | None = Field(default=None, ge=1)
    #: how its tokens are counted (``/v1/responses/input_tokens``, truncation): ``vllm``
    #: (``POST /tokenize`` beside ``/v1``), ``llama.cpp`` (``/apply-template`` then
    #: ``/tokenize``), or the URL of a vLLM-shaped ``/tokenize``; None: not counted
    tokenize: str | None = Field(default=None, pattern=r"^(vllm|llama\.cpp|https?://.+)$")

    def resolved_api_key(self) -> str | None:
        if self.api_key_env:
            return resolve_secret(f"env:{self.api_key_env}")
        if self.api_key:
            return resolve_secret(self.api_key)
        return None


class TargetConfig(_Strict):
    """One upstream a model route may send a call to, and how often (``weight``)."""

    upstream: str
    upstream_model: str | None = None
    weight: float = Field(default=1.0, gt=0)


class ModelRoute(_Strict):
    """A model name clients use, mapped to an upstream (or weighted ``targets``)
    and its own model name there."""

    name: str = "*"
    upstream: str | None = None
    upstream_model: str | None = None
    targets: tuple[TargetConfig, ...] = ()
    tools: tuple[str, ...] = ()
    #: this model's context window in tokens; overrides its upstream's ``context_window``
    context_window: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_form(self) -> ModelRoute:
        if (self.upstream is None) == (not self.targets):
            raise ValueError(f"model {self.name!r} needs either upstream or targets, not both")
        return self

    def target_list(self) -> tuple[TargetConfig, ...]:
        """Every target of the route; the single ``upstream`` form is one target."""
        if self.targets:
            return self.targets
        assert self.upstream is not None
        return (TargetConfig(upstream=self.upstream, upstream_model=self.upstream_model),)


class HttpToolConfig(_Strict):
    """A server tool that POSTs the model's arguments as JSON to a fixed URL."""

    type: Literal["http"] = "http"
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    url: str
    #: values may be secrets (``env:NAME`` reads the environment); never shown in a repr
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    timeout: float = Field(default=30.0, gt=0)
    #: times a call is tried again after a connection error, a timeout or a 5xx
    #: (the same Idempotency-Key each time); 0: never
    retries: int = Field(default=0, ge=0, le=10)
    #: longer outputs are cut for the model; default ``limits.max_tool_output_chars``
    max_output_chars: int | None = Field(default=None, ge=1)

    def resolved_headers(self) -> dict[str, str]:
        return {name: resolve_secret(value) for name, value in self.headers.items()}

    def secret_values(self) -> tuple[str, ...]:
        """Header values read from the environment (``env:NAME``): never shown anywhere."""
        return tuple(
            resolve_secret(value) for value in self.headers.values() if value.startswith("env:")
        )


class AgentToolConfig(_Strict):
    """A server tool that runs a nested agent loop; its final text is the output."""

    type: Literal["agent"] = "agent"
    description: str = ""
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {
            "type": "object",
            "properties": {"input": {"type": "string", "description": "The task for the agent"}},
            "required": ["input"],
        }
    )
    model: str
    instructions: str | None = None
    tools: tuple[str, ...] = ()


ToolConfig = Annotated[HttpToolConfig | AgentToolConfig, Field(discriminator="type")]


class LimitsConfig(_Strict):
    """Caps and loop behaviour."""

    max_iterations: int = Field(default=10, ge=1)
    max_depth: int = Field(default=8, ge=0)
    tool_concurrency: int = Field(default=8, ge=1)
    #: ``model``: a tool error becomes the tool's result; ``fail``: it fails the response
    tool_errors: Literal["model", "fail"] = "model"
    #: ``all``: a fan-out runs to the end; ``fail_fast``: the first failed call
    #: cancels its running siblings (with ``tool_errors = "fail"``, the response fails)
    tool_join: Literal["all", "fail_fast"] = "all"
    #: how strictly a transcript is checked before each model call
    validation: Literal["strict", "lenient", "off"] = "lenient"
    lease_seconds: float = Field(default=15.0, gt=0)
    #: a ``/v1`` request body larger than this is refused (413)
    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    #: items in one request's ``input`` (or ``messages`` of a chat completion)
    max_input_items: int = Field(default=2048, ge=1)
    #: a server tool's output longer than this reaches the model truncated
    max_tool_output_chars: int = Field(default=100_000, ge=1)


class RateConfig(_Strict):
    """A token bucket: ``requests_per_second`` on average, ``burst`` at once."""

    requests_per_second: float = Field(gt=0)
    burst: int | None = Field(default=None, ge=1)

    @property
    def capacity(self) -> float:
        return float(self.burst) if self.burst is not None else max(1.0, self.requests_per_second)


class KeyConfig(_Strict):
    """An API key: the SHA-256 hash of its token, and what it may do.

    ``models`` are client model names or shell patterns (``llama-*``); ``tools``
    are server tool names. Left out, either means "all".
    """

    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    models: tuple[str, ...] | None = None
    tools: tuple[str, ...] | None = None
    rate: RateConfig | None = None
    max_concurrent: int | None = Field(default=None, ge=1)
    #: an operator's key: it may read every key's responses, usage and the console
    admin: bool = False
    #: this key's responses are deleted this long after they were created (``"30d"``,
    #: ``"12h"``, seconds); ``"off"``: never; unset: the global ``retention``
    retention: Retention = None


class McpSourceConfig(BaseModel):
    """One MCP server: either a Streamable HTTP ``url`` or a stdio ``command``."""

    # A rejected value is never echoed in the error: it may be a secret.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: str | None = None
    #: sent with every HTTP request; values may be ``env:NAME``, read at connect time
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    #: extra environment of the stdio process; values may be ``env:NAME``
    env: dict[str, str] = Field(default_factory=dict, repr=False)
    #: MCP tool names the model may see and call; None: all of them
    allowed_tools: list[str] | None = None
    #: which calls wait for approval: none, all, or the named MCP tools
    require_approval: Literal["never", "always"] | list[str] = "never"
    #: seconds one call (or listing) may take, connecting and one reconnect included
    timeout: float = Field(default=30.0, gt=0)
    #: seconds a tool listing is reused before the server is asked again
    refresh_seconds: float = Field(default=300.0, ge=0)

    @model_validator(mode="after")
    def _one_transport(self) -> McpSourceConfig:
        if (self.url is None) == (self.command is None):
            raise ValueError("an MCP source needs exactly one of url and command")
        if self.url is not None and (self.args or self.env):
            raise ValueError("args and env apply to a stdio command, not to a url")
        if self.command is not None and self.headers:
            raise ValueError("headers apply to a url, not to a stdio command")
        return self

    def secret_values(self) -> tuple[str, ...]:
        """Values read from the environment (``env:NAME``): never shown anywhere.
        One that cannot be resolved is skipped: it cannot leak either."""
        found: list[str] = []
        for value in (*self.headers.values(), *self.env.values()):
            if value.startswith("env:"):
                with contextlib.suppress(ConfigError):
                    if secret := resolve_secret(value):
                        found.append(secret)
        return tuple(found)


class ProtocolConfig(_Strict):
    """How the Responses API is spoken where clients differ or a request asks too much."""

    #: reasoning stream events named as OpenAI's SDKs expect (``response.reasoning_text.*``)
    #: or as the Open Responses schema does (``response.reasoning.*``); a request may pick
    #: with the ``Stepline-Reasoning-Events`` header
    reasoning_events: Literal["openai", "open_responses"] = "openai"
    #: a hosted tool (``web_search``...) with no server tool mapped to it: left out of
    #: what the model sees and named in ``Stepline-Dropped-Tools`` (``drop``), or a 400
    unmapped_hosted_tools: Literal["drop", "reject"] = "drop"
    #: a request field stepline does not know: named in ``Stepline-Ignored-Fields`` and
    #: the log (``ignore``), or a 400 ``unknown_parameter`` (``reject``)
    unknown_fields: Literal["ignore", "reject"] = "ignore"
    #: keys that seal ``encrypted_content`` (32 bytes, base64 or hex; each literal or
    #: ``env:NAME``); the first seals, all open. Default: ``STEPLINE_SEALING_KEYS``
    #: (comma-separated), else a random key per process
    sealing_keys: tuple[str, ...] = Field(default=(), repr=False)
    #: server tools that play hosted tools, by hosted type (``web_search = "search"``)
    hosted_tools: dict[str, str] = Field(default_factory=dict)

    def resolved_sealing_keys(self) -> tuple[str, ...]:
        if self.sealing_keys:
            return tuple(resolve_secret(key) for key in self.sealing_keys)
        from_env = os.environ.get("STEPLINE_SEALING_KEYS", "")
        return tuple(key for key in (part.strip() for part in from_env.split(",")) if key)


class TracingConfig(_Strict):
    """OpenTelemetry traces; a field left unset falls back to its standard ``OTEL_*`` variable."""

    #: export traces; unset: on once ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``)
    #: is set or ``OTEL_TRACES_EXPORTER`` names an exporter, off with ``OTEL_SDK_DISABLED``
    enabled: bool | None = None
    #: the OTLP/HTTP collector's base URL (``/v1/traces`` is appended)
    endpoint: str | None = None
    #: the ``service.name`` of the spans; unset: ``OTEL_SERVICE_NAME``, else ``stepline``
    service_name: str | None = None
    #: record prompts, completions, tool arguments and results on the spans; unset:
    #: ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``
    capture_content: bool | None = None


class Settings(_Strict):
    """Everything stepline needs to run, validated."""

    database_url: str = DEFAULT_DATABASE_URL
    #: database connections each process keeps at most (a bounded pool, no overflow)
    database_pool_size: int = Field(default=10, ge=1, le=1000)
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    models: tuple[ModelRoute, ...] = ()
    default_model: ModelRoute | None = None
    tools: dict[str, ToolConfig] = Field(default_factory=dict)
    limits: LimitsConfig = LimitsConfig()
    keys: dict[str, KeyConfig] = Field(default_factory=dict)
    #: MCP servers as tool sources, by label; a model route names a label among its tools
    mcp: dict[str, McpSourceConfig] = Field(default_factory=dict)
    #: server URLs a request may name in an ``{"type": "mcp"}`` tool (``*`` ends a prefix)
    mcp_allowed_urls: tuple[str, ...] = ()
    protocol: ProtocolConfig = ProtocolConfig()
    tracing: TracingConfig = TracingConfig()
    demo: bool = False
    #: responses are deleted this long after they were created (``"30d"``, ``"12h"``,
    #: seconds), unless their key sets its own; unset or ``"off"``: never
    retention: Annotated[float | None, BeforeValidator(_global_retention)] = None
    #: how often a server looks for responses past their retention
    retention_interval: Annotated[float, BeforeValidator(parse_duration)] = 60.0

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        routes = [*self.models, *([self.default_model] if self.default_model else [])]
        for route in routes:
            for target in route.target_list():
                if target.upstream not in self.upstreams:
                    raise ValueError(
                        f"model {route.name!r} names unknown upstream {target.upstream!r}"
                    )
            for tool_name in route.tools:
                if tool_name not in self.tools and tool_name not in self.mcp:
                    raise ValueError(f"model {route.name!r} names unknown tool {tool_name!r}")
        for label in self.mcp:
            if label in self.tools:
                raise ValueError(f"MCP server {label!r} has the name of a tool")
        for name, tool in self.tools.items():
            if isinstance(tool, AgentToolConfig):
                for sub in tool.tools:
                    if sub not in self.tools:
                        raise ValueError(f"agent tool {name!r} names unknown tool {sub!r}")
            elif tool.max_output_chars is None:
                # the global limit, unless the tool sets its own
                self.tools[name] = tool.model_copy(
                    update={"max_output_chars": self.limits.max_tool_output_chars}
                )
        for hosted, tool_name in self.protocol.hosted_tools.items():
            if hosted not in _HOSTED_TYPES:
                raise ValueError(
                    f"protocol.hosted_tools names {hosted!r}, which is not a hosted tool type "
                    f"({', '.join(sorted(_HOSTED_TYPES))})"
                )
            if tool_name not in self.tools:
                raise ValueError(f"protocol.hosted_tools.{hosted} names unknown tool {tool_name!r}")
        hashes: set[str] = set()
        for key_name, key in self.keys.items():
            if key.hash in hashes:
                raise ValueError(f"key {key_name!r} has the same hash as another key")
            hashes.add(key.hash)
            for tool_name in key.tools or ():
                if tool_name not in self.tools and tool_name not in self.mcp:
                    raise ValueError(f"key {key_name!r} names unknown tool {tool_name!r}")
        return self

    def secret_values(self) -> tuple[str, ...]:
        """Every secret the config resolves (upstream keys, tool and MCP headers and
        environment from ``env:``), to be kept out of replies, stored rows and logs. A secret
        that cannot be resolved is skipped: it cannot leak either."""
        found: list[str] = []
        for upstream in self.upstreams.values():
            try:
                key = upstream.resolved_api_key()
            except ConfigError:
                continue
            if key:
                found.append(key)
        for tool in self.tools.values():
            if isinstance(tool, HttpToolConfig):
                for header in tool.headers.values():
                    if header.startswith("env:"):
                        try:
                            value = resolve_secret(header)
                        except ConfigError:
                            continue
                        if value:
                            found.append(value)
        for source in self.mcp.values():
            found.extend(source.secret_values())
        return tuple(dict.fromkeys(found))

    def _environment_reads(self) -> Iterator[tuple[str, str]]:
        """``(field, value)`` of every value that may name an environment variable."""
        for name, upstream in self.upstreams.items():
            if upstream.api_key_env:
                yield f"upstreams.{name}.api_key_env", f"env:{upstream.api_key_env}"
            elif upstream.api_key:
                yield f"upstreams.{name}.api_key", upstream.api_key
        for name, tool in self.tools.items():
            if isinstance(tool, HttpToolConfig):
                for header, value in tool.headers.items():
                    yield f"tools.{name}.headers.{header}", value
        for label, source in self.mcp.items():
            for header, value in source.headers.items():
                yield f"mcp.{label}.headers.{header}", value
            for variable, value in source.env.items():
                yield f"mcp.{label}.env.{variable}", value
        for index, key in enumerate(self.protocol.sealing_keys):
            yield f"protocol.sealing_keys[{index}]", key

    def unset_variables(self) -> list[tuple[str, str]]:
        """Every environment variable the config reads (``api_key_env``, ``env:NAME``
        values) that is not set, as ``(variable, the field that names it)``."""
        return [
            (value[4:], field)
            for field, value in self._environment_reads()
            if value.startswith("env:") and value[4:] not in os.environ
        ]

    def check_environment(self) -> None:
        """Raise one :class:`ConfigError` naming every unset variable the config reads, so
        that a missing secret stops the start instead of failing requests later."""
        unset = self.unset_variables()
        if len(unset) == 1:
            ((variable, field),) = unset
            raise ConfigError(f"environment variable {variable} is not set (named by {field})")
        if unset:
            listed = ", ".join(f"{variable} ({field})" for variable, field in unset)
            raise ConfigError(f"environment variables not set: {listed}")

    def route_for(self, model: str) -> ModelRoute | None:
        """The route of a client model name, or the catch-all, or None."""
        for route in self.models:
            if route.name == model:
                return route
        return self.default_model


def load_settings(
    path: str | Path | None = None, *, overrides: dict[str, Any] | None = None
) -> Settings:
    """Read the TOML file (if any), apply ``overrides``, and validate once."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        where = f" {path}" if path is not None else ""
        raise ConfigError(f"invalid config{where}: {_describe_validation_error(exc)}") from exc


def _describe_validation_error(exc: ValidationError) -> str:
    """Every problem of ``exc`` on one line, each after the field it is about.

    pydantic's own text spreads over several lines per problem, with a link; a
    start-up error is read in a terminal or a service log, where one line is one
    event. The rejected input is never shown: it may be a secret."""
    problems: list[str] = []
    for error in exc.errors():
        message = " ".join(str(error["msg"]).removeprefix("Value error, ").split())
        field = ".".join(str(part) for part in error["loc"])
        problems.append(f"{field}: {message}" if field else message)
    return "; ".join(problems)
