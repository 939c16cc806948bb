"""HTTP tools are tried again only when their config says so, with the same idempotency key."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline.config import HttpToolConfig
from stepline.errors import ToolError
from stepline.scripted import serve_app
from stepline.tools.http import call_http_tool


class Flaky:
    """Answers ``status`` to the first ``failures`` calls, then 200."""

    def __init__(self, failures: int, status: int) -> None:
        self.failures = failures
        self.status = status
        self.keys: list[str] = []

    async def handle(self, request: Request) -> Response:
        self.keys.append(request.headers["idempotency-key"])
        if len(self.keys) <= self.failures:
            return Response("not now", status_code=self.status)
        return Response("done")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


async def _call(client: httpx.AsyncClient, flaky: Flaky, retries: int) -> str:
    app = Starlette(routes=[Route("/tool", flaky.handle, methods=["POST"])])
    async with serve_app(app) as url:
        config = HttpToolConfig(url=f"{url}/tool", retries=retries)
        return await call_http_tool(client, "flaky", config, {}, step_id="step_1")


async def test_a_5xx_is_tried_again_as_often_as_configured(client: httpx.AsyncClient) -> None:
    flaky = Flaky(failures=2, status=503)

    assert await _call(client, flaky, retries=2) == "done"
    assert flaky.keys == ["step_1", "step_1", "step_1"]


async def test_without_retries_a_call_is_tried_once(client: httpx.AsyncClient) -> None:
    flaky = Flaky(failures=1, status=500)

    with pytest.raises(ToolError, match="answered HTTP 500"):
        await _call(client, flaky, retries=0)
    assert flaky.keys == ["step_1"]


async def test_a_4xx_is_never_tried_again(client: httpx.AsyncClient) -> None:
    flaky = Flaky(failures=1, status=422)

    with pytest.raises(ToolError, match="answered HTTP 422"):
        await _call(client, flaky, retries=3)
    assert flaky.keys == ["step_1"]


async def test_retries_give_up_with_the_last_error(client: httpx.AsyncClient) -> None:
    flaky = Flaky(failures=5, status=502)

    with pytest.raises(ToolError, match="answered HTTP 502"):
        await _call(client, flaky, retries=2)
    assert len(flaky.keys) == 3
