"""The store protocol: the one contract every job store meets.

Every method is batch-first: it takes or returns many rows, so a runner claims, renews and
finishes jobs in as few round trips as possible. Times are float seconds since the Unix
epoch, always passed in by the caller (read from the runner's :class:`~sidecars.Clock`):
a store never reads the time itself, so tests with a controllable clock stay exact.

Fencing: every claim gives the job a fresh ``token``. ``renew``, ``finish`` and ``release``
only touch a job whose stored token still equals the caller's, so a runner whose lease
expired and was re-claimed elsewhere can change nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, runtime_checkable
from uuid import UUID

from .._records import JobInfo, JobRef, JobState, Outcome

__all__ = (
    "ClaimedJob",
    "Finish",
    "FireClaim",
    "FireLease",
    "FireRequest",
    "FireStatus",
    "Lease",
    "NewJob",
    "Notifying",
    "Store",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewJob:
    """A job to insert.

    Attributes:
        id: the job's id, chosen by the caller.
        handle: the sidecar's handle.
        payload: the payload as JSON text (already validated).
        run_at: when the job becomes due (epoch seconds).
        created_at: when it was enqueued (epoch seconds).
        max_attempts: how many claims the job may have in all before it fails.
        key: a uniqueness key: while a queued job of the same handle has this key, the
            store does not insert this one and answers with the queued job's id instead.
    """

    id: UUID
    handle: str
    payload: str
    run_at: float
    created_at: float
    max_attempts: int
    key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimedJob:
    """A job a runner now holds under a lease.

    Attributes:
        attempt: the number of this claim (1 for the first).
        run_at: when the job was due.
        token: the fencing token of this claim.
        lease_until: when the lease expires unless renewed.
    """

    id: UUID
    handle: str
    payload: str
    attempt: int
    max_attempts: int
    run_at: float
    token: str
    lease_until: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """The proof of a claim: a job id and the token its claim returned."""

    id: UUID
    token: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Finish:
    """The end of one run, reported under its lease.

    Attributes:
        state: ``SUCCEEDED``, ``FAILED``, or ``QUEUED`` to run it again at ``retry_at``.
        outcome: how the run ended.
        error: a description of the error, or None.
        finished_at: when the run ended (epoch seconds).
        retry_at: with ``state=QUEUED``, when the job is due again.
    """

    id: UUID
    token: str
    state: JobState
    outcome: Outcome
    finished_at: float
    error: str | None = None
    retry_at: float | None = None


class FireStatus(str, Enum):
    """What a fire claim found."""

    CLAIMED = "claimed"
    """This caller now holds the fire under a lease and should run it."""
    TAKEN = "taken"
    """Another runner holds it, or it already ran (or was skipped): do nothing."""
    SKIPPED = "skipped"
    """An unexpired running fire of the same handle exists: this fire is recorded as
    skipped (overlap) and must not run."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FireRequest:
    """A request to run one fire of a STANDALONE sidecar.

    Attributes:
        handle: the sidecar's handle.
        fire_at: the fire instant, whole seconds since the epoch (UTC).
        skip_if_running: record the fire as skipped while another fire of the handle runs
            under an unexpired lease (overlap policy "skip").
        max_attempts: how many claims the fire may have in all (re-claims after a dead
            holder's lease expired count).
    """

    handle: str
    fire_at: int
    skip_if_running: bool = True
    max_attempts: int = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class FireLease:
    """The proof of a fire claim."""

    handle: str
    fire_at: int
    token: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FireClaim:
    """The answer to a :class:`FireRequest`.

    Attributes:
        status: claimed, taken, or skipped.
        attempt: with ``CLAIMED``, the number of this claim (1 for the first).
        token: with ``CLAIMED``, the fencing token; else None.
        lease_until: with ``CLAIMED``, when the lease expires unless renewed; with
            ``TAKEN`` of a fire another runner is running, when its lease expires (a caller
            may ask again then, to re-run the fire of a holder that died); else None.
    """

    handle: str
    fire_at: int
    status: FireStatus
    attempt: int = 0
    token: str | None = None
    lease_until: float | None = None

    def lease(self) -> FireLease:
        """The lease of a claimed fire."""
        if self.token is None:
            raise ValueError(f"fire {self.handle}@{self.fire_at} was not claimed")
        return FireLease(handle=self.handle, fire_at=self.fire_at, token=self.token)


