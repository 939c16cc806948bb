"""The FastAPI application: the library's engine plus a durable store, HTTP and leases.

``create_app`` builds the app from validated settings. Its lifespan opens the
store (running migrations unless told not to), the shared upstream client
and tool client, and starts the runner, which resumes any response whose
lease expired. On shutdown it drains: no new responses, running loops get a
grace period, then their leases are released for another process.

Every error leaves in the OpenAI envelope, with a 4xx for what the caller
got wrong; an unexpected failure is a 500 ``server_error`` that says no more
than that.

In front of the routes, the gateway (``_server/gateway.py``) names every
request, authenticates its API key and applies the key's limits; the app's
:class:`~stepline._server.metrics.Metrics` observe the loop and the upstream
client, and ``/metrics``, ``/healthz`` and ``/readyz`` serve operators.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from stepline._config import Settings
from stepline._engine.loop import Engine
from stepline._engine.sinks import RunSink, Sinks
from stepline._masking import register_settings_secrets
from stepline._protocol.sealing import Sealer, parse_key
from stepline._server import conversations, health, metrics, passthrough, websocket
from stepline._server.auth import KeyRing
from stepline._server.compact import router as compact_router
from stepline._server.configured import ConfiguredRoutes, engine_limits
from stepline._server.console import install_console
from stepline._server.gateway import Gateway, GatewayMiddleware
from stepline._server.limits import KeyLimits
from stepline._server.metrics import Metrics
from stepline._server.openapi import DocumentedApp
from stepline._server.replies import store_unavailable
from stepline._server.retention import retention_worker
from stepline._server.routes import router
from stepline._server.runner import Runner
from stepline._server.tracing import Tracing, tracing_options
from stepline._server.usage import router as usage_router
from stepline._tools.mcp_tools import McpTools
from stepline._tools.registry import ServerTool, ToolRegistry
from stepline._transport import AiohttpTransport
from stepline._upstream.client import ChatClient
from stepline.errors import ConfigError, RequestError, StoreError
from stepline.store import normalize_database_url, open_store
from stepline.store._base import StepStore

__all__ = ["create_app", "sealer_of", "sealing_keys"]

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

    @app.exception_handler(StoreError)
    async def store_down(_: Request, exc: StoreError) -> Response:
        # the database is unreachable or failing: nothing was lost, try again shortly
        logger.warning("store unavailable: %s", exc.message)
        return store_unavailable()

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error", exc_info=exc)
        return _envelope(
            500, "The server had an error processing your request.", error_type="server_error"
        )


class _MadeOnFirstUse(httpx.AsyncBaseTransport):
    """httpx's own transport, made at the first request through it.

    The app's httpx client serves what few calls do not go through aiohttp (token
    counting, compaction upstreams, injected tools); many servers never make one.
    Making its connection pool loads httpcore and h11 and an SSL context with the
    CA bundle, some 2 MB, so that waits for a request."""

    def __init__(self, *, limits: httpx.Limits) -> None:
        self._limits = limits
        self._transport: httpx.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._transport is None:
            self._transport = httpx.AsyncHTTPTransport(limits=self._limits)
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()


async def _close(
    chat: ChatClient | None,
    http: httpx.AsyncClient,
    store: StepStore | None,
    tool_transport: AiohttpTransport,
) -> None:
    if chat is not None:
        await chat.aclose()
    await http.aclose()
    await tool_transport.aclose()
    if store is not None:
        await store.close()


def sealing_keys(settings: Settings) -> list[bytes]:
    """The configured keys of ``encrypted_content``, parsed; a ConfigError names the bad one."""
    configured = bool(settings.protocol.sealing_keys)
    source = "protocol.sealing_keys" if configured else "STEPLINE_SEALING_KEYS"
    try:
        texts = settings.protocol.resolved_sealing_keys()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    keys: list[bytes] = []
    for index, text in enumerate(texts):
        try:
            keys.append(parse_key(text))
        except ConfigError as exc:
            # the position, never the value: a key that does not parse may still be a secret
            where = f"{source}[{index}]" if configured else f"{source} (key {index + 1})"
            raise ConfigError(f"{where}: {exc}") from None
    return keys


def sealer_of(settings: Settings) -> Sealer:
    """The sealer of ``encrypted_content``: the configured keys, else a per-process key."""
    keys = sealing_keys(settings)
    if not keys:
        logger.warning(
            "no sealing keys configured (protocol.sealing_keys or STEPLINE_SEALING_KEYS): "
            "encrypted_content sealed now opens only in this process"
        )
        return Sealer.ephemeral()
    return Sealer(keys)


def create_app(
    settings: Settings,
    *,
    store: StepStore | None = None,
    migrate: bool = True,
    shutdown_grace: float = 10.0,
    mounts: dict[str, ASGIApp] | None = None,
    allow_anonymous: bool = True,
    chat: ChatClient | None = None,
    python_tools: Sequence[ServerTool] = (),
) -> FastAPI:
    """The stepline app. ``store`` overrides the one named by ``settings.database_url``;
    ``mounts`` adds sub-applications (the demo mounts its scripted model and tools).

    ``allow_anonymous`` lets requests without a key in while no key exists (the
    CLI allows it on loopback only, or with ``--insecure``). ``chat`` replaces
    the upstream client (the caller closes it; its observer becomes the app's
    metrics).

    Every configuration error is raised here, as a ConfigError, before anything
    runs: an unset environment variable, a bad sealing key, a bad database URL."""
    settings.check_environment()
    if store is None:
        normalize_database_url(settings.database_url)
    register_settings_secrets(settings)
    sealer = sealer_of(settings)
    app_metrics = Metrics(settings)
    trace_options = tracing_options(settings.tracing)
    keys = KeyRing(settings.keys, allow_anonymous=allow_anonymous)
    gateway = Gateway(
        keys=keys,
        limits=KeyLimits(),
        metrics=app_metrics,
        max_request_bytes=settings.limits.max_request_bytes,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_store = store is None
        the_store: StepStore = store or await open_store(
            settings.database_url, migrate=migrate, pool_size=settings.database_pool_size
        )
        the_chat = chat or ChatClient()
        the_chat.observer = app_metrics
        tracing = None if trace_options is None else Tracing.start(trace_options, settings)
        sink: RunSink = app_metrics
        if tracing is not None:
            sink = Sinks(app_metrics, tracing)
            the_chat.step_headers = tracing.step_headers
        http = httpx.AsyncClient(
            transport=_MadeOnFirstUse(
                limits=httpx.Limits(max_connections=500, max_keepalive_connections=100)
            ),
            follow_redirects=False,
        )
        # the HTTP tools' network, as fast per call as the upstream client's
        tool_transport = AiohttpTransport(max_connections=500)
        try:
            await keys.attach(the_store.keys)
            if not keys.enabled:
                if allow_anonymous:
                    logger.warning("no API keys configured: every request is accepted")
                else:
                    logger.warning("no API keys configured: every /v1 request will be refused")
            registry = ToolRegistry(settings.tools, transport=tool_transport)
            for tool in python_tools:
                registry.add(tool)
            engine = Engine(
                store=the_store,
                chat=the_chat,
                routes=ConfiguredRoutes(settings),
                limits=engine_limits(settings),
                tools=registry,
                default_tools=tuple(tool.name for tool in python_tools),
                http=http,
                sink=sink,
                step_headers=tracing.step_headers if tracing else lambda step_id: {},
                key_tools=keys.tools_for,
                mcp=McpTools(settings.mcp, settings.mcp_allowed_urls),
                sealer=sealer,
                hosted_tools=settings.protocol.hosted_tools,
                reasoning_events=settings.protocol.reasoning_events,
            )
            runner = Runner(engine, settings)
            app.state.runner = runner
            app.state.chat = the_chat
            await runner.start()
            retention = retention_worker(settings, the_store)
            app.state.retention = retention
        except BaseException:
            await _close(
                the_chat if chat is None else None,
                http,
                the_store if own_store else None,
                tool_transport,
            )
            if tracing is not None:
                await asyncio.to_thread(tracing.shutdown)
            raise
        try:
            yield
        finally:
            if retention is not None:
                await retention.stop()
            await runner.stop(grace=shutdown_grace)
            if engine.mcp is not None:
                await engine.mcp.aclose()
            await _close(
                the_chat if chat is None else None,
                http,
                the_store if own_store else None,
                tool_transport,
            )
            if tracing is not None:
                # the spans still buffered are exported before the process goes
                await asyncio.to_thread(tracing.shutdown)

    app = DocumentedApp(
        title="stepline",
        summary="An Open Responses server that runs the agent loop, stored step by step.",
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    app.state.metrics = app_metrics
    _install_error_handlers(app)
    app.add_middleware(GatewayMiddleware, gateway=gateway)
    app.include_router(router)
    app.include_router(compact_router)
    app.include_router(websocket.router)
    app.include_router(conversations.router)
    app.include_router(passthrough.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(usage_router)
    install_console(app)
    for path, sub in (mounts or {}).items():
        app.mount(path, sub)
    return app
