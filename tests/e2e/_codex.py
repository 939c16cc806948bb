"""The real Codex CLI against a real ``stepline serve`` process, and what reached the upstream.

``start_stack`` runs two real processes on real sockets: the scripted model
(``stepline mock-upstream``) and stepline (``stepline serve`` on a config whose
``default_model`` sends every model name, as is, to the scripted upstream, with
SQLite in a temporary directory). A :class:`Codex` is one test's client: its own
``CODEX_HOME`` (a ``config.toml`` pointing Codex at stepline), ``HOME`` and work
directory, and one model name.

The model name is the whole routing: Codex sends it to stepline, stepline
forwards it unchanged, and the scripted upstream plays the script registered
under it (``POST /v1/scripts``) and records the chat requests it received
(``GET /v1/requests?model=NAME``). Codex 0.171 matches model names by prefix, so
a ``gpt-5.5-...`` name is a model it knows (it then sends its freeform
``apply_patch`` custom tool and ``tool_search``); any other name gets its
fallback tool set, with the ``multi_agent_v1`` namespace tool.

Every Codex run is bounded by ``CODEX_TIMEOUT``: on expiry its whole process
group (the Node launcher and the native binary) is killed. Codex runs with its
whole tool set; only its retries are off, so a refused request fails at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.durability.conftest import ServerProcess, free_port, to_toml

__all__ = [
    "CODEX_TIMEOUT",
    "Codex",
    "CodexRun",
    "CodexStack",
    "assistant_calls",
    "image_urls_after",
    "png",
    "start_stack",
    "text_of",
    "tool_results",
    "upstream_tools",
]

#: seconds one ``codex exec`` may take (a run against the scripted model takes about one)
CODEX_TIMEOUT = 45.0


class ScriptedUpstreamProcess(ServerProcess):
    """``python -m stepline mock-upstream``: the scripted model in its own process."""

    def spawn(self) -> None:
        assert not self.running, "the previous process is still running"
        self.starts += 1
        command = [
            sys.executable,
            "-m",
            "stepline",
            "mock-upstream",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


@dataclass(frozen=True)
class CodexStack:
    codex_bin: Path
    upstream: ServerProcess
    stepline: ServerProcess


@contextlib.contextmanager
def start_stack(codex_bin: Path, directory: Path) -> Iterator[CodexStack]:
    """The scripted upstream and stepline, each its own process; both stop on exit."""
    upstream = ScriptedUpstreamProcess(
        config=directory / "no-config",
        database=directory / "no-database",
        port=free_port(),
        log_dir=directory,
    )
    config = directory / "stepline.toml"
    stepline = ServerProcess(
        config=config, database=directory / "stepline.db", port=free_port(), log_dir=directory
    )
    try:
        asyncio.run(upstream.start())
        settings = {
            "upstreams": {
                "scripted": {
                    "base_url": f"{upstream.url}/v1",
                    "max_retries": 0,
                    "timeouts": {"connect": 2, "first_byte": 10, "chunk": 10, "total": 30},
                }
            },
            "default_model": {"upstream": "scripted"},
        }
        config.write_text(to_toml(settings))
        asyncio.run(stepline.start())
        yield CodexStack(codex_bin=codex_bin, upstream=upstream, stepline=stepline)
    finally:
        stepline.stop()
        upstream.stop()


@dataclass(frozen=True)
class CodexRun:
    """One finished ``codex exec``: its output and, with ``--json``, its events."""

    command: list[str]
    returncode: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]]

    def items(self, kind: str) -> list[dict[str, Any]]:
        """The completed items of one type (``command_execution``, ``file_change``...)."""
        return [
            event["item"]
            for event in self.events
            if event["type"] == "item.completed" and event["item"]["type"] == kind
        ]

    @property
    def messages(self) -> list[str]:
        """The agent's messages, in order."""
        return [item["text"] for item in self.items("agent_message")]

    @property
    def thread_id(self) -> str:
        [thread] = [e["thread_id"] for e in self.events if e["type"] == "thread.started"]
        assert isinstance(thread, str)
        return thread


