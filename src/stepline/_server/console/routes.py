"""The console's routes: ``/console`` pages, its live event stream and its static files.

Every page reads the store once (one query: the list, a response's tree, the
record a live view starts from, the usage per day) and renders HTML on the server; the only
script is the live view's follower of the event stream. The routes sit
outside ``/v1``, so the gateway leaves their authentication to
:mod:`~stepline._server.console.access`.

Invariants:

* No route changes anything but the console's own cookie (sign-in, sign-out,
  both POST and same-origin only): the console only reads.
* Every page and the stream are refused without an admin: a page sends the
  browser to the sign-in page (401) or says an admin key is needed (403);
  the stream answers the OpenAI error envelope, never a stream.
* Pages are never cached, may not be framed, and may run only the console's
  own script and style (Content-Security-Policy).
* The live stream is the response's event log read by
  :func:`~stepline._server.sse.sse_frames`, as ``GET /v1/responses/{id}?stream=true``
  reads it: from any sequence number, replayed and then followed, ending in
  ``data: [DONE]``.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from stepline._server.auth import Caller, KeyRing
from stepline._server.console import charts, pages
from stepline._server.console.access import (
    clear_session,
    console_caller,
    is_same_origin,
    keys_of,
    safe_next,
    set_session,
    sign_in_caller,
)
from stepline._server.console.html import Html
from stepline._server.runner import Runner
from stepline._server.sse import sse_frames
from stepline.errors import InvalidRequest, NotFound, RequestError
from stepline.store._base import StepStore
from stepline.store._listing_values import Cursor, ResponseQuery
from stepline.store._sql import SqlStore
from stepline.store._usage_values import UsageQuery

__all__ = ["install_console", "router"]

STATIC_DIR = Path(__file__).with_name("static")
router = APIRouter(prefix="/console", include_in_schema=False)

_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
#: the largest sign-in form accepted, in bytes
_MAX_FORM_BYTES = 4096
_MAX_SEQUENCE = 2**31 - 1


def install_console(app: FastAPI) -> None:
    """Serve the console at ``/console`` on ``app``."""
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=STATIC_DIR), name="console-static")


def _asset_version() -> str:
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.iterdir()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


#: changes with the static files, so a browser never runs an old script on a new page
ASSET_VERSION = _asset_version()


def _store(request: Request) -> StepStore:
    runner: Runner = request.app.state.runner
    return runner.engine.store


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _html(
    title: str,
    content: Html,
    *,
    page: str,
    frame: pages.Frame | None,
    status_code: int = 200,
) -> HTMLResponse:
    body = pages.layout(title, content, page=page, frame=frame, asset_version=ASSET_VERSION)
    return HTMLResponse(body, status_code=status_code, headers=_SECURITY_HEADERS)


def _frame(request: Request, caller: Caller) -> pages.Frame:
    if caller.key is None:
        return pages.Frame(who="no API keys: open on loopback", signed_in=False)
    return pages.Frame(who=f"key {caller.key.name}", signed_in=True)


def _key_namer(keys: KeyRing) -> pages.KeyNamer:
    def name(key_id: str | None) -> str:
        if key_id is None:
            return "anonymous"
        key = keys.owner(key_id)
        return key_id if key is None else key.name

    return name


def _key_ids(keys: KeyRing, text: str) -> tuple[str | None, ...] | None:
    """The stored ``key_id`` values of the key the filter names (by name, or as an id)."""
    if not text:
        return None
    key = keys.by_name(text)
    if key is not None:
        return (key.id, key.name) if key.owns_its_name else (key.id,)
    if text == "anonymous":
        return (None,)
    return (text,)  # an id, perhaps of a key revoked since


async def _admit(request: Request) -> Caller | Response:
    """The admin of this page view, or the reply that stops it."""
    try:
        return await console_caller(request)
    except RequestError as exc:
        if exc.status_code == 401:
            target = quote(
                request.url.path + (f"?{request.url.query}" if request.url.query else "")
            )
            reply = RedirectResponse(f"/console/login?next={target}", status_code=303)
            if request.cookies:
                clear_session(reply, secure=_secure(request))
            return reply
        if keys_of(request).enabled:
            text = exc.message
            action = Html(
                '<form method="post" action="/console/logout"><button type="submit">'
                "Sign in with another key</button></form>"
            )
        else:
            text = (
                "Without API keys the console opens on a loopback address only: give this "
                "server an admin key (admin = true in a [keys.NAME]) to open it from elsewhere."
            )
            action = Html("")
        return _html(
            "Admin key required",
            pages.message_page("Admin key required", text, action=action),
            page="denied",
            frame=None,
            status_code=exc.status_code,
        )


# -- signing in -------------------------------------------------------------------


@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    return _html(
        "Sign in",
        pages.login_page(next_path=safe_next(next), message=None),
        page="login",
        frame=None,
    )


async def _form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise InvalidRequest("The sign-in form is too large.", status_code=413)
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("The sign-in form could not be read.") from None
    return {name: values[0] for name, values in fields.items()}


def _cross_site() -> Response:
    return _html(
        "Refused",
        pages.message_page("Refused", "A sign-in or sign-out must come from the console itself."),
        page="denied",
        frame=None,
        status_code=403,
    )


@router.post("/login")
async def login(request: Request) -> Response:
    if not is_same_origin(request):
        return _cross_site()
    form = await _form(request)
    next_path = safe_next(form.get("next"))
    token = form.get("token", "").strip()
    try:
        await sign_in_caller(request, token)
    except RequestError as exc:
        return _html(
            "Sign in",
            pages.login_page(next_path=next_path, message=exc.message),
            page="login",
            frame=None,
            status_code=exc.status_code,
        )
    reply = RedirectResponse(next_path, status_code=303)
    set_session(reply, token, secure=_secure(request))
    return reply


@router.post("/logout")
async def logout(request: Request) -> Response:
    if not is_same_origin(request):
        return _cross_site()
    reply = RedirectResponse("/console/login", status_code=303)
    clear_session(reply, secure=_secure(request))
    return reply


# -- the pages ----------------------------------------------------------------------


def _status_filter(status: str) -> str | None:
    if not status:
        return None
    if status not in pages.STATUSES:
        raise InvalidRequest(
            f"Invalid 'status': expected one of {', '.join(pages.STATUSES)}.", param="status"
        )
    return status


def _cursor(before: str | None) -> Cursor | None:
    if not before:
        return None
    cursor = Cursor.parse(before)
    if cursor is None:
        raise InvalidRequest("Invalid 'before': not a page cursor of this list.", param="before")
    return cursor


@router.get("")
async def response_list(
    request: Request,
    hours: Annotated[int, Query(ge=0, le=24 * 366)] = 24,
    status: str = "",
    model: str = "",
    key: str = "",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: str | None = None,
) -> Response:
    caller = await _admit(request)
    if isinstance(caller, Response):
        return caller
    keys = keys_of(request)
    now = time.time()
    query = ResponseQuery(
        since=None if hours == 0 else now - hours * 3600,
        status=_status_filter(status),
        model=model or None,
        key_ids=_key_ids(keys, key),
        before=_cursor(before),
        limit=limit,
    )
    page = await _store(request).list_summaries(query)
    settings = request.app.state.runner.settings
    filters = pages.Filters(hours=hours, status=status, model=model, key=key, limit=limit)
    content = pages.list_page(
        page,
        filters=filters,
        key_name=_key_namer(keys),
        known_models=[route.name for route in settings.models],
        known_keys=list(settings.keys),
        first_page=query.before is None,
        now=now,
    )
    return _html("Responses", content, page="responses", frame=_frame(request, caller))


@router.get("/responses/{response_id}")
async def response_tree(request: Request, response_id: str) -> Response:
    caller = await _admit(request)
    if isinstance(caller, Response):
        return caller
    tree = await _store(request).response_tree(response_id)
    if tree is None:
        return _not_found(request, caller, response_id)
    content = pages.tree_page(tree, key_name=_key_namer(keys_of(request)), now=time.time())
    return _html(response_id, content, page="tree", frame=_frame(request, caller))


def _not_found(request: Request, caller: Caller, response_id: str) -> Response:
    return _html(
        "Not found",
        pages.message_page("Not found", f"No response with id '{response_id}' is stored."),
        page="missing",
        frame=_frame(request, caller),
        status_code=404,
    )


@router.get("/responses/{response_id}/live")
async def response_live(request: Request, response_id: str) -> Response:
    caller = await _admit(request)
    if isinstance(caller, Response):
        return caller
    record = await _store(request).get_response(response_id)
    if record is None:
        return _not_found(request, caller, response_id)
    content = pages.live_page(record, key_name=_key_namer(keys_of(request)))
    return _html(f"Live {response_id}", content, page="live", frame=_frame(request, caller))


class _EventStream(StreamingResponse):
    """SSE whose frames are closed however the response ends (a client that left included)."""

    def __init__(self, frames: AsyncGenerator[bytes, None]) -> None:
        self._frames = frames
        super().__init__(
            frames,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._frames.aclose()


async def _frames(source: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    try:
        async for frame in source:
            yield frame
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


@router.get("/responses/{response_id}/events")
async def response_events(
    request: Request,
    response_id: str,
    after: Annotated[int, Query(ge=-1, le=_MAX_SEQUENCE)] = -1,
) -> Response:
    """The response's event stream for the live view: a RequestError (the JSON
    envelope) when the caller is no admin or the response does not exist."""
    await console_caller(request)
    runner: Runner = request.app.state.runner
    record = await runner.engine.store.get_response(response_id)
    if record is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return _EventStream(_frames(sse_frames(runner, record.id, after)))


@router.get("/usage")
async def usage(request: Request, days: Annotated[int, Query(ge=1, le=366)] = 14) -> Response:
    caller = await _admit(request)
    if isinstance(caller, Response):
        return caller
    store = _store(request)
    if not isinstance(store, SqlStore):
        content = pages.message_page(
            "Usage", "Usage is read from a SQL store; this server keeps responses in memory."
        )
        return _html("Usage", content, page="usage", frame=_frame(request, caller))
    now = time.time()
    last = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
    first = last - datetime.timedelta(days=days - 1)
    start = datetime.datetime.combine(first, datetime.time(), datetime.UTC).timestamp()
    from stepline.store._usage import read_usage  # SQLAlchemy loads on the first usage read

    rows = await read_usage(store, UsageQuery(start=start, end=now, group_by=("day",)))
    content = charts.usage_page(rows, first=first, last=last, days=days)
    return _html("Usage", content, page="usage", frame=_frame(request, caller))
