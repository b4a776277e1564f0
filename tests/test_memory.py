"""MEMORY sidecars: bounded queues, concurrency, timeouts, errors and shutdown."""

from __future__ import annotations

import logging
import threading

import anyio
import pytest
from pydantic import BaseModel

from sidecars import (
    JobContext,
    JobState,
    NotRunning,
    Outcome,
    PayloadError,
    QueueFull,
    RunType,
    ShuttingDown,
    Sidecars,
)

pytestmark = pytest.mark.anyio


class Item(BaseModel):
    n: int
    tags: list[str] = []


async def wait_until(predicate: object, limit: float = 5.0) -> None:
    """Poll a condition in short steps (for work running in real time)."""
    with anyio.fail_after(limit):
        while not predicate():  # type: ignore[operator]
            await anyio.sleep(0.005)


async def test_concurrency_limit_holds_and_all_jobs_complete() -> None:
    """With concurrency=3 and 50 jobs, never more than 3 run at once and all 50 complete."""
    sc = Sidecars()
    running = 0
    peak = 0
    done: list[int] = []

    @sc.sidecar(handle="work", run_type=RunType.MEMORY, concurrency=3)
    async def work(job: JobContext[Item]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.002)
        running -= 1
        done.append(job.payload.n)

    async with sc.run():
        refs = [await work.enqueue(Item(n=i)) for i in range(50)]
        await wait_until(lambda: len(done) == 50)
    assert peak == 3
    assert sorted(done) == list(range(50))
    stats = (await sc.stats()).handles["work"]
    assert (stats.enqueued, stats.succeeded, stats.failed) == (50, 50, 0)
    for ref in refs:
        info = await sc.get_job(ref.id)
        assert info is not None
        assert (info.state, info.outcome) == (JobState.SUCCEEDED, Outcome.OK)


async def test_full_queue_raises_queue_full_when_configured() -> None:
    """With on_full='raise', sending past max_pending raises QueueFull and keeps the rest."""
    sc = Sidecars(grace=5)
    release = anyio.Event()
    ran: list[int] = []

    @sc.sidecar(handle="slow", run_type=RunType.MEMORY, max_pending=2, on_full="raise")
    async def slow(job: JobContext[Item]) -> None:
        await release.wait()
        ran.append(job.payload.n)

    async with sc.run():
        await slow.enqueue(Item(n=0))
        await anyio.wait_all_tasks_blocked()  # job 0 is now running, the queue is empty
        await slow.enqueue(Item(n=1))
        await slow.enqueue(Item(n=2))
        with pytest.raises(QueueFull, match=r"'slow'.*max_pending"):
            await slow.enqueue(Item(n=3))
        assert (await sc.stats()).handles["slow"].pending == 2
        release.set()
    assert ran == [0, 1, 2]


async def test_full_queue_waits_for_room_by_default() -> None:
    """With on_full='wait' (the default), a sender waits until a worker takes a job."""
    sc = Sidecars(grace=5)
    release = anyio.Event()
    ran: list[int] = []

    @sc.sidecar(handle="slow", run_type=RunType.MEMORY, max_pending=1)
    async def slow(job: JobContext[Item]) -> None:
        await release.wait()
        ran.append(job.payload.n)

    async with sc.run():
        await slow.enqueue(Item(n=0))
        await anyio.wait_all_tasks_blocked()
        await slow.enqueue(Item(n=1))
        sent = anyio.Event()

        async def third() -> None:
            await slow.enqueue(Item(n=2))
            sent.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(third)
            await anyio.wait_all_tasks_blocked()
            assert not sent.is_set()  # still waiting for room
            release.set()
        assert sent.is_set()
    assert ran == [0, 1, 2]


async def test_overrunning_job_is_cancelled_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    """A job past its timeout is cancelled, recorded as timeout, and the worker goes on."""
    sc = Sidecars()
    cancelled = anyio.Event()
    after: list[int] = []

    @sc.sidecar(handle="slow", run_type=RunType.MEMORY, timeout=0.05)
    async def slow(job: JobContext[Item]) -> None:
        if job.payload.n == 0:
            try:
                await anyio.sleep(30)
            finally:
                cancelled.set()
        after.append(job.payload.n)

    async with sc.run():
        ref = await slow.enqueue(Item(n=0))
        await slow.enqueue(Item(n=1))
        await wait_until(lambda: after == [1])
    assert cancelled.is_set()
    info = await sc.get_job(ref.id)
    assert info is not None
    assert (info.state, info.outcome) == (JobState.FAILED, Outcome.TIMEOUT)
    assert info.error is not None
    assert "timed out" in info.error
    assert (await sc.stats()).handles["slow"].timed_out == 1
    assert any("timed out" in r.getMessage() for r in caplog.records)


