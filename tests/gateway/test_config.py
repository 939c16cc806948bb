"""The config sections of keys, limits and routing: defaults, validation, secrets."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from stepline._config import HttpToolConfig, Settings, load_settings
from stepline._server.auth import hash_token
from stepline.errors import ConfigError


def _settings(**extra: Any) -> dict[str, Any]:
    return {
        "upstreams": {"u": {"base_url": "http://u/v1", "api_key_env": "STEPLINE_TEST_CFG_KEY"}},
        "default_model": {"upstream": "u"},
        "tools": {
            "weather": {
                "type": "http",
                "url": "http://t/weather",
                "headers": {"Authorization": "env:STEPLINE_TEST_CFG_TOOL", "X-Plain": "visible"},
            },
            "big": {"type": "http", "url": "http://t/big", "max_output_chars": 7},
        },
        **extra,
    }


def test_defaults_are_sensible() -> None:
    settings = Settings.model_validate(_settings())
    assert settings.keys == {}
    assert settings.limits.max_request_bytes == 16 * 1024 * 1024
    assert settings.limits.max_input_items == 2048
    upstream = settings.upstreams["u"]
    assert (upstream.max_concurrent, upstream.cooldown_after, upstream.cooldown_seconds) == (
        None,
        3,
        30.0,
    )
    # an HTTP tool gets the global output cap unless it sets its own
    weather, big = settings.tools["weather"], settings.tools["big"]
    assert isinstance(weather, HttpToolConfig) and isinstance(big, HttpToolConfig)
    assert weather.max_output_chars == 100_000
    assert big.max_output_chars == 7


def test_keys_are_validated() -> None:
    good = {"hash": hash_token("t"), "tools": ["weather"], "rate": {"requests_per_second": 2}}
    settings = Settings.model_validate(_settings(keys={"a": good}))
    assert settings.keys["a"].rate is not None
    assert settings.keys["a"].rate.capacity == 2
    for keys, message in [
        ({"a": {"hash": "plain-token"}}, "hash"),
        ({"a": {"hash": hash_token("t"), "tools": ["nope"]}}, "unknown tool 'nope'"),
        ({"a": {"hash": hash_token("t")}, "b": {"hash": hash_token("t")}}, "same hash"),
        ({"a": {"hash": hash_token("t"), "max_concurrent": 0}}, "max_concurrent"),
        ({"a": {"hash": hash_token("t"), "rate": {"requests_per_second": 0}}}, "greater than 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_settings(overrides=_settings(keys=keys))


def test_secret_values_are_the_resolved_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.model_validate(_settings())
    assert settings.secret_values() == ()  # nothing set, nothing to hide
    monkeypatch.setenv("STEPLINE_TEST_CFG_KEY", "upstream-secret")
    monkeypatch.setenv("STEPLINE_TEST_CFG_TOOL", "tool-secret")
    assert settings.secret_values() == ("upstream-secret", "tool-secret")
    assert "tool-secret" not in repr(settings)
    literal = Settings.model_validate(
        {"upstreams": {"u": {"base_url": "http://u/v1", "api_key": "sk-literal"}}}
    )
    assert literal.secret_values() == ("sk-literal",)
    assert "sk-literal" not in repr(literal)


def test_the_readme_config_examples_are_valid() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    # blocks at the start of a line; one indented in a list item is a fragment of its own
    found = re.findall(r"^```toml\n(.*?)^```", readme, re.S | re.M)
    blocks = [tomllib.loads(block) for block in found]
    # the README also shows a client's config (Codex's ~/.codex/config.toml): not stepline's
    blocks = [block for block in blocks if "model_providers" not in block]
    merged: dict[str, Any] = {"upstreams": {}, "models": [], "tools": {}, "keys": {}}
    for block in blocks:
        for name, value in block.items():
            if name in ("upstreams", "tools", "keys"):
                merged[name].update(value)
            elif name == "models":
                merged["models"] += value
            elif name == "limits":
                merged["limits"] = {**merged.get("limits", {}), **value}
            else:
                merged[name] = value
    settings = Settings.model_validate(merged)
    assert {"alice"} <= set(settings.keys)
    assert [route.name for route in settings.models] == ["assistant", "big"]
    assert settings.limits.max_tool_output_chars == 100000


def test_every_variable_the_config_reads_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _settings(
        mcp={
            "remote": {"url": "http://m/mcp", "headers": {"Authorization": "env:STEPLINE_T_MCP_H"}},
            "local": {"command": "tool", "env": {"TOKEN": "env:STEPLINE_T_MCP_E", "X": "plain"}},
        },
        protocol={"sealing_keys": ["env:STEPLINE_T_SEAL"]},
    )
    data["upstreams"]["v"] = {"base_url": "http://v/v1", "api_key": "env:STEPLINE_T_LITERAL"}
    settings = Settings.model_validate(data)
    for name in ("STEPLINE_TEST_CFG_KEY", "STEPLINE_TEST_CFG_TOOL"):
        monkeypatch.delenv(name, raising=False)
    assert settings.unset_variables() == [
        ("STEPLINE_TEST_CFG_KEY", "upstreams.u.api_key_env"),
        ("STEPLINE_T_LITERAL", "upstreams.v.api_key"),
        ("STEPLINE_TEST_CFG_TOOL", "tools.weather.headers.Authorization"),
        ("STEPLINE_T_MCP_H", "mcp.remote.headers.Authorization"),
        ("STEPLINE_T_MCP_E", "mcp.local.env.TOKEN"),
        ("STEPLINE_T_SEAL", "protocol.sealing_keys[0]"),
    ]
    with pytest.raises(ConfigError, match=r"^environment variables not set: STEPLINE_TEST_CFG_KEY"):
        settings.check_environment()
    for name, _ in settings.unset_variables():
        monkeypatch.setenv(name, "")  # set, even empty, is set: a local upstream needs no key
    assert settings.unset_variables() == []
    settings.check_environment()


def test_an_invalid_config_is_one_line_naming_each_field(tmp_path: Path) -> None:
    path = tmp_path / "stepline.toml"
    path.write_text('[upstreams.u]\nbase_url = "http://u/v1"\nmax_retries = -1\ntypo = "sk-x"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert message == (
        f"invalid config {path}: upstreams.u.max_retries: Input should be greater than or "
        "equal to 0; upstreams.u.typo: Extra inputs are not permitted"
    )
