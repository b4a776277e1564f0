"""PostgreSQL peers and start-latency probes for ``bench_jobs.py``'s ``postgres`` comparison.

Each adapter works in a database of its own, created on the given server for the run and
dropped afterwards (:func:`in_fresh_database`), so runs that share a server cannot see each
other's jobs. Every adapter asserts that each job ran exactly once.

Throughput: ``procrastinate_postgres`` and ``apscheduler_postgres`` return rates per second
under the metric names of the sidecars rows (``enqueue/s x100``: 100 concurrent callers,
one job per call; ``enqueue_many/s``: the peer's batch API, where it has one;
``processed/s``: a worker in the same process draining the queue, 16 jobs at once).

Start latency (``*_latency``): one job at a time into an idle worker, 20 ms apart, timed
with ``time.perf_counter`` in one process from just before the enqueue call to the first
line of the handler. Returns (p50, p99) in seconds over ``samples`` after 20 warm-ups.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
from tests.benchmarks.bench_jobs import Payload, payload, percentile

from sidecars import JobContext, RunType, Sidecars

T = TypeVar("T")

CALLERS = 100  # concurrent enqueuers, as for the sidecars and SAQ rows
CONCURRENCY = 16  # jobs at once in the worker, as for the sidecars and SAQ rows
POOL = 10  # connections, as the PostgresStore default (max_size=10)
WARMUP = 20
GAP = 0.02  # seconds between latency samples: the worker is idle again, waiting
LIMIT = 600.0  # seconds to wait for a drain before giving up


# -- databases -------------------------------------------------------------------------------


def with_database(dsn: str, name: str) -> str:
    """``dsn`` pointed at database ``name`` (a URL, or a libpq ``key=value`` string)."""
    if "://" not in dsn:
        return f"{dsn} dbname={name}"
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@asynccontextmanager
async def fresh_database(dsn: str) -> AsyncIterator[str]:
    """A new, empty database on ``dsn``'s server for the block; its DSN. Dropped after."""
    import asyncpg

    name = f"bench_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield with_database(dsn, name)
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def in_fresh_database(dsn: str, func: Callable[[str, int], Awaitable[T]], n: int) -> T:
    """``await func(fresh_dsn, n)`` in a database of its own on ``dsn``'s server."""
    async with fresh_database(dsn) as fresh:
        return await func(fresh, n)


async def wait_for(done: Callable[[], bool], what: str, limit: float = LIMIT) -> None:
    deadline = time.perf_counter() + limit
    while not done():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{what}: timed out")
        await asyncio.sleep(0.0005)


async def concurrent_callers(call: Callable[[int], Awaitable[object]], count: int) -> float:
    """Seconds for ``CALLERS`` tasks to make ``call(i)`` for every i in range(count)."""

    async def caller(k: int) -> None:
        for i in range(k, count, CALLERS):
            await call(i)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for k in range(CALLERS):
            tg.start_soon(caller, k)
    return time.perf_counter() - start


class Probe:
    """Stamps handler starts; :meth:`run` sends one job at a time and waits for its start."""

    def __init__(self) -> None:
        self.started: list[float] = []
        self.sent: list[float] = []
        self.ran = asyncio.Event()

    def stamp(self) -> None:
        """The handler's first act."""
        self.started.append(time.perf_counter())
        self.ran.set()

    async def run(self, enqueue: Callable[[int], Awaitable[object]], samples: int) -> None:
        for i in range(WARMUP + samples):
            await asyncio.sleep(GAP)
            self.ran.clear()
            self.sent.append(time.perf_counter())
            await enqueue(i)
            await asyncio.wait_for(self.ran.wait(), 10)
        assert len(self.started) == WARMUP + samples, "a job started more or less than once"

    def figures(self) -> tuple[float, float]:
        """(p50, p99) of the samples after the warm-ups."""
        lat = [s - t for s, t in zip(self.started, self.sent, strict=True)][WARMUP:]
        return percentile(lat, 50), percentile(lat, 99)


# -- procrastinate ---------------------------------------------------------------------------


def procrastinate_app(dsn: str, seen: list[int], probe: Probe | None = None) -> tuple[Any, Any]:
    from procrastinate import App, PsycopgConnector

    app = App(connector=PsycopgConnector(conninfo=dsn, min_size=4, max_size=POOL))

    @app.task(name="bench_noop")
    async def noop(user: int, name: str, score: float) -> None:
        if probe is not None:
            probe.stamp()
        seen.append(user)

    return app, noop


