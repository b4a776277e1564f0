"""Enums and frozen records shared by the runner, the stores and users."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Generic, TypeVar
from uuid import UUID

__all__ = ("JobContext", "JobInfo", "JobRef", "JobState", "Outcome", "RunType")

P = TypeVar("P")


class RunType(str, Enum):
    """How a sidecar's work is sent and kept."""

    MEMORY = "memory"
    """Sent in process and run at once; not durable."""
    DEFERRED = "deferred"
    """Committed to the store, run when due by any runner sharing the store."""
    STANDALONE = "standalone"
    """No payload; runs on its schedule and finds its own work."""


class JobState(str, Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True for the states a job never leaves."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class Outcome(str, Enum):
    """How a job's last run ended."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    LEASE_LOST = "lease_lost"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRef:
    """What ``enqueue`` returns.

    Attributes:
        id: the job's id (a UUID, for memory jobs too).
        handle: the sidecar the job belongs to.
        created: False when an existing job was returned instead of a new one (a unique
            ``key`` whose job is still queued).
    """

    id: UUID
    handle: str
    created: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class JobInfo:
    """A snapshot of one job, as returned by :meth:`Sidecars.get_job`.

    Times are aware UTC datetimes. ``payload`` is the stored JSON value (not a model).
    """

    id: UUID
    handle: str
    run_type: RunType
    state: JobState
    outcome: Outcome | None
    attempts: int
    max_attempts: int
    payload: Any
    created_at: datetime
    run_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobContext(Generic[P]):
    """What a handler receives.

    Attributes:
        payload: the validated payload (a fresh copy, never the caller's object).
        job_id: the job's id.
        handle: the sidecar's handle.
        attempt: 1 on the first run, counted up by each retry or re-claim.
        scheduled_at: when the job was due (for a fire: the fire instant), aware UTC.
        deadline: when the timeout cancels the run (aware UTC), or None without a timeout.
        logger: a logger named after the handle.
    """

    payload: P
    job_id: UUID
    handle: str
    attempt: int
    scheduled_at: datetime
    deadline: datetime | None = None
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("sidecars.job"))
