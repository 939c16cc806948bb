"""The JavaScript clients the client tests drive (``tests/clients``), found or skipped.

``scripts/install-clients`` installs them with npm from ``tests/clients/package.json``
and its lock file. Where they are missing the tests that need them skip and
say why, unless ``STEPLINE_REQUIRE_CLIENTS=1`` (CI sets it) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

__all__ = ["CLIENTS", "client_bin", "client_package", "node_bin"]

#: the folder with the clients' package.json and, once installed, node_modules
CLIENTS = Path(__file__).parent / "clients"


def _missing(what: str) -> None:
    message = f"{what} is not installed: run scripts/install-clients"
    if os.environ.get("STEPLINE_REQUIRE_CLIENTS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def client_bin(name: str) -> Path:
    """An installed client's executable (``codex``), or skip the test."""
    path = CLIENTS / "node_modules" / ".bin" / name
    if not path.exists():
        _missing(f"the {name} client")
    return path


def client_package(name: str) -> Path:
    """An installed npm package's folder (``ai``, ``@ai-sdk/openai``), or skip the test."""
    path = CLIENTS / "node_modules" / name
    if not (path / "package.json").exists():
        _missing(f"the npm package {name}")
    return path


def node_bin() -> str:
    """The Node.js that runs the client scripts, or skip the test."""
    local = CLIENTS / "node_modules" / ".bin" / "node"
    if local.exists():
        return str(local)
    found = shutil.which("node")
    if found is None:
        _missing("Node.js")
    assert found is not None
    return found
