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
import os
from types import FrameType

import uvicorn
from fastapi import FastAPI

from stepline.server.runner import Runner

__all__ = ["serve"]


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, grace: float) -> None:
        super().__init__(config)
        self._app = app
        self._grace = grace
        self._signalled = False

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


def serve(app: FastAPI, *, host: str, port: int, grace: float = 10.0) -> None:
    """Serve ``app`` until a signal, then drain within ``grace`` seconds."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        # uvicorn's own lines go through stepline's logging (JSON by default)
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(grace) + 5,
    )
    _DrainingServer(config, app, grace).run()
