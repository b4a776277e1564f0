"""Helpers shared by the store implementations, including the fire-claim rules both apply."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Any
from uuid import UUID, uuid4

from .._records import JobInfo, JobRef, JobState, Outcome, RunType
from ._base import ClaimedJob, FireClaim, FireRequest, FireStatus, NewJob

__all__ = (
    "FINISHED_STATES",
    "LEASE_LOST_ERROR",
    "MAX_LIST_LIMIT",
    "PRUNE_BATCH",
    "SUPERSEDED_ERROR",
    "FireRow",
    "FireState",
    "KeyPlan",
    "check_finish_state",
    "check_list_args",
    "claimed_jobs",
    "decide_fire",
    "decide_fires",
    "job_info",
    "to_datetime",
)

LEASE_LOST_ERROR = "the lease expired after the last allowed attempt"
"""The error recorded on a job or fire failed because its last lease expired."""

SUPERSEDED_ERROR = "superseded: another queued job of this handle holds the same key"
"""The error recorded on a keyed job that could not go back to the queue (a retry after a
failed run, or a release at shutdown) because a newer job with its key was queued meanwhile:
that job does the work, so this one ends cancelled rather than breaking the key's rule."""


FINISHED_STATES = ("succeeded", "failed", "cancelled")
"""The stored values of the states a job never leaves: what ``prune_jobs`` may delete."""

MAX_LIST_LIMIT = 10_000
"""The most jobs one ``list_jobs`` call returns: a listing is for people and scripts, not a
way to read a whole table into memory."""

PRUNE_BATCH = 1000
"""Pruning deletes at most this many rows per transaction, so it never holds a write lock
(SQLite) or many row locks and a burst of WAL (PostgreSQL) for long."""


class KeyPlan:
    """The jobs of one enqueue batch to send to the store, with the key rule within it.

    A keyed job whose (handle, key) an earlier job of the batch already has is not sent: it
    answers with the earlier job's id. :attr:`unique` are the jobs to insert, in order;
    :meth:`refs` turns one answer per unique job into one reference per batch job.
    """

    __slots__ = ("jobs", "owners", "unique")

    def __init__(self, jobs: Sequence[NewJob]) -> None:
        self.jobs = jobs
        self.unique: list[NewJob] = []
        # Per batch job: the position in `unique` of the job whose answer it shares.
        self.owners: list[int] = []
        firsts: dict[tuple[str, str], int] = {}
        for job in jobs:
            if job.key is not None:
                owner = firsts.get((job.handle, job.key))
                if owner is not None:
                    self.owners.append(owner)
                    continue
                firsts[(job.handle, job.key)] = len(self.unique)
            self.owners.append(len(self.unique))
            self.unique.append(job)

    def refs(self, answers: Sequence[tuple[UUID, bool]]) -> list[JobRef]:
        """One reference per batch job from ``(id, created)`` per unique job."""
        refs: list[JobRef] = []
        seen: set[int] = set()
        for job, owner in zip(self.jobs, self.owners, strict=True):
            job_id, created = answers[owner]
            refs.append(JobRef(id=job_id, handle=job.handle, created=created and owner not in seen))
            seen.add(owner)
        return refs


def to_datetime(epoch: float) -> datetime:
    """Epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def job_info(row: Sequence[Any]) -> JobInfo:
    """A :class:`~sidecars.JobInfo` from a stored job row.

    Args:
        row: ``id, handle, state, outcome, payload (JSON text), attempts, max_attempts,
            run_at, created_at, started_at, finished_at, error, key``, times in epoch
            seconds; the id as a UUID or its text.
    """
    (
        id_,
        handle,
        state,
        outcome,
        payload,
        attempts,
        max_attempts,
        run_at,
        created_at,
        started_at,
        finished_at,
        error,
        key,
    ) = row
    return JobInfo(
        id=id_ if isinstance(id_, UUID) else UUID(id_),
        handle=handle,
        run_type=RunType.DEFERRED,
        state=JobState(state),
        outcome=None if outcome is None else Outcome(outcome),
        attempts=attempts,
        max_attempts=max_attempts,
        payload=json.loads(payload),
        created_at=to_datetime(created_at),
        run_at=to_datetime(run_at),
        started_at=None if started_at is None else to_datetime(started_at),
        finished_at=None if finished_at is None else to_datetime(finished_at),
        error=error,
        key=key,
    )


def check_list_args(
    handle: str | None, state: str | JobState | None, limit: int
) -> tuple[str | None, JobState | None, int]:
    """Validate the filters of ``list_jobs``; return them with ``state`` as a JobState.

    Raises:
        ValueError: ``state`` names no job state, or ``limit`` is not an integer from 1 to
            :data:`MAX_LIST_LIMIT`.
        TypeError: ``handle`` is not a string or None.
    """
    if handle is not None and not isinstance(handle, str):
        raise TypeError(f"handle must be a string or None, not {handle!r}")
    if state is not None:
        try:
            state = JobState(state)
        except ValueError:
            names = ", ".join(s.value for s in JobState)
            raise ValueError(f"state must be one of {names}; got {state!r}") from None
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIST_LIMIT}, not {limit!r}")
    return handle, state, limit


def check_finish_state(state: JobState) -> None:
    """Refuse a :class:`~sidecars.stores.Finish` that would leave its job running.

    Raises:
        ValueError: ``state`` is ``RUNNING``.
    """
    if state is JobState.RUNNING:
        raise ValueError("a finished run must leave its job queued or finished, not running")


class FireState(str, Enum):
    """The states of a stored fire row (the values are what the SQL stores hold)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    RELEASED = "released"


