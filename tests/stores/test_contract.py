"""The store contract: every implementation of :class:`~sidecars.stores.Store` passes these."""

from __future__ import annotations

from datetime import datetime, timezone
from uuid import UUID, uuid4

import anyio
import pytest

from sidecars._records import JobState, Outcome, RunType
from sidecars.stores import ClaimedJob, Finish, Lease, Store

from ._support import NOW, new_job

pytestmark = pytest.mark.anyio

LEASE = 30.0


def lease_of(job: ClaimedJob) -> Lease:
    return Lease(id=job.id, token=job.token)


def done(
    job: ClaimedJob,
    *,
    state: JobState = JobState.SUCCEEDED,
    outcome: Outcome = Outcome.OK,
    at: float = NOW + 1,
    error: str | None = None,
    retry_at: float | None = None,
) -> Finish:
    return Finish(
        id=job.id,
        token=job.token,
        state=state,
        outcome=outcome,
        finished_at=at,
        error=error,
        retry_at=retry_at,
    )


class TestEnqueueAndRead:
    async def test_round_trip(self, store: Store) -> None:
        """A stored job reads back with its fields, decoded payload and aware UTC times."""
        job = new_job("mail", run_at=NOW + 5, max_attempts=4, payload='{"to": "a@b.c", "n": [1]}')
        await store.enqueue([job])
        info = await store.get_job(job.id)
        assert info is not None
        assert info.id == job.id
        assert info.handle == "mail"
        assert info.run_type is RunType.DEFERRED
        assert info.state is JobState.QUEUED
        assert info.outcome is None
        assert info.attempts == 0
        assert info.max_attempts == 4
        assert info.payload == {"to": "a@b.c", "n": [1]}
        assert info.created_at == datetime.fromtimestamp(NOW, tz=timezone.utc)
        assert info.run_at.timestamp() == NOW + 5
        assert info.run_at.tzinfo is timezone.utc
        assert info.started_at is None
        assert info.finished_at is None
        assert info.error is None

    async def test_unknown_id(self, store: Store) -> None:
        """get_job of an id never stored returns None."""
        assert await store.get_job(uuid4()) is None

    async def test_empty_enqueue(self, store: Store) -> None:
        """Enqueueing nothing is a no-op."""
        await store.enqueue([])
        assert await store.next_wakeup(["h"]) is None

    async def test_duplicate_id_rejected_whole_batch(self, store: Store) -> None:
        """A batch holding an existing id raises ValueError and stores none of its jobs."""
        first = new_job()
        await store.enqueue([first])
        other = new_job()
        with pytest.raises(ValueError):
            await store.enqueue([other, new_job(job_id=first.id)])
        assert await store.get_job(other.id) is None

    async def test_concurrent_enqueues_all_stored(self, store: Store) -> None:
        """Many concurrent enqueue calls all return with their jobs stored."""
        jobs = [new_job(run_at=NOW + i) for i in range(200)]
        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(store.enqueue, [job])
        for job in jobs:
            assert await store.get_job(job.id) is not None


