"""serve_app: a real uvicorn socket inside the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from stepline.scripted import serve_app


def lifespan_app(events: list[str], *, fail_startup: bool = False) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        if fail_startup:
            raise RuntimeError("no database")
        yield
        events.append("shutdown")

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"hello {events}")

    return Starlette(routes=[Route("/", hello)], lifespan=lifespan)


def other_tasks() -> set[asyncio.Task[object]]:
    return asyncio.all_tasks() - {asyncio.current_task()}


async def test_the_app_is_served_between_its_lifespan_events() -> None:
    events: list[str] = []
    before = other_tasks()
    async with serve_app(lifespan_app(events)) as url:
        assert url.startswith("http://127.0.0.1:")
        assert int(url.rsplit(":", 1)[1]) > 0
        async with httpx.AsyncClient() as http:
            response = await http.get(url)
        assert response.text == "hello ['startup']"
    assert events == ["startup", "shutdown"]
    assert other_tasks() == before
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(url)


async def test_a_failed_lifespan_startup_raises_instead_of_exiting() -> None:
    events: list[str] = []
    before = other_tasks()
    with pytest.raises(RuntimeError, match="failed to start"):
        async with serve_app(lifespan_app(events, fail_startup=True)):
            pytest.fail("the block must not run")
    assert events == ["startup"]
    assert other_tasks() == before


async def test_a_busy_port_raises_instead_of_exiting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="failed to start"):
            async with serve_app(lifespan_app([]), port=port):
                pytest.fail("the block must not run")


async def test_servers_can_overlap_and_leave_signal_handlers_alone() -> None:
    handler = signal.getsignal(signal.SIGINT)
    async with serve_app(lifespan_app([])) as first, serve_app(lifespan_app([])) as second:
        assert first != second
        assert signal.getsignal(signal.SIGINT) is handler
        async with httpx.AsyncClient() as http:
            assert (await http.get(first)).status_code == 200
            assert (await http.get(second)).status_code == 200
    assert signal.getsignal(signal.SIGINT) is handler


async def test_an_error_in_the_block_propagates_after_a_clean_stop() -> None:
    events: list[str] = []
    with pytest.raises(ValueError, match="boom"):
        async with serve_app(lifespan_app(events)):
            raise ValueError("boom")
    assert events == ["startup", "shutdown"]


async def test_cancelling_the_block_still_stops_the_server() -> None:
    events: list[str] = []
    serving = asyncio.Event()
    urls: list[str] = []

    async def serve_forever() -> None:
        async with serve_app(lifespan_app(events)) as url:
            urls.append(url)
            serving.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(serve_forever())
    await serving.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events == ["startup", "shutdown"]
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(urls[0])


async def test_an_open_request_finishes_before_the_server_stops() -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def slow(request: Request) -> PlainTextResponse:
        arrived.set()
        await release.wait()
        return PlainTextResponse("finished")

    app = Starlette(routes=[Route("/", slow)])
    async with httpx.AsyncClient() as http:
        async with serve_app(app) as url:
            pending = asyncio.create_task(http.get(url))
            await arrived.wait()
            # runs once the exit below is under way: the request is still open then
            asyncio.get_running_loop().call_soon(release.set)
        response = await pending
    assert response.text == "finished"


async def test_ipv6_urls_are_bracketed() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    async with serve_app(lifespan_app([]), host="::1") as url, httpx.AsyncClient() as http:
        assert url.startswith("http://[::1]:")
        assert (await http.get(url)).status_code == 200
