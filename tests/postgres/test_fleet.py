"""Many real runner processes on one PostgreSQL database: cluster-wide fires once per
instant, scheduled DEFERRED jobs at their first fire, and 10,000 jobs surviving a kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import anyio
import asyncpg
import pytest

from sidecars import Schedule

from ..procs.pg_worker import CRON

WORKER = Path(__file__).parent.parent / "procs" / "pg_worker.py"

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


class Fleet:
    """Worker processes of one test, sharing a log folder, a DSN and a schema."""

    def __init__(self, folder: Path, dsn: str, schema: str) -> None:
        self.folder = folder
        self.dsn = dsn
        self.schema = schema
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, mode: str, name: str, *options: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "SIDECARS_CONSUME"}
        env["SIDECARS_TEST_PG_DSN"] = self.dsn
        env["SIDECARS_TEST_PG_SCHEMA"] = self.schema
        with (
            open(self.folder / f"{name}.out", "wb") as out,
            open(self.folder / f"{name}.err", "wb") as err,
        ):
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), mode, "--dir", str(self.folder), "--name", name,
                 *options],
                env=env,
                stdout=out,
                stderr=err,
            )  # fmt: skip
        self.procs[name] = proc
        return proc

    async def ready(self, *names: str, limit: float = 30) -> None:
        with anyio.fail_after(limit):
            while not all((self.folder / f"{n}.ready").exists() for n in names):
                for name in names:
                    code = self.procs[name].poll()
                    assert code is None, f"{name} exited with {code}: {self.errors(name)}"
                await anyio.sleep(0.05)

    async def wait(self, name: str, limit: float = 30) -> int:
        proc = self.procs[name]
        with anyio.fail_after(limit):
            while proc.poll() is None:
                await anyio.sleep(0.05)
        return proc.returncode

    def errors(self, name: str) -> str:
        return (self.folder / f"{name}.err").read_text()

    def lines(self, *names: str) -> Iterator[list[str]]:
        """The log lines of these processes, split into fields."""
        for name in names:
            path = self.folder / f"{name}.log"
            if path.exists():
                for line in path.read_text().splitlines():
                    yield line.split()

    def records(self, kind: str, *names: str) -> Iterator[list[str]]:
        """The fields after ``kind`` of the lines of that kind."""
        for fields in self.lines(*names):
            if fields[0] == kind:
                yield fields[1:]

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def fleet(tmp_path: Path, pg_server: str, pg_schema: str) -> Iterator[Fleet]:
    """Worker processes on this test's schema, killed if a test leaves them running."""
    made = Fleet(tmp_path, pg_server, pg_schema)
    try:
        yield made
    finally:
        made.kill_all()


