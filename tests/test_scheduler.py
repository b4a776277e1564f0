"""STANDALONE and scheduled DEFERRED sidecars under the controllable clock: fire counts,
DST, overlap, misfires, per-replica fires and shutdown."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import pytest
from pydantic import BaseModel

from sidecars import (
    At,
    FakeClock,
    InvalidDeclaration,
    JobContext,
    JobState,
    RunType,
    Schedule,
    Sidecars,
)
from sidecars._scheduler import fire_job_id
from sidecars.stores import MemoryStore, SQLiteStore, Store

pytestmark = pytest.mark.anyio

UTC = timezone.utc
DENVER = ZoneInfo("America/Denver")


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A fresh store of each kind."""
    made: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "s.db")
    yield made
    await made.close()


def every(**kwargs: float) -> Schedule:
    return Schedule(every=timedelta(**kwargs))


def ticker(
    store: Store, clock: FakeClock, schedule: Schedule, **options: object
) -> tuple[Sidecars, list[datetime]]:
    """A Sidecars with one STANDALONE sidecar recording each fire instant it runs."""
    sc = Sidecars(store, clock=clock, lease=5, lease_renew=1, poll_interval=0.05, grace=1)
    fired: list[datetime] = []

    @sc.sidecar(handle="tick", run_type=RunType.STANDALONE, schedule=schedule, **options)  # type: ignore[arg-type]
    async def tick(job: JobContext[None]) -> None:
        fired.append(job.scheduled_at)

    return sc, fired


async def test_five_minute_cadence_fires_288_times_a_day(store: Store) -> None:
    """A five-minute cadence fires 288 times in a simulated day, each at its instant."""
    start = datetime(2030, 3, 1, tzinfo=UTC)
    clock = FakeClock(start - timedelta(seconds=1))
    sc, fired = ticker(store, clock, every(minutes=5))
    async with sc.run():
        await clock.advance_to(start + timedelta(days=1) - timedelta(seconds=1))
    assert len(fired) == 288
    assert fired == [start + timedelta(minutes=5 * i) for i in range(288)]
    stats = (await sc.stats()).handles["tick"]
    assert (stats.succeeded, stats.skipped) == (288, 0)


async def test_fire_context_carries_the_fire_instant(store: Store) -> None:
    """scheduled_at is the fire instant and the job id is derived from (handle, instant)."""
    clock = FakeClock(datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC))
    sc = Sidecars(store, clock=clock, lease=5, lease_renew=1, poll_interval=0.05)
    seen: list[JobContext[None]] = []

    @sc.sidecar(handle="minutely", run_type=RunType.STANDALONE, schedule=Schedule.cron("* * * * *"))
    async def minutely(job: JobContext[None]) -> None:
        seen.append(job)

    async with sc.run():
        await clock.advance(timedelta(seconds=45))
    (ctx,) = seen
    fire = datetime(2030, 1, 1, 0, 1, tzinfo=UTC)
    assert ctx.scheduled_at == fire
    assert ctx.job_id == fire_job_id("minutely", int(fire.timestamp()))
    assert ctx.attempt == 1
    assert ctx.payload is None


async def test_monthly_denver_deferred_schedule_releases_each_months_jobs(store: Store) -> None:
    """Jobs of a monthly 03:00 America/Denver DEFERRED schedule become due exactly at each
    fire, over a year spanning both DST changes."""
    schedule = Schedule(on_day_of_month=1, timezone="America/Denver", at=[At(3, 0)])
    clock = FakeClock(datetime(2030, 1, 10, tzinfo=UTC))
    sc = Sidecars(store, clock=clock, lease=5, lease_renew=1, poll_interval=0.05)
    ran: list[tuple[int, datetime, datetime]] = []

    class Pamphlet(BaseModel):
        n: int

    # A model defined in the test: its annotation cannot be resolved, hence payload=.
    @sc.sidecar(
        handle="pamphlet",
        run_type=RunType.DEFERRED,
        schedule=schedule,
        concurrency=4,
        payload=Pamphlet,
    )
    async def pamphlet(job: JobContext[Pamphlet]) -> None:
        ran.append((job.payload.n, job.scheduled_at, clock.now()))

    expected: dict[int, datetime] = {}
    async with sc.run():
        n = 0
        for month in range(2, 14):  # queued during Jan..Dec, released Feb 1 .. Jan 1
            year, mon = (2030, month) if month <= 12 else (2031, 1)
            fire = datetime(year, mon, 1, 3, 0, tzinfo=DENVER)
            for day in (5, 20):  # two enqueues during the month before the fire
                prev = fire - timedelta(days=40 - day)
                if clock.now() < prev:
                    await clock.advance_to(prev)
                ref = await pamphlet.enqueue(Pamphlet(n=n))
                info = await sc.get_job(ref.id)
                assert info is not None
                assert info.run_at == fire.astimezone(UTC)
                expected[n] = fire
                n += 1
            await clock.advance_to(fire - timedelta(seconds=1))
            assert {r[0] for r in ran} == {k for k, v in expected.items() if v < fire}
            await clock.advance_to(fire + timedelta(minutes=1))
    assert len(ran) == len(expected) == 24
    for n, scheduled, at in ran:
        assert scheduled.timestamp() == expected[n].timestamp()
        assert at.timestamp() == expected[n].timestamp()  # claimed exactly when due
    # Both DST offsets occur among the fires: -07:00 (MST) and -06:00 (MDT).
    assert {v.utcoffset() for v in expected.values()} == {timedelta(hours=-7), timedelta(hours=-6)}


