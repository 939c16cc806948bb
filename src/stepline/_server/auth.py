"""API keys: who is calling, and what they may use.

A key is a random token the client sends as ``Authorization: Bearer <token>``;
stepline keeps only its SHA-256 hash. Keys come from the config
(``[keys.NAME] hash = "sha256:..."``) or from ``stepline keys create``, which
stores them with the responses, behind the store's
:class:`~stepline.store._keys.KeyStore` (the database every process of a
deployment shares, so a key created once works everywhere). This module
reads and writes stored keys only through that protocol.

Invariants:

* A token is compared only as a hash, with :func:`hmac.compare_digest`;
  tokens are high-entropy random strings, so a fast hash is the right one.
* When any key exists, every ``/v1`` request needs one; without keys the
  server is open only if it was started that way (``allow_anonymous``).
* Stored keys are re-read at most every ``reload_seconds`` (and on an
  unknown token, at most every ``miss_reload_seconds``): a created key works
  and a revoked key stops within seconds, and unknown tokens cannot hammer
  the database. A request between reloads reads nothing but the ring.
* A key limited to some models or tools is refused others with a 403; the
  loop never offers it a server tool outside its list (``tools_for``).
* A response belongs to a key's ``id``, never to its name, so a name used
  again (``ci`` revoked, a new ``ci`` created) starts with nothing. A config
  key's id is derived from its hash (a new token is a new key); a created
  key's is random, stored with it. Responses stored before keys had ids carry
  the key's name: they stay with the config key of that name, and with a
  stored key created then (whose row has no id, so its id is its name).
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from fastapi import Request

from stepline._config import KeyConfig
from stepline._protocol.request import ResponseRequest, allowed_tool_names
from stepline.errors import Forbidden, StoreError, Unauthorized
from stepline.store._keys import KeyRecord, KeyStore

__all__ = [
    "ANONYMOUS",
    "ApiKey",
    "Caller",
    "KeyRing",
    "StoredKey",
    "caller_of",
    "config_key_id",
    "delete_stored_key",
    "hash_token",
    "list_stored_keys",
    "new_key_id",
    "new_token",
    "require_admin",
    "store_key",
]

logger = logging.getLogger(__name__)

_TOKEN_PREFIX = "sk-stepline-"
#: where the gateway leaves the authenticated caller in the ASGI scope
CALLER_SCOPE_KEY = "stepline.caller"


def new_token() -> str:
    """A fresh API key token: 256 random bits."""
    return _TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The form a key is kept in: ``sha256:<hex digest>``."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def config_key_id(key_hash: str) -> str:
    """The id of a config key: the same for the same hash, in every process."""
    return "key_" + hashlib.sha256(b"stepline key id\0" + key_hash.encode()).hexdigest()[:32]


def new_key_id() -> str:
    """The id of a key created in the database."""
    return "key_" + secrets.token_hex(16)


# -- who is calling -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ApiKey:
    """A key: its name, its ``id`` (the ``key_id`` stored on its responses), its limits."""

    name: str
    id: str
    config: KeyConfig
    #: it also owns responses stored under its bare name, before keys had ids
    owns_its_name: bool = False

    @property
    def tools(self) -> frozenset[str] | None:
        return None if self.config.tools is None else frozenset(self.config.tools)

    def may_use_model(self, model: str) -> bool:
        patterns = self.config.models
        return patterns is None or any(fnmatch.fnmatchcase(model, p) for p in patterns)


@dataclass(frozen=True, kw_only=True)
class Caller:
    """The caller of one request: a key, or anonymous on a server without keys."""

    key: ApiKey | None

    @property
    def key_id(self) -> str | None:
        """What a response this caller creates is stored under."""
        return None if self.key is None else self.key.id

    def owns(self, key_id: str | None) -> bool:
        """True when a response stored under ``key_id`` is this caller's."""
        if self.key is None:
            return key_id is None
        return key_id == self.key.id or (self.key.owns_its_name and key_id == self.key.name)

    def may_use_model(self, model: str) -> bool:
        return self.key is None or self.key.may_use_model(model)

    @property
    def is_admin(self) -> bool:
        """An operator's key (``admin = true`` in its config)."""
        return self.key is not None and self.key.config.admin

    def check_model(self, model: str, *, param: str = "model") -> None:
        if not self.may_use_model(model):
            raise Forbidden(
                f"This API key may not use the model '{model}'.",
                param=param,
                code="model_not_allowed",
            )

    def check_tools(self, request: ResponseRequest, server_tools: Iterable[str]) -> None:
        """Refuse ``tool_choice`` that names a server tool this key may not use."""
        allowed = None if self.key is None else self.key.tools
        named = allowed_tool_names(request)
        if allowed is None or named is None:
            return
        forbidden = sorted(named & (set(server_tools) - allowed))
        if forbidden:
            raise Forbidden(
                f"This API key may not use the server tool '{forbidden[0]}'.",
                param="tool_choice",
                code="tool_not_allowed",
            )


ANONYMOUS = Caller(key=None)


def caller_of(request: Request) -> Caller:
    """The caller the gateway authenticated for this request."""
    caller = request.scope.get(CALLER_SCOPE_KEY)
    if not isinstance(caller, Caller):
        raise _unauthorized("Missing API key.")
    return caller


_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def require_admin(request: Request) -> Caller:
    """The caller of an operator's endpoint, or a 403.

    An admin key may always; on a server without keys (anonymous), only a
    client on the loopback interface may, so an open server never exposes
    every response beyond the machine it runs on.
    """
    caller = caller_of(request)
    if caller.is_admin:
        return caller
    client = request.client
    if caller.key is None and client is not None and client.host in _LOOPBACK:
        return caller
    raise Forbidden(
        "This endpoint needs an admin API key (admin = true in its [keys.NAME]).",
        code="admin_key_required",
    )


