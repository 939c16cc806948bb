"""Model routing: which upstream serves a client's model name, and under what name.

A client names a model; :func:`resolve_target` turns that name into an
:class:`UpstreamTarget` holding everything one call needs (URL, key, the
upstream's own model name, timeouts and retry policy). The catch-all route
forwards any name unchanged. API keys are read from the config or environment
once per upstream and then reused, so a changed environment variable takes
effect on restart, not halfway through a run.
"""

from __future__ import annotations

from dataclasses import dataclass

from stepline.config import Settings, UpstreamConfig

__all__ = ["UpstreamTarget", "resolve_target"]


@dataclass(frozen=True, kw_only=True)
class UpstreamTarget:
    """One Chat Completions endpoint and the model name to ask it for."""

    #: the upstream's name in the config (``[upstreams.<name>]``)
    name: str
    #: ``.../v1`` without a trailing slash; ``/chat/completions`` is appended
    base_url: str
    api_key: str | None
    upstream_model: str
    config: UpstreamConfig


# Keyed by the upstream's name and its (frozen, hashable) config, so two
# settings objects that reuse a name for different endpoints never share a key.
_api_keys: dict[tuple[str, UpstreamConfig], str | None] = {}


def _api_key(name: str, config: UpstreamConfig) -> str | None:
    key = (name, config)
    try:
        return _api_keys[key]
    except KeyError:
        # A missing environment variable raises ConfigError and is not cached.
        resolved = _api_keys[key] = config.resolved_api_key()
        return resolved


def resolve_target(settings: Settings, model: str) -> UpstreamTarget | None:
    """The target serving ``model``, or None when no route (and no catch-all) matches."""
    route = settings.route_for(model)
    if route is None:
        return None
    config = settings.upstreams[route.upstream]
    return UpstreamTarget(
        name=route.upstream,
        base_url=config.base_url.rstrip("/"),
        api_key=_api_key(route.upstream, config),
        upstream_model=route.upstream_model or model,
        config=config,
    )