async def test_explicit_run_at_wins_over_the_schedule(store: Store) -> None:
    """run_at on a scheduled DEFERRED sidecar overrides the next fire."""
    clock = FakeClock(datetime(2030, 1, 10, tzinfo=UTC))
    sc = Sidecars(store, clock=clock)

    @sc.sidecar(handle="monthly", run_type=RunType.DEFERRED, schedule=Schedule.cron("0 3 1 * *"))
    async def monthly(job: JobContext[None]) -> None: ...

    when = datetime(2030, 1, 11, tzinfo=UTC)
    ref = await monthly.enqueue(None, run_at=when)
    info = await sc.get_job(ref.id)
    assert info is not None
    assert info.run_at == when
    await sc.aclose()


async def test_handler_outlasting_its_period_skips_overlapping_fires(
    store: Store, tmp_path: Path
) -> None:
    """A one-minute schedule whose run lasts 150 s skips the fires that would overlap, and
    records each skip."""
    start = datetime(2030, 1, 1, tzinfo=UTC)
    clock = FakeClock(start - timedelta(seconds=1))
    sc = Sidecars(store, clock=clock, lease=30, lease_renew=10, poll_interval=0.05, grace=0.1)
    fired: list[datetime] = []

    @sc.sidecar(handle="slow", run_type=RunType.STANDALONE, schedule=every(minutes=1))
    async def slow(job: JobContext[None]) -> None:
        fired.append(job.scheduled_at)
        await clock.sleep_until(job.scheduled_at.timestamp() + 150)

    async with sc.run():
        await clock.advance_to(start + timedelta(minutes=6, seconds=30))
    # Runs at 0, 3 and 6 min; 1, 2, 4 and 5 min overlap a running fire.
    assert fired == [start + timedelta(minutes=m) for m in (0, 3, 6)]
    assert (await sc.stats()).handles["slow"].skipped == 4
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as conn:
            rows = conn.execute(
                "SELECT fire_at, state FROM sidecars_fires WHERE handle = 'slow' ORDER BY fire_at"
            ).fetchall()
        states = {int(fire_at - start.timestamp()) // 60: state for fire_at, state in rows}
        assert [states[m] for m in (1, 2, 4, 5)] == ["skipped"] * 4
        assert states[0] == states[3] == "succeeded"


async def test_overlap_allow_runs_concurrently(store: Store) -> None:
    """overlap='allow' lets fires overlap up to concurrency."""
    start = datetime(2030, 1, 1, tzinfo=UTC)
    clock = FakeClock(start - timedelta(seconds=1))
    sc = Sidecars(store, clock=clock, lease=30, lease_renew=10, poll_interval=0.05, grace=0.1)
    fired: list[datetime] = []

    @sc.sidecar(
        handle="slow",
        run_type=RunType.STANDALONE,
        schedule=every(minutes=1),
        overlap="allow",
        concurrency=2,
    )
    async def slow(job: JobContext[None]) -> None:
        fired.append(job.scheduled_at)
        await clock.sleep_until(job.scheduled_at.timestamp() + 150)

    async with sc.run():
        await clock.advance_to(start + timedelta(minutes=4, seconds=30))
    # Two may run at once: 0 and 1 run, 2 is over the limit, 3 runs (0 ended at 2:30), ...
    assert fired == [start + timedelta(minutes=m) for m in (0, 1, 3, 4)]


async def run_until(store: Store, at: datetime, **options: object) -> list[datetime]:
    """Run a one-minute ticker from 30 s before ``at`` until ``at`` + 10 s."""
    clock = FakeClock(at - timedelta(seconds=30))
    sc, fired = ticker(store, clock, every(minutes=1), **options)
    async with sc.run():
        await clock.advance_to(at + timedelta(seconds=10))
    return fired


class TestMisfires:
    """A one-minute STANDALONE whose last fire was at T, restarted at T + 30 min 30 s."""

    T = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)

    async def restart(self, store: Store, **options: object) -> list[datetime]:
        assert await run_until(store, self.T, **options) == [self.T]
        clock = FakeClock(self.T + timedelta(minutes=30, seconds=30))
        sc, fired = ticker(store, clock, every(minutes=1), **options)
        async with sc.run():
            await clock.advance(timedelta(seconds=20))  # replays finish; T+31 not yet due
        return fired

    async def test_all_replays_every_missed_fire_oldest_first(self, store: Store) -> None:
        """misfire='all' runs the 30 missed fires, oldest first, each with its own instant."""
        fired = await self.restart(store, misfire="all")
        assert fired == [self.T + timedelta(minutes=m) for m in range(1, 31)]

    async def test_latest_runs_only_the_newest_missed_fire(self, store: Store) -> None:
        """misfire='latest' (the default) runs one fire: the newest missed (T+30)."""
        fired = await self.restart(store)
        assert fired == [self.T + timedelta(minutes=30)]

    async def test_skip_runs_none(self, store: Store) -> None:
        """misfire='skip' runs no missed fire."""
        assert await self.restart(store, misfire="skip") == []

    async def test_nothing_older_than_misfire_grace_is_replayed(self, store: Store) -> None:
        """Fires older than misfire_grace (10 min here) are not replayed."""
        fired = await self.restart(store, misfire="all", misfire_grace=timedelta(minutes=10))
        assert fired == [self.T + timedelta(minutes=m) for m in range(21, 31)]

    async def test_all_stops_at_its_cap(self, store: Store) -> None:
        """misfire='all' replays at most misfire_cap fires (oldest first)."""
        fired = await self.restart(store, misfire="all", misfire_cap=5)
        assert fired == [self.T + timedelta(minutes=m) for m in range(1, 6)]

    async def test_next_fire_after_replay_is_on_time(self, store: Store) -> None:
        """After the replays, the next instant fires normally."""
        await run_until(store, self.T, misfire="all")
        clock = FakeClock(self.T + timedelta(minutes=30, seconds=30))
        sc, fired = ticker(store, clock, every(minutes=1), misfire="all")
        async with sc.run():
            await clock.advance(timedelta(minutes=1))
        assert fired[-1] == self.T + timedelta(minutes=31)
        assert len(fired) == 31

    async def test_fire_noticed_within_tolerance_is_on_time(self, store: Store) -> None:
        """A fire noticed 0.8 s late (tolerance 1 s) runs even under misfire='skip'."""
        assert await run_until(store, self.T, misfire="skip") == [self.T]
        clock = FakeClock(self.T + timedelta(minutes=1, seconds=0.8))
        sc, fired = ticker(store, clock, every(minutes=1), misfire="skip")
        async with sc.run():
            await clock.advance(timedelta(seconds=1))
        assert fired == [self.T + timedelta(minutes=1)]

    async def test_restart_after_a_completed_fire_does_not_repeat_it(self, store: Store) -> None:
        """A restart in the same minute as a completed fire does not fire it again."""
        assert await run_until(store, self.T) == [self.T]
        clock = FakeClock(self.T + timedelta(seconds=20))
        sc, fired = ticker(store, clock, every(minutes=1))
        async with sc.run():
            await clock.advance(timedelta(seconds=30))
        assert fired == []


