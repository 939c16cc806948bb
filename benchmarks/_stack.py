"""One scenario's processes (:class:`Stack`) and one load generator run (:func:`run_load`).

A stack is the scripted upstream with the benchmark's scripts registered, the
tool server, and — given a database — stepline with a config routing every
model to that upstream and the two HTTP tools to the tool server. Each is its
own process; stepline gets a fresh database (a SQLite file, or a new
PostgreSQL database that is dropped afterwards).

Stepline runs as shipped: its store is on, so every step and every event is
stored before any client is told about it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import orjson

from benchmarks._profile import Profiler, py_spy_path, summarize
from benchmarks._report import CpuRow, Row
from benchmarks._services import (
    PYTHON,
    Process,
    cpu_seconds,
    create_postgres_database,
    drop_postgres_database,
    free_port,
    http_json,
    start_process,
)

__all__ = [
    "HOST",
    "ROOT",
    "SCRIPTS",
    "Options",
    "Results",
    "Stack",
    "log",
    "run_load",
    "run_sequence",
]

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


def _words(count: int) -> str:
    return " ".join(f"w{index}" for index in range(count))


#: the scripted model's scripts, by model name
SCRIPTS: dict[str, dict[str, Any]] = {
    "bench-single": {
        "turns": [{"content": "The answer is forty-two, as always."}],
        "repeat_last": True,
    },
    "bench-loop": {
        "turns": [
            {
                "tool_calls": [
                    {"name": "lookup_a", "arguments": {"key": "a"}},
                    {"name": "lookup_b", "arguments": {"key": "b"}},
                ]
            },
            {"content": "Both lookups answered."},
        ],
        "repeat_last": True,
    },
    "bench-2000": {"turns": [{"content": _words(2000)}], "repeat_last": True},
    "bench-200": {"turns": [{"content": _words(200)}], "repeat_last": True},
    # one text delta a second for 100 seconds: streams that stay open
    "bench-slow": {"turns": [{"content": _words(100), "token_delay": 1.0}], "repeat_last": True},
}

_TOOL_PARAMETERS = '{ type = "object", properties = { key = { type = "string" } } }'


def _config(upstream: str, tools: str) -> str:
    tool_tables = "".join(
        f"""
[tools.{name}]
type = "http"
description = "Look a key up."
url = "{tools}/tools/{name}"
parameters = {_TOOL_PARAMETERS}
"""
        for name in ("lookup_a", "lookup_b")
    )
    return f"""
[upstreams.scripted]
base_url = "{upstream}/v1"

[[models]]
name = "bench-loop"
upstream = "scripted"
tools = ["lookup_a", "lookup_b"]

