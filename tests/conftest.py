"""Shared fixtures: every async test runs on asyncio (the SQLite and PostgreSQL drivers are
asyncio-only)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

try:  # tests/ is a package in this repository; the fallback keeps a plain folder working
    from tests.pg_server import PgServer, ServerNotFound, drop_schema, new_schema_name
except ImportError:  # pragma: no cover
    from pg_server import PgServer, ServerNotFound, drop_schema, new_schema_name


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run anyio tests on asyncio."""
    return "asyncio"


# -- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The DSN of a throwaway PostgreSQL server, started once per test session.

    ``SIDECARS_TEST_PG_DSN`` points the tests at an existing server instead. Without
    server binaries the PostgreSQL tests fail under CI (the ``CI`` variable is set) and are
    skipped otherwise.
    """
    existing = os.environ.get("SIDECARS_TEST_PG_DSN")
    if existing:
        yield existing
        return
    try:
        server = PgServer()
    except ServerNotFound as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    try:
        dsn = server.start()
    except BaseException:
        server.stop()
        raise
    try:
        yield dsn
    finally:
        server.stop()


@pytest.fixture
async def pg_schema(pg_server: str) -> AsyncIterator[str]:
    """A fresh schema name for one test (``t_<hex>``), dropped with its tables afterwards."""
    name = new_schema_name()
    try:
        yield name
    finally:
        await drop_schema(pg_server, name)
