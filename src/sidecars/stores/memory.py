"""An in-process store for tests: plain dicts, the same semantics as the durable stores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID, uuid4

import anyio.lowlevel

from .._records import JobInfo, JobRef, JobState, Outcome
from ._base import ClaimedJob, Finish, FireClaim, FireLease, FireRequest, Lease, NewJob
from ._convert import (
    LEASE_LOST_ERROR,
    SUPERSEDED_ERROR,
    FireRow,
    FireState,
    KeyPlan,
    check_finish_state,
    check_list_args,
    decide_fire,
    job_info,
)

__all__ = ("MemoryStore",)


@dataclass(slots=True)
class _Row:
    id: UUID
    handle: str
    payload: str
    max_attempts: int
    run_at: float
    created_at: float
    state: JobState = JobState.QUEUED
    outcome: Outcome | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    lease_until: float | None = None
    token: str | None = None
    error: str | None = None
    key: str | None = None

    def holds(self, token: str) -> bool:
        return self.state is JobState.RUNNING and self.token == token


class MemoryStore:
    """A :class:`~sidecars.stores.Store` kept in process memory.

    Meant for tests: nothing survives the process, and only tasks of one event loop may
    share an instance. Every method changes its rows without awaiting in between, so
    concurrent tasks see each call as atomic, as they would a transaction.

    Example:
        >>> store = MemoryStore()
    """

    def __init__(self) -> None:
        self._jobs: dict[UUID, _Row] = {}
        # The unique index of the SQL stores: (handle, key) of each queued keyed job.
        self._queued_keys: dict[tuple[str, str], UUID] = {}
        # Fire rows by handle, then instant: the overlap check walks one handle's rows only.
        self._fires: dict[str, dict[int, FireRow]] = {}

    async def open(self) -> None:
        """Do nothing: a memory store is always open."""
        await anyio.lowlevel.checkpoint()

    async def close(self) -> None:
        """Do nothing: the jobs are kept so a test can still read them."""
        await anyio.lowlevel.checkpoint()

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[JobRef]:
        """Insert jobs, all or none; one reference per job, in order.

        A keyed job whose (handle, key) a queued job holds (or an earlier job of the batch)
        is not inserted: its reference carries that job's id and ``created=False``.

        Raises:
            ValueError: a job id already exists (or appears twice in ``jobs``).
        """
        await anyio.lowlevel.checkpoint()
        ids = [job.id for job in jobs]
        if len(set(ids)) != len(ids) or any(job_id in self._jobs for job_id in ids):
            raise ValueError("a job id in this batch already exists")
        plan = KeyPlan(jobs)
        answers: list[tuple[UUID, bool]] = []
        for job in plan.unique:
            holder = None if job.key is None else self._queued_keys.get((job.handle, job.key))
            if holder is not None:
                answers.append((holder, False))
                continue
            row = _Row(
                id=job.id,
                handle=job.handle,
                payload=job.payload,
                max_attempts=job.max_attempts,
                run_at=job.run_at,
                created_at=job.created_at,
                key=job.key,
            )
            self._jobs[job.id] = row
            self._enter_queue(row)
            answers.append((job.id, True))
        return plan.refs(answers)

    async def claim(
        self, handles: Sequence[str], limit: int, *, now: float, lease: float
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` due jobs of ``handles`` for ``lease`` seconds."""
        await anyio.lowlevel.checkpoint()
        if limit <= 0:
            return []
        wanted = set(handles)
        due: list[_Row] = []
        for row in self._jobs.values():
            if row.handle not in wanted:
                continue
            if row.state is JobState.QUEUED and row.run_at <= now:
                due.append(row)
            elif (
                row.state is JobState.RUNNING
                and row.lease_until is not None
                and row.lease_until <= now
            ):
                if row.attempts >= row.max_attempts:
                    _fail_lease_lost(row, now)
                else:
                    due.append(row)
        due.sort(key=lambda r: (r.run_at, str(r.id)))
        token = uuid4().hex
        claimed: list[ClaimedJob] = []
        for row in due[:limit]:
            self._leave_queue(row)
            row.state = JobState.RUNNING
            row.attempts += 1
            row.token = token
            row.lease_until = now + lease
            row.started_at = now
            claimed.append(
                ClaimedJob(
                    id=row.id,
                    handle=row.handle,
                    payload=row.payload,
                    attempt=row.attempts,
                    max_attempts=row.max_attempts,
                    run_at=row.run_at,
                    token=token,
                    lease_until=row.lease_until,
                )
            )
        return claimed

    async def renew(self, leases: Sequence[Lease], *, now: float, lease: float) -> set[UUID]:
        """Extend held leases to ``now + lease``; return the ids still held."""
        await anyio.lowlevel.checkpoint()
        held: set[UUID] = set()
        for item in leases:
            row = self._jobs.get(item.id)
            if row is not None and row.holds(item.token):
                row.lease_until = now + lease
                held.add(item.id)
        return held

    async def finish(self, results: Sequence[Finish]) -> set[UUID]:
        """Record the end of runs; return the ids whose token matched.

        Raises:
            ValueError: a result's state is ``RUNNING``.
        """
        await anyio.lowlevel.checkpoint()
        for result in results:
            check_finish_state(result.state)
        applied: set[UUID] = set()
        for result in results:
            row = self._jobs.get(result.id)
            if row is None or not row.holds(result.token):
                continue
            applied.add(result.id)
            if result.state is JobState.QUEUED and self._key_taken(row):
                _supersede(row, result.finished_at)
                continue
            row.state = result.state
            row.outcome = result.outcome
            row.error = result.error
            row.token = None
            row.lease_until = None
            if result.state is JobState.QUEUED:
                row.run_at = result.finished_at if result.retry_at is None else result.retry_at
                row.finished_at = None
                self._enter_queue(row)
            else:
                row.finished_at = result.finished_at
        return applied

    async def finish_and_claim(
        self,
        results: Sequence[Finish],
        claims: Sequence[tuple[str, int]],
        *,
        now: float,
        lease: float,
    ) -> tuple[set[UUID], list[ClaimedJob]]:
        """:meth:`finish`, then :meth:`claim` for each ``(handle, limit)``."""
        applied = await self.finish(results) if results else set()
        claimed: list[ClaimedJob] = []
        for handle, limit in claims:
            claimed += await self.claim([handle], limit, now=now, lease=lease)
        return applied, claimed

    async def release(self, leases: Sequence[Lease], *, now: float) -> None:
        """Give held jobs back, due at ``now``, without counting the attempt."""
        await anyio.lowlevel.checkpoint()
        for item in leases:
            row = self._jobs.get(item.id)
            if row is not None and row.holds(item.token):
                if self._key_taken(row):
                    _supersede(row, now)
                    continue
                row.state = JobState.QUEUED
                row.token = None
                row.lease_until = None
                row.run_at = now
                row.attempts = max(row.attempts - 1, 0)
                self._enter_queue(row)

    async def get_job(self, job_id: UUID) -> JobInfo | None:
        """Read one job, or None if the id is unknown."""
        await anyio.lowlevel.checkpoint()
        row = self._jobs.get(job_id)
        return None if row is None else _info(row)

    async def list_jobs(
        self,
        *,
        handle: str | None = None,
        state: str | JobState | None = None,
        limit: int = 50,
    ) -> list[JobInfo]:
        """The newest jobs first (by ``created_at``, then id), optionally filtered.

        Args:
            handle: only jobs of this handle.
            state: only jobs in this state (a :class:`~sidecars.JobState` or its value).
            limit: at most this many jobs, 1 to 10,000.

        Raises:
            ValueError: ``state`` is not a job state, or ``limit`` is out of range.
        """
        handle, wanted, limit = check_list_args(handle, state, limit)
        await anyio.lowlevel.checkpoint()
        rows = [
            row
            for row in self._jobs.values()
            if (handle is None or row.handle == handle) and (wanted is None or row.state is wanted)
        ]
        rows.sort(key=lambda r: (r.created_at, str(r.id)), reverse=True)
        return [_info(row) for row in rows[:limit]]

    async def prune_jobs(self, *, before: float) -> int:
        """Delete finished jobs (succeeded, failed, cancelled) with ``finished_at < before``.

        ``before`` is required: a store never reads the clock, so it cannot know what
        "a week ago" is (the runner passes its clock's time minus ``job_retention``).

        Returns:
            How many jobs were deleted.
        """
        await anyio.lowlevel.checkpoint()
        old = [
            job_id
            for job_id, row in self._jobs.items()
            if row.state.finished and row.finished_at is not None and row.finished_at < before
        ]
        for job_id in old:
            del self._jobs[job_id]
        return len(old)

    async def cancel(self, job_id: UUID, *, now: float) -> JobState | None:
        """Cancel a queued job; return its state afterwards, or None for an unknown id.

        A running job is left to its runner (the answer is ``RUNNING``); a finished one is
        left as it is (the answer is its state).
        """
        await anyio.lowlevel.checkpoint()
        row = self._jobs.get(job_id)
        if row is None:
            return None
        if row.state is JobState.QUEUED:
            self._leave_queue(row)
            row.state = JobState.CANCELLED
            row.outcome = Outcome.CANCELLED
            row.finished_at = now
            row.token = None
            row.lease_until = None
        return row.state

    async def retry(self, job_id: UUID, *, now: float) -> bool:
        """Queue a failed or cancelled job again, due at ``now``, its attempts reset to 0.

        The outcome and error of the last run stay until the next run ends.

        Returns:
            True if the job is queued again; False if it was in another state, is unknown,
            or has a key that another queued job of its handle holds (it is left as it is).
        """
        await anyio.lowlevel.checkpoint()
        row = self._jobs.get(job_id)
        if row is None or row.state not in (JobState.FAILED, JobState.CANCELLED):
            return False
        if self._key_taken(row):
            return False
        row.state = JobState.QUEUED
        row.run_at = now
        row.attempts = 0
        row.token = None
        row.lease_until = None
        row.finished_at = None
        self._enter_queue(row)
        return True

    async def next_wakeup(self, handles: Sequence[str]) -> float | None:
        """The earliest time a job of ``handles`` becomes claimable, or None."""
        await anyio.lowlevel.checkpoint()
        wanted = set(handles)
        times = [
            row.run_at if row.state is JobState.QUEUED else row.lease_until
            for row in self._jobs.values()
            if row.handle in wanted and row.state in (JobState.QUEUED, JobState.RUNNING)
        ]
        return min((t for t in times if t is not None), default=None)

    async def claim_fires(
        self, requests: Sequence[FireRequest], *, now: float, lease: float
    ) -> list[FireClaim]:
        """Claim fires for ``lease`` seconds, one answer per request, in order.

        Requests are answered one after another, so a later request of the same batch sees
        what an earlier one claimed (a second request for one fire answers ``TAKEN``).
        """
        await anyio.lowlevel.checkpoint()
        answers: list[FireClaim] = []
        for request in requests:
            rows = self._fires.setdefault(request.handle, {})
            overlapped = any(
                fire_at != request.fire_at and other.running_at(now)
                for fire_at, other in rows.items()
            )
            new, answer = decide_fire(
                rows.get(request.fire_at), request, overlapped=overlapped, now=now, lease=lease
            )
            if new is not None:
                rows[request.fire_at] = new
            answers.append(answer)
        return answers

    async def renew_fires(
        self, leases: Sequence[FireLease], *, now: float, lease: float
    ) -> set[tuple[str, int]]:
        """Extend held fire leases to ``now + lease``; return the pairs still held."""
        await anyio.lowlevel.checkpoint()
        held: set[tuple[str, int]] = set()
        for item in leases:
            row = self._fire(item)
            if row is not None:
                row.lease_until = now + lease
                held.add((item.handle, item.fire_at))
        return held

    async def finish_fire(
        self,
        lease: FireLease,
        *,
        outcome: Outcome,
        finished_at: float,
        error: str | None = None,
    ) -> bool:
        """Record the end of a fire: succeeded for ``OK``, else failed.

        Returns:
            True if the lease was still held and the result applied.
        """
        await anyio.lowlevel.checkpoint()
        row = self._fire(lease)
        if row is None:
            return False
        row.state = FireState.SUCCEEDED if outcome is Outcome.OK else FireState.FAILED
        row.outcome = outcome
        row.error = error
        row.finished_at = finished_at
        row.token = None
        row.lease_until = None
        return True

    async def release_fires(self, leases: Sequence[FireLease], *, now: float) -> None:
        """Give held fires back, claimable again, without counting the attempt."""
        await anyio.lowlevel.checkpoint()
        for item in leases:
            row = self._fire(item)
            if row is not None:
                row.state = FireState.RELEASED
                row.token = None
                row.lease_until = None
                row.attempts = max(row.attempts - 1, 0)

    async def last_fire(self, handle: str) -> int | None:
        """The latest fire instant of ``handle`` with a row in any state but released."""
        await anyio.lowlevel.checkpoint()
        rows = self._fires.get(handle, {})
        return max(
            (fire_at for fire_at, row in rows.items() if row.state is not FireState.RELEASED),
            default=None,
        )

    async def prune_fires(self, *, before: float) -> int:
        """Delete fire rows with ``fire_at < before`` that are not running; return how many."""
        await anyio.lowlevel.checkpoint()
        pruned = 0
        for handle, rows in list(self._fires.items()):
            old = [
                fire_at
                for fire_at, row in rows.items()
                if fire_at < before and row.state is not FireState.RUNNING
            ]
            for fire_at in old:
                del rows[fire_at]
            pruned += len(old)
            if not rows:
                del self._fires[handle]
        return pruned

    def _key_taken(self, row: _Row) -> bool:
        """True if another job holds ``row``'s key in the queue (it cannot be queued)."""
        if row.key is None:
            return False
        holder = self._queued_keys.get((row.handle, row.key))
        return holder is not None and holder != row.id

    def _enter_queue(self, row: _Row) -> None:
        if row.key is not None:
            self._queued_keys[(row.handle, row.key)] = row.id

    def _leave_queue(self, row: _Row) -> None:
        if row.key is not None and self._queued_keys.get((row.handle, row.key)) == row.id:
            del self._queued_keys[(row.handle, row.key)]

    def _fire(self, lease: FireLease) -> FireRow | None:
        """The row of ``lease`` if it still runs under that lease's token."""
        row = self._fires.get(lease.handle, {}).get(lease.fire_at)
        return row if row is not None and row.holds(lease.token) else None


def _info(row: _Row) -> JobInfo:
    return job_info(
        (
            row.id,
            row.handle,
            row.state.value,
            None if row.outcome is None else row.outcome.value,
            row.payload,
            row.attempts,
            row.max_attempts,
            row.run_at,
            row.created_at,
            row.started_at,
            row.finished_at,
            row.error,
            row.key,
        )
    )


def _supersede(row: _Row, now: float) -> None:
    row.state = JobState.CANCELLED
    row.outcome = Outcome.CANCELLED
    row.error = SUPERSEDED_ERROR
    row.finished_at = now
    row.token = None
    row.lease_until = None


def _fail_lease_lost(row: _Row, now: float) -> None:
    row.state = JobState.FAILED
    row.outcome = Outcome.LEASE_LOST
    row.error = LEASE_LOST_ERROR
    row.finished_at = now
    row.token = None
    row.lease_until = None