@dataclass(slots=True, kw_only=True)
class FireRow:
    """One fire row, as both stores keep it (the memory store in a dict, SQLite in a table)."""

    handle: str
    fire_at: int
    state: FireState
    attempts: int = 0
    outcome: Outcome | None = None
    token: str | None = None
    lease_until: float | None = None
    claimed_at: float | None = None
    finished_at: float | None = None
    error: str | None = None

    def holds(self, token: str) -> bool:
        """True while the row runs under the claim that returned ``token``."""
        return self.state is FireState.RUNNING and self.token == token

    def running_at(self, now: float) -> bool:
        """True while the row runs under a lease that has not expired at ``now``."""
        return (
            self.state is FireState.RUNNING
            and self.lease_until is not None
            and self.lease_until > now
        )


def decide_fire(
    row: FireRow | None,
    request: FireRequest,
    *,
    overlapped: bool,
    now: float,
    lease: float,
) -> tuple[FireRow | None, FireClaim]:
    """Apply the fire-claim rules of :class:`~sidecars.stores.Store` to one request.

    Both stores call this with the row as it stands (None when missing) so that they agree
    on every rule; each supplies its own atomicity around the read and the write.

    Args:
        row: the stored row of the request's (handle, fire_at), or None. Not modified.
        request: the claim request.
        overlapped: another fire of the same handle is running under an unexpired lease.
        now: the caller's clock.
        lease: the lease length in seconds.

    Returns:
        The row to store (None when nothing changes) and the answer.
    """
    handle, fire_at = request.handle, request.fire_at
    taken = FireClaim(handle=handle, fire_at=fire_at, status=FireStatus.TAKEN)
    if row is None:
        attempts = 0
    elif row.state is FireState.RELEASED:
        # Release already gave the attempt back, so counting up again repeats its number.
        attempts = row.attempts
    elif row.state is FireState.RUNNING and row.lease_until is not None and row.lease_until <= now:
        attempts = row.attempts
        if attempts >= request.max_attempts:
            lost = replace(
                row,
                state=FireState.FAILED,
                outcome=Outcome.LEASE_LOST,
                error=LEASE_LOST_ERROR,
                finished_at=now,
                token=None,
                lease_until=None,
            )
            return lost, taken
    elif row.state is FireState.RUNNING:
        # Held under a live lease: say until when, so a caller can check back for a dead
        # holder (the fire is then re-run: at-least-once).
        return None, replace(taken, lease_until=row.lease_until)
    else:
        return None, taken

    if request.skip_if_running and overlapped:
        skipped = FireRow(
            handle=handle,
            fire_at=fire_at,
            state=FireState.SKIPPED,
            attempts=attempts,
            claimed_at=now if row is None else row.claimed_at,
            finished_at=now,
        )
        return skipped, FireClaim(handle=handle, fire_at=fire_at, status=FireStatus.SKIPPED)

    # A token per claim, not per batch: a stale holder of any one fire can touch nothing.
    claimed = FireRow(
        handle=handle,
        fire_at=fire_at,
        state=FireState.RUNNING,
        attempts=attempts + 1,
        token=uuid4().hex,
        lease_until=now + lease,
        claimed_at=now,
    )
    return claimed, FireClaim(
        handle=handle,
        fire_at=fire_at,
        status=FireStatus.CLAIMED,
        attempt=claimed.attempts,
        token=claimed.token,
        lease_until=claimed.lease_until,
    )


def claimed_jobs(rows: Sequence[Any], *, token: str, until: float) -> list[ClaimedJob]:
    """Rows of ``(id, handle, payload, attempts, max_attempts, run_at)`` from a claim, as
    :class:`ClaimedJob` records, oldest due first (SQL's RETURNING order is unspecified)."""
    claimed = [
        ClaimedJob(
            id=row[0] if isinstance(row[0], UUID) else UUID(row[0]),
            handle=row[1],
            payload=row[2],
            attempt=row[3],
            max_attempts=row[4],
            run_at=row[5],
            token=token,
            lease_until=until,
        )
        for row in rows
    ]
    claimed.sort(key=lambda job: (job.run_at, str(job.id)))
    return claimed


def decide_fires(
    requests: Sequence[FireRequest],
    rows: dict[tuple[str, int], FireRow],
    running: dict[str, set[int]],
    *,
    now: float,
    lease: float,
) -> tuple[list[FireClaim], dict[tuple[str, int], FireRow]]:
    """Apply :func:`decide_fire` to a batch, in order, so a later request sees what an
    earlier one claimed.

    Args:
        requests: the batch.
        rows: the stored rows of the requested fires (updated in place).
        running: per handle, the instants of fires running under a live lease (updated).
        now: the caller's clock.
        lease: the lease length in seconds.

    Returns:
        One answer per request, and the rows to write.
    """
    answers: list[FireClaim] = []
    changed: dict[tuple[str, int], FireRow] = {}
    for request in requests:
        key = (request.handle, request.fire_at)
        others = running.get(request.handle, set())
        overlapped = bool(others - {request.fire_at})
        new, answer = decide_fire(
            rows.get(key), request, overlapped=overlapped, now=now, lease=lease
        )
        if new is not None:
            rows[key] = changed[key] = new
            if new.running_at(now):
                running.setdefault(request.handle, set()).add(request.fire_at)
        answers.append(answer)
    return answers, changed
