"""DEFERRED sidecars in one process, on the memory and SQLite stores: due times, leases,
retries, bad stored payloads and shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID, uuid4

import anyio
import pytest
from pydantic import BaseModel

from sidecars import FakeClock, JobContext, JobState, Outcome, RunType, Sidecars
from sidecars.stores import Lease, MemoryStore, NewJob, SQLiteStore, Store

pytestmark = pytest.mark.anyio

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


class Task(BaseModel):
    n: int


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh store of each kind (opened by the Sidecars that uses it)."""
    made: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "j.db")
    yield made
    await made.close()


async def wait_until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    """Poll in real time (store calls run in a thread, outside the fake clock)."""
    with anyio.fail_after(limit):
        while not predicate():
            await anyio.sleep(0.005)


async def job_state(sc: Sidecars, job_id: UUID) -> JobState | None:
    info = await sc.get_job(job_id)
    return None if info is None else info.state


async def wait_state(sc: Sidecars, job_id: UUID, *states: JobState, limit: float = 10.0) -> None:
    with anyio.fail_after(limit):
        while await job_state(sc, job_id) not in states:
            await anyio.sleep(0.005)


def make(store: Store, **kwargs: object) -> tuple[Sidecars, list[tuple[int, int]]]:
    """A Sidecars with one deferred sidecar recording (n, attempt) per run."""
    kwargs.setdefault("lease", 2.0)
    kwargs.setdefault("lease_renew", 0.5)
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("grace", 2.0)
    sc = Sidecars(store, **kwargs)  # type: ignore[arg-type]
    runs: list[tuple[int, int]] = []

    @sc.sidecar(handle="work", run_type=RunType.DEFERRED, concurrency=2)
    async def work(job: JobContext[Task]) -> None:
        runs.append((job.payload.n, job.attempt))

    return sc, runs


async def test_enqueue_commits_before_returning_and_runs_on_start(store: Store) -> None:
    """A job enqueued before the runner starts is stored at once and runs when it starts."""
    sc, runs = make(store)
    work = sc.sidecars["work"]
    ref = await work.enqueue(Task(n=1))
    info = await store.get_job(ref.id)
    assert info is not None
    assert (info.state, info.attempts, info.payload) == (JobState.QUEUED, 0, {"n": 1})
    assert info.run_type is RunType.DEFERRED
    async with sc.run():
        await wait_state(sc, ref.id, JobState.SUCCEEDED)
    assert runs == [(1, 1)]
    info = await sc.get_job(str(ref.id))
    assert info is not None
    assert (info.outcome, info.attempts) == (Outcome.OK, 1)


async def test_job_due_later_than_the_lease_runs_once_when_due(store: Store) -> None:
    """A job delayed past the lease length is claimed once, exactly when due."""
    clock = FakeClock(T0)
    sc, runs = make(store, clock=clock, lease=2.0, lease_renew=0.5)
    work = sc.sidecars["work"]
    async with sc.run():
        ref = await work.enqueue(Task(n=7), delay=timedelta(seconds=60))
        info = await sc.get_job(ref.id)
        assert info is not None
        assert info.run_at == T0 + timedelta(seconds=60)
        await clock.advance(59)
        await anyio.sleep(0.1)  # real time for any wrongly early claim to show
        assert runs == []
        await clock.advance(1)
        await wait_state(sc, ref.id, JobState.SUCCEEDED)
        await clock.advance(30)  # many leases later, nothing runs it again
        await anyio.sleep(0.1)
    assert runs == [(7, 1)]
    info = await sc.get_job(ref.id)
    assert info is not None
    assert info.attempts == 1


async def test_run_at_in_the_future(store: Store) -> None:
    """run_at sets the due time; it is not claimed before."""
    clock = FakeClock(T0)
    sc, runs = make(store, clock=clock)
    work = sc.sidecars["work"]
    async with sc.run():
        ref = await work.enqueue(Task(n=1), run_at=T0 + timedelta(hours=1))
        await clock.advance(timedelta(minutes=59))
        await anyio.sleep(0.05)
        assert runs == []
        await clock.advance(timedelta(minutes=1))
        await wait_state(sc, ref.id, JobState.SUCCEEDED)
    assert runs == [(1, 1)]