class Codex:
    """One test's Codex CLI: its own CODEX_HOME, HOME, work dir and model name."""

    def __init__(self, stack: CodexStack, directory: Path, name: str) -> None:
        self.stack = stack
        self.name = name
        self.model = f"gpt-5.5-stepline-{name}"
        self.codex_home = directory / "codex-home"
        self.user_home = directory / "home"
        self.work = directory / "work"
        for path in (self.codex_home, self.user_home, self.work):
            path.mkdir()

    def script(self, *turns: dict[str, Any], known_model: bool = True) -> None:
        """Register the turns the upstream plays for this test's model, and point Codex at it.

        ``known_model=False`` picks a name Codex does not know (its fallback tool set).
        """
        if not known_model:
            self.model = f"stepline-{self.name}"
        reply = httpx.post(
            f"{self.stack.upstream.url}/v1/scripts",
            json={"name": self.model, "script": {"turns": list(turns)}},
            timeout=10,
        )
        assert reply.status_code == 200, reply.text
        self._write_config()

    def _write_config(self) -> None:
        config = {
            "model": self.model,
            "model_provider": "stepline",
            "analytics": {"enabled": False},
            "model_providers": {
                "stepline": {
                    "name": "stepline",
                    "base_url": f"{self.stack.stepline.url}/v1",
                    "wire_api": "responses",
                    "env_key": "STEPLINE_API_KEY",
                    "request_max_retries": 0,
                    "stream_max_retries": 0,
                    "stream_idle_timeout_ms": 20_000,
                }
            },
        }
        (self.codex_home / "config.toml").write_text(to_toml(config))

    def run(
        self,
        prompt: str,
        *options: str,
        resume_last: bool = False,
        json_events: bool = True,
        check: bool = True,
    ) -> CodexRun:
        """``codex exec [--json] OPTIONS [resume --last] PROMPT`` in the work dir, bounded.

        With ``check`` a non-zero exit fails the test with Codex's output and
        stepline's log.
        """
        command = [
            str(self.stack.codex_bin),
            "exec",
            "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox",  # no bubblewrap in a container
            "--color",
            "never",
            *(["--json"] if json_events else []),
            *options,
            *(["resume", "--last"] if resume_last else []),
            prompt,
        ]
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(self.user_home),
            "CODEX_HOME": str(self.codex_home),
            "STEPLINE_API_KEY": "unused",
            "LANG": "C.UTF-8",
            "NO_COLOR": "1",
        }
        process = subprocess.Popen(
            command,
            cwd=self.work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, killed whole on timeout
        )
        try:
            stdout, stderr = process.communicate(timeout=CODEX_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise AssertionError(
                f"codex did not finish in {CODEX_TIMEOUT}s\n"
                + self._explain(command, None, stdout, stderr)
            ) from None
        if check:
            assert process.returncode == 0, self._explain(
                command, process.returncode, stdout, stderr
            )
        events = [json.loads(line) for line in stdout.splitlines() if line] if json_events else []
        return CodexRun(command, process.returncode, stdout, stderr, events)

    def _explain(self, command: list[str], code: int | None, stdout: str, stderr: str) -> str:
        def tail(text: str) -> str:
            return "\n".join(text.splitlines()[-30:])

        return (
            f"$ {' '.join(command[1:])}\nexit code {code}\n"
            f"--- stdout\n{tail(stdout)}\n--- stderr\n{tail(stderr)}\n"
            f"--- stepline log\n{self.stack.stepline.log_tail(10)}"
        )

    def upstream_requests(self) -> list[dict[str, Any]]:
        """The chat requests the scripted upstream received for this test's model."""
        reply = httpx.get(
            f"{self.stack.upstream.url}/v1/requests", params={"model": self.model}, timeout=10
        )
        assert reply.status_code == 200, reply.text
        requests: list[dict[str, Any]] = reply.json()
        return requests


# -- reading the chat requests the upstream received -------------------------------


def text_of(message: dict[str, Any]) -> str:
    """A chat message's text, whether its content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(
        part.get("text", "") for part in content or () if part.get("type") in ("text", None)
    )


def upstream_tools(request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The function tools offered to the model, by name."""
    tools: dict[str, dict[str, Any]] = {}
    for tool in request.get("tools") or ():
        assert tool["type"] == "function", tool
        tools[tool["function"]["name"]] = tool["function"]
    return tools


def assistant_calls(request: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """Every ``(id, name, decoded arguments)`` the assistant turns of the history made."""
    return [
        (call["id"], call["function"]["name"], json.loads(call["function"]["arguments"]))
        for message in request["messages"]
        if message["role"] == "assistant"
        for call in message.get("tool_calls") or ()
    ]


def tool_results(request: dict[str, Any]) -> dict[str, str]:
    """The text of each tool result in the history, by ``tool_call_id``."""
    results: dict[str, str] = {}
    for message in request["messages"]:
        if message["role"] == "tool":
            assert message["tool_call_id"] not in results, "two results for one call"
            results[message["tool_call_id"]] = text_of(message)
    return results


def image_urls_after(request: dict[str, Any], call_id: str) -> list[str]:
    """The image URLs in the tool result for ``call_id`` and in the messages after it."""
    messages = request["messages"]
    [start] = [
        index
        for index, message in enumerate(messages)
        if message["role"] == "tool" and message.get("tool_call_id") == call_id
    ]
    urls: list[str] = []
    for message in messages[start:]:
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            if part.get("type") == "image_url":
                image = part["image_url"]
                urls.append(image if isinstance(image, str) else image["url"])
    return urls


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid PNG of one colour (8-bit RGB, no filter)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )
