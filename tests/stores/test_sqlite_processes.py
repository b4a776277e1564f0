"""SQLiteStore shared by real processes: schema races, claim contention, interpreter exit."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

import sidecars.stores
from sidecars.stores import SQLiteStore
from sidecars.stores._sqlite_schema import MIGRATIONS

from ._support import new_job

pytestmark = pytest.mark.slow

SRC = Path(sidecars.stores.__file__).resolve().parents[2]

# Each script waits for a shared start instant, so the processes really race instead of
# running one after another as their interpreters happen to finish starting.
PRELUDE = """
import json, sys, time, uuid
import anyio
from sidecars.stores import Finish, FireRequest, FireStatus, NewJob, SQLiteStore
from sidecars._records import JobState, Outcome

path, start_at = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start_at - time.time()))
"""

MIGRATE = """
async def main():
    store = SQLiteStore(path)
    await store.open()
    await store.close()

anyio.run(main)
"""

CLAIM = """
async def main():
    store = SQLiteStore(path)
    mine = []
    while True:
        now = time.time()
        batch = await store.claim(["h"], 10, now=now, lease=600)
        if not batch:
            wakeup = await store.next_wakeup(["h"])
            if wakeup is None or wakeup > now + 60:
                break  # nothing queued; what is left is held by the other process
            continue
        mine.extend(str(job.id) for job in batch)
        applied = await store.finish([
            Finish(id=job.id, token=job.token, state=JobState.SUCCEEDED, outcome=Outcome.OK,
                   finished_at=time.time())
            for job in batch
        ])
        assert applied == {job.id for job in batch}
    await store.close()
    print(json.dumps(mine))

anyio.run(main)
"""

# Both processes walk the same instants in the same order, one request per transaction, so
# they collide on nearly every instant; the skip policy is off so that only the claim race
# decides who runs.
CLAIM_FIRES = """
async def main():
    store = SQLiteStore(path)
    fires = [int(f) for f in sys.argv[3].split(",")]
    mine, seen = [], 0
    for fire_at in fires:
        (answer,) = await store.claim_fires(
            [FireRequest(handle="h", fire_at=fire_at, skip_if_running=False)],
            now=time.time(), lease=600,
        )
        seen += 1
        if answer.status is FireStatus.CLAIMED:
            mine.append(fire_at)
            assert await store.finish_fire(answer.lease(), outcome=Outcome.OK,
                                           finished_at=time.time())
        else:
            assert answer.status is FireStatus.TAKEN, answer
    await store.close()
    print(json.dumps({"claimed": mine, "seen": seen}))

anyio.run(main)
"""

EXIT = """
async def main():
    store = SQLiteStore(path)  # opened lazily by the first enqueue, never closed
    now = time.time()
    for _ in range(10):
        await store.enqueue([NewJob(id=uuid.uuid4(), handle="h", payload="{}", run_at=now,
                                    created_at=now, max_attempts=1)])

anyio.run(main)
print(time.time(), flush=True)
"""


def spawn(tmp_path: Path, name: str, body: str, *args: str) -> subprocess.Popen[str]:
    script = tmp_path / f"{name}.py"
    if not script.exists():
        script.write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(body))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_all(procs: list[subprocess.Popen[str]], timeout: float) -> list[str]:
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err
        assert "locked" not in err, err
        outputs.append(out)
    return outputs


def test_four_processes_create_one_schema(tmp_path: Path) -> None:
    """Four processes opening a missing file at the same moment end with one schema, no error."""
    path = tmp_path / "jobs.db"
    start_at = str(time.time() + 1.5)
    procs = [spawn(tmp_path, "migrate", MIGRATE, str(path), start_at) for _ in range(4)]
    wait_all(procs, timeout=30)
    conn = sqlite3.connect(path)
    try:
        versions = conn.execute("SELECT version FROM sidecars_migrations").fetchall()
        tables = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'sidecars_%'"
        ).fetchall()
        mode = conn.execute("PRAGMA journal_mode").fetchone()
    finally:
        conn.close()
    assert versions == [(v,) for v, _ in MIGRATIONS]
    assert sorted(t[0] for t in tables) == [
        "sidecars_fires",
        "sidecars_jobs",
        "sidecars_migrations",
    ]
    assert mode == ("wal",)


def test_two_processes_claim_disjoint(tmp_path: Path) -> None:
    """Two processes claiming from one file take every job exactly once, never seeing a lock."""
    path = tmp_path / "jobs.db"
    jobs = [new_job(run_at=time.time() - 10 + i / 1000) for i in range(2000)]

    async def setup() -> None:
        store = SQLiteStore(path)
        try:
            await store.enqueue(jobs)
        finally:
            await store.close()

    anyio.run(setup, backend="asyncio")
    start_at = str(time.time() + 1.5)
    procs = [spawn(tmp_path, "claim", CLAIM, str(path), start_at) for _ in range(2)]
    first, second = (set(json.loads(out)) for out in wait_all(procs, timeout=60))

    assert first, "both processes should have claimed some jobs"
    assert second, "both processes should have claimed some jobs"
    assert not first & second
    assert first | second == {str(job.id) for job in jobs}
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT state, attempts, count(*) FROM sidecars_jobs GROUP BY 1, 2")
        assert rows.fetchall() == [("succeeded", 1, 2000)]
    finally:
        conn.close()


def test_two_processes_claim_each_fire_once(tmp_path: Path) -> None:
    """Two processes racing to claim the same 200 fire instants claim each exactly once."""
    path = tmp_path / "jobs.db"

    async def setup() -> None:
        # The schema exists beforehand, so the processes race on claims alone.
        store = SQLiteStore(path)
        try:
            await store.open()
        finally:
            await store.close()

    anyio.run(setup, backend="asyncio")
    fires = [1_700_000_000 + 60 * i for i in range(200)]
    start_at = str(time.time() + 1.5)
    arg = ",".join(map(str, fires))
    procs = [spawn(tmp_path, "fires", CLAIM_FIRES, str(path), start_at, arg) for _ in range(2)]
    first, second = (json.loads(out) for out in wait_all(procs, timeout=60))

    assert first["seen"] == second["seen"] == 200
    assert not set(first["claimed"]) & set(second["claimed"])
    assert sorted(first["claimed"] + second["claimed"]) == fires
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT state, attempts, count(*) FROM sidecars_fires GROUP BY 1, 2")
        assert rows.fetchall() == [("succeeded", 1, 200)]
    finally:
        conn.close()


def test_unclosed_store_does_not_block_exit(tmp_path: Path) -> None:
    """A script that enqueues without closing its store exits at once, its jobs committed."""
    path = tmp_path / "jobs.db"
    proc = spawn(tmp_path, "exit", EXIT, str(path), "0")
    out, err = proc.communicate(timeout=30)
    exited = time.time()
    assert proc.returncode == 0, err
    assert exited - float(out.strip()) < 2.0
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*) FROM sidecars_jobs").fetchone() == (10,)
    finally:
        conn.close()
