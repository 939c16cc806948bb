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
    "_retry": (),
    "_transport": (),
    "_config": ("stepline.errors",),
    "scripted": ("stepline.errors",),
    # the step records every layer reads sit below them all
    "_steps": (),
    # the Chat Completions wire every model call speaks, below all who make one
    "_chat": ("stepline.errors", "stepline._steps"),
    "store": ("stepline.errors", "stepline._steps"),
    # the wire reads the engine's typed steps and sink events, and appends to its
    # run log (never the loop)
    "_protocol": (
        "stepline.errors",
        "stepline._steps",
        "stepline._chat",
        "stepline._engine.sinks",
        "stepline._engine.run_log",
        "stepline._engine.compaction",
        "stepline._engine.sealing",
        "stepline.store._base",
    ),
    "_upstream": (
        "stepline.errors",
        "stepline._config",
        "stepline._masking",
        "stepline._retry",
        "stepline._transport",
        "stepline._chat",
    ),
    "_tools": (
        "stepline.errors",
        "stepline._config",
        "stepline._masking",
        "stepline._retry",
        "stepline._transport",
    ),
    # the loop: no config file (it takes Limits and ModelRoutes), no server, no wire
    # (it takes a RunSpec, and reports its steps to a sink the wire consumes)
    "_engine": (
        "stepline.errors",
        "stepline._steps",
        "stepline._chat",
        "stepline.store",
        "stepline._tools",
        "stepline._upstream",
    ),
    # a response's run: where the engine and the wire meet
    "_run": (
        "stepline.errors",
        "stepline._steps",
        "stepline._chat",
        "stepline._engine",
        "stepline._protocol",
        "stepline.store",
        "stepline._tools",
        "stepline._upstream",
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
        p.name.removesuffix(".py")
        for p in SRC.iterdir()
        if p.name not in ("_server", "_cli.py", "__pycache__")
    ]
    crossing = [
        (where, name)
        for package in below
        if not package.startswith("__")
        for where, name in _imports(package)
        if name.startswith(("stepline._server", "stepline._cli"))
    ]
    assert crossing == []


def _package_of(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def _package_graph() -> dict[str, set[str]]:
    """package -> the packages it imports."""
    packages = sorted(
        p.name.removesuffix(".py") for p in SRC.iterdir() if p.suffix == ".py" or p.is_dir()
    )
    graph: dict[str, set[str]] = {}
    for package in packages:
        if package.startswith("__") or package == "_version":
            continue
        graph[package] = {
            _package_of(name) for _, name in _imports(package) if _package_of(name) != package
        }
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_cycle_between_packages() -> None:
    assert _cycles(_package_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", ["_chat", "_engine", "_tools", "_upstream"])
def test_below_the_wire_nothing_reads_the_wire(package: str) -> None:
    """The engine and what it drives declare the types they need; the wire meets
    them in ``run`` (and implements the engine's view), never the other way round."""
    assert [
        (where, name) for where, name in _imports(package) if _package_of(name) == "_protocol"
    ] == []


def test_the_engine_reads_no_config_and_knows_no_server() -> None:
    crossing = [
        (where, name)
        for where, name in _imports("_engine")
        if _package_of(name) in ("_config", "_server", "_cli", "_run", "agent")
    ]
    assert crossing == []
