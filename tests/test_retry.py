"""Retry policies, job-event hooks and honest sync handlers."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel

from sidecars import (
    FakeClock,
    InvalidDeclaration,
    JobContext,
    JobEvent,
    JobState,
    Outcome,
    RetryPolicy,
    RunType,
    Schedule,
    Sidecars,
)
from sidecars.stores import MemoryStore, SQLiteStore, Store

pytestmark = pytest.mark.anyio

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


class Task(BaseModel):
    n: int


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh store of each kind."""
    made: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "r.db")
    yield made
    await made.close()


async def wait_until(predicate: object, limit: float = 10.0) -> None:
    with anyio.fail_after(limit):
        while not predicate():  # type: ignore[operator]
            await anyio.sleep(0.005)


class TestPolicy:
    """RetryPolicy on its own: delays, jitter bounds, filters, validation."""

    def test_delays_double_up_to_the_cap_without_jitter(self) -> None:
        """Without jitter the delay is base * factor**(n-1), capped."""
        policy = RetryPolicy(base_delay=2, factor=3, max_delay=50, jitter=False)
        assert [policy.delay(n) for n in range(1, 6)] == [2, 6, 18, 50, 50]

    def test_jitter_stays_within_bounds(self) -> None:
        """Full jitter draws in [0, ceiling] and spreads over the range."""
        policy = RetryPolicy(base_delay=1, max_delay=600)
        rng = random.Random(7)
        for attempt in range(1, 15):
            ceiling = min(600, 2 ** (attempt - 1))
            draws = [policy.delay(attempt, rng) for _ in range(200)]
            assert all(0 <= d <= ceiling for d in draws)
            assert max(draws) > ceiling * 0.8
            assert min(draws) < ceiling * 0.2

    def test_timedelta_settings(self) -> None:
        """Delays may be given as timedeltas."""
        policy = RetryPolicy(
            base_delay=timedelta(seconds=3), max_delay=timedelta(minutes=1), jitter=False
        )
        assert policy.delay(1) == 3
        assert policy.delay(10) == 60

    def test_retry_on_filters(self) -> None:
        """retry_on limits what is retried; dont_retry_on wins; a timeout always retries."""
        policy = RetryPolicy(retry_on=(OSError,), dont_retry_on=(FileNotFoundError,))
        assert policy.retries(ConnectionError())
        assert not policy.retries(ValueError())
        assert not policy.retries(FileNotFoundError())
        assert policy.retries(None)

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"max_attempts": 0}, "max_attempts"),
            ({"base_delay": -1}, "base_delay"),
            ({"max_delay": "1m"}, "max_delay"),
            ({"factor": 0.5}, "factor"),
            ({"retry_on": (KeyError, "ValueError")}, "retry_on"),
        ],
    )
    def test_bad_settings_are_refused(self, kwargs: dict[str, object], field: str) -> None:
        """Each bad setting names its field."""
        with pytest.raises(InvalidDeclaration, match=f"field '{field}'"):
            RetryPolicy(**kwargs)  # type: ignore[arg-type]

    def test_standalone_cannot_retry(self) -> None:
        """A STANDALONE sidecar refuses a retry policy with more than one attempt."""
        sc = Sidecars(MemoryStore())
        with pytest.raises(InvalidDeclaration, match=r"'s': field 'retry'"):

            @sc.sidecar(
                handle="s",
                run_type=RunType.STANDALONE,
                schedule=Schedule(every=timedelta(minutes=1)),
                retry=RetryPolicy(max_attempts=3),
            )
            async def s(job: JobContext[None]) -> None: ...