class TestClaim:
    async def test_only_given_handles(self, store: Store) -> None:
        """A claim returns jobs of the named handles only."""
        a, b, c = new_job("a"), new_job("b"), new_job("c")
        await store.enqueue([a, b, c])
        claimed = await store.claim(["a", "c"], 10, now=NOW, lease=LEASE)
        assert {j.id for j in claimed} == {a.id, c.id}
        assert await store.claim([], 10, now=NOW, lease=LEASE) == []

    async def test_limit(self, store: Store) -> None:
        """A claim returns at most ``limit`` jobs; the rest stay for the next claim."""
        await store.enqueue([new_job() for _ in range(5)])
        assert len(await store.claim(["h"], 3, now=NOW, lease=LEASE)) == 3
        assert len(await store.claim(["h"], 3, now=NOW, lease=LEASE)) == 2
        assert await store.claim(["h"], 3, now=NOW, lease=LEASE) == []

    async def test_zero_limit(self, store: Store) -> None:
        """A claim with limit 0 claims nothing."""
        await store.enqueue([new_job()])
        assert await store.claim(["h"], 0, now=NOW, lease=LEASE) == []

    async def test_not_before_due(self, store: Store) -> None:
        """A job due later is not claimed before its run_at, and is claimed from then on."""
        job = new_job(run_at=NOW + 10)
        await store.enqueue([job])
        assert await store.claim(["h"], 10, now=NOW + 9.999, lease=LEASE) == []
        claimed = await store.claim(["h"], 10, now=NOW + 10, lease=LEASE)
        assert [j.id for j in claimed] == [job.id]

    async def test_oldest_due_first(self, store: Store) -> None:
        """Claims return the oldest due jobs first, whatever the enqueue order."""
        jobs = [new_job(run_at=NOW - t) for t in (3, 9, 1, 7, 5)]
        await store.enqueue(jobs)
        first = await store.claim(["h"], 2, now=NOW, lease=LEASE)
        assert [j.run_at for j in first] == [NOW - 9, NOW - 7]
        rest = await store.claim(["h"], 10, now=NOW, lease=LEASE)
        assert [j.run_at for j in rest] == [NOW - 5, NOW - 3, NOW - 1]

    async def test_claimed_job_fields(self, store: Store) -> None:
        """A claim counts the attempt, sets the lease and marks the job running."""
        job = new_job(run_at=NOW - 1, max_attempts=4, payload='{"k": "v"}')
        await store.enqueue([job])
        (claimed,) = await store.claim(["h"], 1, now=NOW, lease=LEASE)
        assert claimed.id == job.id
        assert claimed.handle == "h"
        assert claimed.payload == '{"k": "v"}'
        assert claimed.attempt == 1
        assert claimed.max_attempts == 4
        assert claimed.run_at == NOW - 1
        assert claimed.lease_until == NOW + LEASE
        assert claimed.token
        info = await store.get_job(job.id)
        assert info is not None
        assert info.state is JobState.RUNNING
        assert info.attempts == 1
        assert info.started_at is not None
        assert info.started_at.timestamp() == NOW

    async def test_running_job_not_claimed_again(self, store: Store) -> None:
        """A job under an unexpired lease is not claimed again."""
        await store.enqueue([new_job()])
        assert len(await store.claim(["h"], 10, now=NOW, lease=LEASE)) == 1
        assert await store.claim(["h"], 10, now=NOW + LEASE - 0.001, lease=LEASE) == []

    async def test_concurrent_claims_disjoint(self, store: Store) -> None:
        """Many tasks claiming at once never get the same job twice."""
        jobs = [new_job(run_at=NOW - i) for i in range(300)]
        await store.enqueue(jobs)
        seen: list[UUID] = []

        async def claimer() -> None:
            while batch := await store.claim(["h"], 7, now=NOW, lease=LEASE):
                seen.extend(j.id for j in batch)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(claimer)
        assert len(seen) == len(jobs)
        assert set(seen) == {j.id for j in jobs}

    async def test_expired_lease_reclaimed(self, store: Store) -> None:
        """A job whose lease expired is claimed again with the next attempt and a new token."""
        await store.enqueue([new_job()])
        (first,) = await store.claim(["h"], 1, now=NOW, lease=LEASE)
        (second,) = await store.claim(["h"], 1, now=NOW + LEASE, lease=LEASE)
        assert second.id == first.id
        assert second.attempt == 2
        assert second.token != first.token
        assert second.lease_until == NOW + 2 * LEASE

    async def test_max_attempts_fails_lease_lost(self, store: Store) -> None:
        """A job whose lease expires on its last attempt is failed with LEASE_LOST, not claimed."""
        job = new_job(max_attempts=2)
        await store.enqueue([job])
        await store.claim(["h"], 1, now=NOW, lease=LEASE)
        (again,) = await store.claim(["h"], 1, now=NOW + LEASE, lease=LEASE)
        assert again.attempt == 2
        assert await store.claim(["h"], 1, now=NOW + 2 * LEASE, lease=LEASE) == []
        info = await store.get_job(job.id)
        assert info is not None
        assert info.state is JobState.FAILED
        assert info.outcome is Outcome.LEASE_LOST
        assert info.attempts == 2
        assert info.finished_at is not None
        assert info.finished_at.timestamp() == NOW + 2 * LEASE
        assert await store.finish([done(again, at=NOW + 2 * LEASE + 1)]) == set()


