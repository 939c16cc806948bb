"""The README's examples work as written against ``stepline serve --demo``.

The server runs as its own process, as a newcomer starts it; the curl and
SDK examples are taken from README.md itself, with only the port changed.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    workdir = tmp_path_factory.mktemp("demo")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "stepline", "serve", "--demo", "--port", str(port)],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:  # the process gives no other signal that it listens
            try:
                if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "stepline serve --demo exited"
            assert time.monotonic() < deadline, "stepline serve --demo did not start"
            time.sleep(0.1)
        yield url, workdir
    finally:
        process.terminate()
        process.wait(timeout=30)


def _on_port(text: str, url: str) -> str:
    return text.replace("http://127.0.0.1:8000", url)


def test_readme_curl_example(demo_server: tuple[str, Path]) -> None:
    url, _ = demo_server
    (command,) = [block for block in _blocks("sh") if "curl" in block]
    result = subprocess.run(
        ["sh", "-c", _on_port(command, url)], capture_output=True, check=True, timeout=60
    )
    response = orjson.loads(result.stdout)
    assert response["status"] == "completed"
    assert [item["type"] for item in response["output"]] == ["mcp_call", "message"]
    assert response["output"][0]["name"] == "weather"
    assert "Paris" in response["output"][0]["output"]


def test_readme_sdk_example(demo_server: tuple[str, Path]) -> None:
    url, workdir = demo_server
    (code,) = [block for block in _blocks("python") if "OpenAI(" in block]
    result = subprocess.run(
        [sys.executable, "-c", _on_port(code, url)],
        capture_output=True,
        check=True,
        timeout=120,
        text=True,
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("mcp_call weather {")
    assert "Here is what the tools returned" in result.stdout
    assert any(line.startswith("ResponseUsage(") for line in lines)

    listing = subprocess.run(
        [sys.executable, "-m", "stepline", "responses", "list"],
        cwd=workdir,
        capture_output=True,
        check=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    ids = re.findall(r"resp_[0-9a-f]{32}", listing.stdout)
    assert len(ids) >= 2
    shown = subprocess.run(
        [sys.executable, "-m", "stepline", "responses", "show", ids[0]],
        cwd=workdir,
        capture_output=True,
        check=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert "model_call completed" in shown.stdout
    assert "tool_call" in shown.stdout
