"""Every package stepline imports is one it declares, and it declares nothing it never imports."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: declared for what they do without being imported: uvicorn's event loop and parser,
#: the driver SQLAlchemy loads by URL, the sqlalchemy[asyncio] extra's greenlet
_USED_WITHOUT_IMPORT = {"uvloop", "httptools", "aiosqlite", "websockets"}


def _name(requirement: str) -> str:
    found = re.match(r"[A-Za-z0-9_.-]+", requirement)
    assert found is not None
    return found.group(0).lower().replace("_", "-")


def _imported_distributions() -> set[str]:
    modules: set[str] = set()
    for path in (ROOT / "src" / "stepline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    owners = importlib.metadata.packages_distributions()
    found: set[str] = set()
    for module in modules:
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top == "stepline":
            continue
        assert top in owners, f"{module} is imported but no installed package provides it"
        candidates = owners[top]
        if len(candidates) > 1:  # a namespace package: the one holding the deepest match
            parts = module.split(".")
            for depth in range(len(parts), 1, -1):
                prefix = "/".join(parts[:depth]) + "/"
                holding = [
                    name
                    for name in candidates
                    if any(str(f).startswith(prefix) for f in importlib.metadata.files(name) or ())
                ]
                if holding:
                    candidates = holding
                    break
        found.update(name.lower().replace("_", "-") for name in candidates)
    return found


def test_every_import_is_declared_and_every_declaration_imported() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    optional = {_name(r) for r in project["optional-dependencies"]["tracing"]}
    imported = _imported_distributions()
    assert imported - declared - optional == set()
    assert declared - imported - _USED_WITHOUT_IMPORT == set()
