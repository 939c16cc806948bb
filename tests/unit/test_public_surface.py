"""The public surface: what ``stepline`` exports, pinned against what it holds."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

import stepline
import stepline.agent
import stepline.errors
import stepline.store

PUBLIC = (stepline, stepline.agent, stepline.errors, stepline.store)


def test_the_package_exports_exactly_its_public_names() -> None:
    for name in stepline.__all__:  # the library's names are loaded on first use
        getattr(stepline, name)
    held = {
        name
        for name, value in vars(stepline).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert held | {"__version__"} == set(stepline.__all__)
    assert stepline.__all__ == sorted(stepline.__all__, key=lambda name: (name.islower(), name))


def test_the_package_reexports_the_library_the_stores_and_every_error() -> None:
    exported = set(stepline.__all__)
    assert set(stepline.agent.__all__) <= exported
    assert set(stepline.errors.__all__) <= exported
    assert {"MemoryStore", "SqlStore", "StepStore", "open_store", "migrate"} <= exported
    for name in stepline.__all__:
        getattr(stepline, name)


def test_the_library_is_loaded_on_first_use_only() -> None:
    """Importing stepline (as ``stepline serve`` does) loads neither the library nor
    the scripted model; naming a library export loads it."""
    probe = (
        "import sys, stepline\n"
        "print(sorted(m for m in ('stepline.agent', 'stepline.scripted') if m in sys.modules))\n"
        "stepline.Agent\n"
        "print('stepline.agent' in sys.modules, 'Agent' in dir(stepline))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["[]", "True", "True"]
    with pytest.raises(AttributeError):
        stepline.no_such_name  # noqa: B018


def test_no_public_name_means_two_things() -> None:
    meaning: dict[str, object] = {}
    for module in PUBLIC:
        for name in module.__all__:
            value = getattr(module, name)
            assert meaning.setdefault(name, value) is value, f"{name} in {module.__name__}"


#: the modules a user may import; every other module's name starts with ``_``,
#: or sits in a package whose name does
PUBLIC_MODULES = {
    "stepline",
    "stepline.__main__",
    "stepline.agent",
    "stepline.errors",
    "stepline.scripted",
    "stepline.store",
}


def _modules() -> set[str]:
    """Every module of the package, by its dotted name, read off the files."""
    root = Path(stepline.__file__).parent
    names = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if "migrations" not in parts:  # Alembic's scripts, loaded by path
            names.add(".".join(parts))
    return names


def test_every_module_but_the_public_ones_is_private() -> None:
    public = {
        name
        for name in _modules()
        if not any(part.startswith("_") and part != "__main__" for part in name.split("."))
    }
    assert public == PUBLIC_MODULES
