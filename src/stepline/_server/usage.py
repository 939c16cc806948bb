"""``GET /v1/usage``: requests, errors, tokens and latency per day, key and model (admin).

The figures come from the store (:mod:`stepline.store._usage`); this module
reads the query, names keys, and shapes the JSON that the route, the console
and ``stepline usage --json`` share::

    {
      "object": "usage",
      "start": 1764547200, "end": 1767225600,        # the window, [start, end)
      "group_by": ["day", "key", "model"],
      "data": [
        {"day": "2026-12-01", "key": "alice", "key_id": "key_...", "model": "assistant",
         "requests": 12, "completed": 10, "errors": 2,
         "failed": 1, "incomplete": 1, "cancelled": 0,
         "input_tokens": 1200, "output_tokens": 340, "total_tokens": 1540,
         "cached_tokens": 0, "reasoning_tokens": 0,
         "latency_ms": {"p50": 812.4, "p95": 2210.0}}
      ]
    }

A row carries ``day``, ``key``/``key_id`` and ``model`` only when grouped by
them; ``key`` is the key's name (null for a response without a key, or of a
key that no longer exists).

Invariants:

* Only an admin key may read it (on a server without keys: a loopback client).
* ``start`` and ``end`` are UTC dates (``YYYY-MM-DD``) or POSIX seconds; an
  ``end`` date includes that whole day. Defaults: the 30 days up to now.
* Anything invalid is a 400 in the OpenAI error envelope naming the parameter.
"""

from __future__ import annotations

import datetime
import math
import re
import time
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from stepline._server.auth import KeyRing, require_admin
from stepline._server.openapi import errors
from stepline.errors import InvalidRequest, NotSupported
from stepline.store._sql import SqlStore
from stepline.store._usage_values import GROUPS, Group, UsageQuery, UsageRow

__all__ = ["key_ids", "key_name", "router", "usage_document", "usage_query"]

router = APIRouter(prefix="/v1")

#: the window when ``start`` is not given: this long before ``end``
DEFAULT_WINDOW = 30 * 86400.0
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?")


def _time(value: str, param: str, *, end: bool) -> float:
    text = value.strip()
    if _DATE.fullmatch(text):
        try:
            day = datetime.date.fromisoformat(text)
        except ValueError:
            pass
        else:
            if end:
                day += datetime.timedelta(days=1)
            return datetime.datetime.combine(day, datetime.time(), datetime.UTC).timestamp()
    elif _NUMBER.fullmatch(text) and math.isfinite(float(text)):
        return float(text)
    raise InvalidRequest(
        f"Invalid '{param}': expected a date (YYYY-MM-DD, UTC) or a unix time in seconds.",
        param=param,
    )


def _groups(value: str) -> tuple[Group, ...]:
    names = [part.strip() for part in value.split(",") if part.strip()]
    groups: list[Group] = []
    for name in names:
        group = next((g for g in GROUPS if g == name), None)
        if group is None or group in groups:
            raise InvalidRequest(
                f"Invalid 'group_by': {name!r}; it takes a comma-separated list of "
                f"{', '.join(GROUPS)} (each once), or nothing for one total.",
                param="group_by",
            )
        groups.append(group)
    return tuple(groups)


def usage_query(
    *,
    start: str | None,
    end: str | None,
    key_ids: tuple[str, ...] | None,
    model: str | None,
    group_by: str | None,
    now: float,
) -> UsageQuery:
    """The query of the route's parameters (or the CLI's options); InvalidRequest names
    a bad one."""
    until = now if end is None else _time(end, "end", end=True)
    since = until - DEFAULT_WINDOW if start is None else _time(start, "start", end=False)
    if since >= until:
        raise InvalidRequest("Invalid 'start': it must be before 'end'.", param="start")
    return UsageQuery(
        start=since,
        end=until,
        key_ids=key_ids,
        model=model or None,
        group_by=GROUPS if group_by is None else _groups(group_by),
    )


def key_ids(keys: KeyRing, key: str | None) -> tuple[str, ...] | None:
    """The ``key_id``\\s stored for a key given by name (or, for any other text, by id)."""
    if key is None or not key.strip():
        return None
    found = keys.by_name(key.strip())
    if found is None:
        return (key.strip(),)
    return (found.id, found.name) if found.owns_its_name else (found.id,)


def key_name(keys: KeyRing, key_id: str | None) -> str | None:
    owner = None if key_id is None else keys.owner(key_id)
    return None if owner is None else owner.name


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _row(
    row: UsageRow, group_by: tuple[Group, ...], name_of: Callable[[str | None], str | None]
) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if "day" in group_by:
        data["day"] = None if row.day is None else row.day.isoformat()
    if "key" in group_by:
        data["key"] = name_of(row.key_id)
        data["key_id"] = row.key_id
    if "model" in group_by:
        data["model"] = row.model
    data.update(
        requests=row.requests,
        completed=row.completed,
        errors=row.errors,
        failed=row.failed,
        incomplete=row.incomplete,
        cancelled=row.cancelled,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        total_tokens=row.input_tokens + row.output_tokens,
        cached_tokens=row.cached_tokens,
        reasoning_tokens=row.reasoning_tokens,
        latency_ms={"p50": _ms(row.latency_p50), "p95": _ms(row.latency_p95)},
    )
    return data


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() else value


def usage_document(
    query: UsageQuery, rows: list[UsageRow], name_of: Callable[[str | None], str | None]
) -> dict[str, Any]:
    """The JSON of ``GET /v1/usage``; ``name_of`` names a row's key."""
    return {
        "object": "usage",
        "start": _number(query.start),
        "end": _number(query.end),
        "group_by": list(query.group_by),
        "data": [_row(row, query.group_by, name_of) for row in rows],
    }


async def usage_report(
    store: SqlStore,
    keys: KeyRing,
    *,
    start: str | None,
    end: str | None,
    key: str | None,
    model: str | None,
    group_by: str | None,
) -> dict[str, Any]:
    """The usage document for these filters (what the route and ``stepline usage`` print);
    InvalidRequest names a bad filter."""
    query = usage_query(
        start=start,
        end=end,
        key_ids=key_ids(keys, key),
        model=model,
        group_by=group_by,
        now=time.time(),
    )
    from stepline.store._usage import read_usage  # SQLAlchemy loads on the first usage read

    rows = await read_usage(store, query)
    return usage_document(query, rows, lambda key_id: key_name(keys, key_id))


@router.get("/usage", responses=errors(400, 401, 403, 429, 501, 503))
async def get_usage(
    request: Request,
    start: str | None = None,
    end: str | None = None,
    key: str | None = None,
    model: str | None = None,
    group_by: str | None = None,
) -> Response:
    require_admin(request)
    store = request.app.state.runner.engine.store
    if not isinstance(store, SqlStore):
        raise NotSupported("Usage is read from a SQL store; this server keeps responses in memory.")
    keys: KeyRing = request.app.state.gateway.keys
    document = await usage_report(
        store, keys, start=start, end=end, key=key, model=model, group_by=group_by
    )
    return Response(orjson.dumps(document), media_type="application/json")
