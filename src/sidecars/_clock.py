"""Clocks: the one source of wall time for schedules, leases and records.

Timeouts are the exception: they run on the event loop's monotonic clock through
``anyio.fail_after``, so a test clock never makes a handler time out.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Protocol, runtime_checkable

import anyio

__all__ = ("Clock", "FakeClock", "SystemClock", "busy")

# The scheduler never sleeps longer than this in one go: after an NTP step or a suspended
# laptop the wall clock may have jumped, and a long sleep would miss fires.
_MAX_SLEEP_CHUNK = 30.0


@runtime_checkable
class Clock(Protocol):
    """Where sidecars reads the time and waits for it."""

    def time(self) -> float:
        """Now, as float seconds since the Unix epoch."""
        ...

    def now(self) -> datetime:
        """Now, as an aware UTC datetime."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once :meth:`time` has reached ``deadline`` (epoch seconds)."""
        ...


class SystemClock:
    """The real wall clock."""

    def time(self) -> float:
        """Now, as float seconds since the Unix epoch."""
        return time.time()

    def now(self) -> datetime:
        """Now, as an aware UTC datetime."""
        return datetime.now(timezone.utc)

    async def sleep_until(self, deadline: float) -> None:
        """Sleep in bounded chunks, re-reading wall time after each."""
        # Polling in chunks on purpose: see _MAX_SLEEP_CHUNK.
        while (remaining := deadline - self.time()) > 0:  # noqa: ASYNC110
            await anyio.sleep(min(remaining, _MAX_SLEEP_CHUNK))

    def __repr__(self) -> str:
        return "SystemClock()"


def _as_utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        raise ValueError(f"expected an aware datetime, got naive {dt!r}")
    return dt.astimezone(timezone.utc)


class FakeClock:
    """A clock that moves only when told to, for tests.

    Tasks sleeping on it wake in deadline order as :meth:`advance` or :meth:`advance_to`
    moves the time past their deadline; nothing in sidecars waits in real time for it.

    Args:
        start: the initial time (aware); defaults to 2030-01-01 00:00 UTC.
    """

    def __init__(self, start: datetime | None = None, *, settle_timeout: float = 30.0) -> None:
        self._now = (
            _as_utc(start) if start is not None else datetime(2030, 1, 1, tzinfo=timezone.utc)
        ).timestamp()
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()
        # Tasks doing time-driven work (a fire, a claimed job, a claim round): advance()
        # waits for them, since a task waiting on a store's thread looks "blocked" to anyio.
        self._busy: dict[int, int] = {}
        self.settle_timeout = settle_timeout

    def time(self) -> float:
        """The current fake time, as epoch seconds."""
        return self._now

    def now(self) -> datetime:
        """The current fake time, as an aware UTC datetime."""
        return datetime.fromtimestamp(self._now, timezone.utc)

    async def sleep_until(self, deadline: float) -> None:
        """Wait until the fake time reaches ``deadline``."""
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), event))
        # A busy task that sleeps on this clock is idle until woken (a handler may wait
        # for fake time to pass).
        task = anyio.get_current_task().id
        depth = self._busy.pop(task, 0)
        try:
            await event.wait()
        finally:
            # A cancelled sleeper must not hold up advance(): a set event marks it gone.
            event.set()
            if depth:
                self._busy[task] = depth

    @property
    def next_deadline(self) -> float | None:
        """The earliest deadline anyone sleeps until, or None."""
        while self._sleepers and self._sleepers[0][2].is_set():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    def set(self, when: datetime) -> None:
        """Jump to ``when`` and wake every sleeper whose deadline has passed (no settling)."""
        self._now = _as_utc(when).timestamp()
        self._wake_due()

    async def advance(self, delta: timedelta | float) -> None:
        """Move time forward by ``delta``, waking sleepers in order; see :meth:`advance_to`."""
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        if seconds < 0:
            raise ValueError("a FakeClock cannot go backwards")
        await self._advance_to_ts(self._now + seconds)

    async def advance_to(self, when: datetime) -> None:
        """Move time forward to ``when``, stopping at each sleeper's deadline on the way.

        At each deadline the woken tasks run until every task is blocked again, so work
        that is due in between completes before time moves on.
        """
        target = _as_utc(when).timestamp()
        if target < self._now:
            raise ValueError("a FakeClock cannot go backwards")
        await self._advance_to_ts(target)

    async def _advance_to_ts(self, target: float) -> None:
        await self.settle()
        while (nxt := self.next_deadline) is not None and nxt <= target:
            self._now = max(self._now, nxt)
            self._wake_due()
            await self.settle()
        self._now = target
        self._wake_due()
        await self.settle()

    async def settle(self) -> None:
        """Wait until every task is blocked and no time-driven work is in progress.

        Raises:
            TimeoutError: work stayed busy for ``settle_timeout`` real seconds (a handler
                waiting for something only the test provides after ``advance`` returns).
        """
        started = time.monotonic()
        while True:
            await _all_tasks_blocked()
            if not self._busy:
                return
            if time.monotonic() - started > self.settle_timeout:
                raise TimeoutError(
                    f"FakeClock: work still running after {self.settle_timeout}s of real "
                    "time; does a handler wait for something the test does only later?"
                )
            await anyio.sleep(0.0005)

    @contextmanager
    def _track(self) -> Iterator[None]:
        task = anyio.get_current_task().id
        self._busy[task] = self._busy.get(task, 0) + 1
        try:
            yield
        finally:
            depth = self._busy.get(task, 0) - 1
            if depth > 0:
                self._busy[task] = depth
            else:
                self._busy.pop(task, None)

    def _wake_due(self) -> None:
        while self._sleepers and self._sleepers[0][0] <= self._now:
            heapq.heappop(self._sleepers)[2].set()

    def __repr__(self) -> str:
        return f"FakeClock({self.now().isoformat()})"


async def _all_tasks_blocked() -> None:
    """Return once every other task waits on something.

    anyio's ``wait_all_tasks_blocked`` sleeps 0.1 s whenever a task is still runnable,
    which makes a simulated day of fires take minutes; on asyncio we yield instead.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio): use anyio's portable version
        await anyio.wait_all_tasks_blocked()
        return
    this = asyncio.current_task(loop)
    while True:
        await asyncio.sleep(0)
        for task in asyncio.all_tasks(loop):
            if task is this:
                continue
            waiter = getattr(task, "_fut_waiter", None)
            if waiter is None or waiter.done():
                break
        else:
            return


@contextmanager
def busy(clock: Clock) -> Iterator[None]:
    """Mark time-driven work in progress, so a :class:`FakeClock` waits for it."""
    if isinstance(clock, FakeClock):
        with clock._track():
            yield
    else:
        yield
