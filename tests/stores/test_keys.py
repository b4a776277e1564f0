"""The store contract for unique job keys, cancel and retry, on every store."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID, uuid4

import anyio
import pytest

from sidecars._records import JobRef, JobState, Outcome
from sidecars.stores import ClaimedJob, Finish, Lease, NewJob, SQLiteStore, Store
from sidecars.stores._convert import SUPERSEDED_ERROR

from ._support import NOW, new_job

pytestmark = pytest.mark.anyio

LEASE = 30.0


def keyed(key: str | None, handle: str = "h", *, job_id: UUID | None = None) -> NewJob:
    """A job with a uniqueness key."""
    job = new_job(handle, job_id=job_id)
    return NewJob(
        id=job.id,
        handle=job.handle,
        payload=job.payload,
        run_at=job.run_at,
        created_at=job.created_at,
        max_attempts=job.max_attempts,
        key=key,
    )


def ended(
    job: ClaimedJob,
    state: JobState,
    outcome: Outcome,
    *,
    at: float = NOW + 1,
    error: str | None = None,
    retry_at: float | None = None,
) -> Finish:
    """The Finish of a claimed job."""
    return Finish(
        id=job.id,
        token=job.token,
        state=state,
        outcome=outcome,
        finished_at=at,
        error=error,
        retry_at=retry_at,
    )


async def claim_one(store: Store, handle: str = "h", now: float = NOW) -> ClaimedJob:
    """Claim exactly one job of ``handle``."""
    (job,) = await store.claim([handle], 10, now=now, lease=LEASE)
    return job


async def failed_job(store: Store, key: str | None = None) -> ClaimedJob:
    """Enqueue, claim and fail one job for good; return its claim."""
    await store.enqueue([keyed(key)])
    job = await claim_one(store)
    applied = await store.finish([ended(job, JobState.FAILED, Outcome.ERROR, error="boom")])
    assert applied == {job.id}
    return job


class TestKeyedEnqueue:
    async def test_refs_for_unkeyed_jobs(self, store: Store) -> None:
        """Unkeyed jobs each get a created reference with their own id, in order."""
        jobs = [new_job("a"), new_job("b"), new_job("a")]
        refs = await store.enqueue(jobs)
        assert refs == [JobRef(id=j.id, handle=j.handle, created=True) for j in jobs]
        assert await store.enqueue([]) == []

    async def test_unkeyed_never_deduplicated(self, store: Store) -> None:
        """Jobs without a key are all inserted, however alike."""
        await store.enqueue([keyed(None), keyed(None)])
        await store.enqueue([keyed(None)])
        assert len(await store.claim(["h"], 10, now=NOW, lease=LEASE)) == 3

    async def test_key_returns_queued_job(self, store: Store) -> None:
        """A second job with the key of a queued job answers with that job's id, not created."""
        first = keyed("k")
        second = keyed("k")
        assert await store.enqueue([first]) == [JobRef(id=first.id, handle="h", created=True)]
        assert await store.enqueue([second]) == [JobRef(id=first.id, handle="h", created=False)]
        assert await store.get_job(second.id) is None
        info = await store.get_job(first.id)
        assert info is not None
        assert info.key == "k"
        assert len(await store.claim(["h"], 10, now=NOW, lease=LEASE)) == 1

    async def test_key_scoped_by_handle(self, store: Store) -> None:
        """The same key under two handles makes two jobs."""
        refs = await store.enqueue([keyed("k", "a"), keyed("k", "b")])
        assert [r.created for r in refs] == [True, True]

    async def test_new_job_once_the_first_runs(self, store: Store) -> None:
        """Once the keyed job is claimed, the key may be queued again as a new job."""
        first = keyed("k")
        await store.enqueue([first])
        assert (await claim_one(store)).id == first.id
        second = keyed("k")
        assert await store.enqueue([second]) == [JobRef(id=second.id, handle="h", created=True)]
        third = keyed("k")
        assert await store.enqueue([third]) == [JobRef(id=second.id, handle="h", created=False)]

    async def test_new_job_once_the_first_finished(self, store: Store) -> None:
        """A key whose job failed or was cancelled may be queued again."""
        job = await failed_job(store, key="k")
        cancelled = keyed("c")
        await store.enqueue([cancelled])
        await store.cancel(cancelled.id, now=NOW)
        refs = await store.enqueue([keyed("k"), keyed("c")])
        assert all(r.created for r in refs)
        assert job.id not in {r.id for r in refs}

    async def test_same_key_in_one_batch(self, store: Store) -> None:
        """Within a batch, a later job with an earlier one's key gets the earlier one's id."""
        a, b, c, d = keyed("k"), keyed("x"), keyed("k"), keyed(None)
        refs = await store.enqueue([a, b, c, d])
        assert [(r.id, r.created) for r in refs] == [
            (a.id, True),
            (b.id, True),
            (a.id, False),
            (d.id, True),
        ]
        assert await store.get_job(c.id) is None

    async def test_same_key_in_batch_already_queued(self, store: Store) -> None:
        """Every job of a batch whose key is queued already answers with the queued job."""
        held = keyed("k")
        await store.enqueue([held])
        fresh = keyed(None)
        refs = await store.enqueue([keyed("k"), fresh, keyed("k")])
        assert [(r.id, r.created) for r in refs] == [
            (held.id, False),
            (fresh.id, True),
            (held.id, False),
        ]

    async def test_concurrent_enqueues_of_one_key(self, store: Store) -> None:
        """Many tasks enqueueing one key at once: exactly one job is created, all get its id."""
        refs: list[JobRef] = []

        async def send() -> None:
            refs.extend(await store.enqueue([keyed("k")]))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(send)
        created = [r for r in refs if r.created]
        assert len(created) == 1
        assert {r.id for r in refs} == {created[0].id}
        assert len(await store.claim(["h"], 100, now=NOW, lease=LEASE)) == 1

    async def test_conflicting_key_never_fails_the_group(self, store: Store) -> None:
        """Concurrent enqueues mixing taken keys, new keys and no keys all succeed."""
        await store.enqueue([keyed("taken")])
        refs: dict[int, JobRef] = {}

        async def send(i: int) -> None:
            key = "taken" if i % 3 == 0 else (None if i % 3 == 1 else f"k{i}")
            (refs[i],) = await store.enqueue([keyed(key)])

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(send, i)
        assert sum(r.created for r in refs.values()) == 20
        assert len(await store.claim(["h"], 100, now=NOW, lease=LEASE)) == 21

    async def test_duplicate_id_still_rejected(self, store: Store) -> None:
        """A taken id in a small keyed batch still raises ValueError and stores nothing."""
        first = keyed("k")
        await store.enqueue([first])
        other = keyed("other")
        with pytest.raises(ValueError):
            await store.enqueue([other, keyed("new", job_id=first.id)])
        assert await store.get_job(other.id) is None
        assert (await store.enqueue([keyed("other")]))[0].created