async def test_long_job_keeps_its_lease_against_a_second_runner(store: Store) -> None:
    """A job running three times longer than its lease keeps it (renewed) and runs once,
    though a second runner polls the same store all along."""
    runs: list[tuple[str, int]] = []
    instances = []
    for name in ("a", "b"):
        sc = Sidecars(store, lease=0.6, lease_renew=0.2, poll_interval=0.02, grace=5)

        @sc.sidecar(handle="long", run_type=RunType.DEFERRED)
        async def long(job: JobContext[Task], name: str = name) -> None:
            runs.append((name, job.attempt))
            await anyio.sleep(1.8)

        instances.append(sc)
    a, b = instances
    ref = await a.sidecars["long"].enqueue(Task(n=0))
    async with a.run(), b.run():
        await wait_state(a, ref.id, JobState.SUCCEEDED, limit=15)
    assert len(runs) == 1
    assert runs[0][1] == 1
    info = await store.get_job(ref.id)
    assert info is not None
    assert (info.state, info.attempts) == (JobState.SUCCEEDED, 1)


async def test_failures_are_retried_with_backoff(store: Store) -> None:
    """A failing job is retried (attempt counted up) until it succeeds."""
    clock = FakeClock(T0)
    sc = Sidecars(store, clock=clock, lease=5, lease_renew=1, poll_interval=0.05)
    attempts: list[int] = []

    @sc.sidecar(handle="flaky", run_type=RunType.DEFERRED)
    async def flaky(job: JobContext[Task]) -> None:
        attempts.append(job.attempt)
        if job.attempt < 3:
            raise ConnectionError("partner API down")

    async with sc.run():
        ref = await flaky.enqueue(Task(n=1))
        for expected in (1, 2):
            await wait_until(lambda e=expected: len(attempts) == e)  # type: ignore[misc]
            await wait_state(sc, ref.id, JobState.QUEUED)
            info = await sc.get_job(ref.id)
            assert info is not None
            assert info.outcome is Outcome.ERROR
            assert "partner API down" in (info.error or "")
            # Full jitter: the retry is due within the backoff ceiling (1 s, then 2 s).
            assert T0 <= info.run_at <= clock.now() + timedelta(seconds=2**expected)
            # run_at is shown to the microsecond; step just past it.
            await clock.advance_to(info.run_at + timedelta(milliseconds=1))
        await wait_state(sc, ref.id, JobState.SUCCEEDED)
    assert attempts == [1, 2, 3]


async def test_attempts_are_capped(store: Store) -> None:
    """A job that always fails stops after max_attempts (5) and is kept failed."""
    clock = FakeClock(T0)
    sc = Sidecars(store, clock=clock, lease=5, lease_renew=1, poll_interval=0.05)
    attempts: list[int] = []

    @sc.sidecar(handle="broken", run_type=RunType.DEFERRED)
    async def broken(job: JobContext[Task]) -> None:
        attempts.append(job.attempt)
        raise ValueError("always")

    async with sc.run():
        ref = await broken.enqueue(Task(n=1))
        while await job_state(sc, ref.id) != JobState.FAILED:
            await clock.advance(timedelta(minutes=1))
            await anyio.sleep(0.01)
    assert attempts == [1, 2, 3, 4, 5]
    info = await sc.get_job(ref.id)
    assert info is not None
    assert (info.attempts, info.outcome) == (5, Outcome.ERROR)
    assert "ValueError: always" in (info.error or "")


async def test_timeout_counts_as_a_failed_attempt(store: Store) -> None:
    """A deferred run past its timeout is cancelled and retried."""
    sc = Sidecars(store, lease=5, lease_renew=1, poll_interval=0.05)
    attempts: list[int] = []

    @sc.sidecar(handle="slow", run_type=RunType.DEFERRED, timeout=0.05)
    async def slow(job: JobContext[Task]) -> None:
        attempts.append(job.attempt)
        await anyio.sleep(10)

    async with sc.run():
        ref = await slow.enqueue(Task(n=1))
        await wait_until(lambda: len(attempts) >= 1)
        await wait_state(sc, ref.id, JobState.QUEUED)
    info = await sc.get_job(ref.id)
    assert info is not None
    assert info.outcome is Outcome.TIMEOUT


