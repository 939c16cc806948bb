"""The process's secret mask: configured secrets become ``***`` wherever text leaves.

The server registers every secret its config resolves (upstream API keys,
``env:`` tool and MCP values) once at start. Log lines go through :func:`mask`
(``_server/logs.py``); model output goes through a :class:`StreamMasker` as the
upstream client decodes it, so a secret the model repeats is never stored,
streamed nor returned.

Invariants:

* Only secrets of at least :data:`MIN_SECRET_LENGTH` characters are masked.
  A short one (``x``, ``ollama``, common with local upstreams) would replace
  ordinary text everywhere, every ``s`` of every log line; it guards nothing
  worth that. :func:`register_settings_secrets` names such a config field in
  one warning, never its value.
* With nothing registered, masking costs nothing: :func:`stream_masker` is
  None and :func:`mask` returns after one truth test.
* A secret split across streamed chunks (any tokenizer splits one) is still
  masked: a field's tail is held back while it could be the start of a
  secret, and released with the next text, when the stream moves on to
  another field, or with the choice's ``finish_reason``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any, TypeGuard

import orjson

from stepline._config import HttpToolConfig, Settings, resolve_secret
from stepline.errors import ConfigError

__all__ = [
    "MASK",
    "MIN_SECRET_LENGTH",
    "StreamMasker",
    "is_maskable",
    "mask",
    "mask_bytes",
    "register_secrets",
    "register_settings_secrets",
    "stream_masker",
]

logger = logging.getLogger("stepline.server")

MASK = "***"
#: shorter secrets are not masked: see the module docstring
MIN_SECRET_LENGTH = 8

#: longest first, so a secret that contains another is masked whole
_secrets: tuple[str, ...] = ()


def is_maskable(secret: str | None) -> TypeGuard[str]:
    """True for a secret long enough to mask without corrupting ordinary text."""
    return secret is not None and len(secret) >= MIN_SECRET_LENGTH


def register_secrets(values: Iterable[str]) -> tuple[str, ...]:
    """Mask these values in logs and model output of this process from now on.

    Returns the non-empty values that were too short to register."""
    global _secrets
    values = [value for value in values if value]
    known = set(_secrets) | {value for value in values if is_maskable(value)}
    _secrets = tuple(sorted(known, key=len, reverse=True))
    return tuple(dict.fromkeys(value for value in values if not is_maskable(value)))


def mask(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    if not _secrets:
        return text
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_bytes(data: bytes) -> bytes:
    """``data`` (UTF-8, or JSON that escapes the odd character) with every registered
    secret masked; for bodies relayed without decoding."""
    for secret in _secrets:
        for form in dict.fromkeys((secret.encode(), orjson.dumps(secret)[1:-1])):
            if form in data:
                data = data.replace(form, MASK.encode())
    return data


def stream_masker() -> StreamMasker | None:
    """A masker for one model call's chunks; None when no secret is registered."""
    return StreamMasker(_secrets) if _secrets else None


def register_settings_secrets(settings: Settings) -> None:
    """Register every secret of ``settings``; warn once, by field, about short ones."""
    short = register_secrets(settings.secret_values())
    if not short:
        return
    named = _named_secrets(settings)
    fields = [name for name, value in named if value in short]
    unnamed = len(set(short) - {value for _, value in named})
    if unnamed:
        fields.append(f"{unnamed} other secret(s)")
    logger.warning(
        "not masking %s: shorter than %d characters, masking would corrupt ordinary text "
        "in logs and replies; use a longer secret to have it masked",
        ", ".join(dict.fromkeys(fields)),
        MIN_SECRET_LENGTH,
    )


def _named_secrets(settings: Settings) -> list[tuple[str, str]]:
    """(config field, value) of each secret ``settings`` resolves, where it can be named.

    Only for naming fields in a warning: what is masked is ``settings.secret_values()``."""
    found: list[tuple[str, str]] = []
    for name, upstream in settings.upstreams.items():
        field = "api_key_env" if upstream.api_key_env else "api_key"
        with contextlib.suppress(ConfigError):
            if key := upstream.resolved_api_key():
                found.append((f"upstreams.{name}.{field}", key))
    for name, tool in settings.tools.items():
        if isinstance(tool, HttpToolConfig):
            found.extend(_env_values(f"tools.{name}.headers", tool.headers))
    for name, source in settings.mcp.items():
        found.extend(_env_values(f"mcp.{name}.headers", source.headers))
        found.extend(_env_values(f"mcp.{name}.env", source.env))
    return found


