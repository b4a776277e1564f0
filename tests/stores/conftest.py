"""Fixtures for the store tests: one ``store`` fixture per implementation.

A new store joins the contract suite by adding a param to ``store`` (a PostgreSQL store would
build a fresh database per test here).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecars.stores import MemoryStore, SQLiteStore, Store


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """The SQLite and PostgreSQL drivers are asyncio-only."""
    return "asyncio"


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh, open store of each implementation."""
    impl: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "jobs.db")
    await impl.open()
    try:
        yield impl
    finally:
        await impl.close()