async def test_cluster_wide_fires_once_and_per_replica_on_each(store: Store) -> None:
    """Two runners on one store: a cluster-wide fire runs once, a per-replica fire on each."""
    start = datetime(2030, 1, 1, tzinfo=UTC)
    clock = FakeClock(start - timedelta(seconds=1))
    runs: list[tuple[str, str, datetime]] = []
    instances = []
    for name in ("a", "b"):
        sc = Sidecars(store, clock=clock, lease=5, lease_renew=1, poll_interval=0.05)

        @sc.sidecar(handle="cluster", run_type=RunType.STANDALONE, schedule=every(seconds=10))
        async def cluster(job: JobContext[None], name: str = name) -> None:
            runs.append(("cluster", name, job.scheduled_at))

        @sc.sidecar(
            handle="replica",
            run_type=RunType.STANDALONE,
            schedule=every(seconds=10),
            per_replica=True,
        )
        async def replica(job: JobContext[None], name: str = name) -> None:
            runs.append(("replica", name, job.scheduled_at))

        instances.append(sc)
    async with instances[0].run(), instances[1].run():
        await clock.advance(timedelta(seconds=60))
    instants = [start + timedelta(seconds=10 * i) for i in range(6)]
    cluster_runs = sorted(at for kind, _, at in runs if kind == "cluster")
    assert cluster_runs == instants
    for name in ("a", "b"):
        assert sorted(at for kind, n, at in runs if kind == "replica" and n == name) == instants


