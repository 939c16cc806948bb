"""Start, watch and stop the benchmark's processes.

Every server (the scripted upstream, the tool server, stepline) and the load
generator run as separate processes, so none of them shares an event loop or
a GIL with another. A process is watched from outside through ``/proc``: its
CPU time (user + system) and its resident memory (``VmRSS``).

Invariants:

* A process started here is always stopped here (SIGTERM, then SIGKILL after
  a grace period), also when a scenario fails half-way.
* Readiness is a ``GET`` answered with 200, never a fixed sleep.
* A PostgreSQL database made for a run is dropped after it, even when open
  connections remain (``DROP DATABASE ... WITH (FORCE)``).
"""

from __future__ import annotations

import asyncio
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import orjson

__all__ = [
    "Process",
    "create_postgres_database",
    "drop_postgres_database",
    "free_port",
    "http_json",
    "postgres_reachable",
    "raise_fd_limit",
    "start_process",
]

PYTHON = sys.executable
_TICKS = os.sysconf("SC_CLK_TCK")


def raise_fd_limit() -> int:
    """Lift the soft open-files limit to the hard one; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 65536
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_json(method: str, url: str, body: Any = None, *, timeout: float = 30.0) -> Any:
    """A blocking JSON request for set-up and checks; raises on a non-2xx status."""
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return orjson.loads(reply.read())


@dataclass(kw_only=True)
class Process:
    """One child process, its log file, and what ``/proc`` says about it."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time so far."""
        return cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        """Resident memory now (``VmRSS``), KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"{self.name}: no VmRSS")

    def wait_ready(self, path: str = "/v1/models", timeout: float = 60.0) -> None:
        assert self.url is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.tail()}")
            try:
                http_json("GET", self.url + path, timeout=2.0)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:g}s:\n{self.tail()}")
            time.sleep(0.05)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 3.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, from ``/proc/PID/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def start_process(
    name: str, argv: list[str], log_dir: Path, *, cwd: Path, url: str | None = None
) -> Process:
    """Start ``argv`` in ``cwd``, its stdout and stderr going to ``log_dir/NAME.log``."""
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb")
    popen = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd
    )
    return Process(name=name, popen=popen, log_path=log_path, url=url, _log=log)


# --- PostgreSQL: one fresh database per run ---


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


async def _execute(url: str, statement: str) -> None:
    import asyncpg  # stepline's own PostgreSQL driver

    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def postgres_reachable(url: str) -> str | None:
    """None when ``url`` accepts connections, else why not."""
    try:
        asyncio.run(asyncio.wait_for(_execute(url, "SELECT 1"), 5))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def create_postgres_database(admin_url: str) -> str:
    """Create ``bench_<random>`` next to ``admin_url``'s database; return its URL."""
    name = f"bench_{secrets.token_hex(4)}"
    asyncio.run(_execute(admin_url, f'CREATE DATABASE "{name}"'))
    return _with_database(admin_url, name)


def drop_postgres_database(admin_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    asyncio.run(_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
