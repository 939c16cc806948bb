"""A ``stepline serve --demo`` in this very process, driven over HTTP, asked what it loaded.

Run as a script (``python _serving_probe.py DATABASE_URL TOKEN``), in a fresh
interpreter: the main thread runs the CLI's ``serve`` exactly as ``python -m
stepline serve`` does (its checks, the migration in a child, uvicorn on a real
socket); a second thread makes the requests of a server that only serves
responses — the probes, ``/v1/models``, a plain and a streamed response, a
response read back whole and as its event stream — creates a key with
``stepline keys create`` (a child), authenticates with it until the key ring
has re-read the stored keys and accepts it, and notes which heavy modules
are loaded. Then it reads a cold path (``GET
/v1/usage``) and stops the server with SIGTERM. The report is the last line
on stdout, after ``probe: ``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

#: what a server that only serves responses must not load
HEAVY = ("sqlalchemy", "alembic", "aiosqlite")
#: how long the key ring may take to read a key created while the server runs
RELOAD_DEADLINE = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _create_key(database_url: str, name: str) -> str:
    created = subprocess.run(
        [sys.executable, "-m", "stepline", "keys", "create", name, "--database", database_url],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return created.stdout.splitlines()[-1]


def _drive(base: str, database_url: str, token: str, report: dict[str, Any]) -> None:
    try:
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            for _ in range(200):
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            report["readyz"] = client.get("/readyz").status_code
            report["models"] = client.get("/v1/models").status_code
            body = {"model": "demo", "input": "weather in Paris?"}
            plain = client.post("/v1/responses", json=body).json()
            report["plain"] = plain["status"]
            with client.stream("POST", "/v1/responses", json={**body, "stream": True}) as streamed:
                report["streamed"] = "response.completed" in streamed.read().decode()
            report["read"] = client.get(f"/v1/responses/{plain['id']}").json()["status"]
            events = client.get(f"/v1/responses/{plain['id']}", params={"stream": "true"})
            report["events"] = "response.completed" in events.text
            late = {"Authorization": f"Bearer {_create_key(database_url, 'late')}"}
            deadline = time.monotonic() + RELOAD_DEADLINE
            # an unknown token makes the ring re-read the stored keys (at most once a second)
            while (status := client.get("/v1/models", headers=late).status_code) == 401:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            report["late_key"] = status
            report["serving"] = sorted(name for name in HEAVY if name in sys.modules)
            report["usage"] = client.get("/v1/usage").status_code
            report["cold"] = "sqlalchemy" in sys.modules
    finally:
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    database_url, token = sys.argv[1:3]
    port = _free_port()
    report: dict[str, Any] = {}
    driver = threading.Thread(
        target=_drive, args=(f"http://127.0.0.1:{port}", database_url, token, report)
    )
    driver.start()
    from stepline._cli import main as stepline

    sys.argv = ["stepline", "serve", "--demo", "--port", str(port), "--database", database_url]
    with contextlib.suppress(SystemExit):  # the CLI exits when the server has stopped
        stepline()
    driver.join()
    print("probe: " + json.dumps(report))


if __name__ == "__main__":
    main()
