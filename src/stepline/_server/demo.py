"""``stepline serve --demo``: the scripted model and a small tool set, no config needed.

The demo serves, beside the API, the scripted model (``/demo-model/v1``) and
two HTTP tools (``/demo-tools/weather``, ``/demo-tools/current_time``), and
configures them as a real deployment would: an upstream over HTTP, server
tools over HTTP, and a ``researcher`` sub-agent. Asking about the weather or
the time makes the demo model call those tools, so the demo shows a real
multi-step loop with every step stored.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from stepline._config import Settings
from stepline.scripted import ScriptedModel, create_scripted_app

__all__ = ["demo_mounts", "demo_settings"]

_CONDITIONS = ("sunny", "cloudy", "light rain", "windy", "clear skies", "snow showers")


async def _weather(request: Request) -> Response:
    arguments: dict[str, Any] = orjson.loads(await request.body() or b"{}")
    city = str(arguments.get("city") or "Paris")
    digest = hashlib.sha256(city.lower().encode()).digest()
    report = {
        "city": city,
        "conditions": _CONDITIONS[digest[0] % len(_CONDITIONS)],
        "temperature_c": digest[1] % 30 - 5,
    }
    return Response(orjson.dumps(report), media_type="application/json")


async def _current_time(request: Request) -> Response:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    return Response(orjson.dumps({"utc": now.isoformat()}), media_type="application/json")


def demo_mounts(*, token_delay: float = 0.02) -> dict[str, ASGIApp]:
    tools = Starlette(
        routes=[
            Route("/weather", _weather, methods=["POST"]),
            Route("/current_time", _current_time, methods=["POST"]),
        ]
    )
    model = ScriptedModel(demo_token_delay=token_delay)
    return {"/demo-model": create_scripted_app(model), "/demo-tools": tools}


def demo_settings(base_url: str, *, database_url: str) -> Settings:
    """Settings that point at the demo mounts of a server reachable at ``base_url``."""
    return Settings.model_validate(
        {
            "database_url": database_url,
            "demo": True,
            "upstreams": {"demo": {"base_url": f"{base_url}/demo-model/v1"}},
            "default_model": {
                "upstream": "demo",
                "tools": ["weather", "current_time", "researcher"],
            },
            "tools": {
                "weather": {
                    "type": "http",
                    "description": "Current weather for a city.",
                    "url": f"{base_url}/demo-tools/weather",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string", "description": "City name"}},
                        "required": ["city"],
                    },
                    "timeout": 10,
                },
                "current_time": {
                    "type": "http",
                    "description": "The current time in UTC.",
                    "url": f"{base_url}/demo-tools/current_time",
                    "parameters": {"type": "object", "properties": {}},
                    "timeout": 10,
                },
                "researcher": {
                    "type": "agent",
                    "description": "A research sub-agent that can look up the weather.",
                    "model": "demo",
                    "instructions": "You are a careful research assistant.",
                    "tools": ["weather"],
                },
            },
        }
    )
