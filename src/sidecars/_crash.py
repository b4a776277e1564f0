"""Crash points: a test-only way to kill the process at a named moment.

Set ``SIDECARS_CRASH_POINT`` before the runner starts, as ``name`` or ``name:n`` (the n-th
time that point is reached, default 1). The process then kills itself with SIGKILL there, so
a crash test hits an exact window instead of hoping a timed ``kill -9`` lands in it.

Points:
    after_claim: a job has been claimed (its lease is held) and has not started.
    mid_handler: a job's handler has started and not returned.
    before_complete: a handler has returned and its completion is not yet stored.
    during_fire: a STANDALONE fire's handler has started and not returned.

Never set this in production: it exists for the crash tests of sidecars and of your app.
"""

from __future__ import annotations

import os
import signal

__all__ = ("POINTS", "CrashPoints")

POINTS = frozenset({"after_claim", "mid_handler", "before_complete", "during_fire"})
ENV = "SIDECARS_CRASH_POINT"


class CrashPoints:
    """The crash point configured for one runner, read once at its start."""

    __slots__ = ("_count", "_name", "_target")

    def __init__(self, spec: str | None = None) -> None:
        spec = os.environ.get(ENV, "") if spec is None else spec
        self._name: str | None = None
        self._target = 1
        self._count = 0
        if not spec:
            return
        name, _, nth = spec.partition(":")
        if name not in POINTS:
            raise ValueError(
                f"{ENV}={spec!r}: unknown crash point {name!r}; expected one of {sorted(POINTS)}"
            )
        self._name = name
        if nth:
            self._target = int(nth)

    @property
    def armed(self) -> bool:
        return self._name is not None

    def reached(self, name: str) -> None:
        """Kill the process if ``name`` is the configured point and its count is reached."""
        if name != self._name:
            return
        self._count += 1
        if self._count >= self._target:
            os.kill(os.getpid(), signal.SIGKILL)