async def fetch(fleet: Fleet, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(fleet.dsn)
    try:
        return list(await conn.fetch(sql.replace("{s}", f'"{fleet.schema}"')))
    finally:
        await conn.close()


def first_fire_after(schedule: Schedule, ts: float) -> float:
    fire = schedule.next_after(datetime.fromtimestamp(ts, timezone.utc))
    assert fire is not None
    return fire.timestamp()


async def test_four_runners_fire_once_and_run_scheduled_jobs_at_their_fire(
    fleet: Fleet,
) -> None:
    """Four runners for over 30 s: each one-second cluster-wide instant runs once while all
    four are up (per-replica fires show who was up), and every job a fifth, enqueue-only
    process sends to a ``*/3`` seconds cron runs once, at the first fire after its enqueue,
    never before it."""
    workers = [f"w{i}" for i in range(4)]
    for name in workers:
        fleet.start("fleet", name, "--lease", "2")
    await fleet.ready(*workers)
    fleet.start("cron-enqueuer", "enq", "--every", "0.3")
    await fleet.ready("enq")
    await anyio.sleep(28)
    (fleet.folder / "stop-enqueue").touch()
    assert await fleet.wait("enq") == 0, fleet.errors("enq")
    await anyio.sleep(4.5)  # the last jobs' fire is at most 3 s after their enqueue
    (fleet.folder / "stop").touch()
    for name in workers:
        assert await fleet.wait(name) == 0, fleet.errors(name)
        assert "Traceback" not in fleet.errors(name), fleet.errors(name)

    pids = {fleet.procs[n].pid for n in workers}
    replica = [(int(i), int(p)) for i, p in fleet.records("replica", *workers)]
    assert {p for _, p in replica} == pids
    first = max(min(i for i, p in replica if p == pid) for pid in pids)
    last = min(max(i for i, p in replica if p == pid) for pid in pids)
    window = range(first, last + 1)
    assert len(window) >= 30, (first, last)  # all four were up for 30 s or more
    per_replica = Counter(replica)
    for instant in window:
        for pid in pids:
            assert per_replica[(instant, pid)] == 1, (instant, pid)

    ticks = [(int(i), int(a), int(p)) for i, a, p in fleet.records("tick", *workers)]
    counts = Counter(i for i, _, _ in ticks)
    for instant in window:
        assert counts[instant] == 1, (instant, [t for t in ticks if t[0] == instant])
    assert len({p for i, _, p in ticks if i in window}) >= 2  # the fires really are shared
    rows = await fetch(
        fleet,
        "SELECT fire_at, state, attempts FROM {s}.fires WHERE handle = 'tick'",
    )
    by_instant = {r["fire_at"]: (r["state"], r["attempts"]) for r in rows}
    for instant in window:
        assert by_instant[instant] == ("succeeded", 1), instant

    schedule = Schedule.cron(CRON)
    sent = {job_id: (float(b), float(a)) for job_id, b, a in fleet.records("enq", "enq")}
    assert len(sent) >= 80, len(sent)  # ~0.3 s apart for 28 s
    runs: dict[str, list[tuple[float, float, int, int]]] = defaultdict(list)
    for job_id, scheduled, started, attempt, pid in fleet.records("cron", *workers):
        runs[job_id].append((float(scheduled), float(started), int(attempt), int(pid)))
    assert set(runs) == set(sent)
    for job_id, (before, after) in sent.items():
        ((scheduled, started, attempt, _),) = runs[job_id]  # ran exactly once
        assert attempt == 1
        # Due at the first fire after the enqueue (the enqueue stamps it with its own
        # clock reading, taken between these two wall times)...
        assert scheduled in {first_fire_after(schedule, before), first_fire_after(schedule, after)}
        assert scheduled > before
        # ...and started at that fire: never before it, and not a later one.
        assert scheduled <= started < scheduled + 1.0, (job_id, scheduled, started)
    assert len({pid for r in runs.values() for *_, pid in r}) >= 2
    rows = await fetch(
        fleet, "SELECT id::text, state, attempts FROM {s}.jobs WHERE handle = 'cron_job'"
    )
    expected = dict.fromkeys(sent, ("succeeded", 1))
    assert {r["id"]: (r["state"], r["attempts"]) for r in rows} == expected
    # Only the four runners ran anything: the enqueue-only process ran nothing.
    ran_in = {p for _, _, p in ticks} | {pid for r in runs.values() for *_, pid in r}
    assert ran_in <= pids, (ran_in, fleet.procs["enq"].pid)


async def test_ten_thousand_jobs_survive_a_killed_runner(fleet: Fleet) -> None:
    """10,000 jobs across four runners, one of them killed with SIGKILL mid-run: every job
    ends succeeded with one fenced completion; a handler ran twice only for a job the
    killed process held, the re-run being attempt 2 in a survivor after its lease expired."""
    total = 10_000
    fleet.start("enqueue", "enqueue", "--count", str(total), "--sleep", "0.02")
    assert await fleet.wait("enqueue") == 0, fleet.errors("enqueue")
    workers = [f"w{i}" for i in range(4)]
    for name in workers:
        fleet.start("drain", name, "--lease", "2", "--concurrency", "8")
    await fleet.ready(*workers)

    victim = fleet.procs["w0"]
    # Kill it after some work, at a moment its log shows runs in progress.
    with anyio.fail_after(30):
        while True:
            kinds = Counter(line[0] for line in fleet.lines("w0"))
            if kinds["end"] >= 300 and kinds["start"] > kinds["end"]:
                break
            await anyio.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    killed_at = time.time()
    assert await fleet.wait("w0") == -signal.SIGKILL

    with anyio.fail_after(60):
        while True:
            (row,) = await fetch(
                fleet, "SELECT count(*) AS n FROM {s}.jobs WHERE state <> 'succeeded'"
            )
            if row["n"] == 0:
                break
            await anyio.sleep(0.2)
    (fleet.folder / "stop").touch()
    for name in workers[1:]:
        assert await fleet.wait(name) == 0, fleet.errors(name)
        assert "Traceback" not in fleet.errors(name), fleet.errors(name)

    rows = await fetch(
        fleet, "SELECT id::text, state, outcome, attempts, token, started_at FROM {s}.jobs"
    )
    assert len(rows) == total
    assert {(r["state"], r["outcome"], r["token"]) for r in rows} == {("succeeded", "ok", None)}
    attempts = {r["id"]: r["attempts"] for r in rows}
    claimed_at = {r["id"]: r["started_at"] for r in rows}

    dead = victim.pid
    runs: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for kind, job_id, attempt, pid in fleet.lines(*workers):
        runs[job_id].append((kind, int(attempt), int(pid)))
    assert set(runs) == set(attempts)  # every job ran
    reclaimed = 0
    for job_id, events in runs.items():
        starts = [(a, p) for kind, a, p in events if kind == "start"]
        ends = [(a, p) for kind, a, p in events if kind == "end"]
        final = starts[-1]
        assert ends[-1:] == [final], (job_id, events)  # the last run ended
        assert attempts[job_id] == final[0], (job_id, events)
        if len(starts) == 1 and final[0] == 1:
            assert ends == [final], (job_id, events)  # one run, one end
            continue
        # Anything else is a job the killed process held: claimed (attempt 1) and maybe
        # started and even ended there, never stored; re-claimed elsewhere as attempt 2.
        assert final[1] != dead, (job_id, events)
        reclaimed += 1
        assert final[0] == 2, (job_id, events)
        # Claimed again only once the lease (2 s, renewed every 0.5 s) had expired.
        assert claimed_at[job_id] >= killed_at + 1.0, (job_id, claimed_at[job_id] - killed_at)
        assert all(p == dead for _, p in starts[:-1]), (job_id, events)
        assert all(p == dead for _, p in ends[:-1]), (job_id, events)
        if len(starts) == 2:
            assert starts[0] == (1, dead), (job_id, events)
    assert reclaimed >= 1
    in_flight = [
        job_id
        for job_id, events in runs.items()
        if ("start", 1, dead) in events and ("end", 1, dead) not in events
    ]
    assert in_flight, "the killed process had no job mid-run"
    by_pid = Counter(events[-1][2] for events in runs.values())
    assert len(by_pid.keys() - {dead}) == 3, by_pid  # the three survivors all took part