class TestLeases:
    async def test_renew_extends(self, store: Store) -> None:
        """Renewing held leases extends them, so the jobs are not re-claimed at the old expiry."""
        await store.enqueue([new_job(), new_job()])
        claimed = await store.claim(["h"], 2, now=NOW, lease=LEASE)
        held = await store.renew([lease_of(j) for j in claimed], now=NOW + 10, lease=LEASE)
        assert held == {j.id for j in claimed}
        assert await store.claim(["h"], 10, now=NOW + LEASE, lease=LEASE) == []
        assert len(await store.claim(["h"], 10, now=NOW + 10 + LEASE, lease=LEASE)) == 2

    async def test_renew_reports_lost(self, store: Store) -> None:
        """A lease that expired and was re-claimed is missing from renew's result."""
        await store.enqueue([new_job()])
        (old,) = await store.claim(["h"], 1, now=NOW, lease=LEASE)
        (new,) = await store.claim(["h"], 1, now=NOW + LEASE, lease=LEASE)
        assert await store.renew([lease_of(old)], now=NOW + LEASE + 1, lease=LEASE) == set()
        assert await store.renew([lease_of(new)], now=NOW + LEASE + 1, lease=LEASE) == {new.id}

    async def test_renew_unknown_and_empty(self, store: Store) -> None:
        """Renewing unknown leases, or none, holds nothing."""
        assert await store.renew([Lease(id=uuid4(), token="x")], now=NOW, lease=LEASE) == set()
        assert await store.renew([], now=NOW, lease=LEASE) == set()

    async def test_stale_finish_changes_nothing(self, store: Store) -> None:
        """A finish from a runner whose lease expired and was re-claimed leaves the job as is."""
        job = new_job()
        await store.enqueue([job])
        (stale,) = await store.claim(["h"], 1, now=NOW, lease=LEASE)
        (current,) = await store.claim(["h"], 1, now=NOW + LEASE + 1, lease=LEASE)
        before = await store.get_job(job.id)

        applied = await store.finish([done(stale, at=NOW + LEASE + 2)])
        assert applied == set()
        after = await store.get_job(job.id)
        assert after == before
        assert after is not None
        assert after.state is JobState.RUNNING
        assert after.outcome is None
        assert after.attempts == 2
        # The current holder's token is untouched: its renew and finish still apply.
        assert await store.renew([lease_of(current)], now=NOW + LEASE + 3, lease=LEASE) == {job.id}
        assert await store.finish([done(current, at=NOW + LEASE + 4)]) == {job.id}

    async def test_finish_succeeded(self, store: Store) -> None:
        """A finish under the lease records state, outcome and time, and ends the lease."""
        job = new_job()
        await store.enqueue([job])
        (claimed,) = await store.claim(["h"], 1, now=NOW, lease=LEASE)
        assert await store.finish([done(claimed, at=NOW + 3)]) == {job.id}
        info = await store.get_job(job.id)
        assert info is not None
        assert info.state is JobState.SUCCEEDED
        assert info.outcome is Outcome.OK
        assert info.finished_at is not None
        assert info.finished_at.timestamp() == NOW + 3
        assert await store.claim(["h"], 1, now=NOW + 2 * LEASE, lease=LEASE) == []
        # A second report of the same run is not applied again.
        assert await store.finish([done(claimed, at=NOW + 4)]) == set()

    async def test_finish_failed_with_error(self, store: Store) -> None:
        """A failed run keeps its outcome and error text."""
        job = new_job()
        await store.enqueue([job])
        (claimed,) = await store.claim(["h"], 1, now=NOW, lease=LEASE)
        result = done(claimed, state=JobState.FAILED, outcome=Outcome.TIMEOUT, error="too slow ✗")
        assert await store.finish([result]) == {job.id}
        info = await store.get_job(job.id)
        assert info is not None
        assert (info.state, info.outcome, info.error) == (
            JobState.FAILED,
            Outcome.TIMEOUT,
            "too slow ✗",
        )

    async def test_finish_batch_applies_matching_only(self, store: Store) -> None:
        """A batch of finishes applies those whose token matches and reports their ids."""
        await store.enqueue([new_job(), new_job()])
        a, b = await store.claim(["h"], 2, now=NOW, lease=LEASE)
        forged = Finish(
            id=b.id, token="not-it", state=JobState.SUCCEEDED, outcome=Outcome.OK, finished_at=NOW
        )
        assert await store.finish([done(a), forged]) == {a.id}
        info = await store.get_job(b.id)
        assert info is not None
        assert info.state is JobState.RUNNING

    async def test_finish_queued_retries(self, store: Store) -> None:
        """A finish with state QUEUED and retry_at makes the job due again at retry_at."""
        job = new_job()
        await store.enqueue([job])
        (claimed,) = await store.claim(["h"], 1, now=NOW, lease=LEASE)
        retry = done(
            claimed,
            state=JobState.QUEUED,
            outcome=Outcome.ERROR,
            error="boom",
            at=NOW + 1,
            retry_at=NOW + 60,
        )
        assert await store.finish([retry]) == {job.id}
        info = await store.get_job(job.id)
        assert info is not None
        assert info.state is JobState.QUEUED
        assert info.outcome is Outcome.ERROR
        assert info.error == "boom"
        assert info.run_at.timestamp() == NOW + 60
        assert await store.next_wakeup(["h"]) == NOW + 60
        assert await store.claim(["h"], 1, now=NOW + 59, lease=LEASE) == []
        (again,) = await store.claim(["h"], 1, now=NOW + 60, lease=LEASE)
        assert again.attempt == 2
        assert again.run_at == NOW + 60

    async def test_finish_running_state_rejected(self, store: Store) -> None:
        """A finish that would leave the job running is refused."""
        await store.enqueue([new_job()])
        (claimed,) = await store.claim(["h"], 1, now=NOW, lease=LEASE)
        with pytest.raises(ValueError):
            await store.finish([done(claimed, state=JobState.RUNNING)])

    async def test_release(self, store: Store) -> None:
        """Release re-queues the job due now, without counting the attempt."""
        job = new_job(run_at=NOW - 100)
        await store.enqueue([job])
        (claimed,) = await store.claim(["h"], 1, now=NOW, lease=LEASE)
        await store.release([lease_of(claimed)], now=NOW + 5)
        info = await store.get_job(job.id)
        assert info is not None
        assert info.state is JobState.QUEUED
        assert info.attempts == 0
        assert info.run_at.timestamp() == NOW + 5
        assert await store.renew([lease_of(claimed)], now=NOW + 6, lease=LEASE) == set()
        (again,) = await store.claim(["h"], 1, now=NOW + 5, lease=LEASE)
        assert again.attempt == 1

    async def test_stale_release_changes_nothing(self, store: Store) -> None:
        """A release under a lost lease leaves the current claim in place."""
        job = new_job()
        await store.enqueue([job])
        (stale,) = await store.claim(["h"], 1, now=NOW, lease=LEASE)
        await store.claim(["h"], 1, now=NOW + LEASE, lease=LEASE)
        before = await store.get_job(job.id)
        await store.release([lease_of(stale)], now=NOW + LEASE + 1)
        assert await store.get_job(job.id) == before


