"""The front door: what ``sidecars`` exports is exactly what ``__all__`` says."""

from __future__ import annotations

import importlib

import pytest

import sidecars

PUBLIC_MODULES = [
    "sidecars",
    "sidecars.exceptions",
    "sidecars.schedule",
    "sidecars.starlette",
    "sidecars.stores",
    "sidecars.stores.postgres",
    "sidecars.testing",
]


# Front doors re-export: every public sidecars name they hold must be in __all__.
FRONT_DOORS = {"sidecars", "sidecars.stores"}


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_matches_public_names(name: str) -> None:
    """``__all__`` lists exactly the public names a module offers: for a front door every
    public sidecars name it holds, elsewhere every public name it defines."""
    module = importlib.import_module(name)
    assert isinstance(module.__all__, tuple)

    def offered(value: object) -> bool:
        owner = getattr(value, "__module__", None) or ""
        return owner.startswith("sidecars") if name in FRONT_DOORS else owner == name

    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and not isinstance(value, type(importlib))  # submodules are reached by import
        and offered(value)
    }
    assert public <= set(module.__all__)
    for attr in module.__all__:
        assert hasattr(module, attr), attr
    if name in FRONT_DOORS:
        assert set(module.__all__) - {"__version__"} == public


def test_all_is_sorted_and_unique() -> None:
    """``__all__`` lists each name once, in order, so diffs stay readable."""
    names = [n for n in sidecars.__all__ if n != "__version__"]
    assert names == sorted(names)
    assert len(set(names)) == len(names)


def test_errors_share_one_base() -> None:
    """Every exported error derives from SidecarsError, so apps can map the family."""
    for name in sidecars.exceptions.__all__:
        assert issubclass(getattr(sidecars, name), sidecars.SidecarsError)


def test_import_does_not_need_optional_extras() -> None:
    """``import sidecars`` never imports asyncpg or fastapi."""
    import subprocess
    import sys

    code = (
        "import sys, sidecars, sidecars.stores, sidecars.starlette; "
        "bad = [m for m in ('asyncpg', 'fastapi', 'starlette') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