class TestCancel:
    async def test_cancel_queued(self, store: Store) -> None:
        """A queued job ends cancelled, outcome cancelled, finished at now; it is not claimed."""
        job = keyed("k")
        await store.enqueue([job])
        assert await store.cancel(job.id, now=NOW + 2) is JobState.CANCELLED
        info = await store.get_job(job.id)
        assert info is not None
        assert info.state is JobState.CANCELLED
        assert info.outcome is Outcome.CANCELLED
        assert info.finished_at is not None
        assert info.finished_at.timestamp() == NOW + 2
        assert await store.claim(["h"], 10, now=NOW + 5, lease=LEASE) == []
        assert await store.next_wakeup(["h"]) is None

    async def test_cancel_running_unchanged(self, store: Store) -> None:
        """A running job is left to its runner: the answer is RUNNING and its lease holds."""
        await store.enqueue([new_job()])
        job = await claim_one(store)
        assert await store.cancel(job.id, now=NOW + 1) is JobState.RUNNING
        info = await store.get_job(job.id)
        assert info is not None
        assert info.state is JobState.RUNNING
        lease = Lease(id=job.id, token=job.token)
        assert await store.renew([lease], now=NOW + 1, lease=LEASE) == {job.id}

    async def test_cancel_finished_unchanged(self, store: Store) -> None:
        """A finished job keeps its state and outcome; the answer is that state."""
        job = await failed_job(store)
        assert await store.cancel(job.id, now=NOW + 9) is JobState.FAILED
        info = await store.get_job(job.id)
        assert info is not None
        assert info.outcome is Outcome.ERROR
        assert info.finished_at is not None
        assert info.finished_at.timestamp() == NOW + 1
        assert await store.cancel(job.id, now=NOW + 9) is JobState.FAILED

    async def test_cancel_twice(self, store: Store) -> None:
        """Cancelling a cancelled job answers CANCELLED again and changes nothing."""
        job = new_job()
        await store.enqueue([job])
        await store.cancel(job.id, now=NOW + 1)
        assert await store.cancel(job.id, now=NOW + 5) is JobState.CANCELLED
        info = await store.get_job(job.id)
        assert info is not None
        assert info.finished_at is not None
        assert info.finished_at.timestamp() == NOW + 1

    async def test_cancel_unknown(self, store: Store) -> None:
        """Cancelling an unknown id answers None."""
        assert await store.cancel(uuid4(), now=NOW) is None

    async def test_finish_cancelled_fenced(self, store: Store) -> None:
        """A runner ends its own running job cancelled under its token; a stale token is ignored."""
        await store.enqueue([new_job(max_attempts=5)])
        stale = await claim_one(store)
        fresh = await claim_one(store, now=NOW + LEASE + 1)
        cancel = JobState.CANCELLED
        assert await store.finish([ended(stale, cancel, Outcome.CANCELLED)]) == set()
        assert (await store.get_job(stale.id)).state is JobState.RUNNING  # type: ignore[union-attr]
        done = ended(fresh, cancel, Outcome.CANCELLED, at=NOW + 40)
        assert await store.finish([done]) == {fresh.id}
        info = await store.get_job(fresh.id)
        assert info is not None
        assert info.state is JobState.CANCELLED
        assert info.outcome is Outcome.CANCELLED
        assert info.finished_at is not None
        assert info.finished_at.timestamp() == NOW + 40
        assert await store.claim(["h"], 10, now=NOW + 100, lease=LEASE) == []


