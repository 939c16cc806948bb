"""Model routing: which upstream serves a client's model name, under what name, and
which of several targets takes the next call.

A client names a model; :func:`resolve_target` turns that name into an
:class:`UpstreamTarget` holding everything one call needs (URL, key, the
upstream's own model name, timeouts and retry policy). The catch-all route
forwards any name unchanged. A route with several weighted ``targets``
resolves to its first target carrying every target in ``candidates``; the
client picks among them per call through a :class:`TargetPool`.

API keys are read from the config or environment once per upstream and then
reused, so a changed environment variable takes effect on restart, not
halfway through a run.

Invariants of :class:`TargetPool` (one per process, shared by every call):

* Health and capacity are per upstream name: a target's model name is not a
  separate target, so a catch-all route cannot grow the pool without bound.
* A target that failed ``cooldown_after`` times in a row (connection error,
  timeout, 429, 5xx) is out of rotation for ``cooldown_seconds``; one
  success puts it back. Targets still cooling are tried last, never skipped:
  a route whose targets are all cooling still gets an answer if one recovered.
* ``max_concurrent`` bounds calls in flight per upstream. Targets with room
  come first; when none has room, the call waits for the first one.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stepline._chat.body import ChatDialect
from stepline._config import Settings, UpstreamConfig

__all__ = ["TargetPool", "UpstreamTarget", "resolve_target"]


@dataclass(frozen=True, kw_only=True)
class UpstreamTarget:
    """One Chat Completions endpoint and the model name to ask it for."""

    #: the upstream's name in the config (``[upstreams.<name>]``)
    name: str
    #: ``.../v1`` without a trailing slash; ``/chat/completions`` is appended
    base_url: str
    api_key: str | None = field(repr=False)
    upstream_model: str
    config: UpstreamConfig
    #: the share of calls this target gets among its route's candidates
    weight: float = 1.0
    #: every target of a route with several, this one first; empty for a lone target
    candidates: tuple[UpstreamTarget, ...] = ()

    @property
    def dialect(self) -> ChatDialect:
        """What this upstream takes beyond plain Chat Completions."""
        config = self.config
        return ChatDialect(
            reasoning_effort=config.reasoning_effort,
            native_custom=config.custom_tools == "native",
            tool_parts=config.tool_parts,
            reasoning_replay=None if config.reasoning_replay == "none" else config.reasoning_replay,
            file_parts=config.file_parts,
        )


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
    targets = []
    for entry in route.target_list():
        config = settings.upstreams[entry.upstream]
        targets.append(
            UpstreamTarget(
                name=entry.upstream,
                base_url=config.base_url.rstrip("/"),
                api_key=_api_key(entry.upstream, config),
                upstream_model=entry.upstream_model or model,
                config=config,
                weight=entry.weight,
            )
        )
    if len(targets) == 1:
        return targets[0]
    first = targets[0]
    return UpstreamTarget(
        name=first.name,
        base_url=first.base_url,
        api_key=first.api_key,
        upstream_model=first.upstream_model,
        config=first.config,
        weight=first.weight,
        candidates=tuple(targets),
    )


@dataclass
class _Health:
    failures: int = 0
    cooling_until: float = 0.0


class TargetPool:
    """Health (cool-downs) and capacity (``max_concurrent``) of every upstream.

    ``clock`` is monotonic seconds; ``rng`` draws in [0, 1) for the weighted
    order (tests pass a constant to make the heaviest target go first).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._clock = clock
        self._rng = rng
        self._health: dict[str, _Health] = {}
        self._slots: dict[tuple[str, int], asyncio.Semaphore] = {}

    def order(
        self, candidates: Sequence[UpstreamTarget], affinity: str | None = None
    ) -> list[UpstreamTarget]:
        """The order to try ``candidates`` in for one call: targets with room first,
        then those without, each group in weighted random order; cooling targets last.

        With an ``affinity`` key (a request's ``prompt_cache_key``) the order
        within each group is fixed for that key, still in proportion to the
        weights (weighted rendezvous hashing), so one conversation keeps
        hitting the target whose prefix cache holds it."""
        if len(candidates) == 1:
            return list(candidates)
        now = self._clock()
        ready: list[UpstreamTarget] = []
        full: list[UpstreamTarget] = []
        cooling: list[UpstreamTarget] = []
        for target in candidates:
            if self.cooling(target.name, now):
                cooling.append(target)
            elif self._has_room(target):
                ready.append(target)
            else:
                full.append(target)
        cooling.sort(key=lambda target: self._health[target.name].cooling_until)
        return self._weighted(ready, affinity) + self._weighted(full, affinity) + cooling

    def _weighted(
        self, targets: list[UpstreamTarget], affinity: str | None = None
    ) -> list[UpstreamTarget]:
        # Efraimidis-Spirakis: sorting by u ** (1 / weight) is a weighted shuffle; with
        # an affinity key, u is a hash of the key and the target instead of a draw.
        def draw(target: UpstreamTarget) -> float:
            if affinity is None:
                return self._rng()
            digest = hashlib.blake2b(f"{affinity}\0{target.name}".encode(), digest_size=8)
            return int.from_bytes(digest.digest(), "big") / 2.0**64

        keyed = [(max(draw(target), 1e-12) ** (1.0 / target.weight), target) for target in targets]
        keyed.sort(key=lambda pair: pair[0], reverse=True)
        return [target for _, target in keyed]

    def cooling(self, name: str, now: float | None = None) -> bool:
        health = self._health.get(name)
        if health is None:
            return False
        return (self._clock() if now is None else now) < health.cooling_until

    def _semaphore(self, target: UpstreamTarget) -> asyncio.Semaphore | None:
        limit = target.config.max_concurrent
        if limit is None:
            return None
        key = (target.name, limit)
        semaphore = self._slots.get(key)
        if semaphore is None:
            semaphore = self._slots[key] = asyncio.Semaphore(limit)
        return semaphore

    def _has_room(self, target: UpstreamTarget) -> bool:
        semaphore = self._semaphore(target)
        return semaphore is None or not semaphore.locked()

    async def acquire(self, target: UpstreamTarget) -> None:
        """Take one of the target's call slots, waiting while all are taken."""
        semaphore = self._semaphore(target)
        if semaphore is not None:
            await semaphore.acquire()

    def release(self, target: UpstreamTarget) -> None:
        semaphore = self._semaphore(target)
        if semaphore is not None:
            semaphore.release()

    def succeeded(self, target: UpstreamTarget) -> None:
        health = self._health.get(target.name)
        if health is not None:
            health.failures = 0
            health.cooling_until = 0.0

    def failed(self, target: UpstreamTarget) -> bool:
        """Count a failure; True when it (re)starts the target's cool-down."""
        health = self._health.setdefault(target.name, _Health())
        health.failures += 1
        if health.failures >= target.config.cooldown_after:
            health.cooling_until = self._clock() + target.config.cooldown_seconds
            return True
        return False