class TestNextWakeup:
    async def test_none_without_live_jobs(self, store: Store) -> None:
        """next_wakeup is None when no job of the handles can become claimable."""
        assert await store.next_wakeup(["h"]) is None
        await store.enqueue([new_job("other")])
        assert await store.next_wakeup(["h"]) is None
        assert await store.next_wakeup([]) is None

    async def test_earliest_run_at(self, store: Store) -> None:
        """next_wakeup is the earliest run_at among queued jobs of the handles, past or not."""
        await store.enqueue(
            [new_job(run_at=NOW + 30), new_job(run_at=NOW - 5), new_job("x", run_at=NOW - 99)]
        )
        assert await store.next_wakeup(["h"]) == NOW - 5
        assert await store.next_wakeup(["h", "x"]) == NOW - 99

    async def test_lease_until_of_running(self, store: Store) -> None:
        """A running job counts at its lease expiry; a finished job not at all."""
        await store.enqueue([new_job(run_at=NOW), new_job(run_at=NOW + 100)])
        (claimed,) = await store.claim(["h"], 1, now=NOW, lease=LEASE)
        assert await store.next_wakeup(["h"]) == NOW + LEASE
        await store.finish([done(claimed)])
        assert await store.next_wakeup(["h"]) == NOW + 100


class TestFinishAndClaim:
    async def test_finishes_then_claims_per_handle(self, store: Store) -> None:
        """One call stores the results (fenced by token, as finish does) and claims up to
        each handle's limit, oldest due first, leaving other handles alone."""
        jobs = [new_job("a", run_at=NOW + i) for i in range(4)]
        others = [new_job("b", run_at=NOW + i) for i in range(3)]
        await store.enqueue(jobs + others)
        (first,) = await store.claim(["a"], 1, now=NOW + 10, lease=LEASE)
        stale = Finish(
            id=jobs[3].id,
            token="not-its-token",
            state=JobState.SUCCEEDED,
            outcome=Outcome.OK,
            finished_at=NOW + 11,
        )
        applied, claimed = await store.finish_and_claim(
            [done(first, at=NOW + 11), stale], [("a", 2), ("b", 1)], now=NOW + 11, lease=LEASE
        )
        assert applied == {first.id}
        assert [(j.handle, j.id) for j in sorted(claimed, key=lambda j: (j.handle, j.run_at))] == [
            ("a", jobs[1].id),
            ("a", jobs[2].id),
            ("b", others[0].id),
        ]
        assert all(j.attempt == 1 and j.lease_until == NOW + 11 + LEASE for j in claimed)
        info = await store.get_job(first.id)
        assert info is not None
        assert info.state is JobState.SUCCEEDED
        left = await store.claim(["a", "b"], 10, now=NOW + 12, lease=LEASE)
        assert {j.id for j in left} == {jobs[3].id, others[1].id, others[2].id}

    async def test_nothing_to_claim_still_finishes(self, store: Store) -> None:
        """With no due job, or a zero limit, the results are stored and no job is claimed."""
        job = new_job("a")
        await store.enqueue([job])
        (claimed,) = await store.claim(["a"], 1, now=NOW, lease=LEASE)
        applied, more = await store.finish_and_claim(
            [done(claimed)], [("a", 5), ("b", 0)], now=NOW + 1, lease=LEASE
        )
        assert applied == {job.id}
        assert more == []
        info = await store.get_job(job.id)
        assert info is not None
        assert info.state is JobState.SUCCEEDED
