"""Real processes on PostgreSQL killed at every crash point (``SIDECARS_CRASH_POINT``): the
work they held is re-run once elsewhere after its lease expires, and nothing completes twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

PROCS = Path(__file__).parent.parent / "procs"

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

JOBS = 200
LEASE = 1.0


class Procs:
    """Worker processes of one test, sharing a folder, a DSN and a schema."""

    def __init__(self, folder: Path, dsn: str, schema: str) -> None:
        self.folder = folder
        self.dsn = dsn
        self.schema = schema
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, script: str, name: str, *options: str, crash: str | None = None
    ) -> subprocess.Popen[bytes]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("SIDECARS_CONSUME", "SIDECARS_CRASH_POINT")
        }
        env["SIDECARS_TEST_PG_DSN"] = self.dsn
        env["SIDECARS_TEST_PG_SCHEMA"] = self.schema
        if crash is not None:
            env["SIDECARS_CRASH_POINT"] = crash
        with (
            open(self.folder / f"{name}.out", "wb") as out,
            open(self.folder / f"{name}.err", "wb") as err,
        ):
            proc = subprocess.Popen(
                [sys.executable, str(PROCS / script), *options, "--dir", str(self.folder),
                 "--name", name],
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
                await anyio.sleep(0.02)

    async def wait(self, name: str, limit: float = 30) -> int:
        proc = self.procs[name]
        with anyio.fail_after(limit):
            while proc.poll() is None:
                await anyio.sleep(0.02)
        return proc.returncode

    async def stop(self, *names: str) -> None:
        """Ask the running processes to stop; each must exit cleanly."""
        (self.folder / "stop").touch()
        for name in names:
            assert await self.wait(name) == 0, self.errors(name)
            assert "Traceback" not in self.errors(name), self.errors(name)

    def errors(self, name: str) -> str:
        return (self.folder / f"{name}.err").read_text()

    def runs(self, *names: str) -> dict[str, list[tuple[str, int, int]]]:
        """Key (job id or fire instant) -> [(start|end, attempt, pid), ...] in log order."""
        runs: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
        for name in names:
            path = self.folder / f"{name}.log"
            if path.exists():
                for line in path.read_text().splitlines():
                    kind, key, attempt, pid = line.split()
                    runs[key].append((kind, int(attempt), int(pid)))
        return runs

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return list(await conn.fetch(sql.replace("{s}", f'"{self.schema}"'), *args))
        finally:
            await conn.close()

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def procs(tmp_path: Path, pg_server: str, pg_schema: str) -> Iterator[Procs]:
    """Worker processes on this test's schema, killed if a test leaves them running."""
    made = Procs(tmp_path, pg_server, pg_schema)
    try:
        yield made
    finally:
        made.kill_all()


@pytest.mark.parametrize("point", ["after_claim", "mid_handler", "before_complete"])
async def test_job_crash_point_loses_nothing(procs: Procs, point: str) -> None:
    """SIGKILL at the 60th time a runner reaches a job crash point, 200 jobs enqueued: a
    second process ends every job succeeded with one fenced completion; only jobs the dead
    process held ran again, as attempt 2, claimed once (and soon after) their lease expired."""
    # Each handler sleeps a little, so that mid_handler finds handlers in flight.
    procs.start("pg_worker.py", "enqueue", "enqueue", "--count", str(JOBS), "--sleep", "0.02")
    assert await procs.wait("enqueue") == 0, procs.errors("enqueue")

    procs.start("pg_worker.py", "victim", "drain", "--lease", str(LEASE), crash=f"{point}:60")
    assert await procs.wait("victim") == -signal.SIGKILL, procs.errors("victim")
    dead = procs.procs["victim"].pid
    # What the dead process held: its rows are still running under its leases.
    held = {
        str(r["id"]): (r["attempts"], r["lease_until"])
        for r in await procs.fetch(
            "SELECT id, attempts, lease_until FROM {s}.jobs WHERE state = 'running'"
        )
    }
    assert held, "the killed process held no job"
    assert all(attempts == 1 for attempts, _ in held.values()), held
    assert max(until for _, until in held.values()) <= time.time() + LEASE

    procs.start("pg_worker.py", "survivor", "drain", "--lease", str(LEASE))
    await procs.ready("survivor")
    ready_at = time.time()
    with anyio.fail_after(30):
        while await procs.fetch("SELECT 1 FROM {s}.jobs WHERE state <> 'succeeded' LIMIT 1"):
            await anyio.sleep(0.1)
    await procs.stop("survivor")
    survivor = procs.procs["survivor"].pid

    rows = {
        str(r["id"]): r
        for r in await procs.fetch(
            "SELECT id, state, outcome, attempts, token, lease_until, started_at FROM {s}.jobs"
        )
    }
    assert len(rows) == JOBS
    assert {(r["state"], r["outcome"], r["token"], r["lease_until"]) for r in rows.values()} == {
        ("succeeded", "ok", None, None)
    }
    runs = procs.runs("victim", "survivor")
    assert set(runs) == set(rows)  # every job ran
    for job_id, events in runs.items():
        starts = [(a, p) for kind, a, p in events if kind == "start"]
        ends = [(a, p) for kind, a, p in events if kind == "end"]
        attempts = [a for a, _ in starts]
        assert attempts == sorted(set(attempts)), (job_id, events)  # each run a new claim
        final = starts[-1]
        assert ends[-1:] == [final], (job_id, events)  # the last run ended...
        assert rows[job_id]["attempts"] == final[0], (job_id, events)  # ...and is the one stored
        if job_id not in held:
            # Not held by the dead process: one run, one end, attempt 1.
            assert starts == ends == [(1, final[1])], (job_id, events)
            continue
        # Held when it died: claimed (and maybe run, even to its end) there, never stored;
        # run again in the survivor as attempt 2, claimed only once that lease had expired,
        # and without lingering after (the survivor wakes for expiring leases).
        assert final == (2, survivor), (job_id, events)
        assert all(p == dead for _, p in starts[:-1] + ends[:-1]), (job_id, events)
        lease_until = held[job_id][1]
        started = rows[job_id]["started_at"]
        assert started >= lease_until, (job_id, started - lease_until)
        assert started <= max(lease_until, ready_at) + 3.0, (job_id, started - ready_at)

    victim_only = {
        job_id: [e for e in events if e[2] == dead]
        for job_id, events in runs.items()
        if job_id in held
    }
    if point == "after_claim":
        # A job claimed and never started in the dead process.
        assert any(not events for events in victim_only.values()), victim_only
    elif point == "mid_handler":
        assert any(events == [("start", 1, dead)] for events in victim_only.values())
    else:  # before_complete: the handler ended, but its result was never stored
        assert any(
            events == [("start", 1, dead), ("end", 1, dead)] for events in victim_only.values()
        )


