"""The sidecars pytest plugin (registered through the ``pytest11`` entry point).

Fixtures (function-scoped, never autouse; they leave your ``anyio_backend`` alone — the
stores need ``"asyncio"``):

- ``sidecars_harness``: a :class:`~sidecars.testing.SidecarsHarness` with a fake clock and a
  fresh SQLite store in the test's temporary folder.
- ``sidecars_clock``: that harness's :class:`~sidecars.FakeClock`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ._clock import FakeClock
from .testing import SidecarsHarness

__all__ = ("sidecars_clock", "sidecars_harness")


@pytest.fixture
async def sidecars_harness(tmp_path: Path) -> AsyncIterator[SidecarsHarness]:
    """A harness to run your Sidecars on a fake clock and a fresh SQLite store."""
    harness = SidecarsHarness.on_sqlite(tmp_path)
    try:
        yield harness
    finally:
        await harness.store.close()


@pytest.fixture
def sidecars_clock(sidecars_harness: SidecarsHarness) -> FakeClock:
    """The fake clock of ``sidecars_harness``."""
    return sidecars_harness.clock
