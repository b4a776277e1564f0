"""Cancel, retry and unique keys through Sidecars, for memory and stored jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from pydantic import BaseModel

from sidecars import JobContext, JobState, Outcome, RetryPolicy, RunType, Sidecars
from sidecars.stores import MemoryStore, SQLiteStore, Store

pytestmark = pytest.mark.anyio


class Task(BaseModel):
    n: int


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh store of each kind."""
    made: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "c.db")
    yield made
    await made.close()


async def state_of(sc: Sidecars, job_id: object, *states: JobState, limit: float = 5) -> None:
    with anyio.fail_after(limit):
        while (info := await sc.get_job(job_id)) is None or info.state not in states:  # type: ignore[arg-type]
            await anyio.sleep(0.005)


async def test_cancel_a_queued_deferred_job(store: Store) -> None:
    """A queued job is cancelled at once and never runs."""
    sc = Sidecars(store, poll_interval=0.05)
    ran: list[int] = []

    @sc.sidecar(handle="later", run_type=RunType.DEFERRED)
    async def later(job: JobContext[Task]) -> None:
        ran.append(job.payload.n)

    ref = await later.enqueue(Task(n=1), delay=3600)
    assert await sc.cancel(ref.id) is JobState.CANCELLED
    info = await sc.get_job(ref.id)
    assert info is not None
    assert (info.state, info.outcome) == (JobState.CANCELLED, Outcome.CANCELLED)
    assert await sc.cancel(str(ref.id)) is JobState.CANCELLED  # again: unchanged
    assert await sc.cancel("00000000-0000-0000-0000-000000000000") is None
    await sc.aclose()


async def test_cancel_a_deferred_job_running_here(store: Store) -> None:
    """A job running in this process is cancelled cooperatively and ends cancelled."""
    sc = Sidecars(store, lease=5, lease_renew=1, poll_interval=0.05)
    started = anyio.Event()
    stopped = anyio.Event()

    @sc.sidecar(handle="long", run_type=RunType.DEFERRED)
    async def long(job: JobContext[Task]) -> None:
        started.set()
        try:
            await anyio.sleep(60)
        finally:
            stopped.set()

    async with sc.run():
        ref = await long.enqueue(Task(n=1))
        with anyio.fail_after(5):
            await started.wait()
        assert await sc.cancel(ref.id) is JobState.RUNNING  # asked; it stops at its await
        with anyio.fail_after(5):
            await stopped.wait()
        await state_of(sc, ref.id, JobState.CANCELLED)
    info = await sc.get_job(ref.id)
    assert info is not None
    assert info.outcome is Outcome.CANCELLED


async def test_retry_a_failed_deferred_job(store: Store) -> None:
    """retry() queues a failed job again, attempts reset, and it runs."""
    sc = Sidecars(store, lease=5, lease_renew=1, poll_interval=0.05)
    fail = True
    runs: list[int] = []

    @sc.sidecar(handle="once", run_type=RunType.DEFERRED, retry=RetryPolicy(max_attempts=1))
    async def once(job: JobContext[Task]) -> None:
        runs.append(job.attempt)
        if fail:
            raise RuntimeError("not yet")

    async with sc.run():
        ref = await once.enqueue(Task(n=1))
        await state_of(sc, ref.id, JobState.FAILED)
        fail = False
        assert await sc.retry(ref.id) is True
        await state_of(sc, ref.id, JobState.SUCCEEDED, JobState.QUEUED, JobState.RUNNING)
        await state_of(sc, ref.id, JobState.SUCCEEDED)
        assert await sc.retry(ref.id) is False  # a succeeded job is not retried
    assert runs == [1, 1]


async def test_unique_keys_through_enqueue(store: Store) -> None:
    """A keyed job is enqueued once while queued; once it runs, the key is free again."""
    sc = Sidecars(store, lease=5, lease_renew=1, poll_interval=0.05)
    started = anyio.Event()
    release = anyio.Event()
    runs: list[int] = []

    @sc.sidecar(handle="rebuild", run_type=RunType.DEFERRED)
    async def rebuild(job: JobContext[Task]) -> None:
        runs.append(job.payload.n)
        started.set()
        await release.wait()

    first = await rebuild.enqueue(Task(n=1), key="customer:42")
    again = await rebuild.enqueue(Task(n=2), key="customer:42")
    assert (first.created, again.created, again.id) == (True, False, first.id)
    many = await rebuild.enqueue_many([Task(n=3), Task(n=4)], keys=["customer:42", "customer:7"])
    assert [r.created for r in many] == [False, True]
    async with sc.run():
        with anyio.fail_after(5):
            await started.wait()
        # customer:42 is running now: the same key makes a new job.
        third = await rebuild.enqueue(Task(n=5), key="customer:42")
        assert third.created
        assert third.id != first.id
        release.set()
        await state_of(sc, third.id, JobState.SUCCEEDED)
    assert sorted(runs) == [1, 4, 5]


async def test_memory_cancel_retry_and_keys() -> None:
    """MEMORY jobs: a queued one is cancelled and skipped, a running one cancelled, a failed
    one retried, and a key dedupes while queued."""
    sc = Sidecars()
    gate = anyio.Event()
    started = anyio.Event()
    runs: list[int] = []

    @sc.sidecar(handle="mem", run_type=RunType.MEMORY)
    async def mem(job: JobContext[Task]) -> None:
        runs.append(job.payload.n)
        if job.payload.n == 0:
            started.set()
            await gate.wait()
        if job.payload.n == 3 and runs.count(3) == 1:
            raise RuntimeError("first time fails")

    async with sc.run():
        running = await mem.enqueue(Task(n=0))
        with anyio.fail_after(5):
            await started.wait()
        queued = await mem.enqueue(Task(n=1), key="k")
        assert (await mem.enqueue(Task(n=2), key="k")).created is False
        assert await sc.cancel(queued.id) is JobState.CANCELLED
        await sc.cancel(running.id)
        await state_of(sc, running.id, JobState.CANCELLED)
        failing = await mem.enqueue(Task(n=3))
        await state_of(sc, failing.id, JobState.FAILED)
        assert await sc.retry(failing.id)
        await state_of(sc, failing.id, JobState.SUCCEEDED)
    assert runs == [0, 3, 3]


async def test_memory_cancel_that_lands_after_the_last_checkpoint_stays_with_its_job() -> None:
    """A running MEMORY job cancelled after its last checkpoint ends cancelled, and the
    cancellation never reaches the next job on the same worker."""
    sc = Sidecars()
    ran: list[int] = []

    @sc.sidecar(handle="mem", run_type=RunType.MEMORY, concurrency=1)
    async def mem(job: JobContext[Task]) -> None:
        if job.payload.n == 0:
            await sc.cancel(job.job_id)  # the cancel is requested; no checkpoint follows
            ran.append(0)
            return
        await anyio.lowlevel.checkpoint()  # a checkpoint the old cancellation would hit
        ran.append(job.payload.n)

    async with sc.run():
        first = await mem.enqueue(Task(n=0))
        second = await mem.enqueue(Task(n=1))
        await state_of(sc, first.id, JobState.CANCELLED)
        await state_of(sc, second.id, JobState.SUCCEEDED)
        third = await mem.enqueue(Task(n=2))
        await state_of(sc, third.id, JobState.SUCCEEDED)
    assert ran == [0, 1, 2]
    info = await sc.get_job(first.id)
    assert info is not None
    assert info.outcome is Outcome.CANCELLED
