"""DEFERRED jobs across real processes: crashes at named points, two processes on one file,
and scripts that never close the store."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "procs" / "worker.py"

pytestmark = pytest.mark.slow


def run_worker(
    db: Path, log: Path, *args: str, crash: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SIDECARS_CRASH_POINT"}
    if crash:
        env["SIDECARS_CRASH_POINT"] = crash
    return subprocess.run(
        [sys.executable, str(WORKER), str(db), str(log), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_worker(db: Path, log: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "SIDECARS_CRASH_POINT"}
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(db), str(log), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_runs(log: Path) -> dict[str, list[tuple[str, int, int]]]:
    """job id -> [(start|end, attempt, pid), ...] in log order."""
    runs: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for line in log.read_text().splitlines():
        kind, job_id, attempt, pid = line.split()
        runs[job_id].append((kind, int(attempt), int(pid)))
    return runs


def job_rows(db: Path) -> dict[str, tuple[str, str | None, int]]:
    with sqlite3.connect(db) as conn:
        return {
            row[0]: (row[1], row[2], row[3])
            for row in conn.execute("SELECT id, state, outcome, attempts FROM sidecars_jobs")
        }


@pytest.mark.parametrize("point", ["after_claim", "mid_handler", "before_complete"])
def test_kill_at_crash_point_loses_nothing(tmp_path: Path, point: str) -> None:
    """Killed at a crash point with 200 jobs enqueued, a new process on the same file ends
    every job succeeded once; a handler ran again only for jobs the dead process held."""
    db, log = tmp_path / "jobs.db", tmp_path / "runs.log"
    first = run_worker(
        db, log, "--enqueue", "200", "--lease", "1", "--seconds", "60", crash=f"{point}:60"
    )
    assert first.returncode == -9, first.stdout + first.stderr  # SIGKILL at the point
    before = read_runs(log) if log.exists() else {}
    killed_pids = {pid for runs in before.values() for _, _, pid in runs}
    assert len(killed_pids) <= 1

    second = run_worker(db, log, "--until-empty", "--lease", "1", "--seconds", "60")
    assert second.returncode == 0, second.stderr
    (survivor,) = {int(line.split()[3]) for line in log.read_text().splitlines()} - killed_pids

    rows = job_rows(db)
    assert len(rows) == 200
    assert {state for state, _, _ in rows.values()} == {"succeeded"}
    assert {outcome for _, outcome, _ in rows.values()} == {"ok"}

    runs = read_runs(log)
    rerun = 0
    for job_id, events in runs.items():
        starts = [(attempt, pid) for kind, attempt, pid in events if kind == "start"]
        attempts = [a for a, _ in starts]
        assert attempts == sorted(set(attempts)), (job_id, events)  # each run a new claim
        # Only the last run can belong to the survivor; earlier ones died with the killed
        # process, whose leases had to expire first.
        assert all(pid in killed_pids for _, pid in starts[:-1]), (job_id, events)
        assert rows[job_id][2] == attempts[-1]
        if len(starts) > 1:
            rerun += 1
            assert starts[-1][1] == survivor
    assert set(runs) == set(rows)  # every job ran at least once

    if point == "after_claim":
        # The claimed-but-never-started jobs ran only in the survivor, as attempt 2.
        assert any(events[0][1] == 2 and events[0][2] == survivor for events in runs.values())
    elif point == "mid_handler":
        assert rerun >= 1
        assert any(
            ("start", 1, next(iter(killed_pids))) in events
            and ("end", 1, next(iter(killed_pids))) not in events
            for events in runs.values()
        )
    else:  # before_complete: the handler ended but its result was never stored
        assert rerun >= 1
        assert any(
            ("end", 1, next(iter(killed_pids))) in events and len(events) == 4
            for events in runs.values()
        )


def test_two_processes_drain_one_file(tmp_path: Path) -> None:
    """Two processes on one SQLite file drain 2,000 jobs: each runs once, none is lost, and
    no 'database is locked' reaches a caller."""
    db, log = tmp_path / "jobs.db", tmp_path / "runs.log"
    # 5 ms per job: the drain lasts long enough that both processes take part.
    enq = run_worker(db, log, "--enqueue", "2000", "--sleep", "0.005", "--enqueue-only")
    assert enq.returncode == 0, enq.stderr
    procs = [start_worker(db, log, "--until-empty", "--seconds", "120") for _ in range(2)]
    outputs = [p.communicate(timeout=180) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "database is locked" not in err
        assert "Traceback" not in err, err
    rows = job_rows(db)
    assert len(rows) == 2000
    assert {state for state, _, _ in rows.values()} == {"succeeded"}
    runs = read_runs(log)
    assert set(runs) == set(rows)
    for job_id, events in runs.items():
        assert [kind for kind, _, _ in events] == ["start", "end"], (job_id, events)
        assert rows[job_id][2] == 1
    by_pid: dict[int, int] = defaultdict(int)
    for events in runs.values():
        by_pid[events[0][2]] += 1
    assert len(by_pid) == 2, by_pid  # both processes took part


def test_script_that_never_closes_exits_promptly(tmp_path: Path) -> None:
    """A script that enqueues and exits without closing the store exits within 2 s, and its
    rows are committed."""
    db, log = tmp_path / "jobs.db", tmp_path / "runs.log"
    done = run_worker(db, log, "--enqueue", "25", "--enqueue-only", timeout=30)
    exited = time.time()
    assert done.returncode == 0, done.stderr
    enqueued_at = float(done.stdout.split(" at ")[1])
    assert exited - enqueued_at < 2.0, exited - enqueued_at
    rows = job_rows(db)
    assert len(rows) == 25
    assert {state for state, _, _ in rows.values()} == {"queued"}


def test_a_crash_during_recovery_loses_nothing(tmp_path: Path) -> None:
    """The process recovering a dead runner's jobs is killed too, mid-recovery: a third
    process still ends every job succeeded once, re-running only jobs the dead held."""
    db, log = tmp_path / "jobs.db", tmp_path / "runs.log"
    first = run_worker(
        db, log, "--enqueue", "200", "--lease", "1", "--seconds", "60", crash="mid_handler:50"
    )
    assert first.returncode == -9, first.stderr
    second = run_worker(db, log, "--lease", "1", "--seconds", "60", crash="after_claim:40")
    assert second.returncode == -9, second.stderr
    third = run_worker(db, log, "--until-empty", "--lease", "1", "--seconds", "60")
    assert third.returncode == 0, third.stderr
    rows = job_rows(db)
    assert len(rows) == 200
    assert {state for state, _, _ in rows.values()} == {"succeeded"}
    runs = read_runs(log)
    assert set(runs) == set(rows)
    for job_id, events in runs.items():
        starts = [attempt for kind, attempt, _ in events if kind == "start"]
        assert starts == sorted(set(starts)), (job_id, events)
        assert [kind for kind, _, _ in events].count("end") >= 1
        assert rows[job_id][2] == starts[-1]