@asynccontextmanager
async def procrastinate_worker(app: Any) -> AsyncIterator[None]:
    """A worker in this process for the block; stopped as 3.10 documents: cancel its task
    (it then stops fetching, waits for running jobs and unregisters)."""
    task = asyncio.create_task(
        app.run_worker_async(concurrency=CONCURRENCY, install_signal_handlers=False, name="bench")
    )
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def procrastinate_postgres(dsn: str, n: int) -> dict[str, float]:
    """enqueue/s x100 (defer_async) for the first half of the n jobs, enqueue_many/s
    (batch_defer_async, 1000 a call) for the second, then processed/s for all n."""
    async with fresh_database(dsn) as db:
        seen: list[int] = []
        app, noop = procrastinate_app(db, seen)
        m = n // 2
        items = [payload(i).model_dump() for i in range(n)]
        out: dict[str, float] = {}
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            await noop.defer_async(**payload(-1).model_dump())  # opens the pool, untimed
            await app.connector.execute_query_async("DELETE FROM procrastinate_jobs")
            elapsed = await concurrent_callers(lambda i: noop.defer_async(**items[i]), m)
            out["enqueue/s x100"] = m / elapsed
            start = time.perf_counter()
            for lo in range(m, n, 1000):
                await noop.batch_defer_async(*items[lo : min(lo + 1000, n)])
            out["enqueue_many/s"] = (n - m) / (time.perf_counter() - start)
            start = time.perf_counter()
            async with procrastinate_worker(app):
                await wait_for(lambda: len(seen) >= n, "procrastinate drain")
                out["processed/s"] = n / (time.perf_counter() - start)
            done = await app.connector.execute_query_one_async(
                "SELECT count(*) AS c FROM procrastinate_jobs WHERE status = 'succeeded'"
            )
        assert sorted(seen) == list(range(n)), "a procrastinate job ran more or less than once"
        assert done["c"] == n, f"procrastinate recorded {done['c']} of {n} jobs as succeeded"
        return out


async def procrastinate_latency(dsn: str, samples: int) -> tuple[float, float]:
    async with fresh_database(dsn) as db:
        seen: list[int] = []
        probe = Probe()
        app, noop = procrastinate_app(db, seen, probe)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            async with procrastinate_worker(app):
                await asyncio.sleep(0.5)  # registered and listening
                await probe.run(lambda i: noop.defer_async(**payload(i).model_dump()), samples)
        assert sorted(seen) == list(range(WARMUP + samples))
        return probe.figures()


# -- APScheduler 4 ---------------------------------------------------------------------------

APS_SEEN: list[int] = []  # APScheduler stores a task as an import path: no closures


async def aps_pg_noop(user: int, name: str, score: float) -> None:
    APS_SEEN.append(user)


async def apscheduler_postgres(dsn: str, n: int) -> dict[str, float]:
    """enqueue/s x100 (add_job) and processed/s: the SQLAlchemy data store on asyncpg and a
    LISTEN/NOTIFY event broker, as for several processes on one database. The broker is
    psycopg's: 4.0.0a6's AsyncpgEventBroker calls anyio's start_soon from asyncpg's
    listener callback, outside any task, which anyio 4.16 refuses (NoEventLoopError)."""
    from apscheduler import AsyncScheduler
    from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
    from apscheduler.eventbrokers.psycopg import PsycopgEventBroker
    from sqlalchemy.ext.asyncio import create_async_engine

    APS_SEEN.clear()
    async with fresh_database(dsn) as db:
        url = "postgresql+asyncpg://" + db.split("://", 1)[1]
        engine = create_async_engine(url, pool_size=POOL, max_overflow=0)
        out: dict[str, float] = {}
        try:
            scheduler = AsyncScheduler(
                SQLAlchemyDataStore(engine),
                PsycopgEventBroker(db),
                max_concurrent_jobs=CONCURRENCY,
            )
            items = [payload(i).model_dump() for i in range(n)]
            async with scheduler:
                elapsed = await concurrent_callers(
                    lambda i: scheduler.add_job(aps_pg_noop, kwargs=items[i]), n
                )
                out["enqueue/s x100"] = n / elapsed
                start = time.perf_counter()
                await scheduler.start_in_background()
                await wait_for(lambda: len(APS_SEEN) >= n, "APScheduler drain")
                out["processed/s"] = n / (time.perf_counter() - start)
                await scheduler.stop()
                await scheduler.wait_until_stopped()
        finally:
            await engine.dispose()
    assert sorted(APS_SEEN) == list(range(n)), "an APScheduler job ran more or less than once"
    return out


