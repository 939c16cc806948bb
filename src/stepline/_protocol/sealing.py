"""Sealed payloads: the ``encrypted_content`` stepline hands to clients and opens again.

A client that keeps its own history (``store: false``, as Codex runs) asks for
``include: ["reasoning.encrypted_content"]`` and later sends the reasoning
item back; only stepline can read it. Sealing is AES-256-GCM (the
``cryptography`` package) with a random 96-bit nonce per seal and a label as
associated data, so a token sealed for one purpose never opens as another.

Keys rotate: the first key seals, every key opens. A token is
``sl1.<key id>.<base64url(nonce + ciphertext)>``, the key id being the first
8 hex digits of the key's SHA-256, so the right key is found without trying
each. A token that no key opens (a rotated-out key, a process with a
different ephemeral key, a forgery) opens to None, never to an exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from stepline.errors import ConfigError

if TYPE_CHECKING:  # cryptography (megabytes resident) loads at the first seal or open
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["Sealer", "parse_key"]

_PREFIX = "sl1"


def parse_key(text: str) -> bytes:
    """A 32-byte key from its base64 (standard or URL-safe) or 64-hex-digit form."""
    text = text.strip()
    raw: bytes | None = None
    if len(text) == 64:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_") + "==")
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != 32:
        raise ConfigError(
            "a sealing key must be 32 bytes, as base64 or 64 hex digits "
            "(make one with: python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return raw


def _key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


class Sealer:
    """Seals text with the first key; opens with any of ``keys``."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ConfigError("a Sealer needs at least one key")
        self._sealing_id = _key_id(keys[0])
        self._keys = {_key_id(key): key for key in keys}
        self._aeads: dict[str, AESGCM] = {}

    def _aead(self, key_id: str) -> AESGCM | None:
        aead = self._aeads.get(key_id)
        if aead is None and key_id in self._keys:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            aead = self._aeads[key_id] = AESGCM(self._keys[key_id])
        return aead

    @classmethod
    def ephemeral(cls) -> Sealer:
        """A sealer with a random key that lives as long as the process."""
        return cls([os.urandom(32)])

    def seal(self, text: str, *, label: str = "reasoning") -> str:
        key_id = self._sealing_id
        aead = self._aead(key_id)
        assert aead is not None
        nonce = os.urandom(12)
        sealed = aead.encrypt(nonce, text.encode(), label.encode())
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{_PREFIX}.{key_id}.{body}"

    def open(self, token: str, *, label: str = "reasoning") -> str | None:
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _PREFIX:
            return None
        aead = self._aead(parts[1])
        if aead is None:
            return None
        from cryptography.exceptions import InvalidTag

        try:
            raw = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
            return aead.decrypt(raw[:12], raw[12:], label.encode()).decode()
        except (InvalidTag, binascii.Error, ValueError):
            return None