@runtime_checkable
class Store(Protocol):
    """An async, batch-first job store.

    Semantics every implementation meets (checked by the contract suite in
    ``tests/stores/``):

    - ``enqueue`` returns only once every job is durably stored, with one
      :class:`~sidecars.JobRef` per job in order: ``created=True`` for a job inserted;
      ``created=False`` with the id of the job already queued (not yet started) with the
      same handle and ``key``, for a keyed job not inserted. The rule is enforced by the
      store (a partial unique index over queued jobs), so it holds across processes; within
      one batch, a later job with the key of an earlier one gets the earlier one's id; one
      conflicting job never fails the others.
    - ``claim`` returns up to ``limit`` jobs of the given handles that are due (queued with
      ``run_at <= now``) or whose lease has expired (running with ``lease_until <= now``),
      oldest due first, each with ``attempt`` counted up by one, a new token, and state
      running. A job whose lease expired after its last allowed attempt is not claimed: it
      ends failed with outcome ``LEASE_LOST``. Two concurrent claims never return the same
      job under the same lease.
    - ``renew`` extends the leases it still holds to ``now + lease`` and returns their ids;
      an id missing from the result has been lost.
    - ``finish`` applies each result whose token matches and returns the ids applied.
    - ``release`` gives jobs back (shutdown): token cleared, state queued, due at ``now``,
      and the attempt of that claim not counted.
    - A keyed job that ``finish`` (state queued) or ``release`` would put back in the queue
      while a newer queued job holds its key ends cancelled instead (outcome cancelled, a
      "superseded" error): the queued job does the work, and the key's rule holds. Its id
      is still among those ``finish`` applied.
    - ``finish`` also accepts state cancelled: a runner ends its own running job so,
      fenced by its token like any result.

    Fires (one row per (handle, fire instant), never two):

    - ``claim_fires`` answers each request: with no row yet, it inserts one, running under
      a new token (``CLAIMED``), or, when ``skip_if_running`` and another fire of the
      handle is running under an unexpired lease, in state skipped (``SKIPPED``). A row
      running under an expired lease, or released, is claimed again (an expired one counts
      an attempt; past ``max_attempts`` it ends failed with outcome ``LEASE_LOST`` and the
      answer is ``TAKEN``). Any other existing row answers ``TAKEN``.
    - ``renew_fires``, ``finish_fire`` and ``release_fires`` are fenced like their job
      counterparts; a released fire is claimable again, its attempt not counted.
    - ``last_fire`` is the latest fire instant of a handle with a row in any state but
      released: the reference for misfire handling.
    - ``prune_fires`` deletes rows of fires before ``before`` that are not running.

    Optional methods, not part of the protocol (a store without them stays a valid
    ``Store``; callers look them up with ``getattr``). The three stores of sidecars have
    both:

    - ``async def list_jobs(self, *, handle: str | None = None, state: str | JobState |
      None = None, limit: int = 50) -> list[JobInfo]``: the newest jobs first (by
      ``created_at``, then id), only those of ``handle`` and in ``state`` when given;
      ``limit`` from 1 to 10,000, else ``ValueError`` (an unknown state too). Used by
      ``sidecars jobs list``.
    - ``async def prune_jobs(self, *, before: float) -> int``: delete finished jobs
      (succeeded, failed, cancelled) whose ``finished_at`` is before ``before`` (epoch
      seconds), in batches of at most a thousand rows per transaction, and return how
      many. A runner that consumes DEFERRED work calls it regularly (every seventh of the
      retention, an hour to a day) with its clock's time
      minus the app's ``job_retention``; ``sidecars jobs purge`` calls it too. A store may
      give ``before`` a default (the PostgreSQL store's is its ``retention``).
    """

    async def open(self) -> None:
        """Connect and bring the schema up to date. Safe to call more than once."""
        ...

    async def close(self) -> None:
        """Release connections. Safe to call more than once."""
        ...

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[JobRef]:
        """Insert jobs durably; one reference per job, in order (see the class docs)."""
        ...

    async def claim(
        self, handles: Sequence[str], limit: int, *, now: float, lease: float
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` due jobs of ``handles`` for ``lease`` seconds."""
        ...

    async def renew(self, leases: Sequence[Lease], *, now: float, lease: float) -> set[UUID]:
        """Extend held leases; return the ids still held."""
        ...

    async def finish(self, results: Sequence[Finish]) -> set[UUID]:
        """Record the end of runs; return the ids whose token matched."""
        ...

    async def finish_and_claim(
        self,
        results: Sequence[Finish],
        claims: Sequence[tuple[str, int]],
        *,
        now: float,
        lease: float,
    ) -> tuple[set[UUID], list[ClaimedJob]]:
        """Record the end of runs, then claim up to ``limit`` due jobs for each
        ``(handle, limit)``: what a runner does when workers free up.

        The finish has the meaning and errors of :meth:`finish`. A store may do both in one
        transaction; if the claim part fails after the finish was stored, it answers with
        no jobs rather than an error (the runner claims again later).
        """
        ...

    async def release(self, leases: Sequence[Lease], *, now: float) -> None:
        """Give held jobs back without counting the attempt."""
        ...

    async def get_job(self, job_id: UUID) -> JobInfo | None:
        """Read one job, or None."""
        ...

    async def cancel(self, job_id: UUID, *, now: float) -> JobState | None:
        """Cancel a queued job: state cancelled, finished at ``now``, token cleared.

        Returns:
            The job's state afterwards (``CANCELLED`` when it was queued; ``RUNNING`` or a
            finished state are returned unchanged: a running job is cancelled by its
            runner), or None for an unknown id.
        """
        ...

    async def retry(self, job_id: UUID, *, now: float) -> bool:
        """Queue a failed or cancelled job again, due at ``now``, its attempts reset to 0.

        The outcome and error of the last run stay until the next run ends.

        Returns:
            True if the job was failed or cancelled and is now queued. False for any other
            state, an unknown id, or a keyed job whose key another queued job of its
            handle holds (the job is then left as it is).
        """
        ...

    async def next_wakeup(self, handles: Sequence[str]) -> float | None:
        """The earliest time a job of ``handles`` becomes claimable, or None if none will.

        That is the earliest ``run_at`` of a queued job or ``lease_until`` of a running one;
        it may lie in the past. Runners sleep until then (or until woken) instead of polling.
        """
        ...

    async def claim_fires(
        self, requests: Sequence[FireRequest], *, now: float, lease: float
    ) -> list[FireClaim]:
        """Claim fires, one answer per request, in order."""
        ...

    async def renew_fires(
        self, leases: Sequence[FireLease], *, now: float, lease: float
    ) -> set[tuple[str, int]]:
        """Extend held fire leases; return the (handle, fire_at) pairs still held."""
        ...

    async def finish_fire(
        self,
        lease: FireLease,
        *,
        outcome: Outcome,
        finished_at: float,
        error: str | None = None,
    ) -> bool:
        """Record the end of a fire (succeeded for ``OK``, else failed); True if fenced in."""
        ...

    async def release_fires(self, leases: Sequence[FireLease], *, now: float) -> None:
        """Give held fires back (shutdown) without counting the attempt."""
        ...

    async def last_fire(self, handle: str) -> int | None:
        """The latest recorded fire instant of ``handle`` (released ones excluded)."""
        ...

    async def prune_fires(self, *, before: float) -> int:
        """Delete finished or skipped fire rows with ``fire_at < before``; return how many."""
        ...


@runtime_checkable
class Notifying(Protocol):
    """A store that can tell a runner about new work as it is enqueued (optional).

    A runner whose store implements this runs :meth:`watch` for as long as it runs and
    polls only as a fallback. The SQLite store does not need it (in-process wake-ups cover
    one process, polling the others); the PostgreSQL store uses LISTEN/NOTIFY.
    """

    async def watch(self, handles: Sequence[str], wake: Callable[[str], None]) -> None:
        """Call ``wake(handle)`` whenever a job of one of ``handles`` may have become
        claimable, until cancelled. Raise to be restarted (with backoff) by the runner."""
        ...
