"""Retry policy (pure): how many attempts, which errors, and how long between them."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from .exceptions import InvalidDeclaration

__all__ = ("RetryPolicy", "backoff_delay")


def _seconds(name: str, value: float | timedelta) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise InvalidDeclaration(
            f"RetryPolicy: field {name!r}: expected seconds >= 0 or a timedelta, got {value!r}"
        )
    return float(seconds)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How a sidecar's failed runs are retried.

    The delay before attempt ``n + 1`` is drawn from ``[0, min(max_delay, base_delay *
    factor ** (n - 1))]`` ("full jitter"), so jobs that failed together do not come back
    together; with ``jitter=False`` it is the upper end exactly.

    Attributes:
        max_attempts: runs in all, the first included (1 means never retry).
        base_delay: seconds (or a timedelta) before the first retry, at most.
        factor: how much the ceiling grows with each attempt.
        max_delay: the largest delay.
        jitter: draw the delay at random below the ceiling (default True).
        retry_on: only these exception types are retried (timeouts always count as
            failures and are retried); anything else fails the job at once.
        dont_retry_on: exception types that fail the job at once, even if they match
            ``retry_on``.

    Example:
        >>> RetryPolicy(max_attempts=8, base_delay=2, max_delay=3600, retry_on=(OSError,))
    """

    max_attempts: int = 5
    base_delay: float | timedelta = 1.0
    factor: float = 2.0
    max_delay: float | timedelta = 600.0
    jitter: bool = True
    retry_on: Sequence[type[BaseException]] = field(default=(Exception,))
    dont_retry_on: Sequence[type[BaseException]] = field(default=())

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise InvalidDeclaration(
                f"RetryPolicy: field 'max_attempts': expected an integer >= 1, "
                f"got {self.max_attempts!r}"
            )
        object.__setattr__(self, "base_delay", _seconds("base_delay", self.base_delay))
        object.__setattr__(self, "max_delay", _seconds("max_delay", self.max_delay))
        if (
            isinstance(self.factor, bool)
            or not isinstance(self.factor, (int, float))
            or not (self.factor >= 1)
        ):
            raise InvalidDeclaration(
                f"RetryPolicy: field 'factor': expected a number >= 1, got {self.factor!r}"
            )
        for name in ("retry_on", "dont_retry_on"):
            value = getattr(self, name)
            types = (value,) if isinstance(value, type) else tuple(value)
            for t in types:
                if not (isinstance(t, type) and issubclass(t, BaseException)):
                    raise InvalidDeclaration(
                        f"RetryPolicy: field {name!r}: expected exception types, got {t!r}"
                    )
            object.__setattr__(self, name, types)

    def retries(self, error: BaseException | None) -> bool:
        """Whether a run that failed with ``error`` (None for a timeout) may be retried."""
        if error is None:
            return True
        if isinstance(error, tuple(self.dont_retry_on)):
            return False
        return isinstance(error, tuple(self.retry_on))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next."""
        base = float(self.base_delay)  # type: ignore[arg-type]
        cap = float(self.max_delay)  # type: ignore[arg-type]
        ceiling = min(cap, base * self.factor ** max(0, attempt - 1))
        if not self.jitter:
            return ceiling
        return (rng or random).uniform(0, ceiling)


def backoff_delay(
    attempt: int,
    *,
    base: float = 1.0,
    cap: float = 600.0,
    rng: random.Random | None = None,
) -> float:
    """The default policy's delay (1 s doubling, capped at 10 minutes, full jitter)."""
    return RetryPolicy(base_delay=base, max_delay=cap).delay(attempt, rng)
