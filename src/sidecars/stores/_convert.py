"""Small helpers shared by the store implementations."""

from __future__ import annotations

from datetime import datetime, timezone

from .._records import JobState

__all__ = ("LEASE_LOST_ERROR", "check_finish_state", "to_datetime")

LEASE_LOST_ERROR = "the lease expired after the last allowed attempt"
"""The error recorded on a job failed because its last lease expired."""


def to_datetime(epoch: float) -> datetime:
    """Epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def check_finish_state(state: JobState) -> None:
    """Refuse a :class:`~sidecars.stores.Finish` that would leave its job running.

    Raises:
        ValueError: ``state`` is ``RUNNING``.
    """
    if state is JobState.RUNNING:
        raise ValueError("a finished run must leave its job queued or finished, not running")
