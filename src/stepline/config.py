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

    [tools.weather]
    type = "http"
    description = "Current weather for a city"
    url = "http://127.0.0.1:9000/weather"
    parameters = { type = "object", properties = { city = { type = "string" } } }
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stepline.errors import ConfigError

__all__ = [
    "AgentToolConfig",
    "HttpToolConfig",
    "LimitsConfig",
    "ModelRoute",
    "Settings",
    "TimeoutsConfig",
    "ToolConfig",
    "UpstreamConfig",
    "load_settings",
    "resolve_secret",
]

DEFAULT_DATABASE_URL = "sqlite:///stepline.db"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    api_key: str | None = None
    api_key_env: str | None = None
    stream: bool = True
    timeouts: TimeoutsConfig = TimeoutsConfig()
    max_retries: int = Field(default=2, ge=0)
    retry_deadline: float = Field(default=30.0, ge=0)
    #: forward ``reasoning.effort`` as ``reasoning_effort``
    reasoning_effort: bool = False

    def resolved_api_key(self) -> str | None:
        if self.api_key_env:
            return resolve_secret(f"env:{self.api_key_env}")
        if self.api_key:
            return resolve_secret(self.api_key)
        return None


class ModelRoute(_Strict):
    """A model name clients use, mapped to an upstream and its own model name."""

    name: str = "*"
    upstream: str
    upstream_model: str | None = None
    tools: tuple[str, ...] = ()


class HttpToolConfig(_Strict):
    """A server tool that POSTs the model's arguments as JSON to a fixed URL."""

    type: Literal["http"] = "http"
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=30.0, gt=0)

    def resolved_headers(self) -> dict[str, str]:
        return {name: resolve_secret(value) for name, value in self.headers.items()}


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


class Settings(_Strict):
    """Everything stepline needs to run, validated."""

    database_url: str = DEFAULT_DATABASE_URL
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)
    models: tuple[ModelRoute, ...] = ()
    default_model: ModelRoute | None = None
    tools: dict[str, ToolConfig] = Field(default_factory=dict)
    limits: LimitsConfig = LimitsConfig()
    demo: bool = False

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        routes = [*self.models, *([self.default_model] if self.default_model else [])]
        for route in routes:
            if route.upstream not in self.upstreams:
                raise ValueError(f"model {route.name!r} names unknown upstream {route.upstream!r}")
            for tool_name in route.tools:
                if tool_name not in self.tools:
                    raise ValueError(f"model {route.name!r} names unknown tool {tool_name!r}")
        for name, tool in self.tools.items():
            if isinstance(tool, AgentToolConfig):
                for sub in tool.tools:
                    if sub not in self.tools:
                        raise ValueError(f"agent tool {name!r} names unknown tool {sub!r}")
        return self

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
        raise ConfigError(f"invalid config: {exc}") from exc
