"""STANDALONE fires across real processes: the example app under ``uvicorn --workers 3``,
and a fire whose holder is killed mid-run."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tests.examples.conftest import start_server, stop_server

FIRE_WORKER = Path(__file__).parent / "procs" / "fire_worker.py"

pytestmark = pytest.mark.slow


def read_lines(path: Path) -> list[tuple[int, int]]:
    """(instant, pid) per line."""
    rows = []
    for line in path.read_text().splitlines():
        instant, pid = line.split()
        rows.append((int(instant), int(pid)))
    return rows


def test_three_uvicorn_workers_fire_once_cluster_wide_and_per_replica(tmp_path: Path) -> None:
    """Under ``uvicorn --workers 3`` on one SQLite file for 30 s, each one-second
    cluster-wide instant runs once and each per-replica instant three times (one per
    worker), counting the instants when all workers were up."""
    data = tmp_path / "data"
    server = start_server(
        data,
        "--workers",
        "3",
        env={"SIDECARS_EXAMPLE_HEARTBEAT": "1", "SIDECARS_EXAMPLE_LEASE": "3"},
    )
    try:
        time.sleep(32)
    finally:
        stop_server(server)
    replica = read_lines(data / "replica_heartbeat.log")
    cluster = read_lines(data / "heartbeat.log")
    pids = {pid for _, pid in replica}
    assert len(pids) == 3, pids
    first = max(min(i for i, p in replica if p == pid) for pid in pids)
    last = min(max(i for i, p in replica if p == pid) for pid in pids)
    window = range(first, last + 1)
    assert len(window) >= 25, (first, last)  # all three were up for most of the run

    per_replica = Counter((i, p) for i, p in replica if i in window)
    for instant in window:
        for pid in pids:
            assert per_replica[(instant, pid)] == 1, (instant, pid)

    cluster_counts = Counter(i for i, _ in cluster)
    for instant in window:
        assert cluster_counts[instant] == 1, (instant, cluster_counts[instant])
    assert len({p for i, p in cluster if i in window}) >= 1
    assert "Traceback" not in server.output()


def start_fire_worker(
    db: Path, log: Path, seconds: float, crash: str | None = None, extra: tuple[str, ...] = ()
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "SIDECARS_CRASH_POINT"}
    if crash:
        env["SIDECARS_CRASH_POINT"] = crash
    return subprocess.Popen(
        [sys.executable, str(FIRE_WORKER), str(db), str(log), "--seconds", str(seconds), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    "timing",
    [
        pytest.param(("--every", "3", "--lease", "1", "--body", "0.3"), id="quiet"),
        # The lease runs out while newer fires run: the re-run must not be skipped.
        pytest.param(("--every", "1", "--lease", "2", "--body", "0.5"), id="overlapping"),
    ],
)
def test_fire_of_a_killed_holder_is_rerun_once_elsewhere(
    tmp_path: Path, timing: tuple[str, ...]
) -> None:
    """kill -9 of the process running a fire: another process re-runs that fire once after
    the lease expires, and no fire completes twice."""
    db, log = tmp_path / "fires.db", tmp_path / "fires.log"
    victim = start_fire_worker(db, log, 30, crash="during_fire:1", extra=timing)
    # The survivor runs 0.3 s behind, so the victim claims (and dies in) the first instant
    # both see, however slowly either process started.
    survivor = start_fire_worker(db, log, 12, extra=(*timing, "--lag", "0.3"))
    _, victim_err = victim.communicate(timeout=60)
    assert victim.returncode == -9, victim_err
    _, err = survivor.communicate(timeout=60)
    assert survivor.returncode == 0, err
    assert "Traceback" not in err, err

    runs: dict[int, list[tuple[str, int, int]]] = defaultdict(list)
    for line in log.read_text().splitlines():
        kind, instant, attempt, pid = line.split()
        runs[int(instant)].append((kind, int(attempt), int(pid)))
    killed = [
        instant
        for instant, events in runs.items()
        if any(kind == "start" and pid == victim.pid for kind, _, pid in events)
    ]
    assert len(killed) == 1, runs
    (instant,) = killed
    # The killed run never ended; the survivor ran it once more, as attempt 2.
    assert runs[instant] == [
        ("start", 1, victim.pid),
        ("start", 2, survivor.pid),
        ("end", 2, survivor.pid),
    ]
    for other, events in runs.items():
        ends = [e for e in events if e[0] == "end"]
        assert len(ends) <= 1, (other, events)  # no fire completes twice
    with sqlite3.connect(db) as conn:
        state = conn.execute(
            "SELECT state, attempts FROM sidecars_fires WHERE handle = 'fire' AND fire_at = ?",
            (instant,),
        ).fetchone()
    assert state == ("succeeded", 2)
