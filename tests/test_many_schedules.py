"""A hundred scheduled sidecars with mixed schedules, advanced through a whole day."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from sidecars import At, JobContext, RunType, Schedule, Sidecars
from sidecars.testing import SidecarsHarness

pytestmark = pytest.mark.anyio

ZONES = ["UTC", "America/Denver", "Europe/London", "Asia/Kathmandu", "Australia/Lord_Howe"]


def schedules() -> list[Schedule]:
    made: list[Schedule] = []
    for i in range(100):
        zone = ZONES[i % len(ZONES)]
        kind = i % 5
        if kind == 0:
            made.append(Schedule.cron("* * * * *", timezone=zone))  # minutely
        elif kind == 1:
            made.append(Schedule.cron(f"{i % 60} * * * *", timezone=zone))  # hourly
        elif kind == 2:
            made.append(Schedule(at=[At(i % 24, (7 * i) % 60)], timezone=zone))  # daily fixed
        elif kind == 3:
            made.append(Schedule.cron("30 23 L * *", timezone=zone))  # monthly, last day
        else:
            made.append(Schedule(every=timedelta(minutes=5 + i % 11)))  # cadences
    return made


async def test_hundred_schedules_fire_exactly_once_each_over_a_day() -> None:
    """Every expected fire of 100 mixed schedules happens exactly once in a simulated day
    (the 31st of a month, so the monthly `L` schedules fire too); none is starved."""
    start = datetime(2030, 1, 31, tzinfo=timezone.utc)
    end = start + timedelta(days=1)
    harness = SidecarsHarness(start=start - timedelta(seconds=1))
    sc = Sidecars()
    fired: Counter[tuple[str, int]] = Counter()
    expected: Counter[tuple[str, int]] = Counter()
    for i, schedule in enumerate(schedules()):
        handle = f"s{i:03d}"

        @sc.sidecar(handle=handle, run_type=RunType.STANDALONE, schedule=schedule)
        async def handler(job: JobContext[None]) -> None:
            fired[(job.handle, int(job.scheduled_at.timestamp()))] += 1

        for fire in schedule.fires(after=start - timedelta(seconds=1)):
            if fire >= end:
                break
            expected[(handle, int(fire.timestamp()))] += 1

    async with harness.run(sc):
        await harness.advance_to(end - timedelta(seconds=1))
    assert sum(expected.values()) > 5_000
    missing = expected - fired
    extra = fired - expected
    assert not missing, sorted(missing)[:5]
    assert not extra, sorted(extra)[:5]
    assert set(fired.values()) == {1}
    per_handle = Counter(handle for handle, _ in fired)
    assert len(per_handle) == 100  # every sidecar fired at least once