[default_model]
upstream = "scripted"
{tool_tables}"""


@dataclass(kw_only=True)
class Options:
    """How the harness was asked to run."""

    quick: bool
    postgres: str | None
    work_dir: Path
    profile_dir: Path | None = None
    #: "sql": stepline as shipped; "memory": its in-memory store (a diagnostic)
    store: Literal["sql", "memory"] = "sql"


@dataclass(kw_only=True)
class Results:
    """What the scenarios measured: table rows, CPU per window, raw samples, profiles."""

    rows: list[Row] = field(default_factory=list)
    cpu: list[CpuRow] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    profiles: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _python(module: str, *arguments: str) -> list[str]:
    return [PYTHON, "-m", module, *arguments]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Stack:
    """The scripted upstream, the tool server and (with ``database``) stepline."""

    def __init__(
        self,
        name: str,
        options: Options,
        *,
        database: str | None,
        profile: bool = False,
        steplines: int = 1,
    ) -> None:
        self.name = name
        #: stepline processes sharing the database (more than one: PostgreSQL)
        self.stepline_count = steplines
        self.more_steplines: list[Process] = []
        self.options = options
        self.database = database
        self.dir = options.work_dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.processes: list[Process] = []
        self.stepline: Process | None = None
        self.database_url: str | None = None
        self._profile = profile and options.profile_dir is not None
        self._profiler: Profiler | None = None

    def _start(self, name: str, argv: list[str], port: int) -> Process:
        process = start_process(name, argv, self.dir, cwd=ROOT, url=f"http://{HOST}:{port}")
        self.processes.append(process)
        return process

    def __enter__(self) -> Stack:
        try:
            self._up()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _up(self) -> None:
        port = free_port()
        self.upstream = self._start(
            "upstream",
            _python(
                "stepline",
                "mock-upstream",
                "--host",
                HOST,
                "--port",
                str(port),
                "--token-delay",
                "0",
            ),
            port,
        )
        port = free_port()
        self.tools = self._start(
            "tools", _python("benchmarks._toolserver", "--port", str(port)), port
        )
        self.upstream.wait_ready()
        self.tools.wait_ready()
        assert self.upstream.url is not None and self.tools.url is not None
        for model, script in SCRIPTS.items():
            http_json("POST", self.upstream.url + "/v1/scripts", {"name": model, "script": script})
        if self.database is None:
            return
        config = self.dir / "stepline.toml"
        config.write_text(_config(self.upstream.url, self.tools.url))
        port = free_port()
        where = ("--host", HOST, "--port", str(port), "--config", str(config))
        if self.options.store == "memory":
            argv = _python("benchmarks._memory_stepline", *where)
        else:
            if self.database == "sqlite":
                self.database_url = f"sqlite:///{self.dir / 'stepline.db'}"
            else:
                assert self.options.postgres is not None
                self.database_url = create_postgres_database(self.options.postgres)
            argv = _python("stepline", "serve", *where, "--database", self.database_url)
        self.stepline = self._start("stepline", argv, port)
        self.stepline.wait_ready()
        for number in range(2, self.stepline_count + 1):
            port = free_port()
            where = ("--host", HOST, "--port", str(port), "--config", str(config))
            assert self.database_url is not None
            extra = self._start(
                f"stepline-{number}",
                _python("stepline", "serve", *where, "--database", self.database_url),
                port,
            )
            extra.wait_ready()
            self.more_steplines.append(extra)
        if self._profile:
            executable = py_spy_path()
            if executable is None:
                log("  (py-spy not found: no profile)")
            else:
                assert self.options.profile_dir is not None
                self.options.profile_dir.mkdir(parents=True, exist_ok=True)
                output = self.options.profile_dir / f"{self.name}.txt"
                self._profiler = Profiler(executable, self.stepline.pid, output)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._profiler is not None:
            self._profiler.stop()
            self._profiler = None
        for process in reversed(self.processes):
            process.stop()
        if self.database_url and self.database != "sqlite" and self.options.postgres:
            with contextlib.suppress(Exception):
                drop_postgres_database(self.options.postgres, self.database_url)

    def profile_summary(self) -> str | None:
        """Stop sampling stepline (when profiling) and sum up what py-spy saw."""
        profiler, self._profiler = self._profiler, None
        if profiler is None:
            return None
        path = profiler.stop()
        return summarize(path) if path else f"{self.name}: py-spy wrote nothing"

    def watched(self) -> dict[str, Process]:
        named = {"upstream": self.upstream, "tools": self.tools}
        if self.stepline is not None:
            named["stepline"] = self.stepline
        for number, process in enumerate(self.more_steplines, start=2):
            named[f"stepline-{number}"] = process
        return named

    def upstream_requests(self, model: str) -> list[dict[str, Any]]:
        assert self.upstream.url is not None
        bodies: list[dict[str, Any]] = http_json(
            "GET", f"{self.upstream.url}/v1/requests?model={model}"
        )
        return bodies

    def stepline_part(self, body: dict[str, Any], expect: str | None = None) -> dict[str, Any]:
        assert self.stepline is not None
        port = int(str(self.stepline.url).rsplit(":", 1)[1])
        ports = [port] + [int(str(p.url).rsplit(":", 1)[1]) for p in self.more_steplines]
        return {
            "host": HOST,
            "port": port,
            "ports": ports,
            "path": "/v1/responses",
            "body": orjson.dumps(body).decode(),
            "expect": expect,
        }

    def upstream_part(self, body: dict[str, Any], expect: str | None = None) -> dict[str, Any]:
        port = int(str(self.upstream.url).rsplit(":", 1)[1])
        return {
            "host": HOST,
            "port": port,
            "path": "/v1/chat/completions",
            "body": orjson.dumps(body).decode(),
            "expect": expect,
        }

    def tool_part(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        port = int(str(self.tools.url).rsplit(":", 1)[1])
        return {
            "host": HOST,
            "port": port,
            "path": f"/tools/{name}",
            "body": orjson.dumps(arguments).decode(),
            "expect": None,
        }


def run_load(
    job: dict[str, Any],
    stack: Stack,
    run: str,
    results: Results,
    on_ready: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run one load generator process; note every process's CPU over its window."""
    popen = subprocess.Popen(
        [PYTHON, "-m", "benchmarks._load"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )
    assert popen.stdin is not None and popen.stdout is not None
    popen.stdin.write(orjson.dumps(job).decode() + "\n")
    popen.stdin.flush()
    watched = {name: process.pid for name, process in stack.watched().items()}
    watched["load generator"] = popen.pid
    result: dict[str, Any] | None = None
    extra: dict[str, Any] = {}
    started_cpu: dict[str, float] = {}
    started_at = 0.0
    try:
        for line in popen.stdout:
            message = orjson.loads(line)
            mark = message.get("mark")
            if mark == "start":
                started_at = time.monotonic()
                started_cpu = {name: cpu_seconds(pid) for name, pid in watched.items()}
            elif mark == "end":
                seconds = time.monotonic() - started_at
                percent = {
                    name: 100 * (cpu_seconds(pid) - started_cpu[name]) / seconds
                    for name, pid in watched.items()
                }
                results.cpu.append(CpuRow(run=run, seconds=seconds, percent=percent))
            elif mark == "ready":
                assert on_ready is not None
                extra = on_ready(message)
                popen.stdin.write("stop\n")
                popen.stdin.flush()
            elif "result" in message:
                result = message["result"]
    finally:
        if popen.poll() is None:
            popen.wait(60)
    if popen.returncode != 0 or result is None:
        raise RuntimeError(f"load generator failed for {run} (exit {popen.returncode})")
    result.update(extra)
    results.raw[run] = result
    return result


def run_sequence(
    stages: list[list[dict[str, Any]]],
    *,
    count: int,
    warmup: int,
    stack: Stack,
    run: str,
    results: Results,
) -> list[float]:
    """``count`` requests one after another (after ``warmup``), each the ``stages`` in
    order (a stage's parts in parallel); their latencies, in seconds."""
    job = {"kind": "sequence", "stages": stages, "count": count, "warmup": warmup}
    latencies: list[float] = run_load(job, stack, run, results)["latencies"]
    return latencies
