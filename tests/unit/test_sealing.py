"""``Sealer`` and ``parse_key``: sealed tokens open only with a key, for their label, unaltered."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepline._protocol.sealing import Sealer, parse_key
from stepline.errors import ConfigError

OLD = bytes(range(32))
NEW = bytes(range(32, 64))
#: a key whose base64 form has both ``+`` and ``/`` (``-`` and ``_`` URL-safe)
SIGNS = bytes([0xFB, 0xEF, 0xFF] * 10 + [0xFB, 0xEF])

KEY_ERROR = (
    "a sealing key must be 32 bytes, as base64 or 64 hex digits "
    "(make one with: python -c 'import secrets; print(secrets.token_hex(32))')"
)


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def body_bytes(token: str) -> bytes:
    body = token.split(".")[2]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def with_body(token: str, raw: bytes) -> str:
    prefix, kid, _ = token.split(".")
    return f"{prefix}.{kid}.{base64.urlsafe_b64encode(raw).decode().rstrip('=')}"


# -- seal and open ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "thinking...", "é 😀 \x00 \n" * 50])
def test_a_sealed_text_opens_to_itself(text: str) -> None:
    sealer = Sealer([NEW])
    assert sealer.open(sealer.seal(text)) == text


def test_token_is_prefix_key_id_and_unpadded_base64url_of_nonce_ciphertext_and_tag() -> None:
    token = Sealer([NEW]).seal("abc")
    assert re.fullmatch(rf"sl1\.{key_id(NEW)}\.[A-Za-z0-9_-]+", token), token
    # 12 bytes of nonce, the text's 3 bytes, a 16-byte tag
    assert len(body_bytes(token)) == 12 + 3 + 16


def test_every_seal_takes_a_fresh_nonce() -> None:
    sealer = Sealer([NEW])
    first, second = sealer.seal("same"), sealer.seal("same")
    assert first != second
    assert body_bytes(first)[:12] != body_bytes(second)[:12]
    assert [sealer.open(first), sealer.open(second)] == ["same", "same"]


def test_the_text_is_not_readable_in_the_token() -> None:
    token = Sealer([NEW]).seal("secret reasoning")
    assert b"secret" not in body_bytes(token)
    assert "secret" not in token


def test_a_label_seals_for_one_purpose_only() -> None:
    sealer = Sealer([NEW])
    token = sealer.seal("x", label="state")
    assert [
        sealer.open(token, label="state"),
        sealer.open(token),
        sealer.open(token, label=""),
    ] == [
        "x",
        None,
        None,
    ]
    assert sealer.open(sealer.seal("y")) == "y"
    assert sealer.open(sealer.seal("y"), label="state") is None


# -- rotation -------------------------------------------------------------------------------


def test_the_first_key_seals_and_every_key_opens() -> None:
    old_token = Sealer([OLD]).seal("from before")
    rotated = Sealer([NEW, OLD])
    new_token = rotated.seal("from now")
    assert new_token.split(".")[1] == key_id(NEW)
    assert [rotated.open(old_token), rotated.open(new_token)] == ["from before", "from now"]


def test_a_sealer_without_the_sealing_key_cannot_open() -> None:
    token = Sealer([NEW, OLD]).seal("x")
    assert [Sealer([OLD]).open(token), Sealer([NEW]).open(token)] == [None, "x"]


def test_a_rotated_out_key_no_longer_opens() -> None:
    token = Sealer([OLD]).seal("x")
    assert Sealer([NEW]).open(token) is None


def test_a_token_naming_another_key_id_does_not_open() -> None:
    sealer = Sealer([NEW, OLD])
    token = sealer.seal("x")
    # the body is NEW's; naming OLD's id sends it to the wrong key
    assert sealer.open(token.replace(key_id(NEW), key_id(OLD))) is None


def test_ephemeral_sealers_open_only_their_own_tokens() -> None:
    one, two = Sealer.ephemeral(), Sealer.ephemeral()
    token = one.seal("x")
    assert [one.open(token), two.open(token)] == ["x", None]


def test_a_sealer_needs_a_key() -> None:
    with pytest.raises(ConfigError) as caught:
        Sealer([])
    assert str(caught.value) == "a Sealer needs at least one key"


# -- tokens that do not open ----------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 11, 12, 14, 15, 30], ids=lambda i: f"byte{i}")
def test_a_tampered_token_does_not_open(index: int) -> None:
    sealer = Sealer([NEW])
    token = sealer.seal("abc")
    raw = bytearray(body_bytes(token))
    raw[index] ^= 0x01
    assert sealer.open(with_body(token, bytes(raw))) is None


def test_a_truncated_or_extended_token_does_not_open() -> None:
    sealer = Sealer([NEW])
    token = sealer.seal("abc")
    raw = body_bytes(token)
    assert [
        sealer.open(with_body(token, raw[:-1])),
        sealer.open(with_body(token, raw + b"\x00")),
        sealer.open(with_body(token, raw[:12])),
        sealer.open(with_body(token, raw[:5])),
    ] == [None, None, None, None]


GARBAGE = [
    "",
    "sl1",
    "sl1..",
    "sl1.x.y",
    f"sl1.{key_id(NEW)}.",
    f"sl1.{key_id(NEW)}.A",
    f"sl1.{key_id(NEW)}.AAAA",
    f"sl1.{key_id(NEW)}.é",
    f"sl1.{key_id(NEW)}.!!!!",
    f"sl1.{key_id(NEW)}.{'A' * 40}",
    f"sl2.{key_id(NEW)}.{'A' * 40}",
    f"sl1.{key_id(NEW)}.{'A' * 40}.more",
    "gAAAAABobfEVSs9qy3",
]


@pytest.mark.parametrize("token", GARBAGE)
def test_garbage_opens_to_none(token: str) -> None:
    assert Sealer([NEW]).open(token) is None


def test_a_wrong_prefix_does_not_open_a_good_body() -> None:
    sealer = Sealer([NEW])
    token = sealer.seal("x")
    assert sealer.open("sl2" + token[3:]) is None


def test_a_good_token_with_a_part_more_does_not_open() -> None:
    sealer = Sealer([NEW])
    token = sealer.seal("x")
    assert [sealer.open(f"{token}.x"), sealer.open(f"{token}.")] == [None, None]


@given(body=st.text())
def test_no_body_raises(body: str) -> None:
    assert Sealer([NEW]).open(f"sl1.{key_id(NEW)}.{body}") is None


@given(token=st.text())
def test_no_text_raises(token: str) -> None:
    assert Sealer([NEW]).open(token) is None


# -- parse_key --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        OLD.hex(),
        OLD.hex().upper(),
        f"  {OLD.hex()}\n",
        base64.b64encode(OLD).decode(),
        base64.b64encode(OLD).decode().rstrip("="),
        f" {base64.b64encode(OLD).decode()} ",
    ],
    ids=["hex", "HEX", "hex-spaced", "base64", "base64-unpadded", "base64-spaced"],
)
def test_parse_key_reads_hex_and_base64(text: str) -> None:
    assert parse_key(text) == OLD


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(SIGNS).decode(),
        base64.urlsafe_b64encode(SIGNS).decode(),
        base64.urlsafe_b64encode(SIGNS).decode().rstrip("="),
    ],
    ids=["standard", "urlsafe", "urlsafe-unpadded"],
)
def test_parse_key_reads_standard_and_url_safe_base64(text: str) -> None:
    assert ("+" in text and "/" in text) or ("-" in text and "_" in text)
    assert parse_key(text) == SIGNS


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        bytes(31).hex(),
        bytes(33).hex(),
        base64.b64encode(bytes(16)).decode(),
        base64.b64encode(bytes(31)).decode(),
        base64.b64encode(bytes(33)).decode(),
        # 64 characters that are not hex: the base64 of 48 bytes
        base64.b64encode(b"\xff" * 48).decode(),
        "not a key",
    ],
    ids=["empty", "blank", "hex31", "hex33", "b64-16", "b64-31", "b64-33", "b64-48", "words"],
)
def test_parse_key_refuses_other_lengths(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_key(text)
    assert str(caught.value) == KEY_ERROR


def test_a_parsed_key_seals_and_opens() -> None:
    token = Sealer([parse_key(NEW.hex())]).seal("x")
    assert Sealer([parse_key(base64.b64encode(NEW).decode())]).open(token) == "x"
