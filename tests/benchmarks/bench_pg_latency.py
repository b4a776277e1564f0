"""Cross-process start latency on PostgreSQL: a job enqueued in this process, started by an
idle runner in another one, next to the raw NOTIFY -> LISTEN floor of plain asyncpg.

Both sides write ``time.time()`` (same host, same clock): this process just before and
just after ``enqueue`` returns (the commit is acknowledged), the worker as the first act of
its handler. One job at a time, each sent once the worker is idle again, so every sample
is a wake-up of an idle runner (it polls only every second; NOTIFY is what wakes it).

Not collected by pytest. Starts its own throwaway server (``tests/pg_server.py``) unless
``SIDECARS_TEST_PG_DSN`` names one. Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_pg_latency.py [N_JOBS]
"""

from __future__ import annotations

import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio
import asyncpg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: make ``tests`` importable

from tests.pg_server import PgServer, drop_schema  # noqa: E402
from tests.procs.pg_worker import RAW_CHANNEL, Work, _declare_ping  # noqa: E402

from sidecars import Sidecars  # noqa: E402
from sidecars.stores.postgres import PostgresStore  # noqa: E402

WORKER = ROOT / "tests" / "procs" / "pg_worker.py"
WARMUP = 20


def report(name: str, samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    figures = {"p50": statistics.median(ms), "p90": q[89], "p99": q[98], "max": ms[-1]}
    print(
        f"  {name:<44} n={len(ms):<5} " + "  ".join(f"{k} {v:7.3f} ms" for k, v in figures.items())
    )
    return figures


def start_worker(mode: str, dsn: str, schema: str, folder: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), mode, "--dsn", dsn, "--schema", schema,
         "--dir", str(folder), "--name", mode],
        stderr=open(folder / f"{mode}.err", "wb"),  # noqa: SIM115 - closed with the process
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not (folder / f"{mode}.ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((folder / f"{mode}.err").read_text())
        time.sleep(0.05)
    return proc


async def seen(log: Path, key: str, limit: float = 5.0) -> float:
    """The time the worker wrote next to ``key`` (its second field) in its log."""
    with anyio.fail_after(limit):
        while True:
            for line in reversed((await anyio.Path(log).read_text()).splitlines()):
                fields = line.split()
                if fields[1] == key:
                    return float(fields[2])
            await anyio.sleep(0.002)


async def bench_jobs(dsn: str, schema: str, folder: Path, n: int) -> None:
    proc = start_worker("latency", dsn, schema, folder)
    log = folder / "latency.log"
    sc = Sidecars(PostgresStore(dsn, schema=schema))
    _declare_ping(sc, io.StringIO())  # the handler never runs in this process
    ping = sc.sidecars["ping"]
    since_call, since_return = [], []
    try:
        async with sc:
            for i in range(WARMUP + n):
                await anyio.sleep(0.02)  # the worker is idle again, waiting in its claim loop
                before = time.time()
                await ping.enqueue(Work(n=i))
                after = time.time()
                started = await seen(log, str(i))
                if i >= WARMUP:
                    since_call.append(started - before)
                    since_return.append(started - after)
    finally:
        (folder / "stop").touch()
        proc.wait(timeout=30)
        (folder / "stop").unlink()
    print(f"job start latency, enqueue in this process -> handler start in another ({n} jobs):")
    report("enqueue returned (commit acked) -> start", since_return)
    report("enqueue called -> start", since_call)


async def bench_notify(dsn: str, folder: Path, n: int) -> None:
    proc = start_worker("listen", dsn, "unused", folder)
    log = folder / "listen.log"
    since_call, since_return = [], []
    conn = await asyncpg.connect(dsn)
    try:
        for i in range(WARMUP + n):
            await anyio.sleep(0.02)
            before = time.time()
            await conn.execute("SELECT pg_notify($1, $2)", RAW_CHANNEL, str(i))
            after = time.time()
            received = await seen(log, str(i))
            if i >= WARMUP:
                since_call.append(received - before)
                since_return.append(received - after)
    finally:
        await conn.close()
        (folder / "stop").touch()
        proc.wait(timeout=30)
        (folder / "stop").unlink()
    print(f"raw floor, plain asyncpg NOTIFY -> LISTEN callback in another process ({n}):")
    report("NOTIFY returned -> callback", since_return)
    report("NOTIFY called -> callback", since_call)


async def main(dsn: str, n: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="sidecars-bench-"))
    schema = f"b_{uuid.uuid4().hex[:12]}"
    try:
        await bench_notify(dsn, folder, n)
        await bench_jobs(dsn, schema, folder, n)
    finally:
        await drop_schema(dsn, schema)


if __name__ == "__main__":
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    existing = os.environ.get("SIDECARS_TEST_PG_DSN")
    server = None if existing else PgServer()
    try:
        anyio.run(main, existing or server.start(), jobs)  # type: ignore[union-attr]
    finally:
        if server is not None:
            server.stop()