async def test_stored_payload_that_no_longer_validates_fails_without_retry(store: Store) -> None:
    """A stored payload that no longer fits the model fails at once, with a clear error."""
    sc, runs = make(store)
    await store.open()
    bad = NewJob(
        id=uuid4(),
        handle="work",
        payload='{"n": "not a number"}',
        run_at=0.0,
        created_at=0.0,
        max_attempts=5,
    )
    await store.enqueue([bad])
    async with sc.run():
        await wait_state(sc, bad.id, JobState.FAILED)
    info = await sc.get_job(bad.id)
    assert info is not None
    assert (info.attempts, info.outcome) == (1, Outcome.ERROR)
    assert "no longer validates" in (info.error or "")
    assert "'work'" in (info.error or "")
    assert "n:" in (info.error or "")
    assert runs == []


class FailingRenewals:
    """A real store whose lease renewals fail (a database outage seen by one runner)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def renew(self, leases: Sequence[Lease], *, now: float, lease: float) -> set[UUID]:
        raise ConnectionError("database unreachable")


async def test_runner_that_cannot_renew_stops_at_the_lease_deadline(store: Store) -> None:
    """When renewals fail, the handler is cancelled at the lease deadline (lease_lost) and
    another runner re-claims the job after it expired."""
    clock = FakeClock(T0)
    sc = Sidecars(
        FailingRenewals(store),  # type: ignore[arg-type]
        clock=clock,
        lease=3,
        lease_renew=1,
        poll_interval=0.05,
        grace=0.1,
    )
    started = anyio.Event()
    cancelled = anyio.Event()

    @sc.sidecar(handle="held", run_type=RunType.DEFERRED)
    async def held(job: JobContext[Task]) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    async with sc.run():
        ref = await held.enqueue(Task(n=1))
        with anyio.fail_after(5):
            await started.wait()
        # set(), not advance(): advance() would wait for the (endless) handler to finish.
        clock.set(T0 + timedelta(seconds=2.9))
        await anyio.sleep(0.1)
        assert not cancelled.is_set()  # still inside its lease
        clock.set(T0 + timedelta(seconds=3.1))
        with anyio.fail_after(5):
            await cancelled.wait()
        assert (await sc.stats()).handles["held"].failed == 1
    # The lease expired with the job left running: any runner may claim it again.
    claimed = await store.claim(["held"], 10, now=clock.time(), lease=5)
    assert [(c.id, c.attempt) for c in claimed] == [(ref.id, 2)]


async def test_shutdown_gives_back_jobs_cancelled_after_grace(store: Store) -> None:
    """A deferred job still running when grace runs out is cancelled and released: queued,
    due at once, and its attempt not counted."""
    sc = Sidecars(store, grace=0.1, lease=5, lease_renew=1, poll_interval=0.05)
    started = anyio.Event()

    @sc.sidecar(handle="stuck", run_type=RunType.DEFERRED)
    async def stuck(job: JobContext[Task]) -> None:
        started.set()
        await anyio.sleep(60)

    ref = await stuck.enqueue(Task(n=1))
    with anyio.fail_after(10):
        async with sc.run():
            await started.wait()
    info = await sc.get_job(ref.id)
    assert info is not None
    assert (info.state, info.attempts) == (JobState.QUEUED, 0)
    assert (await sc.stats()).handles["stuck"].dropped == 1


async def test_enqueue_only_process_runs_nothing(store: Store) -> None:
    """With consume=False (SIDECARS_CONSUME=0) a process enqueues but never claims."""
    sc, runs = make(store)
    async with sc.run(consume=False):
        ref = await sc.sidecars["work"].enqueue(Task(n=1))
        await anyio.sleep(0.2)
        assert await job_state(sc, ref.id) is JobState.QUEUED
    assert runs == []


async def test_consume_from_environment(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIDECARS_CONSUME=0 makes a runner enqueue-only."""
    monkeypatch.setenv("SIDECARS_CONSUME", "0")
    sc, runs = make(store)
    async with sc.run():
        ref = await sc.sidecars["work"].enqueue(Task(n=1))
        await anyio.sleep(0.2)
        assert await job_state(sc, ref.id) is JobState.QUEUED
    assert runs == []


async def test_runner_claims_only_its_own_handles(store: Store) -> None:
    """A runner never claims jobs of handles it does not declare (rolling deploys)."""
    old, _ = make(store)
    ref = await old.sidecars["work"].enqueue(Task(n=1))
    new = Sidecars(store, poll_interval=0.05)

    @new.sidecar(handle="other", run_type=RunType.DEFERRED)
    async def other(job: JobContext[Task]) -> None: ...

    async with new.run():
        await anyio.sleep(0.2)
        assert await job_state(new, ref.id) is JobState.QUEUED


