"""Every table is the store's: declared in ``store/_schema.py``, made by the migrations.

The API keys' table was once declared and made by the server itself, outside
the migrations; this keeps any module outside ``store/`` from doing that
again, and the key ring from speaking SQL.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "stepline"

_SCHEMA_CALLS = frozenset({"Table", "MetaData", "create_all"})


def _schema_calls(path: Path) -> list[str]:
    """``sa.Table(...)``, ``sa.MetaData(...)`` and ``....create_all(...)`` calls in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _SCHEMA_CALLS
            and (
                node.func.attr == "create_all"
                or ast.unparse(node.func.value) in ("sa", "sqlalchemy")
            )
        ):
            found.append(f"{path.relative_to(SRC)}:{node.lineno} {ast.unparse(node.func)}")
    return found


def test_no_module_outside_the_store_declares_or_makes_a_table() -> None:
    outside = [
        path for path in sorted(SRC.rglob("*.py")) if "store" not in path.relative_to(SRC).parts[:1]
    ]
    assert outside
    assert [call for path in outside for call in _schema_calls(path)] == []


def test_the_key_ring_speaks_to_the_store_only_through_its_key_store() -> None:
    tree = ast.parse((SRC / "_server" / "auth.py").read_text())
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not any(name == "sqlalchemy" or name.startswith("sqlalchemy.") for name in imported)
    assert {name for name in imported if name.startswith("stepline.store")} == {
        "stepline.store._keys"
    }
