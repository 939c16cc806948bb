"""HTTP tools are tried again only when their config says so, with the same idempotency key,
by the retry policy the upstream client uses too: after a connection failure, 408, 409, 429
or 5xx, waiting what ``Retry-After`` asks or a backoff with full jitter."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stepline._config import HttpToolConfig
from stepline._tools.http import call_http_tool
from stepline._transport import AiohttpTransport, HttpxTransport, Transport
from stepline.errors import ToolError
from stepline.scripted import serve_app


class Flaky:
    """Answers ``status`` to the first ``failures`` calls, then 200."""

    def __init__(self, failures: int, status: int, headers: dict[str, str] | None = None) -> None:
        self.failures = failures
        self.status = status
        self.headers = headers
        self.keys: list[str] = []

    async def handle(self, request: Request) -> Response:
        self.keys.append(request.headers["idempotency-key"])
        if len(self.keys) <= self.failures:
            return Response("not now", status_code=self.status, headers=self.headers)
        return Response("done")


@pytest.fixture(params=["aiohttp", "httpx"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    """The server's network transport, and an httpx client (the library's)."""
    if request.param == "aiohttp":
        transport: Transport = AiohttpTransport()
        yield transport
        await transport.aclose()
    else:
        async with httpx.AsyncClient() as http:
            yield HttpxTransport(client=http)


async def _call(
    client: Transport, flaky: Flaky, retries: int, sleeps: list[float] | None = None
) -> str:
    """Call the flaky tool; each backoff is recorded in ``sleeps`` (when given) instead
    of waited out."""

    async def record(delay: float) -> None:
        assert sleeps is not None
        sleeps.append(delay)

    app = Starlette(routes=[Route("/tool", flaky.handle, methods=["POST"])])
    async with serve_app(app) as url:
        config = HttpToolConfig(url=f"{url}/tool", retries=retries)
        if sleeps is None:
            return await call_http_tool(client, "flaky", config, {}, step_id="step_1")
        return await call_http_tool(client, "flaky", config, {}, step_id="step_1", sleep=record)


async def test_a_5xx_is_tried_again_as_often_as_configured(client: Transport) -> None:
    flaky = Flaky(failures=2, status=503)

    assert await _call(client, flaky, retries=2) == "done"
    assert flaky.keys == ["step_1", "step_1", "step_1"]


async def test_without_retries_a_call_is_tried_once(client: Transport) -> None:
    flaky = Flaky(failures=1, status=500)

    with pytest.raises(ToolError, match="answered HTTP 500"):
        await _call(client, flaky, retries=0)
    assert flaky.keys == ["step_1"]


async def test_a_4xx_is_never_tried_again(client: Transport) -> None:
    flaky = Flaky(failures=1, status=422)

    with pytest.raises(ToolError, match="answered HTTP 422"):
        await _call(client, flaky, retries=3)
    assert flaky.keys == ["step_1"]


@pytest.mark.parametrize("status", [408, 409, 429])
async def test_a_timeout_a_conflict_and_a_rate_limit_are_tried_again(
    client: Transport, status: int
) -> None:
    flaky = Flaky(failures=1, status=status)

    assert await _call(client, flaky, retries=1) == "done"
    assert flaky.keys == ["step_1", "step_1"]


async def test_retry_after_is_waited_instead_of_the_backoff(client: Transport) -> None:
    sleeps: list[float] = []
    flaky = Flaky(failures=2, status=429, headers={"Retry-After": "3"})

    assert await _call(client, flaky, retries=2, sleeps=sleeps) == "done"
    assert sleeps == [3.0, 3.0]


async def test_a_retry_after_too_long_to_wait_ends_the_retries(client: Transport) -> None:
    sleeps: list[float] = []
    flaky = Flaky(failures=1, status=503, headers={"Retry-After": "60"})

    with pytest.raises(ToolError, match="answered HTTP 503"):
        await _call(client, flaky, retries=3, sleeps=sleeps)
    assert sleeps == []
    assert flaky.keys == ["step_1"]


async def test_a_connection_refused_is_tried_again(client: Transport) -> None:
    sleeps: list[float] = []

    async def record(delay: float) -> None:
        sleeps.append(delay)

    app = Starlette(routes=[])
    async with serve_app(app) as url:
        pass  # the server is gone: its port refuses connections
    config = HttpToolConfig(url=f"{url}/tool", retries=2)
    with pytest.raises(ToolError, match="could not be reached"):
        await call_http_tool(client, "gone", config, {}, step_id="step_1", sleep=record)
    assert len(sleeps) == 2


async def test_retries_give_up_with_the_last_error(client: Transport) -> None:
    flaky = Flaky(failures=5, status=502)

    with pytest.raises(ToolError, match="answered HTTP 502"):
        await _call(client, flaky, retries=2)
    assert len(flaky.keys) == 3


async def test_backoffs_grow_within_their_bounds(client: Transport) -> None:
    sleeps: list[float] = []

    assert await _call(client, Flaky(failures=3, status=503), retries=3, sleeps=sleeps) == "done"
    assert len(sleeps) == 3
    for slept, bound in zip(sleeps, (0.1, 0.2, 0.4), strict=True):
        assert 0 <= slept <= bound


async def test_calls_that_failed_together_wait_different_jittered_times(
    client: Transport,
) -> None:
    """Full jitter: a tool server that failed many calls at once (a restart) does not get
    them all back at the same moment."""
    sleeps: list[float] = []

    for _ in range(40):
        assert await _call(client, Flaky(failures=1, status=502), retries=1, sleeps=sleeps)
    assert len(sleeps) == 40
    assert all(0 <= slept <= 0.1 for slept in sleeps)
    assert len(set(sleeps)) == len(sleeps)
    # spread over the whole range (each bound fails by chance with p = 0.75**40, ~1e-5)
    assert min(sleeps) < 0.025
    assert max(sleeps) > 0.075


@pytest.mark.parametrize(
    ("content_type", "body", "output"),
    [
        ("text/plain; charset=latin-1", "café".encode("latin-1"), "café"),
        ("application/json", '{"city": "Zürich"}'.encode(), '{"city": "Zürich"}'),
        ("text/plain; charset=no-such-charset", "naïve".encode(), "naïve"),
    ],
)
async def test_an_answer_is_read_in_the_charset_it_names(
    client: Transport, content_type: str, body: bytes, output: str
) -> None:
    async def answer(request: Request) -> Response:
        return Response(body, headers={"Content-Type": content_type})

    app = Starlette(routes=[Route("/tool", answer, methods=["POST"])])
    async with serve_app(app) as url:
        config = HttpToolConfig(url=f"{url}/tool")
        assert await call_http_tool(client, "text", config, {}, step_id="step_1") == output
