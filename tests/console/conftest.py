"""Console fixtures: ``stepline serve`` as its own process, and a real Chromium to drive it.

Two servers, each a ``python -m stepline serve`` child process on a SQLite file
in the test's temporary directory:

* ``demo_server``: ``stepline serve --demo``, without keys, on loopback: the
  console opens without signing in; its demo model calls a ``researcher``
  sub-agent.
* ``keyed_server``: ``stepline serve --config`` with an admin key and two
  ordinary keys (``alice``, ``bob``), the scripted model and the HTTP tools of
  ``tests/durability`` served in the test process (so a test scripts the model
  and holds the ``block`` tool open until it releases it).

``browser`` is Debian's Chromium (``/usr/bin/chromium``, installed by
``scripts/install-browser``) driven by Playwright, with no downloaded browser.
Without either, the browser tests skip and say why, unless
``STEPLINE_REQUIRE_CLIENTS=1`` (CI sets it) makes that a failure.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from stepline._server.auth import hash_token, new_token
from stepline.scripted import Script, ScriptedModel, create_scripted_app, serve_app
from tests.durability.conftest import ToolServer, free_port, stepline_config, to_toml

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext

CHROMIUM = Path("/usr/bin/chromium")
KEY_NAMES = ("admin", "alice", "bob")


def missing(what: str) -> None:
    message = f"{what}: run scripts/install-browser (and pip install -e '.[dev]')"
    if os.environ.get("STEPLINE_REQUIRE_CLIENTS") == "1":
        pytest.fail(message)
    pytest.skip(message)


# -- stepline serve, as a process ----------------------------------------------------


@dataclass
class Served:
    """One ``python -m stepline serve ARGS`` process on a port of its own."""

    args: Sequence[str]
    log: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, within: float = 30.0) -> None:
        command = [
            sys.executable,
            "-m",
            "stepline",
            "serve",
            *self.args,
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        self.process = await asyncio.to_thread(self._spawn, command)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"stepline serve exited:\n{self.log.read_text()}")
                try:
                    if (await client.get(f"{self.url}/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if loop.time() > deadline:
                    raise TimeoutError(f"stepline serve did not listen:\n{self.log.read_text()}")
                await asyncio.sleep(0.05)  # waiting for another process to listen

    def _spawn(self, command: list[str]) -> subprocess.Popen[bytes]:
        with self.log.open("wb") as log:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class DemoServer:
    served: Served
    database_url: str

    @property
    def url(self) -> str:
        return self.served.url


async def start_demo(
    tmp_path: Path, exits: AsyncExitStack, *extra: str, host: str = "127.0.0.1"
) -> DemoServer:
    """``stepline serve --demo`` on ``host`` (``extra``: more options); stops with ``exits``."""
    database_url = f"sqlite:///{tmp_path / 'demo.db'}"
    served = Served(
        args=["--demo", "--database", database_url, *extra], log=tmp_path / "demo.log", host=host
    )
    exits.callback(served.stop)
    await served.start()
    return DemoServer(served=served, database_url=database_url)


@pytest.fixture
async def demo_server(tmp_path: Path) -> AsyncIterator[DemoServer]:
    async with AsyncExitStack() as exits:
        yield await start_demo(tmp_path, exits)


@dataclass
class KeyedServer:
    served: Served
    database_url: str
    tokens: dict[str, str]
    model: ScriptedModel
    tools: ToolServer

    @property
    def url(self) -> str:
        return self.served.url

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[key]}"}

    def script(self, name: str, turns: list[dict[str, Any]]) -> str:
        self.model.register(name, Script.from_dict({"turns": turns}))
        return name


@pytest.fixture
async def keyed_server(tmp_path: Path) -> AsyncIterator[KeyedServer]:
    async with AsyncExitStack() as exits:
        tools = ToolServer()
        model = ScriptedModel(demo_token_delay=0)
        tools_url = await exits.enter_async_context(serve_app(tools.app(), shutdown_timeout=1))
        exits.callback(tools.release.set)
        upstream_url = await exits.enter_async_context(
            serve_app(create_scripted_app(model), shutdown_timeout=1)
        )
        tokens = {name: new_token() for name in KEY_NAMES}
        config = stepline_config(upstream_url, tools_url)
        config["models"] = [
            {"name": name, "upstream": "scripted", "tools": ["quick", "researcher", "block"]}
            for name in ("alpha", "beta", "broken")
        ]
        config["keys"] = {
            name: {"hash": hash_token(token), "admin": name == "admin"}
            for name, token in tokens.items()
        }
        config_path = tmp_path / "stepline.toml"
        config_path.write_text(to_toml(config))
        database_url = f"sqlite:///{tmp_path / 'keyed.db'}"
        served = Served(
            args=["--config", str(config_path), "--database", database_url],
            log=tmp_path / "keyed.log",
        )
        exits.callback(served.stop)
        await served.start()
        yield KeyedServer(
            served=served, database_url=database_url, tokens=tokens, model=model, tools=tools
        )


# -- the browser ------------------------------------------------------------------------


def _check_chromium() -> None:
    if not CHROMIUM.exists():
        missing(f"Debian's chromium ({CHROMIUM}) is not installed")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    _check_chromium()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing("Playwright for Python is not installed")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield launched
        finally:
            await launched.close()


async def signed_in(browser: Browser, server: KeyedServer) -> BrowserContext:
    """A browser context signed in to the console with the admin key, through its form."""
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    await page.goto(f"{server.url}/console")
    await page.fill("#token", server.tokens["admin"])
    await page.click("#login button[type=submit]")
    await page.wait_for_url(f"{server.url}/console")
    await page.close()
    return context
