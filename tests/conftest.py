"""Shared fixtures: every async test runs on asyncio (the SQLite and PostgreSQL drivers are
asyncio-only)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run anyio tests on asyncio."""
    return "asyncio"
