"""Listing and pruning jobs (``list_jobs``, ``prune_jobs``): optional store methods, met by
every store of sidecars."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sidecars._records import JobState, Outcome
from sidecars.stores import ClaimedJob, Finish, FireRequest, MemoryStore, SQLiteStore, Store
from sidecars.stores import sqlite as sqlite_module

from ._support import NOW, new_job

pytestmark = pytest.mark.anyio

LEASE = 30.0


def finish(
    job: ClaimedJob,
    state: JobState = JobState.SUCCEEDED,
    *,
    at: float = NOW + 1,
) -> Finish:
    outcome = Outcome.OK if state is JobState.SUCCEEDED else Outcome.ERROR
    return Finish(id=job.id, token=job.token, state=state, outcome=outcome, finished_at=at)


# The optional methods are not on the Protocol, so the tests reach them through Any.
def lister(store: Store) -> Any:
    return store


class TestListJobs:
    async def test_empty(self, store: Store) -> None:
        """A store without jobs lists none."""
        assert await lister(store).list_jobs() == []

    async def test_newest_first_then_by_id(self, store: Store) -> None:
        """Jobs come newest created first; jobs created at the same instant by id, descending."""
        old = new_job(created_at=NOW - 10)
        same = [new_job(created_at=NOW) for _ in range(5)]
        new = new_job(created_at=NOW + 10)
        await store.enqueue([old, *same, new])
        listed = await lister(store).list_jobs()
        tied = sorted((j.id for j in same), key=str, reverse=True)
        assert [i.id for i in listed] == [new.id, *tied, old.id]

    async def test_rows_match_get_job(self, store: Store) -> None:
        """Each listed job is the same record get_job returns."""
        jobs = [new_job("a", payload='{"n": 1}'), new_job("b", run_at=NOW + 5, max_attempts=2)]
        await store.enqueue(jobs)
        (claimed,) = await store.claim(["a"], 1, now=NOW, lease=LEASE)
        await store.finish([finish(claimed, JobState.FAILED, at=NOW + 2)])
        for info in await lister(store).list_jobs():
            assert info == await store.get_job(info.id)

    async def test_filters_by_handle_and_state(self, store: Store) -> None:
        """handle= and state= (an enum or its value) filter alone and together."""
        a1, a2, b1 = new_job("a"), new_job("a"), new_job("b")
        await store.enqueue([a1, a2, b1])
        claimed = await store.claim(["a"], 1, now=NOW, lease=LEASE)
        running = claimed[0].id
        queued_a = a2.id if running == a1.id else a1.id
        ls = lister(store)
        assert {i.id for i in await ls.list_jobs(handle="a")} == {a1.id, a2.id}
        assert {i.id for i in await ls.list_jobs(state="queued")} == {queued_a, b1.id}
        assert [i.id for i in await ls.list_jobs(state=JobState.RUNNING)] == [running]
        assert [i.id for i in await ls.list_jobs(handle="a", state="queued")] == [queued_a]
        assert await ls.list_jobs(handle="b", state=JobState.RUNNING) == []
        assert await ls.list_jobs(handle="nobody") == []

    async def test_limit(self, store: Store) -> None:
        """limit= caps the listing at the newest jobs."""
        jobs = [new_job(created_at=NOW + i) for i in range(7)]
        await store.enqueue(jobs)
        listed = await lister(store).list_jobs(limit=3)
        assert [i.id for i in listed] == [j.id for j in reversed(jobs)][:3]
        assert len(await lister(store).list_jobs()) == 7
        assert len(await lister(store).list_jobs(limit=10_000)) == 7

    @pytest.mark.parametrize("limit", [0, -1, 10_001, True, 2.5, "5"])
    async def test_bad_limit(self, store: Store, limit: object) -> None:
        """A limit that is not an integer from 1 to 10,000 raises ValueError naming limit."""
        with pytest.raises(ValueError, match="limit"):
            await lister(store).list_jobs(limit=limit)

    async def test_bad_state(self, store: Store) -> None:
        """An unknown state raises ValueError listing the valid ones."""
        with pytest.raises(ValueError, match="queued, running"):
            await lister(store).list_jobs(state="done")


async def finished_jobs(
    store: Store, n: int, state: JobState, *, at: float, handle: str = "h"
) -> list[ClaimedJob]:
    """``n`` jobs of ``handle`` run and finished in ``state`` at ``at``."""
    await store.enqueue([new_job(handle) for _ in range(n)])
    claimed = await store.claim([handle], n, now=NOW, lease=LEASE)
    assert len(claimed) == n
    await store.finish([finish(job, state, at=at) for job in claimed])
    return claimed


class TestPruneJobs:
    async def test_deletes_only_finished_jobs_before_the_cutoff(self, store: Store) -> None:
        """Succeeded, failed and cancelled jobs finished before `before` go; jobs finished
        at or after it, queued and running jobs stay."""
        ok = await finished_jobs(store, 2, JobState.SUCCEEDED, at=NOW + 1, handle="ok")
        bad = await finished_jobs(store, 1, JobState.FAILED, at=NOW + 2, handle="bad")
        cancelled = new_job("c")
        await store.enqueue([cancelled])
        assert await store.cancel(cancelled.id, now=NOW + 3) is JobState.CANCELLED
        edge = await finished_jobs(store, 1, JobState.SUCCEEDED, at=NOW + 100, handle="edge")
        late = await finished_jobs(store, 1, JobState.FAILED, at=NOW + 200, handle="late")
        queued, running = new_job("q"), new_job("r", created_at=NOW - 1000)
        await store.enqueue([queued, running])
        await store.claim(["r"], 1, now=NOW, lease=LEASE)

        assert await lister(store).prune_jobs(before=NOW + 100) == 4
        for gone in [*ok, *bad]:
            assert await store.get_job(gone.id) is None
        assert await store.get_job(cancelled.id) is None
        kept = {i.id: i.state for i in await lister(store).list_jobs()}
        assert kept == {
            edge[0].id: JobState.SUCCEEDED,
            late[0].id: JobState.FAILED,
            queued.id: JobState.QUEUED,
            running.id: JobState.RUNNING,
        }
        assert await lister(store).prune_jobs(before=NOW + 100) == 0

    async def test_many_batches(self, store: Store) -> None:
        """More old jobs than one batch holds are all deleted, and counted, in one call."""
        await finished_jobs(store, 2_345, JobState.SUCCEEDED, at=NOW + 1)
        keep = await finished_jobs(store, 3, JobState.SUCCEEDED, at=NOW + 50)
        assert await lister(store).prune_jobs(before=NOW + 10) == 2_345
        assert {i.id for i in await lister(store).list_jobs()} == {j.id for j in keep}

    async def test_lease_lost_jobs_are_prunable(self, store: Store) -> None:
        """A job failed by a lease lost after its last attempt is finished at that claim."""
        job = new_job(max_attempts=1)
        await store.enqueue([job])
        await store.claim(["h"], 1, now=NOW, lease=LEASE)
        assert await store.claim(["h"], 1, now=NOW + LEASE, lease=LEASE) == []
        info = await store.get_job(job.id)
        assert info is not None
        assert info.outcome is Outcome.LEASE_LOST
        assert await lister(store).prune_jobs(before=NOW + LEASE) == 0
        assert await lister(store).prune_jobs(before=NOW + LEASE + 1) == 1

    async def test_retried_job_is_not_pruned(self, store: Store) -> None:
        """A failed job queued again by retry is live again, whatever its old finish time."""
        (job,) = await finished_jobs(store, 1, JobState.FAILED, at=NOW + 1)
        assert await store.retry(job.id, now=NOW + 2)
        assert await lister(store).prune_jobs(before=NOW + 1_000) == 0
        assert await store.get_job(job.id) is not None

    async def test_fires_are_left_alone(self, store: Store) -> None:
        """Pruning jobs never touches fire rows."""
        (claim,) = await store.claim_fires(
            [FireRequest(handle="s", fire_at=int(NOW))], now=NOW, lease=LEASE
        )
        await store.finish_fire(claim.lease(), outcome=Outcome.OK, finished_at=NOW + 1)
        await finished_jobs(store, 1, JobState.SUCCEEDED, at=NOW + 1)
        assert await lister(store).prune_jobs(before=NOW + 1_000) == 1
        assert await store.last_fire("s") == int(NOW)


@pytest.mark.parametrize("make", [MemoryStore, lambda: SQLiteStore(":memory:")])
async def test_before_is_required_without_a_clock(make: Any) -> None:
    """The memory and SQLite stores never read the clock: prune_jobs needs before=."""
    store = make()
    try:
        with pytest.raises(TypeError):
            await store.prune_jobs()
    finally:
        await store.close()


class TestSQLitePruning:
    async def test_batches_are_separate_transactions(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each batch of pruning is its own write transaction of at most the batch size."""
        monkeypatch.setattr(sqlite_module, "_PRUNE_BATCH", 4)
        store = SQLiteStore(tmp_path / "jobs.db")
        try:
            await finished_jobs(store, 10, JobState.SUCCEEDED, at=NOW + 1)
            writes: list[str] = []
            real = store._write

            async def counting(what: str, body: Any) -> Any:
                writes.append(what)
                return await real(what, body)

            monkeypatch.setattr(store, "_write", counting)
            assert await store.prune_jobs(before=NOW + 2) == 10
            assert writes == ["prune jobs"] * 3  # 4 + 4 + 2
        finally:
            await store.close()

    async def test_pruning_walks_the_finished_index(self, tmp_path: Path) -> None:
        """The pruning query reads the partial index of finished jobs, not the whole table."""
        path = tmp_path / "jobs.db"
        store = SQLiteStore(path)
        await store.open()
        await store.close()
        conn = sqlite3.connect(path)
        try:
            select = sqlite_module._PRUNE_JOBS.split("rowid IN (", 1)[1].rsplit(")", 1)[0]
            plan = " ".join(
                str(row[-1])
                for row in conn.execute(f"EXPLAIN QUERY PLAN {select}", (NOW, 1000)).fetchall()
            )
        finally:
            conn.close()
        assert "sidecars_jobs_finished" in plan, plan
