"""The import graph keeps its layers: what a package may import from the others.

Each rule is one that holds of the code today; a change that breaks one
crosses a layer (and should move the code, not the rule). The imports read
are every ``import`` and ``from ... import`` in ``src/stepline``, lazy ones
inside functions included.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "stepline"


def _imports(package: str) -> Iterator[tuple[str, str]]:
    """(file, imported stepline module) for every import under ``package``."""
    root = SRC / package if (SRC / package).is_dir() else SRC / f"{package}.py"
    paths = [root] if root.is_file() else sorted(root.rglob("*.py"))
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name == "stepline" or name.startswith("stepline."):
                    yield str(path.relative_to(SRC)), name


#: package -> the stepline modules (prefixes) it may import, besides its own
RULES = {
    "errors": (),
    "retry": (),
    "transport": (),
    "config": ("stepline.errors",),
    "scripted": ("stepline.errors",),
    "store": ("stepline.errors", "stepline.engine.steps"),
    "protocol": ("stepline.errors", "stepline.engine.steps", "stepline.store.base"),
    "upstream": (
        "stepline.errors",
        "stepline.config",
        "stepline.masking",
        "stepline.retry",
        "stepline.transport",
        "stepline.protocol",
    ),
    "tools": (
        "stepline.errors",
        "stepline.config",
        "stepline.masking",
        "stepline.retry",
        "stepline.transport",
        "stepline.protocol",
    ),
}


@pytest.mark.parametrize("package", sorted(RULES))
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    allowed = (f"stepline.{package}", "stepline._version", *RULES[package])
    crossing = [
        (where, name)
        for where, name in _imports(package)
        if not any(name == prefix or name.startswith(prefix + ".") for prefix in allowed)
    ]
    assert crossing == []


def test_nothing_below_the_server_imports_the_server_or_the_cli() -> None:
    below = [
        p.name.removesuffix(".py") for p in SRC.iterdir() if p.name not in ("server", "cli.py")
    ]
    crossing = [
        (where, name)
        for package in below
        if not package.startswith("_")
        for where, name in _imports(package)
        if name.startswith(("stepline.server", "stepline.cli"))
    ]
    assert crossing == []
