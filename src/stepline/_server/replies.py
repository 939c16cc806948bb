"""The JSON replies of stepline's routes: a body encoded once, with orjson."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

__all__ = ["JSON", "store_unavailable"]


class JSON(Response):
    """``application/json``, encoded by orjson (bytes are passed as they are)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def store_unavailable() -> JSON:
    """The 503 of a request the database could not serve: nothing was lost, try again."""
    return JSON(
        {
            "error": {
                "message": "The server's database is unavailable; retry the request shortly.",
                "type": "server_error",
                "param": None,
                "code": "store_unavailable",
            }
        },
        status_code=503,
        headers={"Retry-After": "1"},
    )
