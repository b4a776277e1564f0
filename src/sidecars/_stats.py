"""Counters kept by a runner, and the frozen snapshot ``stats()`` returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ._records import Outcome, RunType

__all__ = ("Counters", "HandleStats", "Stats")


class Counters:
    """Live counters of one handle (mutated only from the event loop)."""

    __slots__ = ("dropped", "enqueued", "failed", "running", "skipped", "succeeded", "timed_out")

    def __init__(self) -> None:
        self.skipped = 0
        self.enqueued = 0
        self.running = 0
        self.succeeded = 0
        self.failed = 0
        self.timed_out = 0
        self.dropped = 0

    def count(self, outcome: Outcome) -> None:
        if outcome is Outcome.OK:
            self.succeeded += 1
        elif outcome is Outcome.TIMEOUT:
            self.timed_out += 1
        elif outcome is Outcome.SHUTDOWN:
            self.dropped += 1
        else:
            self.failed += 1


@dataclass(frozen=True, slots=True, kw_only=True)
class HandleStats:
    """Counts for one sidecar in this process since its runner started.

    Attributes:
        enqueued: jobs sent by this process.
        running: jobs running now.
        pending: MEMORY jobs waiting for a worker.
        succeeded: runs that ended ok.
        failed: runs that raised.
        timed_out: runs cancelled by their timeout.
        dropped: runs cancelled or jobs dropped by shutdown.
        skipped: STANDALONE fires skipped because the previous fire was still running.
    """

    handle: str
    run_type: RunType
    enqueued: int = 0
    running: int = 0
    pending: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    dropped: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Stats:
    """A snapshot of a runner's state, from :meth:`Sidecars.stats`.

    Attributes:
        running: whether the runner is running (and not shutting down).
        handles: per-handle counts.
        loop_restarts: how often a supervised background loop failed and was restarted.
        stuck_threads: sync handlers past their timeout whose threads have not returned.
    """

    running: bool
    handles: Mapping[str, HandleStats] = field(default_factory=dict)
    loop_restarts: int = 0
    stuck_threads: int = 0