def _env_values(prefix: str, values: dict[str, str]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for name, value in values.items():
        if value.startswith("env:"):
            with contextlib.suppress(ConfigError):
                if resolved := resolve_secret(value):
                    found.append((f"{prefix}.{name}", resolved))
    return found


#: the text fields of a chunk's ``delta``, in the order the chat stream reads them
_TEXT_FIELDS = ("reasoning_content", "reasoning", "content", "refusal")
#: where a tool call's text is: ``function.arguments``, or a custom call's ``custom.input``
_CALL_FIELDS = {"function": "arguments", "custom": "input"}

#: ``("text", field)`` or ``("tool", tool index, part)``
_Key = tuple[Any, ...]


class StreamMasker:
    """Masks the text of one model call's ``chat.completion.chunk`` dicts, in place.

    Per choice, only the field written last can have a held tail: a delta's
    text is final once a later field (in the order the chat stream reads a
    delta) follows it, so text is never released after what came after it.
    """

    __slots__ = ("_held", "_secrets")

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self._secrets = secrets
        self._held: dict[int | str, tuple[_Key, str]] = {}

    def chunk(self, chunk: dict[str, Any]) -> bool:
        """Mask ``chunk`` in place; True when that changed it."""
        choices = chunk.get("choices")
        if type(choices) is not list:
            return False
        changed = False
        for position, choice in enumerate(choices):
            if type(choice) is not dict:
                continue
            index = choice.get("index", position)
            if not isinstance(index, int | str):
                continue  # malformed: the chat stream refuses it
            final = bool(choice.get("finish_reason"))
            delta = choice.get("delta")
            if type(delta) is not dict:
                if not (final and index in self._held):
                    continue
                delta = choice["delta"] = {}
            changed = self._delta(index, delta, final) or changed
        return changed

    def _delta(self, index: int | str, delta: dict[str, Any], final: bool) -> bool:
        slots = _slots(delta)
        changed = False
        held = self._held.pop(index, None)
        if held is not None and (final or slots) and all(slot[0] != held[0] for slot in slots):
            _release(delta, *held)  # the stream moved on: that tail is complete
            held, changed = None, True
        last = len(slots) - 1
        for number, (key, owner, field) in enumerate(slots):
            place = owner if key[0] == "text" else owner.get(key[2])
            text = (place.get(field) or "") if type(place) is dict else ""
            original = text
            if held is not None and held[0] == key:
                text, held = held[1] + text, None
            for secret in self._secrets:
                if secret in text:
                    text = text.replace(secret, MASK)
            keep = 0 if final or number < last else self._unsafe_tail(text)
            if keep:
                self._held[index] = (key, text[-keep:])
                text = text[:-keep]
            if text == original:
                continue
            changed = True
            if type(place) is dict:
                place[field] = text
            else:
                owner[key[2]] = {field: text}
        if held is not None:  # nothing in this delta: keep waiting
            self._held[index] = held
        return changed

    def _unsafe_tail(self, text: str) -> int:
        """The length of the longest end of ``text`` that begins some secret."""
        size = len(text)
        longest = 0
        for secret in self._secrets:
            first = secret[0]
            at = text.find(first, max(0, size - len(secret) + 1))
            while at != -1 and size - at > longest:
                if secret.startswith(text[at:]):
                    longest = size - at
                    break
                at = text.find(first, at + 1)
        return longest


def _slots(delta: dict[str, Any]) -> list[tuple[_Key, dict[str, Any], str]]:
    """The text places of a delta in reading order: (key, the dict holding the text or,
    for a tool call, its entry, the field)."""
    slots: list[tuple[_Key, dict[str, Any], str]] = []
    for name in _TEXT_FIELDS:
        text = delta.get(name)
        if text and type(text) is str:
            slots.append((("text", name), delta, name))
    calls = delta.get("tool_calls")
    if type(calls) is not list:
        return slots
    for position, call in enumerate(calls):
        if type(call) is not dict:
            continue
        tool = call.setdefault("index", position)  # as the chat stream numbers it
        if not isinstance(tool, int | str):
            continue
        # a call announced or continued counts, empty arguments too: it follows the text
        part = "function"
        if call.get("function") is None and (call.get("type") == "custom" or "custom" in call):
            part = "custom"
        place = call.get(part)
        field = _CALL_FIELDS[part]
        if place is None or (type(place) is dict and type(place.get(field) or "") is str):
            slots.append((("tool", tool, part), call, field))
    return slots


def _release(delta: dict[str, Any], key: _Key, tail: str) -> None:
    """Put a held tail into ``delta``, which carries nothing of its field."""
    if key[0] == "text":
        delta[key[1]] = tail
        return
    _, tool, part = key
    calls = delta.get("tool_calls")
    if type(calls) is not list:
        calls = delta["tool_calls"] = []
    # the call's earlier pieces came before any in this delta
    calls.insert(0, {"index": tool, part: {_CALL_FIELDS[part]: tail}})
