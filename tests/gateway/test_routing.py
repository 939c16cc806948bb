"""Routing: weighted targets, failover before any output, cool-downs, per-target capacity."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stepline._config import Settings, load_settings
from stepline._upstream.client import ChatClient
from stepline._upstream.routing import TargetPool, UpstreamTarget, resolve_target
from stepline.errors import ConfigError
from stepline.scripted import Script, ScriptedModel, create_scripted_app, serve_app
from tests.gateway.conftest import Gateway, GatewayFactory

pytestmark = pytest.mark.timeout(30)


def _settings(**route: Any) -> Settings:
    return Settings.model_validate(
        {
            "upstreams": {
                "a": {"base_url": "http://a.test/v1", "api_key": "key-a", "max_concurrent": 1},
                "b": {"base_url": "http://b.test/v1/", "cooldown_after": 2, "cooldown_seconds": 30},
            },
            "models": [{"name": "m", **route}],
        }
    )


def test_a_route_with_targets_resolves_to_its_first_carrying_them_all() -> None:
    settings = _settings(
        targets=[
            {"upstream": "a", "weight": 3, "upstream_model": "big"},
            {"upstream": "b"},
        ]
    )
    target = resolve_target(settings, "m")
    assert target is not None
    assert (target.name, target.upstream_model, target.api_key) == ("a", "big", "key-a")
    assert [(c.name, c.weight, c.upstream_model, c.base_url) for c in target.candidates] == [
        ("a", 3.0, "big", "http://a.test/v1"),
        ("b", 1.0, "m", "http://b.test/v1"),
    ]
    assert "key-a" not in repr(target)
    # the single-upstream form stays one target without candidates
    single = resolve_target(_settings(upstream="b", upstream_model="x"), "m")
    assert single is not None
    assert (single.name, single.upstream_model, single.candidates) == ("b", "x", ())


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({"upstream": "a", "targets": [{"upstream": "b"}]}, "either upstream or targets"),
        ({}, "either upstream or targets"),
        ({"targets": [{"upstream": "nowhere"}]}, "unknown upstream 'nowhere'"),
        ({"targets": [{"upstream": "a", "weight": 0}]}, "greater than 0"),
    ],
)
def test_bad_routes_are_config_errors(route: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(
            overrides={
                "upstreams": {"a": {"base_url": "http://a/v1"}, "b": {"base_url": "http://b/v1"}},
                "models": [{"name": "m", **route}],
            }
        )


def _targets(settings: Settings) -> tuple[UpstreamTarget, UpstreamTarget]:
    target = resolve_target(settings, "m")
    assert target is not None
    a, b = target.candidates
    return a, b


def test_weights_share_the_first_place() -> None:
    settings = _settings(targets=[{"upstream": "a", "weight": 3}, {"upstream": "b", "weight": 1}])
    pool = TargetPool(rng=random.Random(7).random)
    candidates = _targets(settings)
    firsts = [pool.order(candidates)[0].name for _ in range(4000)]
    assert 2850 <= firsts.count("a") <= 3150


def test_a_prompt_cache_key_pins_a_conversation_to_one_target_in_weight_proportion() -> None:
    settings = _settings(targets=[{"upstream": "a", "weight": 3}, {"upstream": "b", "weight": 1}])
    pool = TargetPool(rng=random.Random(7).random)
    candidates = _targets(settings)
    for key in ("thread-1", "thread-2", "thread-3"):
        firsts = {pool.order(candidates, key)[0].name for _ in range(50)}
        assert len(firsts) == 1, key
    keyed = [pool.order(candidates, f"thread-{n}")[0].name for n in range(4000)]
    assert 2850 <= keyed.count("a") <= 3150


def test_a_pinned_target_that_cools_down_gives_way() -> None:
    now = [0.0]
    settings = _settings(targets=[{"upstream": "a"}, {"upstream": "b"}])
    pool = TargetPool(clock=lambda: now[0], rng=lambda: 0.5)
    candidates = _targets(settings)
    pinned = pool.order(candidates, "thread")[0]
    for _ in range(pinned.config.cooldown_after):
        pool.failed(pinned)
    assert pool.order(candidates, "thread")[0].name != pinned.name


def test_a_failing_target_cools_down_and_comes_back() -> None:
    now = [0.0]
    settings = _settings(targets=[{"upstream": "a"}, {"upstream": "b", "weight": 5}])
    pool = TargetPool(clock=lambda: now[0], rng=lambda: 0.5)
    a, b = _targets(settings)
    assert [t.name for t in pool.order([a, b])] == ["b", "a"]  # the heavier first
    assert pool.failed(b) is False
    assert pool.failed(b) is True  # cooldown_after = 2
    assert [t.name for t in pool.order([a, b])] == ["a", "b"]  # still tried, but last
    now[0] += 29.0
    assert pool.cooling("b")
    now[0] += 1.0
    assert not pool.cooling("b")
    assert [t.name for t in pool.order([a, b])] == ["b", "a"]
    assert pool.failed(b) is True  # one more failure after a cool-down: out again
    pool.succeeded(b)
    assert not pool.cooling("b")
    assert pool.failed(b) is False  # a success starts the count again


async def test_a_target_at_capacity_goes_after_those_with_room() -> None:
    settings = _settings(targets=[{"upstream": "a", "weight": 5}, {"upstream": "b"}])
    pool = TargetPool(rng=lambda: 0.5)
    a, b = _targets(settings)
    assert [t.name for t in pool.order([a, b])] == ["a", "b"]
    await pool.acquire(a)  # max_concurrent = 1
    assert [t.name for t in pool.order([a, b])] == ["b", "a"]
    pool.release(a)
    assert [t.name for t in pool.order([a, b])] == ["a", "b"]


@asynccontextmanager
async def _two_targets(
    gateway_factory: GatewayFactory, **bad_upstream: Any
) -> AsyncIterator[tuple[Gateway, ScriptedModel]]:
    """A stack whose model ``routed`` has targets ``bad`` (weight 3, tried first) and the
    stack's own scripted upstream (weight 1)."""
    bad = ScriptedModel(demo_token_delay=0)
    async with serve_app(create_scripted_app(bad)) as bad_url:

        def add_targets(settings: dict[str, Any]) -> None:
            settings["upstreams"]["bad"] = {
                "base_url": f"{bad_url}/v1",
                "max_retries": 0,
                "cooldown_after": 2,
                "cooldown_seconds": 300,
                **bad_upstream,
            }
            settings["models"].append(
                {
                    "name": "routed",
                    "targets": [
                        {"upstream": "bad", "weight": 3, "upstream_model": "up"},
                        {"upstream": "scripted", "weight": 1, "upstream_model": "up"},
                    ],
                }
            )

        # a constant draw makes the weighted order deterministic: heaviest first
        chat = ChatClient(pool=TargetPool(rng=lambda: 0.5))
        try:
            gw = await gateway_factory(change=add_targets, chat=chat)
            yield gw, bad
        finally:
            await chat.aclose()


