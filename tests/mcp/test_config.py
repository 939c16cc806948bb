"""McpSourceConfig validation, server tool names, approval policy and server_tools().

None of these need a server: the source only connects when it lists or calls.
"""

from __future__ import annotations

import logging
import re

import pytest
from pydantic import ValidationError

from stepline._tools.mcp import McpSource, McpSourceConfig, McpToolInfo

pytestmark = pytest.mark.timeout(10)

VALID_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _source(label: str = "calc", **config: object) -> McpSource:
    return McpSource(
        label, McpSourceConfig.model_validate({"url": "http://127.0.0.1:1/mcp", **config})
    )


def test_config_defaults() -> None:
    config = McpSourceConfig(url="http://127.0.0.1:1/mcp")
    assert config.allowed_tools is None
    assert config.require_approval == "never"
    assert config.timeout == 30.0
    assert config.refresh_seconds == 300.0


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"url": "http://127.0.0.1:1/mcp", "command": "server"},
        {"url": "http://127.0.0.1:1/mcp", "args": ["-v"]},
        {"url": "http://127.0.0.1:1/mcp", "env": {"A": "b"}},
        {"command": "server", "headers": {"Authorization": "Bearer x"}},
        {"url": "http://127.0.0.1:1/mcp", "timeout": 0},
        {"url": "http://127.0.0.1:1/mcp", "require_approval": "sometimes"},
        {"url": "http://127.0.0.1:1/mcp", "transport": "sse"},
    ],
)
def test_config_rejects_invalid_sources(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        McpSourceConfig.model_validate(data)


def test_config_errors_and_repr_never_show_header_values() -> None:
    with pytest.raises(ValidationError) as caught:
        McpSourceConfig.model_validate(
            {"command": "server", "headers": {"Authorization": "Bearer hunter2"}}
        )
    assert "hunter2" not in str(caught.value)
    config = McpSourceConfig(url="http://x/mcp", headers={"Authorization": "Bearer hunter2"})
    assert "hunter2" not in repr(config)


def test_secret_values_are_the_resolved_env_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_TEST_TOKEN", "tok-12345678")
    monkeypatch.delenv("MCP_TEST_MISSING", raising=False)
    config = McpSourceConfig(
        url="http://x/mcp",
        headers={"A": "env:MCP_TEST_TOKEN", "B": "literal", "C": "env:MCP_TEST_MISSING"},
    )
    assert config.secret_values() == ("tok-12345678",)


def test_server_tool_names_are_prefixed_and_always_valid() -> None:
    assert _source("calc").tool_name("add") == "calc__add"
    odd = _source("my.server").tool_name("get weather")
    assert VALID_NAME.match(odd)
    assert odd.startswith("my_server__get_weather_")
    long_name = _source("x" * 40).tool_name("y" * 40)
    assert VALID_NAME.match(long_name)
    # names that differ only in characters the pattern forbids stay apart
    source = _source("s")
    assert source.tool_name("a.b") != source.tool_name("a_b")
    assert source.tool_name("a.b") != source.tool_name("a:b")
    assert source.tool_name("z" * 80) != source.tool_name("z" * 81)


def test_needs_approval_policies() -> None:
    assert not _source().needs_approval("add")
    assert _source(require_approval="always").needs_approval("add")
    listed = _source(require_approval=["delete"])
    assert listed.needs_approval("delete")
    assert listed.needs_approval("calc__delete")  # the server tool name works too
    assert not listed.needs_approval("add")
    assert not listed.needs_approval("calc__add")


def test_server_tools_shape_allow_list_and_bad_schemas(caplog: pytest.LogCaptureFixture) -> None:
    source = _source(allowed_tools=["add", "ping", "broken"])
    tools = [
        McpToolInfo(
            name="add",
            description="Add two integers",
            input_schema={"type": "object", "properties": {"a": {"type": "integer"}}},
        ),
        McpToolInfo(name="ping", description="", input_schema={}),
        McpToolInfo(name="broken", description="", input_schema={"type": 5}),
        McpToolInfo(name="hidden", description="", input_schema={"type": "object"}),
    ]
    with caplog.at_level(logging.WARNING, logger="stepline._tools.mcp"):
        built = source.server_tools(tools)
    assert [tool.name for tool in built] == ["calc__add", "calc__ping"]
    add, ping = built
    assert (add.label, add.display_name, add.description) == ("calc", "add", "Add two integers")
    assert add.parameters == tools[0].input_schema
    assert add.run is not None and add.agent is None
    assert ping.parameters == {"type": "object", "properties": {}}
    assert "broken" in caplog.text