async def test_fire_cancelled_by_shutdown_fires_normally_after_restart(store: Store) -> None:
    """A fire cancelled by shutdown is given back; after a restart the next instant fires."""
    start = datetime(2030, 1, 1, tzinfo=UTC)
    clock = FakeClock(start - timedelta(seconds=1))
    sc = Sidecars(store, clock=clock, lease=30, lease_renew=10, poll_interval=0.05, grace=0.1)
    fired: list[datetime] = []
    started = anyio.Event()

    @sc.sidecar(handle="long", run_type=RunType.STANDALONE, schedule=every(minutes=1))
    async def long(job: JobContext[None]) -> None:
        fired.append(job.scheduled_at)
        started.set()
        if len(fired) == 1:
            await anyio.sleep_forever()

    async with sc.run():
        clock.set(start)
        with anyio.fail_after(5):
            await started.wait()
    assert (await sc.stats()).handles["long"].dropped == 1
    clock.set(start + timedelta(seconds=50))
    async with sc.run():
        await clock.advance(timedelta(seconds=15))
    # The released fire at `start` is the latest missed one, replayed; then 1 min fires.
    assert fired[-1] == start + timedelta(minutes=1)


async def test_many_scheduled_handles_start_at_once(tmp_path: Path) -> None:
    """A runner with 200 scheduled handles is ready at once, and each fires on time."""
    store = SQLiteStore(tmp_path / "many.db")
    start = datetime(2030, 1, 1, tzinfo=UTC)
    clock = FakeClock(start - timedelta(seconds=5))
    sc = Sidecars(store, clock=clock, lease=5, lease_renew=1, poll_interval=0.05)
    fired: list[str] = []
    for i in range(200):

        @sc.sidecar(handle=f"h{i}", run_type=RunType.STANDALONE, schedule=every(minutes=1))
        async def handler(job: JobContext[None]) -> None:
            fired.append(job.handle)

    with anyio.fail_after(2):
        async with sc.run():
            assert sc.is_running
            await clock.advance(timedelta(seconds=10))
    assert sorted(fired) == sorted(f"h{i}" for i in range(200))
    await store.close()


async def test_fire_rows_are_pruned_after_retention(tmp_path: Path) -> None:
    """Fire rows older than fire_retention are deleted by the scheduler."""
    store = SQLiteStore(tmp_path / "prune.db")
    start = datetime(2030, 1, 1, tzinfo=UTC)
    clock = FakeClock(start - timedelta(seconds=1))
    sc = Sidecars(
        store,
        clock=clock,
        lease=5,
        lease_renew=1,
        poll_interval=0.05,
        fire_retention=timedelta(hours=2),
    )

    @sc.sidecar(
        handle="hourly",
        run_type=RunType.STANDALONE,
        schedule=every(hours=1),
        misfire_grace=timedelta(minutes=30),
    )
    async def hourly(job: JobContext[None]) -> None: ...

    async with sc.run():
        await clock.advance(timedelta(hours=5, minutes=1))
    with sqlite3.connect(store.path) as conn:
        kept = [r[0] for r in conn.execute("SELECT fire_at FROM sidecars_fires ORDER BY fire_at")]
    # Pruned at the hourly check (at 4:00 the rows before 2:00 went); the newest remain.
    assert kept[0] >= (start + timedelta(hours=2)).timestamp()
    assert kept[-1] == (start + timedelta(hours=5)).timestamp()
    await store.close()


