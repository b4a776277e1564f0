"""Helpers shared by the store tests."""

from __future__ import annotations

from uuid import UUID, uuid4

from sidecars.stores import NewJob

NOW = 1_700_000_000.0
"""A fixed instant: stores never read the clock, so tests pass times explicitly."""


def new_job(
    handle: str = "h",
    *,
    run_at: float = NOW,
    max_attempts: int = 3,
    payload: str = '{"n": 1}',
    created_at: float = NOW,
    job_id: UUID | None = None,
) -> NewJob:
    """A job with sensible defaults for tests."""
    return NewJob(
        id=uuid4() if job_id is None else job_id,
        handle=handle,
        payload=payload,
        run_at=run_at,
        created_at=created_at,
        max_attempts=max_attempts,
    )