# -- SAQ -------------------------------------------------------------------------------------


async def saq_latency(dsn: str, samples: int) -> tuple[float, float]:
    from saq import Queue, Worker

    async with fresh_database(dsn) as db:
        probe = Probe()
        seen: list[int] = []

        async def ping(ctx: Any, *, user: int, name: str, score: float) -> None:
            probe.stamp()
            seen.append(user)

        queue = Queue.from_url(db, name="latency")
        await queue.connect()
        try:
            worker = Worker(queue, functions=[("ping", ping)], concurrency=CONCURRENCY)
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.start)
                await asyncio.sleep(0.5)  # listening
                try:
                    await probe.run(
                        lambda i: queue.enqueue("ping", **payload(i).model_dump()), samples
                    )
                finally:
                    await worker.stop()
                    tg.cancel_scope.cancel()
        finally:
            await queue.disconnect()
        assert sorted(seen) == list(range(WARMUP + samples))
        return probe.figures()


# -- sidecars and the floor ------------------------------------------------------------------


def latency_app(dsn: str, schema: str, probe: Probe | None) -> tuple[Sidecars, Any]:
    from sidecars.stores.postgres import PostgresStore

    sc = Sidecars(PostgresStore(dsn, schema=schema))

    @sc.sidecar(handle="ping_pg", run_type=RunType.DEFERRED, concurrency=CONCURRENCY)
    async def ping(job: JobContext[Payload]) -> None:
        if probe is not None:
            probe.stamp()

    return sc, ping


async def sidecars_latency(
    dsn: str, samples: int, notify_only: bool = False
) -> tuple[float, float]:
    """Enqueued by the app whose runner runs the job (it is woken in process), or with
    ``notify_only`` by a second app on the same schema with no runner, so that only the
    store's NOTIFY wakes the runner (as for an enqueue from another process)."""
    async with fresh_database(dsn) as db:
        probe = Probe()
        sc, ping = latency_app(db, "bench", probe)
        producer, remote_ping = latency_app(db, "bench", None)
        async with sc.run(), producer:
            await asyncio.sleep(0.5)  # migrated and listening
            target = remote_ping if notify_only else ping
            await probe.run(lambda i: target.enqueue(payload(i)), samples)
        return probe.figures()


async def floor_latency(dsn: str, samples: int) -> tuple[float, float]:
    """Plain asyncpg: INSERT and NOTIFY in one statement; the LISTEN callback wakes a loop
    that claims the row with UPDATE ... FOR UPDATE SKIP LOCKED RETURNING on its own
    connection, then stamps. The least a NOTIFY-woken PostgreSQL queue can do."""
    import asyncpg

    async with fresh_database(dsn) as db:
        probe = Probe()
        sender = await asyncpg.connect(db)
        listener = await asyncpg.connect(db)
        claimer = await asyncpg.connect(db)
        wake = asyncio.Event()
        try:
            await sender.execute(
                "CREATE TABLE lat (id bigserial PRIMARY KEY, state text NOT NULL DEFAULT"
                " 'queued', payload jsonb NOT NULL)"
            )
            await listener.add_listener("lat", lambda *_: wake.set())

            async def claim_loop() -> None:
                while True:
                    await wake.wait()
                    wake.clear()
                    while await claimer.fetchrow(
                        "UPDATE lat SET state = 'running' WHERE id = (SELECT id FROM lat"
                        " WHERE state = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
                        " RETURNING payload"
                    ):
                        probe.stamp()

            async def send(i: int) -> None:
                await sender.execute(
                    "WITH ins AS (INSERT INTO lat (payload) VALUES ($1) RETURNING id)"
                    " SELECT pg_notify('lat', id::text) FROM ins",
                    payload(i).model_dump_json(),
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(claim_loop)
                await probe.run(send, samples)
                tg.cancel_scope.cancel()
        finally:
            for conn in (sender, listener, claimer):
                await conn.close()
        return probe.figures()
