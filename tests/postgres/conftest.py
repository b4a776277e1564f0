"""Fixtures for the PostgreSQL-only tests: stores on a fresh schema of the session server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sidecars.stores.postgres import PostgresStore

try:
    from tests.pg_server import assert_no_leaked_connections
except ImportError:  # pragma: no cover - tests/ as a plain folder
    from pg_server import assert_no_leaked_connections

MakeStore = Callable[..., PostgresStore]


@pytest.fixture
async def make_store(pg_server: str, pg_schema: str) -> AsyncIterator[MakeStore]:
    """Build PostgresStores on this test's schema; all are checked for leaks and closed."""
    made: list[PostgresStore] = []

    def make(**kwargs: Any) -> PostgresStore:
        kwargs.setdefault("schema", pg_schema)
        if "pool" not in kwargs:
            kwargs.setdefault("dsn", pg_server)
        store = PostgresStore(**kwargs)
        made.append(store)
        return store

    try:
        yield make
    finally:
        for store in made:
            assert_no_leaked_connections(store)
        for store in made:
            await store.close()