async def test_enqueue_many_is_all_or_nothing_on_bad_payloads(store: Store) -> None:
    """If one payload of enqueue_many is invalid, nothing is stored."""
    from sidecars import PayloadError

    sc, _ = make(store)
    with pytest.raises(PayloadError, match=r"'work'.*n:"):
        await sc.sidecars["work"].enqueue_many([Task(n=1), {"n": "x"}])
    await store.open()
    assert await store.next_wakeup(["work"]) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"run_at": datetime(2030, 1, 1)}, r"'work'.*field 'run_at'.*aware"),
        ({"delay": -1}, r"'work'.*field 'delay'"),
        ({"run_at": T0, "delay": 5}, r"'work'.*run_at or delay"),
    ],
)
async def test_bad_due_times_are_refused(
    store: Store, kwargs: dict[str, object], match: str
) -> None:
    """Bad run_at/delay values raise ValueError naming the handle and field."""
    sc, _ = make(store)
    with pytest.raises(ValueError, match=match):
        await sc.sidecars["work"].enqueue(Task(n=1), **kwargs)  # type: ignore[arg-type]


async def test_async_with_closes_the_store(tmp_path: Path) -> None:
    """``async with sc:`` closes the lazily opened store on exit."""
    store = SQLiteStore(tmp_path / "j.db")
    sc, _ = make(store)
    async with sc:
        await sc.sidecars["work"].enqueue(Task(n=1))
        assert store._conn is not None
    assert store._conn is None


