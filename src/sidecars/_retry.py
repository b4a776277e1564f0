"""Retry timing (pure): exponential backoff with full jitter."""

from __future__ import annotations

import random

__all__ = ("backoff_delay",)

# DESIGN's default for DEFERRED jobs: 1 s doubling, capped at 10 minutes, full jitter.
BASE_DELAY = 1.0
MAX_DELAY = 600.0


def backoff_delay(
    attempt: int,
    *,
    base: float = BASE_DELAY,
    cap: float = MAX_DELAY,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before the attempt after ``attempt`` (1-based).

    Full jitter: a uniform draw in ``[0, min(cap, base * 2**(attempt-1))]``, so many jobs
    failing together do not come back together.
    """
    ceiling = min(cap, base * 2.0 ** max(0, attempt - 1))
    return (rng or random).uniform(0, ceiling)