def _metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def test_a_target_answering_500_fails_over_then_cools_down(
    gateway_factory: GatewayFactory,
) -> None:
    async with _two_targets(gateway_factory) as (gw, bad):
        bad.register("up", Script.from_dict({"turns": [{"fault": {"status": 500}}]}))
        gw.script("up", [{"content": "served by the healthy target"}], repeat_last=True)
        client = gw.client(None)
        for _ in range(4):
            response = await client.responses.create(model="routed", input="hi")
            assert response.status == "completed"
            assert response.output_text == "served by the healthy target"
        chat = await gw.http.post(
            "/v1/chat/completions",
            json={"model": "routed", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 200
        assert chat.json()["choices"][0]["message"]["content"] == "served by the healthy target"

        # two failures took it out of rotation: it was never tried again
        assert len(bad.requests("up")) == 2
        assert len(gw.model.requests("up")) == 5
        metrics = (await gw.http.get("/metrics")).text
        assert (
            _metric(metrics, "stepline_upstream_errors_total", target="bad", kind="http_500") == 2
        )
        assert _metric(metrics, "stepline_upstream_cooldowns_total", target="bad") == 1
        assert (
            _metric(metrics, "stepline_upstream_request_duration_seconds_count", target="scripted")
            == 5
        )


async def test_a_connection_error_fails_over_too(gateway_factory: GatewayFactory) -> None:
    async with _two_targets(gateway_factory, base_url="http://127.0.0.1:9/v1") as (gw, _):
        gw.script("up", [{"content": "still here"}], repeat_last=True)
        response = await gw.client(None).responses.create(model="routed", input="hi")
        assert response.output_text == "still here"
        metrics = (await gw.http.get("/metrics")).text
        assert _metric(metrics, "stepline_upstream_errors_total", target="bad", kind="connect") == 1


async def test_a_client_error_is_not_failed_over(gateway_factory: GatewayFactory) -> None:
    async with _two_targets(gateway_factory) as (gw, bad):
        bad.register(
            "up",
            Script.from_dict({"turns": [{"fault": {"status": 400, "message": "bad input"}}]}),
        )
        gw.script("up", [{"content": "never"}], repeat_last=True)
        response = await gw.client(None).responses.create(model="routed", input="hi")
        assert response.status == "failed"
        assert response.error is not None
        assert "bad input" in response.error.message
        chat = await gw.http.post(
            "/v1/chat/completions",
            json={"model": "routed", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 400
        assert chat.json()["error"]["message"] == "bad input"
        assert gw.model.requests("up") == []


async def test_when_every_target_fails_the_last_failure_is_reported(
    gateway_factory: GatewayFactory,
) -> None:
    async with _two_targets(gateway_factory) as (gw, bad):
        bad.register("up", Script.from_dict({"turns": [{"fault": {"status": 500}}]}))
        gw.script("up", [{"fault": {"status": 503, "message": "overloaded"}}], repeat_last=True)
        response = await gw.client(None).responses.create(model="routed", input="hi")
        assert response.status == "failed"
        assert response.error is not None
        assert "overloaded" in response.error.message
        chat = await gw.http.post(
            "/v1/chat/completions",
            json={"model": "routed", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 503
