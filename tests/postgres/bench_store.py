"""PostgresStore figures: enqueue (sequential, group-committed, COPY), claim throughput with
N claimers, and the NOTIFY wake-up latency of ``watch``.

Not collected by pytest (no ``test_`` prefix). Starts its own throwaway server (or uses
``SIDECARS_TEST_PG_DSN``). Run:

    .venv/bin/python -m tests.postgres.bench_store [N_JOBS]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid

import anyio

from sidecars._records import JobState, Outcome
from sidecars.stores import Finish, NewJob
from sidecars.stores.postgres import PostgresStore
from tests.pg_server import PgServer, drop_schema


def job(handle: str = "h") -> NewJob:
    now = time.time()
    return NewJob(
        id=uuid.uuid4(),
        handle=handle,
        payload='{"n": 1}',
        run_at=now,
        created_at=now,
        max_attempts=5,
    )


async def fresh(dsn: str, **kwargs: object) -> PostgresStore:
    store = PostgresStore(dsn, schema=f"b_{uuid.uuid4().hex[:12]}", **kwargs)  # type: ignore[arg-type]
    await store.open()
    return store


async def bench_enqueue(dsn: str, n: int) -> None:
    store = await fresh(dsn, max_size=10)
    jobs = [job() for _ in range(n // 10)]
    t = time.perf_counter()
    for one in jobs:
        await store.enqueue([one])
    report("enqueue, sequential awaits", len(jobs), time.perf_counter() - t)

    jobs = [job() for _ in range(n)]
    t = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for one in jobs:
            tg.start_soon(store.enqueue, [one])
    report("enqueue, concurrent (group commit)", n, time.perf_counter() - t)

    jobs = [job() for _ in range(n)]
    t = time.perf_counter()
    for i in range(0, n, 400):
        await store.enqueue(jobs[i : i + 400])
    report("enqueue, batches of 400 (unnest)", n, time.perf_counter() - t)

    jobs = [job() for _ in range(n)]
    t = time.perf_counter()
    await store.bulk_enqueue(jobs)
    report(f"bulk_enqueue, one COPY of {n}", n, time.perf_counter() - t)
    await cleanup(dsn, store)


async def bench_claims(dsn: str, n: int, claimers: int, batch: int) -> None:
    seed = await fresh(dsn)
    await seed.bulk_enqueue([job() for _ in range(n)])
    stores = [PostgresStore(dsn, schema=seed.schema, max_size=2) for _ in range(claimers)]
    done = 0

    async def claimer(store: PostgresStore) -> None:
        nonlocal done
        while jobs := await store.claim(["h"], batch, now=time.time(), lease=30):
            now = time.time()
            await store.finish(
                [
                    Finish(
                        id=j.id,
                        token=j.token,
                        state=JobState.SUCCEEDED,
                        outcome=Outcome.OK,
                        finished_at=now,
                    )
                    for j in jobs
                ]
            )
            done += len(jobs)

    for store in stores:
        await store.open()
    t = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for store in stores:
            tg.start_soon(claimer, store)
    report(f"claim+finish, {claimers} claimers, batch {batch}", done, time.perf_counter() - t)
    for store in stores:
        await store.close()
    await cleanup(dsn, seed)


async def bench_wakeup(dsn: str, rounds: int = 300) -> None:
    listener = await fresh(dsn)
    sender = PostgresStore(dsn, schema=listener.schema)
    await sender.open()
    woken = anyio.Event()
    latencies: list[float] = []

    def wake(_handle: str) -> None:
        woken.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.watch, ["h"], wake)
        await woken.wait()
        for _ in range(rounds):
            woken = anyio.Event()
            t = time.perf_counter()
            await sender.enqueue([job()])
            await woken.wait()
            latencies.append(time.perf_counter() - t)
        tg.cancel_scope.cancel()
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(
        f"enqueue -> wake(handle) on another store: p50 {p50:.2f} ms, p99 {p99:.2f} ms "
        f"({rounds} rounds, includes the enqueue's own commit)"
    )
    await sender.close()
    await cleanup(dsn, listener)


async def cleanup(dsn: str, store: PostgresStore) -> None:
    await store.close()
    await drop_schema(dsn, store.schema)


def report(what: str, n: int, elapsed: float) -> None:
    print(f"{what:42} {n:6} jobs {elapsed * 1000:8.1f} ms {n / elapsed:9.0f} jobs/s")


async def main(dsn: str, n: int) -> None:
    await bench_enqueue(dsn, n)
    for claimers in (1, 4, 8):
        await bench_claims(dsn, n, claimers, 50)
    await bench_wakeup(dsn)


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    existing = os.environ.get("SIDECARS_TEST_PG_DSN")
    server = None if existing else PgServer()
    try:
        target = existing or server.start()  # type: ignore[union-attr]
        anyio.run(main, target, count, backend="asyncio")
    finally:
        if server is not None:
            server.stop()