@pytest.mark.parametrize(
    "timing",
    [
        pytest.param(("--every", "3", "--lease", "1", "--body", "0.3"), id="quiet"),
        # The dead holder's lease runs out while newer fires run: its re-run is not skipped.
        pytest.param(("--every", "1", "--lease", "2", "--body", "0.5"), id="overlapping"),
    ],
)
async def test_fire_of_a_killed_holder_is_rerun_once(procs: Procs, timing: tuple[str, ...]) -> None:
    """Two processes with a cluster-wide STANDALONE: the one running a fire dies by SIGKILL
    (``during_fire``); the other re-runs that fire once after its lease expired, and no fire
    is completed twice (its row: succeeded, attempt 2; every succeeded row: one run ended)."""
    # The survivor's clock is 0.3 s behind (a skew sidecars tolerates): the victim, started
    # once the survivor runs, claims each instant first, so the first fire it reaches is
    # one the survivor was told is taken. The victim may die before it reports ready.
    procs.start("pg_crash_worker.py", "survivor", *timing, "--lag", "0.3")
    await procs.ready("survivor")
    procs.start("pg_crash_worker.py", "victim", *timing, crash="during_fire:1")
    assert await procs.wait("victim", limit=20) == -signal.SIGKILL, procs.errors("victim")
    dead = procs.procs["victim"].pid
    ((instant, lease_until),) = [
        (r["fire_at"], r["lease_until"])
        for r in await procs.fetch(
            "SELECT fire_at, lease_until FROM {s}.fires WHERE state = 'running'"
        )
    ]
    with anyio.fail_after(15):
        while not await procs.fetch(
            "SELECT 1 FROM {s}.fires WHERE fire_at = $1 AND state = 'succeeded'", instant
        ):
            await anyio.sleep(0.1)
    every = float(timing[1])
    await anyio.sleep(every + 0.6)  # one more fire, to see the survivor carry on
    await procs.stop("survivor")
    survivor = procs.procs["survivor"].pid

    runs = {int(k): v for k, v in procs.runs("victim", "survivor").items()}
    assert [i for i, events in runs.items() if any(p == dead for *_, p in events)] == [instant]
    # The killed run never ended; the survivor ran it once more, as attempt 2.
    assert runs[instant] == [("start", 1, dead), ("start", 2, survivor), ("end", 2, survivor)]
    assert any(i > instant for i in runs), runs  # later fires ran as well

    rows = {
        r["fire_at"]: r
        for r in await procs.fetch(
            "SELECT fire_at, state, attempts, claimed_at FROM {s}.fires WHERE handle = 'fire'"
        )
    }
    assert (rows[instant]["state"], rows[instant]["attempts"]) == ("succeeded", 2)
    assert rows[instant]["claimed_at"] >= lease_until  # re-claimed only once it expired
    assert {r["state"] for r in rows.values()} <= {"succeeded", "skipped", "released"}
    for fire_at, row in rows.items():
        ends = [(a, p) for kind, a, p in runs.get(fire_at, []) if kind == "end"]
        if row["state"] == "succeeded":
            assert ends == [(row["attempts"], survivor)], (fire_at, runs.get(fire_at))
        else:
            assert ends == [], (fire_at, runs.get(fire_at))
    assert set(runs) <= set(rows)
