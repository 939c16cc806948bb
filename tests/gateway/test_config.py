"""The config sections of keys, limits and routing: defaults, validation, secrets."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from stepline.config import HttpToolConfig, Settings, load_settings
from stepline.errors import ConfigError
from stepline.server.auth import hash_token


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
    blocks = [tomllib.loads(block) for block in re.findall(r"```toml\n(.*?)```", readme, re.S)]
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