class FlakyFinish:
    """A real store whose first two result writes fail (a database blip)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.failures = 2

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def finish(self, results: Sequence[object]) -> set[UUID]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database restarting")
        return await self.inner.finish(results)  # type: ignore[arg-type]

    async def finish_and_claim(
        self, results: Sequence[object], claims: Sequence[tuple[str, int]], **kw: float
    ) -> tuple[set[UUID], list[object]]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database restarting")
        return await self.inner.finish_and_claim(results, claims, **kw)  # type: ignore[arg-type,return-value]


async def test_result_write_is_retried(store: Store) -> None:
    """A finished job whose result write fails is written again, not re-run."""
    flaky = FlakyFinish(store)
    sc = Sidecars(flaky, lease=10, lease_renew=2, poll_interval=0.05)  # type: ignore[arg-type]
    runs: list[int] = []

    @sc.sidecar(handle="once", run_type=RunType.DEFERRED)
    async def once(job: JobContext[Task]) -> None:
        runs.append(job.attempt)

    async with sc.run():
        ref = await once.enqueue(Task(n=1))
        await wait_state(sc, ref.id, JobState.SUCCEEDED)
    assert runs == [1]
    assert flaky.failures == 0


async def test_shutdown_during_a_claim_gives_the_claimed_jobs_back(store: Store) -> None:
    """Leaving sc.run() while a claim is in flight gives every claimed job back: none stays
    running under a lease nobody holds, and no attempt is counted."""
    for round_ in range(15):
        sc = Sidecars(store, lease=30, lease_renew=10, poll_interval=0.01, grace=2)

        @sc.sidecar(handle=f"busy{round_}", run_type=RunType.DEFERRED, concurrency=8)
        async def busy(job: JobContext[Task]) -> None:
            await anyio.sleep(0.001)

        refs = await busy.enqueue_many(Task(n=i) for i in range(300))
        async with sc.run():
            await anyio.sleep(0.002 * round_)
        for ref in refs:
            info = await store.get_job(ref.id)
            assert info is not None
            assert info.state in (JobState.QUEUED, JobState.SUCCEEDED), (round_, info)
            if info.state is JobState.QUEUED:
                assert info.attempts == 0


async def test_bad_delays_are_refused_without_harming_neighbours(store: Store) -> None:
    """NaN, infinite or absurd delays are refused at enqueue; concurrent good ones go in."""
    from sidecars import InvalidArgument

    sc, _ = make(store)
    work = sc.sidecars["work"]
    results: list[object] = []

    async def send(delay: float) -> None:
        try:
            results.append(await work.enqueue(Task(n=1), delay=delay))
        except InvalidArgument as exc:
            results.append(exc)

    async with anyio.create_task_group() as tg:
        for delay in (1.0, float("nan"), float("inf"), 1e300, 2.0):
            tg.start_soon(send, delay)
    refused = [r for r in results if isinstance(r, InvalidArgument)]
    assert len(refused) == 3
    assert all("'work'" in str(r) and "field 'delay'" in str(r) for r in refused)
    for ref in results:
        if not isinstance(ref, InvalidArgument):
            assert await sc.get_job(ref.id) is not None  # type: ignore[attr-defined]
    await sc.aclose()


@pytest.mark.parametrize("name", ["grace", "lease", "poll_interval"])
def test_nan_settings_are_refused(name: str) -> None:
    """NaN or infinite durations on Sidecars(...) are refused at construction."""
    from sidecars import InvalidDeclaration

    for value in (float("nan"), float("inf")):
        with pytest.raises(InvalidDeclaration, match=f"field '{name}'"):
            Sidecars(MemoryStore(), **{name: value})  # type: ignore[arg-type]


async def test_errors_from_the_run_body_are_not_wrapped(store: Store) -> None:
    """An exception raised inside `async with sc.run()` leaves it as itself."""
    sc, _ = make(store)
    with pytest.raises(KeyError, match="mine"):
        async with sc.run():
            raise KeyError("mine")


def test_claims_ahead_only_for_short_jobs() -> None:
    """A handle claims ahead only what its workers start within about 50 ms at their recent
    pace: nothing before a job has run or for slow jobs, at most 8 per worker."""
    from sidecars._deferred import _Pool

    sc = Sidecars(MemoryStore())

    @sc.sidecar(handle="two", run_type=RunType.DEFERRED, concurrency=2)
    async def two(job: JobContext[Task]) -> None: ...

    pool = _Pool(two)
    pool.send.close()  # its queue is not used here
    pool.receive.close()
    assert pool.room == 2  # no pace yet: idle workers only
    pool.ran(1.0)
    assert pool.room == 2  # one-second jobs: nothing ahead
    pool.ran(0.02)  # the pace moves towards 20 ms jobs, but stays above 50 ms
    assert pool.pace == pytest.approx(0.8 * 1.0 + 0.2 * 0.02)
    assert pool.room == 2
    pool.pace = 0.025
    assert pool.room == 2 + 4  # 2 workers x 50 ms / 25 ms
    for _ in range(60):
        pool.ran(0.0001)
    assert pool.pace < 0.001
    assert pool.room == 2 + 16  # capped at 8 per worker
    pool.idle = -16  # all held: nothing more to claim
    assert pool.room == 0


async def test_jobs_claimed_ahead_go_back_when_a_running_job_turns_slow(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Jobs held ahead behind a job that outlasts the claim-ahead window are given back
    (queued again, no attempt counted), so another replica can take them."""
    import sidecars._deferred as deferred

    store = SQLiteStore(tmp_path / "ahead.db")
    sc = Sidecars(store, poll_interval=0.05)
    gate = anyio.Event()
    started: list[int] = []

    @sc.sidecar(handle="one", run_type=RunType.DEFERRED, concurrency=1)
    async def one(job: JobContext[Task]) -> None:
        started.append(job.payload.n)
        if len(started) == 1:  # the first to start blocks the only worker
            await gate.wait()

    async with sc.run():
        consumer = sc._runner.deferred  # type: ignore[union-attr]
        assert consumer is not None
        consumer.pools["one"].pace = 1e-6  # recent jobs were short: claim ahead
        refs = await one.enqueue_many([Task(n=i) for i in range(6)])
        with anyio.fail_after(5):
            while not started:
                await anyio.sleep(0.005)
        waiting = [r for r in refs if r.id in consumer.held and r != refs[started[0]]]
        assert waiting  # claimed ahead of the blocked job
        monkeypatch.setattr(deferred, "_AHEAD_WINDOW", 0.0)  # the running job is now "slow"
        with anyio.fail_after(5):
            while any(r.id in consumer.held for r in waiting):
                await anyio.sleep(0.01)
        assert len(started) == 1
        for ref in waiting:
            info = await store.get_job(ref.id)
            assert info is not None
            assert (info.state, info.attempts) == (JobState.QUEUED, 0)
        gate.set()
        for ref in refs:
            with anyio.fail_after(5):
                while (info := await store.get_job(ref.id)) is None or (
                    info.state is not JobState.SUCCEEDED
                ):
                    await anyio.sleep(0.01)
    assert sorted(started) == list(range(6))
