"""The FastAPI application: the library's engine plus a durable store, HTTP and leases.

``create_app`` builds the app from validated settings. Its lifespan opens the
store (running migrations unless told not to), the shared upstream client
and tool client, and starts the runner, which resumes any response whose
lease expired. On shutdown it drains: no new responses, running loops get a
grace period, then their leases are released for another process.

Every error leaves in the OpenAI envelope, with a 4xx for what the caller
got wrong; an unexpected failure is a 500 ``server_error`` that says no more
than that.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from stepline.config import Settings
from stepline.engine.loop import Engine
from stepline.errors import RequestError
from stepline.server.routes import router
from stepline.server.runner import Runner
from stepline.store.base import StepStore
from stepline.store.sql import open_store
from stepline.tools.registry import ToolRegistry
from stepline.upstream.client import ChatClient

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def _envelope(
    status: int, message: str, *, error_type: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}},
        status_code=status,
    )


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        response = JSONResponse(exc.to_envelope(), status_code=exc.status_code)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        error = exc.errors()[0]
        loc = [
            str(part) for part in error["loc"] if part not in ("query", "path", "header", "body")
        ]
        param = ".".join(loc) or None
        return _envelope(
            400,
            f"Invalid '{param}': {error['msg']}",
            error_type="invalid_request_error",
            param=param,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return _envelope(exc.status_code, str(exc.detail), error_type=kind)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error", exc_info=exc)
        return _envelope(
            500, "The server had an error processing your request.", error_type="server_error"
        )


def create_app(
    settings: Settings,
    *,
    store: StepStore | None = None,
    migrate: bool = True,
    shutdown_grace: float = 10.0,
    mounts: dict[str, ASGIApp] | None = None,
) -> FastAPI:
    """The stepline app. ``store`` overrides the one named by ``settings.database_url``;
    ``mounts`` adds sub-applications (the demo mounts its scripted model and tools)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_store = store is None
        the_store: StepStore = store or await open_store(settings.database_url, migrate=migrate)
        chat = ChatClient()
        http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=500, max_keepalive_connections=100)
        )
        engine = Engine(
            store=the_store,
            chat=chat,
            settings=settings,
            tools=ToolRegistry(settings.tools),
            http=http,
        )
        runner = Runner(engine)
        app.state.runner = runner
        await runner.start()
        try:
            yield
        finally:
            await runner.stop(grace=shutdown_grace)
            await chat.aclose()
            await http.aclose()
            if own_store:
                await the_store.close()

    app = FastAPI(
        title="stepline",
        summary="An Open Responses server that runs the agent loop, stored step by step.",
        lifespan=lifespan,
    )
    _install_error_handlers(app)
    app.include_router(router)
    for path, sub in (mounts or {}).items():
        app.mount(path, sub)
    return app