def test_retention_below_grace_plus_lease_is_refused() -> None:
    """A fire retention shorter than misfire_grace + lease is refused at declaration."""
    sc = Sidecars(MemoryStore(), fire_retention=600, lease=30, lease_renew=10)
    with pytest.raises(InvalidDeclaration, match=r"'t'.*misfire_grace.*630"):

        @sc.sidecar(handle="t", run_type=RunType.STANDALONE, schedule=every(minutes=1))
        async def t(job: JobContext[None]) -> None: ...


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"run_type": RunType.DEFERRED, "misfire": "all"}, "misfire"),
        ({"run_type": RunType.DEFERRED, "per_replica": True}, "per_replica"),
        ({"run_type": RunType.STANDALONE, "misfire": "sometimes"}, "misfire"),
        ({"run_type": RunType.STANDALONE, "overlap": "queue"}, "overlap"),
        ({"run_type": RunType.STANDALONE, "misfire_cap": 0}, "misfire_cap"),
        ({"run_type": RunType.STANDALONE, "misfire_grace": -1}, "misfire_grace"),
        ({"run_type": RunType.STANDALONE, "per_replica": "yes"}, "per_replica"),
    ],
)
def test_fire_options_are_checked(kwargs: dict[str, object], field: str) -> None:
    """Fire options are validated at declaration and belong to STANDALONE only."""
    sc = Sidecars(MemoryStore())

    async def handler(job: JobContext[None]) -> None: ...

    with pytest.raises(InvalidDeclaration, match=f"'h': field '{field}'"):
        sc.sidecar(handle="h", schedule=every(minutes=1), **kwargs)(handler)  # type: ignore[arg-type]


async def test_dst_gap_fire_runs_once_at_the_first_instant_after(store: Store) -> None:
    """A daily 02:30 Denver fire on the spring-forward day runs once, at 03:00 MDT."""
    schedule = Schedule.cron("30 2 * * *", timezone="America/Denver")
    start = datetime(2030, 3, 9, 12, tzinfo=DENVER)
    clock = FakeClock(start)
    sc, fired = ticker(store, clock, schedule)
    async with sc.run():
        await clock.advance(timedelta(days=2))
    assert [f.astimezone(DENVER).isoformat() for f in fired] == [
        "2030-03-10T03:00:00-06:00",
        "2030-03-11T02:30:00-06:00",
    ]


def test_job_state_enum_is_shared() -> None:
    """Fire runs and jobs report the same states."""
    assert JobState.SUCCEEDED.finished


class StuckTrigger:
    """A faulty custom trigger whose next fire never moves forward."""

    def __init__(self) -> None:
        self.calls = 0

    def next_after(self, dt: datetime, /) -> datetime | None:
        self.calls += 1
        # Right at declaration it behaves; afterwards it gets stuck.
        return dt + timedelta(seconds=1) if self.calls == 1 else dt

    def previous_before(self, dt: datetime, /) -> datetime | None:
        return dt - timedelta(seconds=1)


async def test_a_stuck_custom_trigger_stops_its_sidecar_not_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A trigger that does not move forward stops its own sidecar with an error; the event
    loop and the other sidecars keep running."""
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    sc = Sidecars(MemoryStore(), clock=clock, lease=5, lease_renew=1, poll_interval=0.05)
    fired: list[str] = []

    @sc.sidecar(handle="stuck", run_type=RunType.STANDALONE, schedule=StuckTrigger())
    async def stuck(job: JobContext[None]) -> None:
        fired.append("stuck")

    @sc.sidecar(handle="fine", run_type=RunType.STANDALONE, schedule=every(seconds=10))
    async def fine(job: JobContext[None]) -> None:
        fired.append("fine")

    with anyio.fail_after(10):
        async with sc.run():
            await clock.advance(timedelta(seconds=35))
    assert fired.count("fine") == 4  # 00:00, :10, :20 and :30
    assert "stuck" not in fired
    assert any(
        "'stuck'" in r.getMessage() and "not later" in r.getMessage() for r in caplog.records
    )


def test_a_trigger_that_fails_at_once_is_refused_at_declaration() -> None:
    """A trigger whose first answer is not later, or naive, is refused at declaration."""

    class Naive:
        def next_after(self, dt: datetime, /) -> datetime | None:
            return datetime(2099, 1, 1)

        def previous_before(self, dt: datetime, /) -> datetime | None:
            return None

    class Backwards(Naive):
        def next_after(self, dt: datetime, /) -> datetime | None:
            return dt - timedelta(days=1)

    sc = Sidecars(MemoryStore())
    for trigger, fragment in ((Naive(), "aware datetime"), (Backwards(), "not later")):
        with pytest.raises(InvalidDeclaration, match=fragment):

            @sc.sidecar(handle="t", run_type=RunType.STANDALONE, schedule=trigger)
            async def t(job: JobContext[None]) -> None: ...