async def test_deferred_attempts_follow_the_backoff(store: Store) -> None:
    """With the fake clock, each retry runs exactly when its backoff says."""
    clock = FakeClock(T0)
    sc = Sidecars(store, clock=clock, lease=5, lease_renew=1, poll_interval=0.05)
    runs: list[tuple[int, float]] = []

    @sc.sidecar(
        handle="flaky",
        run_type=RunType.DEFERRED,
        retry=RetryPolicy(max_attempts=4, base_delay=10, factor=2, jitter=False),
    )
    async def flaky(job: JobContext[Task]) -> None:
        runs.append((job.attempt, clock.time() - T0.timestamp()))
        raise ConnectionError("down")

    async with sc.run():
        ref = await flaky.enqueue(Task(n=1))
        await clock.advance(timedelta(minutes=5))
    assert runs == [(1, 0.0), (2, 10.0), (3, 30.0), (4, 70.0)]
    info = await sc.get_job(ref.id)
    assert info is not None
    assert (info.state, info.outcome, info.attempts) == (JobState.FAILED, Outcome.ERROR, 4)
    assert info.error is not None
    assert info.error.startswith("builtins.ConnectionError: down")
    assert "Traceback (most recent call last)" in info.error
    assert "in flaky" in info.error


async def test_errors_outside_retry_on_fail_at_once(store: Store) -> None:
    """An error not in retry_on fails the job on its first attempt."""
    clock = FakeClock(T0)
    sc = Sidecars(store, clock=clock, lease=5, lease_renew=1, poll_interval=0.05)
    runs: list[int] = []

    @sc.sidecar(
        handle="strict",
        run_type=RunType.DEFERRED,
        retry=RetryPolicy(max_attempts=5, retry_on=(ConnectionError,)),
    )
    async def strict(job: JobContext[Task]) -> None:
        runs.append(job.attempt)
        raise ValueError("bad data")

    async with sc.run():
        ref = await strict.enqueue(Task(n=1))
        await clock.advance(timedelta(hours=1))
    assert runs == [1]
    info = await sc.get_job(ref.id)
    assert info is not None
    assert (info.state, info.attempts) == (JobState.FAILED, 1)


async def test_waiting_retry_never_blocks_a_job_due_now(store: Store) -> None:
    """With concurrency=1, a job waiting for its backoff does not hold the slot."""
    clock = FakeClock(T0)
    sc = Sidecars(store, clock=clock, lease=5, lease_renew=1, poll_interval=0.05)
    runs: list[tuple[int, int, float]] = []

    @sc.sidecar(
        handle="one",
        run_type=RunType.DEFERRED,
        concurrency=1,
        retry=RetryPolicy(max_attempts=2, base_delay=600, jitter=False),
    )
    async def one(job: JobContext[Task]) -> None:
        runs.append((job.payload.n, job.attempt, clock.time() - T0.timestamp()))
        if job.payload.n == 1 and job.attempt == 1:
            raise ConnectionError("try later")

    async with sc.run():
        await one.enqueue(Task(n=1))
        await clock.advance(1)
        await one.enqueue(Task(n=2))
        await clock.advance(1)
        assert runs == [(1, 1, 0.0), (2, 1, 1.0)]  # job 2 ran while job 1 waited
        await clock.advance(timedelta(minutes=10))
    assert runs[-1] == (1, 2, 600.0)


async def test_memory_jobs_retry_without_holding_a_worker() -> None:
    """A MEMORY sidecar with a retry policy retries after the backoff, slot free meanwhile."""
    clock = FakeClock(T0)
    sc = Sidecars(clock=clock)
    runs: list[tuple[int, int, float]] = []

    @sc.sidecar(
        handle="mem",
        run_type=RunType.MEMORY,
        concurrency=1,
        retry=RetryPolicy(max_attempts=3, base_delay=5, jitter=False),
    )
    async def mem(job: JobContext[Task]) -> None:
        runs.append((job.payload.n, job.attempt, clock.time() - T0.timestamp()))
        if job.payload.n == 1 and job.attempt < 3:
            raise ConnectionError("flaky")

    async with sc.run():
        ref = await mem.enqueue(Task(n=1))
        await clock.advance(0)
        await mem.enqueue(Task(n=2))
        await clock.advance(60)
    assert runs == [(1, 1, 0.0), (2, 1, 0.0), (1, 2, 5.0), (1, 3, 15.0)]
    info = await sc.get_job(ref.id)
    assert info is not None
    assert (info.state, info.attempts, info.max_attempts) == (JobState.SUCCEEDED, 3, 3)


