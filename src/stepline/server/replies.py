"""The JSON reply of stepline's routes: a body encoded once, with orjson."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

__all__ = ["JSON"]


class JSON(Response):
    """``application/json``, encoded by orjson (bytes are passed as they are)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