def _unauthorized(message: str) -> Unauthorized:
    return Unauthorized(message)


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


# -- the keys of a server ---------------------------------------------------------


class KeyRing:
    """The keys a server accepts: the config's, and those stored in the database."""

    def __init__(
        self,
        configured: Mapping[str, KeyConfig],
        *,
        allow_anonymous: bool = True,
        clock: Callable[[], float] = time.monotonic,
        reload_seconds: float = 5.0,
        miss_reload_seconds: float = 1.0,
    ) -> None:
        self.allow_anonymous = allow_anonymous
        self._configured = {
            name: ApiKey(
                name=name, id=config_key_id(config.hash), config=config, owns_its_name=True
            )
            for name, config in configured.items()
        }
        self._stored: dict[str, ApiKey] = {}
        self._by_id = {key.id: key for key in self._configured.values()}
        self._store: KeyStore | None = None
        self._clock = clock
        self._reload_seconds = reload_seconds
        self._miss_reload_seconds = miss_reload_seconds
        self._loaded_at = -float("inf")
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        """True when any key exists: then every request needs one."""
        return bool(self._configured or self._stored)

    async def attach(self, keys: KeyStore | None) -> None:
        """Read the keys stored in ``keys`` (None: the config's keys only).

        A :class:`~stepline.errors.StoreError` here stops the caller: a server
        that could not read its keys must not start as if it had none."""
        self._store = keys
        if keys is not None:
            self._use(await list_stored_keys(keys))

    async def reload(self) -> None:
        if self._store is None:
            return
        try:
            stored = await list_stored_keys(self._store)
        except StoreError as exc:
            logger.warning("reading API keys failed; keeping the ones known: %s", exc)
            self._loaded_at = self._clock()
            return
        self._use(stored)

    def _use(self, stored: Iterable[StoredKey]) -> None:
        keys: dict[str, ApiKey] = {}
        for row in stored:
            if row.name in self._configured:
                logger.warning("stored API key %r is shadowed by the config's", row.name)
                continue
            keys[row.name] = ApiKey(name=row.name, id=row.id, config=row.config)
        self._stored = keys
        self._by_id = {key.id: key for key in (*self._configured.values(), *keys.values())}
        self._loaded_at = self._clock()

    async def _reload_if_older(self, seconds: float) -> None:
        if self._store is None or self._clock() - self._loaded_at < seconds:
            return
        async with self._lock:
            if self._clock() - self._loaded_at >= seconds:
                await self.reload()

    def by_name(self, name: str) -> ApiKey | None:
        return self._configured.get(name) or self._stored.get(name)

    def owner(self, key_id: str) -> ApiKey | None:
        """The key a response's ``key_id`` names: by id, or by the name it was stored
        under before keys had ids."""
        return self._by_id.get(key_id) or self._configured.get(key_id)

    def tools_for(self, key_id: str | None) -> frozenset[str] | None:
        """The server tools of a response's key; None means all. An unknown key
        (revoked since) gets none."""
        if key_id is None:
            return None
        key = self.owner(key_id)
        return frozenset() if key is None else key.tools

    def _find(self, digest: str) -> ApiKey | None:
        found: ApiKey | None = None
        for key in (*self._configured.values(), *self._stored.values()):
            # every key is compared, so the time taken says nothing about which matched
            if hmac.compare_digest(digest, key.config.hash):
                found = key
        return found

    async def authenticate(self, authorization: str | None) -> Caller:
        """The caller a request's ``Authorization`` header names, or a 401."""
        await self._reload_if_older(self._reload_seconds)
        token = _bearer(authorization)
        key = None
        if token is not None:
            digest = hash_token(token)
            key = self._find(digest)
            if key is None:
                # perhaps a key created since the last look
                await self._reload_if_older(self._miss_reload_seconds)
                key = self._find(digest)
        if key is not None:
            return Caller(key=key)
        if not self.enabled:
            if self.allow_anonymous:
                return ANONYMOUS
            raise _unauthorized(
                "This server accepts only API keys, and none is configured: "
                "create one with `stepline keys create NAME`."
            )
        if token is None:
            raise _unauthorized("Missing API key: send it as 'Authorization: Bearer <key>'.")
        raise _unauthorized("Incorrect API key provided.")


# -- stored keys --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StoredKey:
    name: str
    #: the owner of its responses; a row from before key ids has its name here
    id: str
    config: KeyConfig
    created_at: float


def _config_of(record: KeyRecord) -> KeyConfig:
    return KeyConfig.model_validate(
        {
            "hash": record.hash,
            "models": record.models,
            "tools": record.tools,
            "rate": record.rate,
            "max_concurrent": record.max_concurrent,
            "admin": record.admin,
        }
    )


async def list_stored_keys(keys: KeyStore) -> list[StoredKey]:
    """The stored keys, by name, as the server uses them."""
    return [
        StoredKey(
            name=record.name, id=record.id, config=_config_of(record), created_at=record.created_at
        )
        for record in await keys.list_keys()
    ]


async def store_key(keys: KeyStore, name: str, config: KeyConfig) -> bool:
    """Store a key with a new id; False when the name is taken."""
    record = KeyRecord(
        name=name,
        id=new_key_id(),
        hash=config.hash,
        created_at=time.time(),
        models=config.models,
        tools=config.tools,
        rate=None if config.rate is None else config.rate.model_dump(exclude_none=True),
        max_concurrent=config.max_concurrent,
        admin=config.admin,
    )
    return await keys.add_key(record)


async def delete_stored_key(keys: KeyStore, name: str) -> bool:
    """Delete a stored key; False when there was none of that name."""
    return await keys.delete_key(name)