async def test_job_event_hooks(store: Store) -> None:
    """on_job_start/on_job_end see every run with its outcome and duration; a failing hook
    is logged and changes nothing."""
    sc = Sidecars(store, lease=5, lease_renew=1, poll_interval=0.05)
    events: list[JobEvent] = []

    @sc.on_job_start
    def started(event: JobEvent) -> None:
        events.append(event)

    @sc.on_job_end
    def ended(event: JobEvent) -> None:
        events.append(event)

    @sc.on_job_end
    def broken(event: JobEvent) -> None:
        raise RuntimeError("metrics backend down")

    @sc.sidecar(handle="h", run_type=RunType.DEFERRED)
    async def h(job: JobContext[Task]) -> None:
        if job.payload.n:
            raise ValueError("no")

    async with sc.run():
        ok = await h.enqueue(Task(n=0))
        await wait_until(lambda: len(events) >= 2)
    assert [e.outcome for e in events] == [None, Outcome.OK]
    assert events[0].job_id == events[1].job_id == ok.id
    assert events[1].duration is not None
    assert events[1].duration >= 0
    assert events[1].handle == "h"
    info = await sc.get_job(ok.id)
    assert info is not None
    assert info.state is JobState.SUCCEEDED


class TestSyncHandlers:
    """Sync handlers: own limiter, timeout recorded at the deadline, slot held until the
    thread returns, stuck threads reported, the event loop never blocked."""

    async def test_timeout_recorded_at_deadline_and_slot_held(self) -> None:
        """A sync handler past its timeout is recorded as timed out at the deadline, while
        its slot stays taken until the thread returns."""
        sc = Sidecars()
        release = threading.Event()
        started: list[int] = []

        @sc.sidecar(handle="sync", run_type=RunType.MEMORY, concurrency=1, timeout=0.1)
        def sync(job: JobContext[Task]) -> None:
            started.append(job.payload.n)
            if job.payload.n == 0:
                release.wait(10)

        async with sc.run():
            first = await sync.enqueue(Task(n=0))
            await sync.enqueue(Task(n=1))
            await wait_until(lambda: started == [0])
            await anyio.sleep(0.3)  # well past the timeout
            info = await sc.get_job(first.id)
            assert info is not None
            assert (info.state, info.outcome) == (JobState.FAILED, Outcome.TIMEOUT)
            stats = await sc.stats()
            assert stats.stuck_threads == 1
            assert started == [0]  # the second job waits: the slot is still held
            release.set()
            await wait_until(lambda: started == [0, 1])
            await wait_until(lambda: sc._runner is not None and not sc._runner.stuck_threads)
        assert (await sc.stats()).stuck_threads == 0

    async def test_event_loop_keeps_running_while_sync_handlers_block(self) -> None:
        """Ten sync handlers sleeping 0.5 s do not block the loop: a ticker keeps ticking."""
        sc = Sidecars()
        done: list[int] = []

        @sc.sidecar(handle="sleepy", run_type=RunType.MEMORY, concurrency=10)
        def sleepy(job: JobContext[Task]) -> None:
            time.sleep(0.5)
            done.append(job.payload.n)

        gaps: list[float] = []
        async with sc.run():
            for i in range(10):
                await sleepy.enqueue(Task(n=i))
            last = time.monotonic()
            while len(done) < 10:
                await anyio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now
        assert sorted(done) == list(range(10))
        # A handler run on the loop would hold it for its whole 0.5 s sleep.
        assert max(gaps) < 0.4

    async def test_own_thread_limiter(self) -> None:
        """Sync handlers use sidecars' own limiter, not anyio's default one."""
        sc = Sidecars(max_threads=3)
        assert sc.max_threads == 3
        peak = 0
        running = 0
        lock = threading.Lock()

        @sc.sidecar(handle="t", run_type=RunType.MEMORY, concurrency=8)
        def t(job: JobContext[Task]) -> None:
            nonlocal peak, running
            with lock:
                running += 1
                peak = max(peak, running)
            time.sleep(0.05)
            with lock:
                running -= 1

        async with sc.run():
            assert sc._runner is not None
            assert sc._runner.thread_limiter is not anyio.to_thread.current_default_thread_limiter()
            for i in range(8):
                await t.enqueue(Task(n=i))
        assert peak == 3
