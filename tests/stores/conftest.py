"""Fixtures for the store tests: one ``store`` fixture per implementation.

A new store joins the contract suite by adding a param to ``store``. The PostgreSQL store
gets a fresh schema per test on the session's throwaway server (``pg_server``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecars.stores import MemoryStore, SQLiteStore, Store

try:
    from tests.pg_server import assert_no_leaked_connections, drop_schema, new_schema_name
except ImportError:  # pragma: no cover - tests/ as a plain folder
    from pg_server import assert_no_leaked_connections, drop_schema, new_schema_name


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """The SQLite and PostgreSQL drivers are asyncio-only."""
    return "asyncio"


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh, open store of each implementation."""
    impl: Store
    if request.param == "memory":
        impl = MemoryStore()
    elif request.param == "sqlite":
        impl = SQLiteStore(tmp_path / "jobs.db")
    else:
        from sidecars.stores.postgres import PostgresStore

        dsn = request.getfixturevalue("pg_server")
        schema = new_schema_name()
        impl = PostgresStore(dsn, schema=schema, min_size=1, max_size=20)
    await impl.open()
    try:
        yield impl
    finally:
        assert_no_leaked_connections(impl)
        await impl.close()
        if request.param == "postgres":
            await drop_schema(dsn, schema)
