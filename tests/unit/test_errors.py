"""The error tree drawn in ``stepline.errors`` is the tree of its classes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import stepline.errors as errors

SRC = Path(errors.__file__).parent


def _drawn() -> dict[str, str | None]:
    """Each class the docstring draws, with the class drawn above it."""
    assert errors.__doc__ is not None
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in errors.__doc__.splitlines():
        found = re.match(r"^(\s*)(?:[│ ]*[├└]── )?([A-Z][A-Za-z]+)\s", line + " ")
        if not found or ("──" not in line and line.strip() != "StepLineError"):
            continue
        depth = len(line) - len(line.lstrip(" │├└─"))
        name = found.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    return parents


def test_the_drawn_tree_is_the_class_tree() -> None:
    classes = {
        name: getattr(errors, name)
        for name in errors.__all__
        if isinstance(getattr(errors, name), type)
    }
    actual = {
        name: (None if cls is errors.StepLineError else cls.__bases__[0].__name__)
        for name, cls in classes.items()
    }
    assert _drawn() == actual


def test_each_refusal_has_its_status() -> None:
    statuses: dict[type[errors.RequestError], int] = {
        errors.InvalidRequest: 400,
        errors.Unauthorized: 401,
        errors.Forbidden: 403,
        errors.NotFound: 404,
        errors.RateLimited: 429,
        errors.NotSupported: 501,
        errors.Unavailable: 503,
    }
    assert {cls: cls.status_code for cls in statuses} == statuses
    assert errors.Unauthorized("no").headers == {"WWW-Authenticate": "Bearer"}
    assert errors.RateLimited("slow", retry_after=1.2).headers == {
        "Retry-After": "2",
        "retry-after-ms": "1200",
    }


def test_a_refusal_takes_its_status_from_its_class() -> None:
    """No 401, 403, 429, 501 or 503 is made by hand from a bare RequestError."""
    by_hand = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            if node.func.id not in ("RequestError", "InvalidRequest", "NotFound"):
                continue
            for keyword in node.keywords:
                if (
                    keyword.arg == "status_code"
                    and isinstance(keyword.value, ast.Constant)
                    and keyword.value.value in (401, 403, 429, 501, 503)
                ):
                    by_hand.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert by_hand == []
