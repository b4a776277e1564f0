"""Clocks: the system clock and the controllable FakeClock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import anyio
import pytest

from sidecars import Clock, FakeClock, SystemClock

pytestmark = pytest.mark.anyio


def test_both_clocks_satisfy_the_protocol() -> None:
    """SystemClock and FakeClock are Clocks."""
    assert isinstance(SystemClock(), Clock)
    assert isinstance(FakeClock(), Clock)


def test_system_clock_is_aware_utc() -> None:
    """SystemClock.now() is aware UTC and agrees with time()."""
    clock = SystemClock()
    now = clock.now()
    assert now.tzinfo is timezone.utc
    assert abs(now.timestamp() - clock.time()) < 1


async def test_fake_clock_wakes_sleepers_in_deadline_order() -> None:
    """advance() wakes each sleeper at its own deadline, earliest first."""
    start = datetime(2030, 1, 1, tzinfo=timezone.utc)
    clock = FakeClock(start)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, after: float) -> None:
        await clock.sleep_until(start.timestamp() + after)
        woke.append((name, clock.time() - start.timestamp()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper, "late", 30.0)
        tg.start_soon(sleeper, "early", 10.0)
        await anyio.wait_all_tasks_blocked()
        assert woke == []
        await clock.advance(timedelta(seconds=60))
    assert woke == [("early", 10.0), ("late", 30.0)]
    assert clock.now() == start + timedelta(seconds=60)


async def test_fake_clock_refuses_to_go_backwards() -> None:
    """A FakeClock never moves back in time."""
    clock = FakeClock()
    with pytest.raises(ValueError, match="backwards"):
        await clock.advance(-1)
    with pytest.raises(ValueError, match="backwards"):
        await clock.advance_to(clock.now() - timedelta(seconds=1))


def test_fake_clock_rejects_naive_start() -> None:
    """A naive start time is refused: it would be ambiguous."""
    with pytest.raises(ValueError, match="aware"):
        FakeClock(datetime(2030, 1, 1))


async def test_past_deadline_returns_at_once() -> None:
    """Sleeping until a past deadline returns without advancing."""
    clock = FakeClock()
    with anyio.fail_after(1):
        await clock.sleep_until(clock.time() - 5)
