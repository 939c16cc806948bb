"""Serve any ASGI app on a real socket inside the running event loop.

``serve_app`` is how stepline's end-to-end tests, its demo mode and its
benchmarks put an app (the scripted model, stepline itself) on a port: it
runs uvicorn as a task of the current loop, yields the base URL once the
socket listens, and stops the server on exit.

Invariants:

* The URL is yielded only after the app's lifespan startup finished and the
  socket accepts connections; a failed startup raises ``RuntimeError``
  instead of yielding (uvicorn's ``sys.exit`` never reaches the loop).
* On exit the server task is always awaited to completion, even when the
  caller is being cancelled (the cancellation is re-raised afterwards), so
  no task, socket or connection outlives the block.
* Signal handlers are left alone: the program that owns the loop owns them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

__all__ = ["serve_app"]


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that lives inside someone else's event loop."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.startup_finished = asyncio.Event()
        self._exit_requested = asyncio.Event()

    def request_exit(self) -> None:
        self.should_exit = True
        self._exit_requested.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn would take over SIGINT/SIGTERM for the whole process, and
        # restore them out of order when several servers overlap.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.startup_finished.set()

    async def main_loop(self) -> None:
        # uvicorn's own loop polls every 0.1 s; waking on request_exit makes
        # every served block end that much sooner.
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864_000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_requested.wait(), timeout=0.1)


async def _run(server: _EmbeddedServer) -> None:
    try:
        await server.serve()
    except SystemExit as exc:
        # uvicorn exits the process when binding or lifespan startup fails;
        # inside a shared loop that must be an ordinary error.
        raise RuntimeError(f"the server failed to start (exit code {exc.code})") from None


@contextlib.asynccontextmanager
async def serve_app(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    lifespan: Literal["on", "off", "auto"] = "on",
    shutdown_timeout: int = 5,
) -> AsyncIterator[str]:
    """Serve ``app`` on ``host:port`` (0 picks a free port); yields ``http://host:port``.

    ``lifespan="on"`` runs the app's lifespan and treats its failure as a
    failed start. ``shutdown_timeout`` bounds how long exit waits for open
    requests before cancelling them.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        log_config=None,
        access_log=False,
        lifespan=lifespan,
        ws="auto",
        timeout_graceful_shutdown=shutdown_timeout,
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(_run(server), name=f"serve_app {host}:{port}")
    try:
        await _until_started(server, task)
        if server.started:
            yield _base_url(server)
    finally:
        server.request_exit()
        await _finish(task)  # raises what stopped the server, a failed start included
    if not server.started:
        raise RuntimeError("the server stopped before it started")


async def _until_started(server: _EmbeddedServer, task: asyncio.Task[None]) -> None:
    """Wait until startup finished or the server task ended, whichever comes first."""
    started = asyncio.create_task(server.startup_finished.wait())
    try:
        await asyncio.wait((started, task), return_when=asyncio.FIRST_COMPLETED)
    finally:
        started.cancel()
        await asyncio.gather(started, return_exceptions=True)


async def _finish(task: asyncio.Task[None]) -> None:
    """Wait for the server task even through cancellation, then re-raise both."""
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True  # keep waiting: a half-stopped server leaks sockets
        except Exception:
            pass  # the task's own error is raised below
    if cancelled or task.cancelled():
        raise asyncio.CancelledError
    error = task.exception()
    if error is not None:
        raise error


def _base_url(server: _EmbeddedServer) -> str:
    sockets = server.servers[0].sockets
    host, port = sockets[0].getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
