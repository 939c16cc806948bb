"""Who may open the console: an admin key, sent as the console's cookie or a bearer header.

A browser cannot send ``Authorization`` on navigation, so the operator signs
in once by pasting an admin token; the console keeps that token in a cookie
and treats it on every request exactly as the API treats a bearer token.

Invariants:

* The cookie is checked against the key ring on every request
  (:meth:`KeyRing.authenticate`, as the gateway does for ``/v1``): a revoked
  key, or one that is no longer ``admin``, stops working at the next request.
* The rule is :func:`~stepline._server.auth.require_admin`'s: an admin key;
  on a server without keys, a loopback client only. The console never opens
  beyond loopback without an admin key.
* The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no
  other site's page makes the browser send it), limited to ``/console``, and
  ``Secure`` when the console is reached over https.
* A sign-in or sign-out posted from another origin is refused, so no page
  elsewhere can sign a browser in (to a key of its choosing) or out. Every
  other console route only reads.
"""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from stepline._server.auth import CALLER_SCOPE_KEY, Caller, KeyRing, require_admin
from stepline._server.gateway import Gateway
from stepline.errors import Forbidden, Unauthorized

__all__ = [
    "COOKIE_NAME",
    "MAX_TOKEN_CHARS",
    "clear_session",
    "console_caller",
    "is_same_origin",
    "keys_of",
    "safe_next",
    "set_session",
    "sign_in_caller",
]

COOKIE_NAME = "stepline_console"
COOKIE_PATH = "/console"
#: longer than any token stepline makes; a longer "token" is refused unread
MAX_TOKEN_CHARS = 512


def keys_of(request: Request) -> KeyRing:
    gateway: Gateway = request.app.state.gateway
    return gateway.keys


def _authorization(request: Request) -> str | None:
    token = request.cookies.get(COOKIE_NAME)
    if token:
        return f"Bearer {token}"
    return request.headers.get("authorization")


async def console_caller(request: Request) -> Caller:
    """The admin calling a console route; a RequestError 401 (no or bad key) or 403."""
    caller = await keys_of(request).authenticate(_authorization(request))
    request.scope[CALLER_SCOPE_KEY] = caller
    return require_admin(request)


async def sign_in_caller(request: Request, token: str) -> Caller:
    """The admin key ``token`` names, or a RequestError saying why it cannot sign in."""
    keys = keys_of(request)
    if not keys.enabled:
        raise Forbidden(
            "This server has no API keys: the console opens without signing in, "
            "on a loopback address only.",
            code="no_keys",
        )
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise Unauthorized("Incorrect API key provided.")
    caller = await keys.authenticate(f"Bearer {token}")
    if not caller.is_admin:
        raise Forbidden(
            "This key is not an admin key (admin = true in its [keys.NAME]).",
            code="admin_key_required",
        )
    return caller


def set_session(response: Response, token: str, *, secure: bool) -> None:
    response.set_cookie(
        COOKIE_NAME,
        token,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=secure,
    )


def clear_session(response: Response, *, secure: bool) -> None:
    response.delete_cookie(
        COOKIE_NAME, path=COOKIE_PATH, httponly=True, samesite="strict", secure=secure
    )


def is_same_origin(request: Request) -> bool:
    """False for a POST a browser sent from another site's page."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser's cross-site form (those always carry Origin)
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    return origin == own


def safe_next(path: str | None) -> str:
    """Where to go after signing in: a console path of this server, never elsewhere."""
    if (
        path
        and path.startswith(COOKIE_PATH)
        and not path.startswith("//")
        and "\\" not in path
        and all(ord(character) > 0x20 for character in path)
    ):
        return path
    return COOKIE_PATH
