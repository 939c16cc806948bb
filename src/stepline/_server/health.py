"""``GET /healthz`` (the process is alive) and ``GET /readyz`` (it can serve).

Ready means: the server accepts new responses (it is not draining), its
database answers, and the database's schema is at the revision this version
of stepline ships. A store without revisions (the in-memory one) is ready
when the rest is. Neither route needs an API key nor says more than a
balancer needs: a failure's detail goes to the log.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from stepline._server.runner import Runner
from stepline.store._revisions import head_revision

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter()

#: the migrations shipped cannot change while the process runs
_head_revision = functools.cache(head_revision)


@router.get("/healthz", include_in_schema=False)
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


def _unready(reason: str, **detail: Any) -> JSONResponse:
    return JSONResponse({"status": "unavailable", "reason": reason, **detail}, status_code=503)


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    runner: Runner | None = getattr(request.app.state, "runner", None)
    if runner is None or not runner.accepting:
        return _unready("not accepting requests")
    current_revision = getattr(runner.engine.store, "current_revision", None)
    if current_revision is None:
        return JSONResponse({"status": "ready"})
    try:
        revision = await current_revision()
    except Exception:
        logger.warning("readiness: the database is unreachable", exc_info=True)
        return _unready("database unreachable")
    expected = _head_revision()
    if revision != expected:
        return _unready("database schema is not current", revision=revision, expected=expected)
    return JSONResponse({"status": "ready", "revision": revision})
