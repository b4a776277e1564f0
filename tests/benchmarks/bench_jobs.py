"""Side-by-side job throughput: raw floors, sidecars and peers, one process per comparison.

Three comparisons, each in its own child process (so one cannot warm or pollute another):
``memory`` (no-op MEMORY jobs with a three-field pydantic payload), ``sqlite`` (DEFERRED
jobs on a WAL file, synchronous NORMAL and FULL) and ``postgres`` (a throwaway server from
``tests/pg_server.py``, skipped when none can be started). Every run asserts that each job
ran exactly once. Peers that are not installed, or fail, are listed as "not run" with the
reason; they never stop the script.

Not collected by pytest. Run from the repository root (``nox -s bench`` runs it too):

    .venv/bin/python tests/benchmarks/bench_jobs.py [--scale 0.2] [--only memory,sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: make ``tests`` importable

import anyio  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from sidecars import JobContext, RunType, Sidecars  # noqa: E402

REPEATS = 3  # medians of three, as the targets in issue 9 are stated
CHILD_LIMIT = 1200  # seconds one comparison may take before it is reported as timed out


class Payload(BaseModel):
    """The benchmark payload: three small fields."""

    user: int
    name: str
    score: float


def payload(i: int) -> Payload:
    return Payload(user=i, name="n", score=1.5)


# -- results ---------------------------------------------------------------------------------

Row = dict[str, Any]  # path, system, metric, value (per second or seconds), note, target


def row(path: str, system: str, metric: str, value: float | None, note: str = "") -> Row:
    return {"path": path, "system": system, "metric": metric, "value": value, "note": note}


def not_run(path: str, system: str, metric: str, reason: str) -> Row:
    return row(path, system, metric, None, f"not run: {reason}")


def median_rate(n: int, runs: list[float]) -> float:
    return n / statistics.median(runs)


async def wait_succeeded(sc: Sidecars, handle: str, n: int, limit: float = 300.0) -> None:
    deadline = time.perf_counter() + limit
    while (await sc.stats()).handles[handle].succeeded < n:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{handle}: timed out waiting for {n} jobs")
        await asyncio.sleep(0.0005)


# -- memory ----------------------------------------------------------------------------------


async def floor_stream(n: int) -> float:
    send, receive = anyio.create_memory_object_stream[Payload](n)
    items = [payload(i) for i in range(n)]
    done = 0
    start = time.perf_counter()
    for item in items:
        send.send_nowait(item)
    while True:
        try:
            receive.receive_nowait()
        except anyio.WouldBlock:
            break
        done += 1
    elapsed = time.perf_counter() - start
    send.close()
    receive.close()
    assert done == n
    return elapsed


async def floor_tasks(n: int, concurrency: int = 8) -> float:
    sem = anyio.Semaphore(concurrency)
    done = 0

    async def job(_: Payload) -> None:
        nonlocal done
        async with sem:
            done += 1

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(job, payload(i))
    elapsed = time.perf_counter() - start
    assert done == n
    return elapsed


def memory_app(seen: list[int]) -> tuple[Sidecars, Any]:
    sc = Sidecars(os.path.join(tempfile.mkdtemp(), "unused.db"))

    @sc.sidecar(handle="noop", run_type=RunType.MEMORY, concurrency=8)
    async def noop(job: JobContext[Payload]) -> None:
        seen.append(job.payload.user)

    return sc, noop


async def sidecars_memory(n: int) -> float:
    seen: list[int] = []
    sc, noop = memory_app(seen)
    items = [payload(i) for i in range(n)]
    async with sc.run():
        start = time.perf_counter()
        for item in items:
            await noop.enqueue(item)
        await wait_succeeded(sc, "noop", n)
        elapsed = time.perf_counter() - start
    assert sorted(seen) == list(range(n)), "a MEMORY job ran more or less than once"
    return elapsed


async def sidecars_memory_latency(samples: int) -> tuple[float, float]:
    started: list[float] = []
    sc = Sidecars(os.path.join(tempfile.mkdtemp(), "unused.db"))
    ran = asyncio.Event()

    @sc.sidecar(handle="ping", run_type=RunType.MEMORY)
    async def ping(job: JobContext[Payload]) -> None:
        started.append(time.perf_counter())
        ran.set()

    lat: list[float] = []
    async with sc.run():
        for i in range(samples + 20):
            ran.clear()
            t0 = time.perf_counter()
            await ping.enqueue(payload(i))
            await ran.wait()
            if i >= 20:
                lat.append(started[-1] - t0)
            await wait_succeeded(sc, "ping", i + 1)
    assert len(started) == samples + 20
    return percentile(lat, 50), percentile(lat, 99)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def encode_breakdown(n: int) -> list[Row]:
    """Time each step of the payload edge on its own (per job, µs)."""
    from pydantic import TypeAdapter

    from sidecars._payloads import PayloadCodec

    adapter = TypeAdapter(Payload)
    codec = PayloadCodec("noop", Payload)
    items = [payload(i) for i in range(n)]
    text = adapter.dump_json(items[0]).decode()
    steps: dict[str, Callable[[Payload], object]] = {
        "validate_python": adapter.validate_python,
        "dump_python": adapter.dump_python,
        "dump_json": adapter.dump_json,
        "validate_json": lambda _: adapter.validate_json(text),
        "codec.encode (all checks)": codec.encode,
    }
    rows = []
    for name, func in steps.items():
        start = time.perf_counter()
        for item in items:
            func(item)
        per_job = (time.perf_counter() - start) / n
        rows.append(row("memory", "sidecars step", name, per_job, "per job"))
    return rows


def memory_profile(n: int) -> str:
    prof = cProfile.Profile()
    prof.enable()
    asyncio.run(sidecars_memory(n))
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.strip_dirs()  # file names only: the table reads the same on every machine
    stats.sort_stats("tottime").print_stats(14)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    return "\n".join(lines[start:])


APS_SEEN: list[int] = []  # APScheduler refers to tasks by import path: no closures


async def aps_noop(user: int, name: str, score: float) -> None:
    APS_SEEN.append(user)


async def apscheduler_memory(n: int) -> float:
    from apscheduler import AsyncScheduler

    APS_SEEN.clear()
    async with AsyncScheduler() as scheduler:
        await scheduler.start_in_background()
        start = time.perf_counter()
        for i in range(n):
            await scheduler.add_job(aps_noop, kwargs=payload(i).model_dump())
        deadline = start + 600
        while len(APS_SEEN) < n and time.perf_counter() < deadline:
            await asyncio.sleep(0.001)
        elapsed = time.perf_counter() - start
        await scheduler.stop()
    assert sorted(APS_SEEN) == list(range(n)), "an APScheduler job ran more or less than once"
    return elapsed


def run_memory(scale: float) -> dict[str, Any]:
    n = int(100_000 * scale)
    rows: list[Row] = []
    stream = [asyncio.run(floor_stream(n)) for _ in range(REPEATS)]
    rows.append(row("memory", "floor: stream drain", "jobs/s", median_rate(n, stream)))
    tasks = [asyncio.run(floor_tasks(n)) for _ in range(REPEATS)]
    rows.append(row("memory", "floor: task+semaphore", "jobs/s", median_rate(n, tasks)))
    ours = [asyncio.run(sidecars_memory(n)) for _ in range(REPEATS)]
    rows.append(row("memory", "sidecars", "jobs/s", median_rate(n, ours)))
    p50, p99 = asyncio.run(sidecars_memory_latency(max(200, int(2000 * scale))))
    rows.append(row("memory", "sidecars", "enqueue->start p50", p50))
    rows.append(row("memory", "sidecars", "enqueue->start p99", p99))
    try:
        m = max(200, int(2000 * scale))
        rows.append(
            row(
                "memory",
                "APScheduler 4",
                "jobs/s",
                m / asyncio.run(apscheduler_memory(m)),
                f"{m} jobs",
            )
        )
    except Exception as exc:  # a peer never stops the run
        rows.append(not_run("memory", "APScheduler 4", "jobs/s", f"{type(exc).__name__}: {exc}"))
    rows.extend(encode_breakdown(n))
    return {"rows": rows, "profile": memory_profile(max(10_000, n // 5))}


# -- SQLite ----------------------------------------------------------------------------------

FLOOR_DDL = """
CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT NOT NULL, payload TEXT NOT NULL);
CREATE INDEX jobs_state ON jobs (state, id);
"""


def floor_db(sync: str) -> sqlite3.Connection:
    path = os.path.join(tempfile.mkdtemp(), "floor.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={sync}")
    conn.executescript(FLOOR_DDL)
    return conn


def sqlite_floor_enqueue(sync: str, n: int, per_tx: int) -> float:
    conn = floor_db(sync)
    text = payload(0).model_dump_json()
    start = time.perf_counter()
    for lo in range(0, n, per_tx):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO jobs (state, payload) VALUES ('queued', ?)",
            [(text,) for _ in range(min(per_tx, n - lo))],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == n
    conn.close()
    return elapsed


def sqlite_floor_process(sync: str, n: int, batch: int) -> float:
    conn = floor_db(sync)
    text = payload(0).model_dump_json()
    conn.executemany("INSERT INTO jobs (state, payload) VALUES ('queued', ?)", [(text,)] * n)
    done = 0
    start = time.perf_counter()
    while True:
        conn.execute("BEGIN IMMEDIATE")
        ids = conn.execute(
            "UPDATE jobs SET state = 'running' WHERE id IN "
            "(SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT ?) "
            "RETURNING id, payload",
            (batch,),
        ).fetchall()
        conn.execute("COMMIT")
        if not ids:
            break
        done += len(ids)  # the no-op "runs" here
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("UPDATE jobs SET state = 'done' WHERE id = ?", [(i,) for i, _ in ids])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    assert done == n
    assert conn.execute("SELECT count(*) FROM jobs WHERE state = 'done'").fetchone()[0] == n
    conn.close()
    return elapsed


def deferred_app(store: Any, seen: list[int]) -> tuple[Sidecars, Any]:
    sc = Sidecars(store)

    @sc.sidecar(handle="noop_d", run_type=RunType.DEFERRED, concurrency=16)
    async def noop(job: JobContext[Payload]) -> None:
        seen.append(job.payload.user)

    return sc, noop


async def sidecars_deferred(make_store: Callable[[], Any], n: int) -> dict[str, float]:
    """enqueue_many/s, concurrent single enqueue/s, processed/s, each on a fresh store."""
    out: dict[str, float] = {}
    # enqueue_many, then drain: processed/s
    seen: list[int] = []
    sc, noop = deferred_app(make_store(), seen)
    items = [payload(i) for i in range(n)]
    async with sc:
        start = time.perf_counter()
        for lo in range(0, n, 1000):
            await noop.enqueue_many(items[lo : lo + 1000])
        out["enqueue_many/s"] = n / (time.perf_counter() - start)
    async with sc.run():
        start = time.perf_counter()
        await wait_succeeded(sc, "noop_d", n)
        out["processed/s"] = n / (time.perf_counter() - start)
    assert sorted(seen) == list(range(n)), "a DEFERRED job ran more or less than once"
    # 100 concurrent callers, one job per enqueue
    seen2: list[int] = []
    sc2, noop2 = deferred_app(make_store(), seen2)
    m = n // 2
    async with sc2:
        await noop2.enqueue(payload(-1))  # opens the store outside the timing

        async def caller(k: int) -> None:
            for i in range(k, m, 100):
                await noop2.enqueue(items[i])

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for k in range(100):
                tg.start_soon(caller, k)
        out["enqueue/s x100"] = m / (time.perf_counter() - start)
    return out


def huey_sqlite(sync: str, n: int) -> dict[str, float]:
    from huey import SqliteHuey

    path = os.path.join(tempfile.mkdtemp(), "huey.db")
    # huey opens its own connections: set synchronous on each one, so that huey and sidecars
    # run under the same durability setting.
    huey = SqliteHuey("bench", filename=path, results=False, journal_mode="wal")
    original = huey.storage._create_connection

    def connect() -> sqlite3.Connection:
        conn = original()
        conn.execute(f"PRAGMA synchronous={sync}")
        return conn

    huey.storage._create_connection = connect
    seen: list[int] = []

    @huey.task()
    def noop(user: int, name: str, score: float) -> None:
        seen.append(user)

    start = time.perf_counter()
    for i in range(n):
        noop(**payload(i).model_dump())
    enq = n / (time.perf_counter() - start)
    start = time.perf_counter()
    while (task := huey.dequeue()) is not None:
        huey.execute(task)
    proc = n / (time.perf_counter() - start)
    assert sorted(seen) == list(range(n)), "a huey task ran more or less than once"
    return {"enqueue/s (one caller)": enq, "processed/s": proc}


def run_sqlite(scale: float) -> dict[str, Any]:
    from sidecars.stores.sqlite import SQLiteStore

    n = int(20_000 * scale)
    rows: list[Row] = []
    for sync in ("NORMAL", "FULL"):
        path = f"sqlite {sync}"
        rows.append(row(path, "floor: 1 per tx", "enqueue/s", n / sqlite_floor_enqueue(sync, n, 1)))
        rows.append(
            row(path, "floor: 100 per tx", "enqueue/s", n / sqlite_floor_enqueue(sync, n, 100))
        )
        one = sqlite_floor_process(sync, n, 1)
        rows.append(row(path, "floor: claim+complete 1", "processed/s", n / one))
        rows.append(
            row(path, "floor: batch 100", "processed/s", n / sqlite_floor_process(sync, n, 100))
        )

        def make_store(sync: str = sync) -> SQLiteStore:
            return SQLiteStore(os.path.join(tempfile.mkdtemp(), "sc.db"), synchronous=sync)

        got = asyncio.run(sidecars_deferred(make_store, n))
        rows.append(row(path, "sidecars", "processed/s", got["processed/s"]))
        rows.append(row(path, "sidecars", "enqueue/s x100", got["enqueue/s x100"]))
        rows.append(row(path, "sidecars", "enqueue_many/s", got["enqueue_many/s"]))
        try:
            h = huey_sqlite(sync, n)
            rows.append(row(path, "huey", "processed/s", h["processed/s"], "one worker thread"))
            rows.append(row(path, "huey", "enqueue/s", h["enqueue/s (one caller)"], "one caller"))
        except Exception as exc:
            rows.append(not_run(path, "huey", "processed/s", f"{type(exc).__name__}: {exc}"))
    return {"rows": rows}


# -- PostgreSQL ------------------------------------------------------------------------------


async def pg_floor(dsn: str, n: int) -> list[Row]:
    import asyncpg

    rows: list[Row] = []
    text = payload(0).model_dump_json()
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "DROP TABLE IF EXISTS floor_jobs; CREATE UNLOGGED TABLE floor_jobs_x (x int);"
        "DROP TABLE floor_jobs_x;"
        "CREATE TABLE floor_jobs (id bigserial PRIMARY KEY, state text NOT NULL,"
        " payload jsonb NOT NULL);"
        "CREATE INDEX floor_jobs_q ON floor_jobs (id) WHERE state = 'queued'"
    )
    start = time.perf_counter()
    await conn.copy_records_to_table(
        "floor_jobs", records=[("queued", text)] * n, columns=["state", "payload"]
    )
    rows.append(row("postgres", "floor: COPY", "enqueue/s", n / (time.perf_counter() - start)))
    m = n // 4
    start = time.perf_counter()
    for _ in range(m):
        await conn.execute("INSERT INTO floor_jobs (state, payload) VALUES ('queued', $1)", text)
    rows.append(row("postgres", "floor: 1 per tx", "enqueue/s", m / (time.perf_counter() - start)))
    await conn.close()

    async def drain(batch: int, conns: int) -> tuple[float, int]:
        pool = await asyncpg.create_pool(dsn, min_size=conns, max_size=conns)
        done = 0

        async def worker() -> None:
            nonlocal done
            async with pool.acquire() as c:
                while True:
                    ids = await c.fetch(
                        "UPDATE floor_jobs SET state = 'running' WHERE id IN (SELECT id FROM"
                        " floor_jobs WHERE state = 'queued' ORDER BY id LIMIT $1"
                        " FOR UPDATE SKIP LOCKED) RETURNING id, payload",
                        batch,
                    )
                    if not ids:
                        return
                    done += len(ids)
                    await c.execute(
                        "UPDATE floor_jobs SET state = 'done' WHERE id = ANY($1::bigint[])",
                        [r["id"] for r in ids],
                    )

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(conns):
                tg.start_soon(worker)
        elapsed = time.perf_counter() - start
        await pool.close()
        return elapsed, done

    # one at a time on 4 connections: only the first m jobs (it is slow), then the rest batched
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "UPDATE floor_jobs SET state = 'held' WHERE id > (SELECT min(id) FROM floor_jobs) + $1",
        m - 1,
    )
    await conn.close()
    elapsed, done = await drain(1, 4)
    assert done == m
    rows.append(row("postgres", "floor: claim+complete 1 x4 conns", "processed/s", m / elapsed))
    conn = await asyncpg.connect(dsn)
    rest = int(
        await conn.fetchval(
            "WITH u AS (UPDATE floor_jobs SET state = 'queued' WHERE state = 'held' RETURNING 1)"
            " SELECT count(*) FROM u"
        )
    )
    await conn.close()
    elapsed, done = await drain(100, 4)
    assert done == rest
    rows.append(row("postgres", "floor: batch 100 x4 conns", "processed/s", rest / elapsed))
    conn = await asyncpg.connect(dsn)
    left = await conn.fetchval("SELECT count(*) FROM floor_jobs WHERE state <> 'done'")
    assert left == 0
    await conn.execute("DROP TABLE floor_jobs")
    await conn.close()
    return rows


SAQ_SEEN: list[int] = []


async def saq_noop(ctx: Any, *, user: int, name: str, score: float) -> None:
    SAQ_SEEN.append(user)


async def saq_postgres(dsn: str, n: int) -> dict[str, float]:
    from saq import Queue, Worker

    SAQ_SEEN.clear()
    queue = Queue.from_url(dsn, name="bench")
    await queue.connect()
    try:
        items = [payload(i).model_dump() for i in range(n)]

        async def caller(k: int) -> None:
            for i in range(k, n, 100):
                await queue.enqueue("saq_noop", **items[i])

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for k in range(100):
                tg.start_soon(caller, k)
        enq = n / (time.perf_counter() - start)
        worker = Worker(queue, functions=[("saq_noop", saq_noop)], concurrency=16)
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.start)
            deadline = start + 600
            while len(SAQ_SEEN) < n and time.perf_counter() < deadline:
                await asyncio.sleep(0.001)
            elapsed = time.perf_counter() - start
            await worker.stop()
            tg.cancel_scope.cancel()
    finally:
        await queue.disconnect()
    assert sorted(SAQ_SEEN) == list(range(n)), "a SAQ job ran more or less than once"
    return {"enqueue/s x100": enq, "processed/s": n / elapsed}


def run_postgres(scale: float) -> dict[str, Any]:
    from tests.benchmarks import _pg_peers as peers
    from tests.pg_server import PgServer, drop_schema, new_schema_name

    from sidecars.stores.postgres import PostgresStore

    n = int(10_000 * scale)
    slow = min(n, 500)  # APScheduler 4 alpha runs ~0.1k jobs/s
    samples = max(100, int(300 * scale))
    existing = os.environ.get("SIDECARS_TEST_PG_DSN")
    server = None if existing else PgServer()
    try:
        try:
            dsn = existing or server.start()  # type: ignore[union-attr]
        except Exception as exc:
            reason = f"no PostgreSQL server: {type(exc).__name__}: {exc}"
            return {"rows": [not_run("postgres", "all", "-", reason[:120])]}
        rows = asyncio.run(pg_floor(dsn, n))
        schemas: list[str] = []

        def make_store() -> PostgresStore:
            schemas.append(new_schema_name())
            return PostgresStore(dsn, schema=schemas[-1])

        async def ours() -> dict[str, float]:
            try:
                return await sidecars_deferred(make_store, n)
            finally:
                for s in schemas:
                    await drop_schema(dsn, s)

        got = asyncio.run(ours())
        rows.append(row("postgres", "sidecars", "processed/s", got["processed/s"], "16 at once"))
        rows.append(row("postgres", "sidecars", "enqueue/s x100", got["enqueue/s x100"]))
        rows.append(row("postgres", "sidecars", "enqueue_many/s", got["enqueue_many/s"]))

        def attempt(system: str, metric: str, measure: Callable[[], list[Row]]) -> None:
            try:
                rows.extend(measure())
            except Exception as exc:  # a peer never stops the run
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
                rows.append(not_run("postgres", system, metric, reason))

        def saq() -> list[Row]:
            got = asyncio.run(peers.in_fresh_database(dsn, saq_postgres, n))
            return [
                row("postgres", "SAQ", "processed/s", got["processed/s"], "16 at once"),
                row("postgres", "SAQ", "enqueue/s x100", got["enqueue/s x100"], "no batch API"),
            ]

        def procrastinate() -> list[Row]:
            got = asyncio.run(peers.procrastinate_postgres(dsn, n))
            system = "procrastinate"
            return [
                row("postgres", system, "processed/s", got["processed/s"], "16 at once"),
                row("postgres", system, "enqueue/s x100", got["enqueue/s x100"], "defer_async"),
                row(
                    "postgres",
                    system,
                    "enqueue_many/s",
                    got["enqueue_many/s"],
                    "batch_defer_async, 1000 a call",
                ),
            ]

        def apscheduler() -> list[Row]:
            got = asyncio.run(peers.apscheduler_postgres(dsn, slow))
            note = f"{slow} jobs (slow alpha)"
            return [
                row("postgres", "APScheduler 4", "processed/s", got["processed/s"], note),
                row("postgres", "APScheduler 4", "enqueue/s x100", got["enqueue/s x100"], note),
            ]

        attempt("SAQ", "processed/s", saq)
        attempt("procrastinate", "processed/s", procrastinate)
        attempt("APScheduler 4", "processed/s", apscheduler)

        def latency(
            system: str, probe: Callable[[str, int], Any], note: str
        ) -> Callable[[], list[Row]]:
            def measure() -> list[Row]:
                # Bounded: a peer that hangs on shutdown must not stop the table.
                p50, p99 = asyncio.run(asyncio.wait_for(probe(dsn, samples), 180))
                return [
                    row("postgres", system, "enqueue->start p50", p50, note),
                    row("postgres", system, "enqueue->start p99", p99),
                ]

            return measure

        async def notify_only(db: str, k: int) -> tuple[float, float]:
            return await peers.sidecars_latency(db, k, notify_only=True)

        for system, probe, note in (
            ("floor: INSERT+NOTIFY, claim", peers.floor_latency, "plain asyncpg"),
            ("sidecars", peers.sidecars_latency, f"{samples} jobs one at a time, idle worker"),
            ("sidecars (NOTIFY wake-up only)", notify_only, "enqueued by a second app"),
            ("SAQ", peers.saq_latency, "LISTEN/NOTIFY"),
            ("procrastinate", peers.procrastinate_latency, "LISTEN/NOTIFY"),
        ):
            attempt(system, "enqueue->start p50", latency(system, probe, note))
        return {"rows": rows}
    finally:
        if server is not None:
            server.stop()


# -- table -----------------------------------------------------------------------------------

# -- CRON++ ----------------------------------------------------------------------------------


def run_cron(scale: float) -> dict[str, Any]:
    """next_after against croniter and cronsim: a first fire from a fresh schedule (parsing
    included, nothing cached across calls) and the repeated next fires, per expression."""
    try:
        from tests.benchmarks import bench_schedule
    except ImportError as exc:
        return {"rows": [not_run("cron++", "all", "-", f"needs croniter and cronsim: {exc}")]}
    rows: list[Row] = []
    for expr, zone in bench_schedule.CASES:
        r = bench_schedule.bench(expr, zone)
        for kind, peers in (
            ("first", {"croniter": "first/croniter", "cronsim": "first/cronsim"}),
            (
                "repeat",
                {
                    "croniter": "repeat/croniter",
                    "cronsim": "repeat/cronsim-it",
                    "cronsim (new iterator per start)": "repeat/cronsim-new",
                },
            ),
        ):
            metric = f"{kind} {expr} {zone}"
            ours = r[f"{kind}/sidecars"] / 1e6
            faster = ", ".join(
                f"{r[key] / 1e6 / ours:.1f}x faster than {p}" for p, key in peers.items()
            )
            rows.append(row("cron++", "sidecars", metric, ours, faster))
            for peer, key in peers.items():
                rows.append(row("cron++", peer, metric, r[key] / 1e6))
    return {"rows": rows}


# -- host impact and idle cost ---------------------------------------------------------------


def run_host(scale: float) -> dict[str, Any]:
    """The example app's endpoint p99 under a fixed offered load, sidecars idle and busy, and
    the CPU and loop wake-ups of 50 idle sidecars (``bench_host.py`` has the details)."""
    from tests.benchmarks import bench_host

    args = bench_host.parse(["--seconds", str(max(2.0, 10.0 * min(scale, 1.0)))])
    rows: list[Row] = []
    problems: list[str] = []
    detail: list[str] = []
    measured = bench_host.measure_host(args)
    if isinstance(measured, str):
        rows.append(not_run("host", "all", "endpoint p99", measured))
    else:
        results, found = measured
        problems += found
        idle_p99 = results[0].p99 / 1e3
        for result in results:
            p99 = result.p99 / 1e3
            note = "sidecars idle" if result is results[0] else f"{p99 / idle_p99:.2f}x idle p99"
            rows.append(row("host", result.run.name, "GET /health p99", p99, note))
        detail += bench_host.host_table(results)
    base, idle, due, found = bench_host.measure_idle(args)
    problems += found
    b, i = bench_host.per_second(base), bench_host.per_second(idle)
    rows.append(row("idle", "50 sidecars", "wake-ups/s", i[1] - b[1], "over an empty loop"))
    rows.append(row("idle", "50 sidecars", "CPU ms/s", (i[0] - b[0]) * 1e3, "over an empty loop"))
    detail += ["", *bench_host.idle_rows(base, idle), "", *bench_host.cause_rows(idle)]
    if due:
        problems.append(f"schedules due during the idle run: {due}")
    rows += [not_run("host", "sidecars", "check", problem[:200]) for problem in problems]
    return {"rows": rows, "detail": "\n".join(detail)}


COMPARISONS: dict[str, Callable[[float], dict[str, Any]]] = {
    "memory": run_memory,
    "sqlite": run_sqlite,
    "postgres": run_postgres,
    "cron": run_cron,
    "host": run_host,
}

# (path, metric) of a sidecars row -> what its ratios divide by: a raw floor's (system,
# metric), and the peers doing the same thing, as (systems, metric): single enqueues against
# single enqueues, batches against a peer's batch API. Of the peers listed, the best measured
# in the run is used (the highest rate, the lowest latency) and named in the note. None where
# no such row exists (huey and SAQ have no batch enqueue).
RATIO_BASES: dict[
    tuple[str, str], tuple[tuple[str, str] | None, tuple[tuple[str, ...], str] | None]
] = {
    ("memory", "jobs/s"): (("floor: stream drain", "jobs/s"), (("APScheduler 4",), "jobs/s")),
    ("sqlite", "processed/s"): (("floor: batch 100", "processed/s"), (("huey",), "processed/s")),
    ("sqlite", "enqueue/s x100"): (("floor: 1 per tx", "enqueue/s"), (("huey",), "enqueue/s")),
    ("sqlite", "enqueue_many/s"): (("floor: 100 per tx", "enqueue/s"), None),
    ("postgres", "processed/s"): (
        ("floor: batch 100 x4 conns", "processed/s"),
        (("SAQ", "procrastinate", "APScheduler 4"), "processed/s"),
    ),
    ("postgres", "enqueue/s x100"): (
        ("floor: 1 per tx", "enqueue/s"),
        (("SAQ", "procrastinate", "APScheduler 4"), "enqueue/s x100"),
    ),
    ("postgres", "enqueue_many/s"): (
        ("floor: COPY", "enqueue/s"),
        (("SAQ", "procrastinate", "APScheduler 4"), "enqueue_many/s"),
    ),
    ("postgres", "enqueue->start p50"): (
        ("floor: INSERT+NOTIFY, claim", "enqueue->start p50"),
        (("SAQ", "procrastinate", "APScheduler 4"), "enqueue->start p50"),
    ),
    ("postgres", "enqueue->start p99"): (
        ("floor: INSERT+NOTIFY, claim", "enqueue->start p99"),
        (("SAQ", "procrastinate", "APScheduler 4"), "enqueue->start p99"),
    ),
}


def fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    timed = metric.startswith(("validate", "dump", "codec", "first ", "repeat ", "per job"))
    if "p50" in metric or "p99" in metric or timed:
        return f"{value * 1e3:.2f} ms" if value >= 1e-3 else f"{value * 1e6:.1f} µs"
    if value < 100:
        return f"{value:.2f}"
    return f"{value:,.0f}"


def table(rows: list[Row]) -> str:
    by = {(r["path"], r["system"], r["metric"]): r["value"] for r in rows}
    lines = [
        f"{'path':<12} {'system':<34} {'metric':<32} {'value':>12}  {'vs floor':>8}  "
        f"{'vs peer':>8}  note",
        "-" * 126,
    ]
    for r in rows:
        path, metric, note = r["path"], r["metric"], r["note"]
        floor, peers = RATIO_BASES.get((path.split()[0], metric), (None, None))
        vs_floor = vs_peer = ""
        if r["system"].startswith("sidecars") and r["value"]:
            base = by.get((path, *floor)) if floor is not None else None
            if base:
                vs_floor = f"{r['value'] / base:.2f}x"
            measured: list[tuple[float, str]] = []
            if peers is not None:
                systems, peer_metric = peers
                measured = [(v, s) for s in systems if (v := by.get((path, s, peer_metric)))]
            if measured:
                lower_is_better = "p50" in metric or "p99" in metric
                value, system = (min if lower_is_better else max)(measured)
                vs_peer = f"{r['value'] / value:.2f}x"
                note = f"{note}; vs {system}" if note else f"vs {system}"
        lines.append(
            f"{path:<12} {r['system']:<34} {metric:<32} {fmt(r['value'], metric):>12}  "
            f"{vs_floor:>8}  {vs_peer:>8}  {note}"
        )
    lines.append(
        "ratios are sidecars / base: above 1x is better for rates (/s), below 1x for"
        " latencies (p50, p99); vs peer: the best peer measured for that metric"
    )
    return "\n".join(lines)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {sys.version.split()[0]}", f"{os.cpu_count()} cores"]
    for dist in (
        "sidecars",
        "anyio",
        "pydantic",
        "aiosqlite",
        "asyncpg",
        "huey",
        "apscheduler",
        "procrastinate",
        "saq",
    ):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:  # noqa: PERF203 (nine look-ups, once per run)
            parts.append(f"{dist} (not installed)")
    parts.append(f"SQLite {sqlite3.sqlite_version}")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the job counts")
    parser.add_argument(
        "--only",
        default=",".join(COMPARISONS),
        help=f"comma-separated comparisons to run, of: {', '.join(COMPARISONS)} (default: all)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in COMPARISONS]
    if unknown:
        parser.error(f"unknown comparison {unknown[0]!r}; choose from {', '.join(COMPARISONS)}")
    if args.child:
        print(json.dumps(COMPARISONS[args.child](args.scale)))
        return
    rows: list[Row] = []
    profile = ""
    details: list[str] = []
    for name in chosen:
        try:
            result = subprocess.run(
                [sys.executable, __file__, "--child", name, "--scale", str(args.scale)],
                capture_output=True,
                text=True,
                timeout=CHILD_LIMIT,
            )
        except subprocess.TimeoutExpired:
            rows.append(not_run(name, "all", "-", f"timed out after {CHILD_LIMIT} s"))
            continue
        if result.returncode != 0:
            tail = result.stderr.strip().splitlines()[-1:] or ["?"]
            rows.append(not_run(name, "all", "-", f"comparison crashed: {tail[0][:100]}"))
            sys.stderr.write(result.stderr)
            continue
        out = json.loads(result.stdout.strip().splitlines()[-1])
        rows.extend(out["rows"])
        profile = out.get("profile", profile)
        if out.get("detail"):
            details.append(out["detail"])
    print(versions())
    print(
        f"scale {args.scale}; comparisons: {', '.join(chosen)}"
        + (f"; memory: medians of {REPEATS}" if "memory" in chosen else "")
        + ("; the stores: one run each" if {"sqlite", "postgres"} & set(chosen) else "")
    )
    print()
    print(table(rows))
    for detail in details:
        print()
        print(detail)
    if profile:
        print()
        print("cProfile of the sidecars MEMORY run (top by own time):")
        print(profile)
    failed = [r for r in rows if r["system"] == "sidecars" and r["value"] is None]
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
