"""The public surface: what ``stepline`` exports, pinned against what it holds."""

from __future__ import annotations

import types

import stepline
import stepline.agent
import stepline.errors
import stepline.store

PUBLIC = (stepline, stepline.agent, stepline.errors, stepline.store)


def test_the_package_exports_exactly_its_public_names() -> None:
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


def test_no_public_name_means_two_things() -> None:
    meaning: dict[str, object] = {}
    for module in PUBLIC:
        for name in module.__all__:
            value = getattr(module, name)
            assert meaning.setdefault(name, value) is value, f"{name} in {module.__name__}"