class TestRetry:
    async def test_retry_failed(self, store: Store) -> None:
        """A failed job is queued again at now with attempts reset; its last error stays."""
        job = await failed_job(store)
        assert await store.retry(job.id, now=NOW + 50) is True
        info = await store.get_job(job.id)
        assert info is not None
        assert info.state is JobState.QUEUED
        assert info.attempts == 0
        assert info.run_at.timestamp() == NOW + 50
        assert info.finished_at is None
        assert info.outcome is Outcome.ERROR
        assert info.error == "boom"
        assert await store.claim(["h"], 10, now=NOW + 49, lease=LEASE) == []
        again = await claim_one(store, now=NOW + 50)
        assert again.attempt == 1
        assert again.token != job.token

    async def test_retry_cancelled(self, store: Store) -> None:
        """A cancelled job is queued again and claimable."""
        job = new_job()
        await store.enqueue([job])
        await store.cancel(job.id, now=NOW)
        assert await store.retry(job.id, now=NOW + 1) is True
        assert (await claim_one(store, now=NOW + 1)).id == job.id

    async def test_retry_other_states_refused(self, store: Store) -> None:
        """Queued, running, succeeded and unknown jobs are not retried and stay unchanged."""
        queued, running, succeeded = new_job("q"), new_job("r"), new_job("s")
        await store.enqueue([queued, running, succeeded])
        await claim_one(store, "r")
        ok = await claim_one(store, "s")
        await store.finish([ended(ok, JobState.SUCCEEDED, Outcome.OK)])
        for job, state in [
            (queued, JobState.QUEUED),
            (running, JobState.RUNNING),
            (succeeded, JobState.SUCCEEDED),
        ]:
            assert await store.retry(job.id, now=NOW + 5) is False
            info = await store.get_job(job.id)
            assert info is not None
            assert info.state is state
            assert info.run_at.timestamp() == NOW
        assert await store.retry(uuid4(), now=NOW) is False

    async def test_retry_blocked_by_key(self, store: Store) -> None:
        """A failed keyed job whose key another queued job holds is not retried."""
        job = await failed_job(store, key="k")
        holder = keyed("k")
        assert (await store.enqueue([holder]))[0].created
        assert await store.retry(job.id, now=NOW + 5) is False
        info = await store.get_job(job.id)
        assert info is not None
        assert info.state is JobState.FAILED
        await store.cancel(holder.id, now=NOW + 6)
        assert await store.retry(job.id, now=NOW + 7) is True
        # Queued again, it holds the key once more.
        assert (await store.enqueue([keyed("k")]))[0] == JobRef(
            id=job.id, handle="h", created=False
        )