async def test_handler_raising_timeout_error_is_an_error_not_a_timeout() -> None:
    """A TimeoutError raised by the handler itself is an ordinary failure."""
    sc = Sidecars()

    @sc.sidecar(handle="t", run_type=RunType.MEMORY, timeout=10)
    async def t(job: JobContext[Item]) -> None:
        raise TimeoutError("upstream took too long")

    async with sc.run():
        ref = await t.enqueue(Item(n=0))
        await wait_until(lambda: sc.history.get(ref.id).state.finished)  # type: ignore[union-attr]
    info = await sc.get_job(ref.id)
    assert info is not None
    assert info.outcome is Outcome.ERROR
    assert "upstream took too long" in (info.error or "")


async def test_failing_handler_never_stops_the_app_or_other_handles(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Handler errors are logged and counted; the same and other handles keep working."""
    sc = Sidecars()
    good: list[int] = []

    @sc.sidecar(handle="bad", run_type=RunType.MEMORY)
    async def bad(job: JobContext[Item]) -> None:
        raise RuntimeError(f"boom {job.payload.n}")

    @sc.sidecar(handle="good", run_type=RunType.MEMORY)
    async def ok(job: JobContext[Item]) -> None:
        good.append(job.payload.n)

    with caplog.at_level(logging.ERROR, logger="sidecars"):
        async with sc.run():
            for i in range(5):
                await bad.enqueue(Item(n=i))
                await ok.enqueue(Item(n=i))
            await wait_until(lambda: len(good) == 5 and sc.is_running)
            await wait_until(lambda: bad_done(sc) == 5)
            assert sc.is_running
    stats = (await sc.stats()).handles
    assert stats["bad"].failed == 5
    assert stats["good"].succeeded == 5
    assert sum("boom" in str(r.exc_info[1]) for r in caplog.records if r.exc_info) == 5


def bad_done(sc: Sidecars) -> int:
    return sc._runner.counters["bad"].failed if sc._runner else 0  # type: ignore[union-attr]


async def test_enqueue_before_start_raises_not_running() -> None:
    """A MEMORY job sent before the runner starts raises NotRunning naming the handle."""
    sc = Sidecars()

    @sc.sidecar(handle="mail", run_type=RunType.MEMORY)
    async def mail(job: JobContext[Item]) -> None: ...

    with pytest.raises(NotRunning, match=r"'mail'.*not running.*lifespan"):
        await mail.enqueue(Item(n=1))


async def test_invalid_payload_is_refused_before_queueing() -> None:
    """A payload failing validation raises PayloadError and queues nothing."""
    sc = Sidecars()
    ran: list[object] = []

    @sc.sidecar(handle="mail", run_type=RunType.MEMORY)
    async def mail(job: JobContext[Item]) -> None:
        ran.append(job)

    async with sc.run():
        with pytest.raises(PayloadError, match=r"'mail'.*n:"):
            await mail.enqueue({"n": "many"})  # type: ignore[arg-type]
        with pytest.raises(PayloadError, match=r"'mail'.*tags.1:"):
            await mail.enqueue_many([Item(n=1), {"n": 2, "tags": ["a", 3]}])  # type: ignore[list-item]
        assert (await sc.stats()).handles["mail"].enqueued == 0
    assert ran == []


async def test_handler_gets_a_copy_and_context() -> None:
    """The handler gets a validated copy (mutating the original changes nothing) and its context."""
    sc = Sidecars()
    got: list[JobContext[Item]] = []

    @sc.sidecar(handle="h", run_type=RunType.MEMORY, timeout=5)
    async def h(job: JobContext[Item]) -> None:
        got.append(job)

    async with sc.run():
        item = Item(n=1, tags=["a"])
        ref = await h.enqueue(item)
        item.tags.append("mutated")
        await wait_until(lambda: got)
    (ctx,) = got
    assert ctx.payload == Item(n=1, tags=["a"])
    assert ctx.job_id == ref.id
    assert ctx.handle == "h"
    assert ctx.attempt == 1
    assert ctx.deadline is not None
    assert ctx.deadline > ctx.scheduled_at
    assert ctx.logger.name == "sidecars.job.h"


async def test_sync_handlers_run_in_worker_threads() -> None:
    """A sync handler runs off the event loop thread."""
    sc = Sidecars()
    threads: list[int] = []

    @sc.sidecar(handle="sync", run_type=RunType.MEMORY, concurrency=2)
    def sync(job: JobContext[Item]) -> None:
        threads.append(threading.get_ident())

    async with sc.run():
        for i in range(4):
            await sync.enqueue(Item(n=i))
        await wait_until(lambda: len(threads) == 4)
    assert threading.get_ident() not in threads


async def test_enqueue_many_runs_every_job() -> None:
    """enqueue_many returns one JobRef per payload, and runs each."""
    sc = Sidecars()
    seen: list[int] = []

    @sc.sidecar(handle="h", run_type=RunType.MEMORY)
    async def h(job: JobContext[Item]) -> None:
        seen.append(job.payload.n)

    async with sc.run():
        refs = await h.enqueue_many(Item(n=i) for i in range(10))
        await wait_until(lambda: len(seen) == 10)
    assert len({r.id for r in refs}) == 10
    assert seen == list(range(10))


async def test_history_is_bounded() -> None:
    """Only the most recent memory_history jobs are remembered."""
    sc = Sidecars(memory_history=3)

    @sc.sidecar(handle="h", run_type=RunType.MEMORY)
    async def h(job: JobContext[Item]) -> None: ...

    async with sc.run():
        refs = [await h.enqueue(Item(n=i)) for i in range(5)]
    assert await sc.get_job(refs[0].id) is None
    assert await sc.get_job(str(refs[4].id)) is not None
    assert await sc.get_job("not-a-uuid") is None


class TestShutdown:
    """Shutdown: stop intake, drain within grace, cancel and count what is left."""

    async def test_queued_and_running_jobs_finish_within_grace(self) -> None:
        """Jobs queued or running at shutdown complete when they fit in the grace period."""
        sc = Sidecars(grace=5)
        done: list[int] = []

        @sc.sidecar(handle="h", run_type=RunType.MEMORY, concurrency=2)
        async def h(job: JobContext[Item]) -> None:
            await anyio.sleep(0.01)
            done.append(job.payload.n)

        async with sc.run():
            for i in range(10):
                await h.enqueue(Item(n=i))
        assert sorted(done) == list(range(10))
        assert (await sc.stats()).handles["h"].dropped == 0

    async def test_job_ignoring_grace_is_cancelled_and_counted(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A job still running when grace runs out is cancelled; it and the queue are counted."""
        sc = Sidecars(grace=0.1)
        cancelled = anyio.Event()

        @sc.sidecar(handle="stuck", run_type=RunType.MEMORY)
        async def stuck(job: JobContext[Item]) -> None:
            try:
                await anyio.sleep(60)
            finally:
                cancelled.set()

        with anyio.fail_after(5):
            async with sc.run():
                running = await stuck.enqueue(Item(n=0))
                await anyio.wait_all_tasks_blocked()
                queued = await stuck.enqueue(Item(n=1))
        assert cancelled.is_set()
        stats = (await sc.stats()).handles["stuck"]
        assert stats.dropped == 2
        for ref in (running, queued):
            info = await sc.get_job(ref.id)
            assert info is not None
            assert (info.state, info.outcome) == (JobState.CANCELLED, Outcome.SHUTDOWN)
        assert any("cancelling 1 running" in r.getMessage() for r in caplog.records)
        assert any("dropping 1 queued" in r.getMessage() for r in caplog.records)

    async def test_enqueue_during_shutdown_raises(self) -> None:
        """Once shutdown starts, new memory jobs raise ShuttingDown."""
        sc = Sidecars(grace=5)
        errors: list[BaseException] = []
        started = anyio.Event()

        @sc.sidecar(handle="h", run_type=RunType.MEMORY)
        async def h(job: JobContext[Item]) -> None:
            if job.payload.n == 0:
                started.set()
                await anyio.sleep(0.1)
                try:
                    await h.enqueue(Item(n=99))
                except ShuttingDown as exc:
                    errors.append(exc)

        async with sc.run():
            await h.enqueue(Item(n=0))
            await started.wait()
        assert len(errors) == 1
        assert "'h'" in str(errors[0])

    async def test_shutdown_with_idle_workers_is_immediate(self) -> None:
        """An idle runner stops at once, not after the grace period."""
        sc = Sidecars(grace=30)

        @sc.sidecar(handle="h", run_type=RunType.MEMORY, concurrency=4)
        async def h(job: JobContext[Item]) -> None: ...

        with anyio.fail_after(2):
            async with sc.run():
                pass
        assert not sc.is_running

    async def test_runner_can_be_started_again(self) -> None:
        """After a clean stop, the same Sidecars can run again."""
        sc = Sidecars()
        seen: list[int] = []

        @sc.sidecar(handle="h", run_type=RunType.MEMORY)
        async def h(job: JobContext[Item]) -> None:
            seen.append(job.payload.n)

        for i in range(2):
            async with sc.run():
                await h.enqueue(Item(n=i))
        assert seen == [0, 1]
