"""Run the app with uvicorn, draining on the first SIGTERM or SIGINT.

The first signal stops the runner from taking work: running steps finish,
no new step starts, each loop releases its lease (the response resumes in
the next process to claim it), and uvicorn stops accepting connections.
Loops still running after the grace period are cancelled, releasing their
leases too. A second signal exits at once; leases then expire and another
process picks the work up.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from stepline.errors import ConfigError

if TYPE_CHECKING:  # a port problem is found without importing the app's machinery
    from fastapi import FastAPI

    from stepline._server.runner import Runner

__all__ = ["bind_socket", "serve"]

#: connections the kernel keeps waiting for the server to accept (uvicorn's default)
_BACKLOG = 2048

_BIND_PROBLEMS = {
    errno.EADDRINUSE: (
        "port {port} on {host} is in use: stop what listens there or pass another --port"
    ),
    errno.EACCES: "no permission to bind port {port} on {host}: pass a port above 1023",
    errno.EADDRNOTAVAIL: "{host} is not an address of this machine: pass another --host",
}


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (0: any free port), not listening yet."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} is out of range: pass a --port from 1 to 65535")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are
        # TCP, and without it every reply waits out Nagle and the delayed ACK (~40 ms)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as exc:
        raise ConfigError(f"cannot open a socket for {host}: {exc.strerror or exc}") from exc
    try:
        # as uvicorn does: a restart may bind while old connections linger in TIME_WAIT
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except socket.gaierror as exc:
        sock.close()
        raise ConfigError(f"cannot resolve --host {host}: {exc.strerror}") from exc
    except OSError as exc:
        sock.close()
        problem = _BIND_PROBLEMS.get(exc.errno or 0, "cannot bind port {port} on {host}: {reason}")
        raise ConfigError(problem.format(host=host, port=port, reason=exc.strerror or exc)) from exc
    return sock


class _DrainingServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        app: FastAPI,
        grace: float,
        on_listening: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._app = app
        self._grace = grace
        self._signalled = False
        self._on_listening = on_listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_listening is not None:
            self._on_listening()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled:
            os._exit(128 + sig)
        self._signalled = True
        runner: Runner | None = getattr(self._app.state, "runner", None)
        if runner is not None:
            # a signal handler runs between two bytecodes of the loop's thread:
            # hand the drain to the loop rather than touching it from here
            asyncio.get_running_loop().call_soon_threadsafe(runner.begin_drain, self._grace)
        # a drained shutdown is a clean exit: unlike uvicorn's own handler, this
        # one does not record the signal to raise it again after shutdown
        self.should_exit = True


def serve(
    app: FastAPI,
    *,
    sock: socket.socket,
    grace: float = 10.0,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` on ``sock`` (from :func:`bind_socket`) until a signal, then drain
    within ``grace`` seconds. Once the app has started and accepts connections,
    ``on_listening`` is called (the CLI prints its "stepline on URL" line there);
    a connection made while it starts waits in the socket's backlog."""
    host, port = sock.getsockname()[:2]
    try:
        # Two processes that bind the same port before either listens both succeed
        # (SO_REUSEADDR); the second learns of it here. (Listening here, not in
        # uvicorn: on uvloop a failed listen() there is not reported as such.)
        sock.listen(_BACKLOG)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise ConfigError(_BIND_PROBLEMS[errno.EADDRINUSE].format(host=host, port=port)) from exc
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        # uvicorn's own lines go through stepline's logging (JSON by default)
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(grace) + 5,
        backlog=_BACKLOG,
    )
    _DrainingServer(config, app, grace, on_listening).run(sockets=[sock])