class TestKeyedRequeue:
    async def test_backoff_retry_holds_the_key(self, store: Store) -> None:
        """A keyed job queued again after a failed run holds its key again."""
        job = keyed("k")
        await store.enqueue([job])
        claimed = await claim_one(store)
        retry = ended(claimed, JobState.QUEUED, Outcome.ERROR, retry_at=NOW + 10)
        assert await store.finish([retry]) == {job.id}
        assert (await store.enqueue([keyed("k")]))[0] == JobRef(
            id=job.id, handle="h", created=False
        )

    async def test_backoff_retry_superseded(self, store: Store) -> None:
        """A keyed retry meeting a newer queued job with its key ends cancelled, superseded."""
        await store.enqueue([keyed("k"), new_job("other")])
        claimed = await claim_one(store)
        other = await claim_one(store, "other")
        newer = keyed("k")
        assert (await store.enqueue([newer]))[0].created
        results = [
            ended(claimed, JobState.QUEUED, Outcome.ERROR, error="boom", retry_at=NOW + 10),
            ended(other, JobState.QUEUED, Outcome.ERROR, retry_at=NOW + 10),
        ]
        assert await store.finish(results) == {claimed.id, other.id}
        info = await store.get_job(claimed.id)
        assert info is not None
        assert info.state is JobState.CANCELLED
        assert info.outcome is Outcome.CANCELLED
        assert info.error == SUPERSEDED_ERROR
        assert (await store.get_job(other.id)).state is JobState.QUEUED  # type: ignore[union-attr]
        assert (await store.get_job(newer.id)).state is JobState.QUEUED  # type: ignore[union-attr]

    async def test_release_superseded(self, store: Store) -> None:
        """A keyed job released at shutdown while its key is queued again ends superseded."""
        await store.enqueue([keyed("k"), keyed("j")])
        first, second = await store.claim(["h"], 10, now=NOW, lease=LEASE)
        by_key = {(await store.get_job(j.id)).key: j for j in (first, second)}  # type: ignore[union-attr]
        newer = keyed("k")
        await store.enqueue([newer])
        leases = [Lease(id=j.id, token=j.token) for j in (first, second)]
        await store.release(leases, now=NOW + 3)
        superseded = await store.get_job(by_key["k"].id)
        released = await store.get_job(by_key["j"].id)
        assert superseded is not None
        assert released is not None
        assert superseded.state is JobState.CANCELLED
        assert superseded.error == SUPERSEDED_ERROR
        assert released.state is JobState.QUEUED
        assert released.attempts == 0


class TestSQLiteKeys:
    async def test_two_connections_race_for_one_key(self, tmp_path: Path) -> None:
        """Stores on one file (a connection each) enqueueing one key at once create one job."""
        path = tmp_path / "jobs.db"
        stores = [SQLiteStore(path) for _ in range(4)]
        refs: list[JobRef] = []

        async def send(store: SQLiteStore) -> None:
            for _ in range(5):
                refs.extend(await store.enqueue([keyed("k")]))

        try:
            for store in stores:
                await store.open()
            async with anyio.create_task_group() as tg:
                for store in stores:
                    tg.start_soon(send, store)
            created = [r for r in refs if r.created]
            assert len(created) == 1
            assert {r.id for r in refs} == {created[0].id}
        finally:
            for store in stores:
                await store.close()
