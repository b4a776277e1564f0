"""Fixtures for the schedule tests.

DST expectations depend on the zone database, so these tests read zones only from the
``tzdata`` package, never from the machine's ``/usr/share/zoneinfo`` (which differs between
hosts and updates). ``zoneinfo.reset_tzpath([])`` leaves tzdata as the only source; the
ZoneInfo cache is cleared so no zone loaded earlier from system files is reused.

The pin is a package-scoped fixture rather than an import-time call so that it is undone
after the last schedule test: tests elsewhere keep the interpreter's usual zone lookup.
Tests build their zones inside the test (``ZoneInfo(name)``), after the pin is in place.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="package")
def _pin_tzdata() -> Iterator[None]:
    saved = zoneinfo.TZPATH
    zoneinfo.reset_tzpath([])
    zoneinfo.ZoneInfo.clear_cache()
    try:
        yield
    finally:
        zoneinfo.reset_tzpath(saved)
        zoneinfo.ZoneInfo.clear_cache()
