"""PostgreSQL-specific behaviour of PostgresStore: migrations, schema names, concurrency,
transactional and bulk enqueue, LISTEN/NOTIFY wake-ups, PgBouncer mode and pruning."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import anyio
import asyncpg
import pytest
from pydantic import BaseModel

from sidecars import JobContext, JobState, Outcome, RunType, Sidecars
from sidecars.exceptions import StoreUnavailable
from sidecars.stores import Finish, FireRequest, FireStatus
from sidecars.stores._pg_schema import MIGRATIONS
from sidecars.stores.postgres import PostgresStore

from ..stores._support import NOW, new_job
from .conftest import MakeStore

pytestmark = pytest.mark.anyio

LEASE = 30.0


def ok(job_id: UUID, token: str, at: float = NOW + 1) -> Finish:
    return Finish(
        id=job_id, token=token, state=JobState.SUCCEEDED, outcome=Outcome.OK, finished_at=at
    )


class TestMigrations:
    async def test_concurrent_opens_agree(
        self, make_store: MakeStore, pg_server: str, pg_schema: str
    ) -> None:
        """Four stores opening one new schema at once leave one row per migration, no error."""
        stores = [make_store() for _ in range(4)]
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(store.open)
        conn = await asyncpg.connect(pg_server)
        try:
            rows = await conn.fetch(f'SELECT version FROM "{pg_schema}".migrations')
        finally:
            await conn.close()
        assert sorted(r[0] for r in rows) == [v for v, _ in MIGRATIONS]
        assert await stores[0].migrate() == MIGRATIONS[-1][0]

    async def test_migrate_before_open(self, make_store: MakeStore) -> None:
        """migrate() opens the store and returns the current schema version."""
        store = make_store()
        assert await store.migrate() == MIGRATIONS[-1][0]
        assert await store.migrate() == MIGRATIONS[-1][0]

    async def test_newer_schema_refused(
        self, make_store: MakeStore, pg_server: str, pg_schema: str
    ) -> None:
        """A schema migrated by a newer sidecars makes open raise StoreUnavailable."""
        await make_store().open()
        conn = await asyncpg.connect(pg_server)
        try:
            await conn.execute(f'INSERT INTO "{pg_schema}".migrations VALUES (999, 0)')
        finally:
            await conn.close()
        with pytest.raises(StoreUnavailable, match="upgrade sidecars"):
            await make_store().open()


class TestConfiguration:
    @pytest.mark.parametrize(
        "name",
        ["", "Jobs", "1jobs", "a-b", 'x"; DROP TABLE t; --', "a b", "j" * 49, "ünïcode"],
    )
    def test_bad_schema_names_refused(self, name: str) -> None:
        """A schema name outside [a-z_][a-z0-9_]{0,47} raises ValueError naming the field."""
        with pytest.raises(ValueError, match="schema"):
            PostgresStore("postgresql://localhost/x", schema=name)

    def test_dsn_or_pool(self) -> None:
        """Exactly one of dsn and pool is required."""
        with pytest.raises(ValueError, match="dsn"):
            PostgresStore()

    async def test_unreachable_server(self) -> None:
        """A server that refuses connections raises StoreUnavailable on open."""
        with socket_port() as port:
            store = PostgresStore(f"postgresql://postgres@127.0.0.1:{port}/postgres")
            with pytest.raises(StoreUnavailable):
                await store.open()

    async def test_user_pool_not_closed(self, make_store: MakeStore, pg_server: str) -> None:
        """A store given a pool uses it and leaves it open on close."""
        pool = await asyncpg.create_pool(pg_server, min_size=1, max_size=2)
        try:
            store = make_store(pool=pool)
            job = new_job()
            await store.enqueue([job])
            await store.close()
            assert not pool._closed
            assert await store.get_job(job.id) is not None
        finally:
            await pool.close()

    def test_import_does_not_load_asyncpg(self) -> None:
        """import sidecars and sidecars.stores never import asyncpg."""
        code = "import sys, sidecars, sidecars.stores; assert 'asyncpg' not in sys.modules"
        subprocess.run([sys.executable, "-c", code], check=True)


class socket_port:
    """A local port with nothing listening on it, for as long as the block runs."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        port: int = self.sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


class TestConcurrency:
    async def test_skip_locked_claimers_split_the_work(self, make_store: MakeStore) -> None:
        """Eight claimers on four stores over 2,000 jobs claim and finish each exactly once."""
        seed = make_store()
        jobs = [new_job(run_at=NOW - i) for i in range(2000)]
        assert await seed.bulk_enqueue(jobs) == 2000
        stores = [make_store(max_size=2) for _ in range(4)]
        claims: Counter[UUID] = Counter()
        finished: set[UUID] = set()

        async def claimer(store: PostgresStore) -> None:
            while batch := await store.claim(["h"], 25, now=NOW, lease=LEASE):
                claims.update(j.id for j in batch)
                finished.update(await store.finish([ok(j.id, j.token) for j in batch]))

        async with anyio.create_task_group() as tg:
            for store in stores * 2:
                tg.start_soon(claimer, store)
        assert set(claims) == {j.id for j in jobs}
        assert max(claims.values()) == 1
        assert finished == set(claims)

    async def test_fires_from_two_stores(self, make_store: MakeStore) -> None:
        """Two stores claiming the same 40 fires at once get exactly one CLAIMED per fire."""
        a, b = make_store(), make_store()
        requests = [
            FireRequest(handle=f"h{i % 4}", fire_at=int(NOW) + i, skip_if_running=False)
            for i in range(40)
        ]
        answers: list[FireStatus] = []
        keys: Counter[tuple[str, int]] = Counter()

        async def claim(store: PostgresStore) -> None:
            for _ in range(3):
                for answer in await store.claim_fires(requests, now=NOW, lease=LEASE):
                    answers.append(answer.status)
                    if answer.status is FireStatus.CLAIMED:
                        keys[(answer.handle, answer.fire_at)] += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(claim, a)
            tg.start_soon(claim, b)
        assert len(keys) == 40
        assert set(keys.values()) == {1}
        assert answers.count(FireStatus.TAKEN) == 40 * 5

    async def test_overlapping_fires_from_two_stores(self, make_store: MakeStore) -> None:
        """Two stores claiming different fires of one skip-if-running handle: one runs."""
        a, b = make_store(), make_store()
        first, second = await _gather(
            a.claim_fires([FireRequest(handle="h", fire_at=int(NOW))], now=NOW, lease=LEASE),
            b.claim_fires([FireRequest(handle="h", fire_at=int(NOW) + 1)], now=NOW, lease=LEASE),
        )
        statuses = sorted(x.status.value for x in (*first, *second))
        assert statuses == ["claimed", "skipped"]


async def _gather(*calls):  # type: ignore[no-untyped-def]
    results: list[object] = [None] * len(calls)

    async def run(i: int, call) -> None:  # type: ignore[no-untyped-def]
        results[i] = await call

    async with anyio.create_task_group() as tg:
        for i, call in enumerate(calls):
            tg.start_soon(run, i, call)
    return results


class Task(BaseModel):
    n: int


@contextlib.asynccontextmanager
async def rolled_back(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """A transaction on ``conn`` that is rolled back at the end of the block."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        yield
    finally:
        await transaction.rollback()


class TestTransactionalEnqueue:
    async def test_commit_and_rollback(self, make_store: MakeStore, pg_server: str) -> None:
        """A job enqueued in the caller's transaction exists iff that transaction commits."""
        store = make_store()
        kept, dropped = new_job(), new_job()
        conn = await asyncpg.connect(pg_server)
        try:
            async with conn.transaction():
                await store.enqueue_in(conn, [kept])
                assert await store.get_job(kept.id) is None  # not visible before commit
            async with rolled_back(conn):
                await store.enqueue_in(conn, [dropped])
            # A bulk batch in a rolled-back transaction leaves nothing either.
            bulk = [new_job() for _ in range(store.copy_threshold)]
            async with rolled_back(conn):
                await store.enqueue_in(conn, bulk)
        finally:
            await conn.close()
        assert await store.get_job(kept.id) is not None
        assert await store.get_job(dropped.id) is None
        assert await store.get_job(bulk[0].id) is None

    async def test_app_enqueue_with_connection(self, make_store: MakeStore, pg_server: str) -> None:
        """enqueue(connection=...) through Sidecars stores the job iff the caller commits."""
        sc, _runs, work = _app(make_store())
        conn = await asyncpg.connect(pg_server)
        try:
            async with conn.transaction():
                ref = await work.enqueue(Task(n=1), connection=conn)
            async with rolled_back(conn):
                lost = await work.enqueue(Task(n=2), connection=conn)
        finally:
            await conn.close()
        info = await sc.get_job(ref.id)
        assert info is not None
        assert info.state is JobState.QUEUED
        assert await sc.get_job(lost.id) is None
        await sc.aclose()

    async def test_runner_woken_by_notify(self, make_store: MakeStore, pg_server: str) -> None:
        """A running Sidecars starts a job committed on another connection well before polling."""
        sc, runs, work = _app(make_store())
        conn = await asyncpg.connect(pg_server)
        try:
            async with sc.run():
                await anyio.sleep(0.2)  # the watch is listening
                async with conn.transaction():
                    await work.enqueue(Task(n=1), connection=conn)
                with anyio.fail_after(2):  # poll_interval is 5 s: only the NOTIFY can do this
                    while not runs:
                        await anyio.sleep(0.005)
        finally:
            await conn.close()
        assert runs == [1]


def _app(store: PostgresStore) -> tuple[Sidecars, list[int], Any]:
    sc = Sidecars(store, lease=2.0, lease_renew=0.5, poll_interval=5.0, grace=2.0)
    runs: list[int] = []

    @sc.sidecar(handle="work", run_type=RunType.DEFERRED)
    async def work(job: JobContext[Task]) -> None:
        runs.append(job.payload.n)

    return sc, runs, work


class TestBulkEnqueue:
    async def test_copy_skips_duplicates(self, make_store: MakeStore) -> None:
        """A COPY batch with a repeated id and an existing id inserts the rest, no error."""
        store = make_store()
        existing = new_job()
        await store.enqueue([existing])
        batch = [new_job() for _ in range(700)]
        batch.append(batch[10])
        batch.append(existing)
        assert await store.bulk_enqueue(batch) == 700
        await store.enqueue(batch)  # through enqueue: above copy_threshold, the same path
        for job in batch[::50]:
            assert await store.get_job(job.id) is not None
        claimed = await store.claim(["h"], 1000, now=NOW, lease=LEASE)
        assert len(claimed) == 701

    async def test_small_batch_still_all_or_nothing(self, make_store: MakeStore) -> None:
        """Below copy_threshold a duplicate id fails the whole batch with ValueError."""
        store = make_store()
        existing = new_job()
        await store.enqueue([existing])
        fresh = new_job()
        with pytest.raises(ValueError, match="job id"):
            await store.enqueue([fresh, existing])
        assert await store.get_job(fresh.id) is None


class TestWakeUps:
    async def test_watch_wakes_on_enqueue_elsewhere(self, make_store: MakeStore) -> None:
        """watch() calls wake(handle) soon after another store instance enqueues a job."""
        listener, sender = make_store(), make_store()
        woken: list[tuple[str, float]] = []
        first = anyio.Event()

        def wake(handle: str) -> None:
            woken.append((handle, time.perf_counter()))
            first.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.watch, ["h", "other"], wake)
            with anyio.fail_after(5):
                await first.wait()  # the wake-up for jobs enqueued before it listened
            woken.clear()
            for _ in range(3):
                await sender.enqueue([new_job("h"), new_job("unwatched")])
                sent = time.perf_counter()
                with anyio.fail_after(2):
                    while not woken:
                        await anyio.sleep(0.001)
                assert [h for h, _ in woken] == ["h"]
                assert woken[0][1] - sent < 0.5
                woken.clear()
            tg.cancel_scope.cancel()

    async def test_listen_false_for_pgbouncer(self, make_store: MakeStore) -> None:
        """listen=False works without prepared statements, and watch() only idles."""
        store = make_store(listen=False, min_size=1, max_size=1)
        job = new_job()
        await store.enqueue([job])
        (claimed,) = await store.claim(["h"], 5, now=NOW, lease=LEASE)
        assert await store.finish([ok(claimed.id, claimed.token)]) == {job.id}
        pool = store.pool
        assert pool is not None
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM pg_prepared_statements") == 0
        woken: list[str] = []
        with anyio.move_on_after(0.3) as scope:
            await store.watch(["h"], woken.append)
        assert scope.cancelled_caught
        assert woken == []


class TestPruning:
    async def test_prune_jobs_in_batches(self, make_store: MakeStore) -> None:
        """prune_jobs deletes old finished jobs across several batches and keeps the rest."""
        store = make_store()
        old = [new_job() for _ in range(2500)]
        await store.bulk_enqueue(old)
        claimed = await store.claim(["h"], 3000, now=NOW, lease=LEASE)
        assert len(claimed) == 2500
        await store.finish([ok(j.id, j.token, at=NOW + 1) for j in claimed])
        recent, queued = new_job(), new_job()
        await store.enqueue([recent, queued])
        (r,) = await store.claim(["h"], 1, now=NOW + 100, lease=LEASE)
        await store.finish([ok(r.id, r.token, at=NOW + 200)])
        assert await store.prune_jobs(before=NOW + 100) == 2500
        assert await store.get_job(old[0].id) is None
        assert await store.get_job(r.id) is not None
        other = queued if r.id == recent.id else recent
        assert await store.get_job(other.id) is not None
        assert await store.prune_jobs(before=NOW + 100) == 0

    async def test_default_cutoff_is_retention(self, make_store: MakeStore) -> None:
        """Without before=, jobs finished longer ago than retention are pruned."""
        store = make_store()
        job = new_job()
        await store.enqueue([job])
        (c,) = await store.claim(["h"], 1, now=NOW, lease=LEASE)
        await store.finish([ok(c.id, c.token, at=NOW)])
        assert await store.prune_jobs() == 1  # NOW is in 2023, long past 7 days


class TestLostClaimAnswers:
    async def test_jobs_of_a_claim_whose_answer_was_lost_are_given_back(
        self, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A claim that committed but whose answer never arrived (the connection failed)
        leaves its jobs running under an unknown token; the next claim gives them back
        (the attempt not counted) and they are claimed again at once, not after the lease."""
        store = make_store()
        jobs = [new_job("h") for _ in range(3)]
        await store.enqueue(jobs)
        real_fetch = store._fetch

        async def answer_lost(what: str, sql: str, *args: Any) -> list[Any]:
            await real_fetch(what, sql, *args)  # committed on the server...
            raise StoreUnavailable("connection lost")  # ...but the answer is gone

        monkeypatch.setattr(store, "_fetch", answer_lost)
        with pytest.raises(StoreUnavailable):
            await store.claim(["h"], 10, now=NOW, lease=300)
        monkeypatch.setattr(store, "_fetch", real_fetch)
        info = await store.get_job(jobs[0].id)
        assert info is not None
        assert info.state is JobState.RUNNING  # what the lost claim did
        again = await store.claim(["h"], 10, now=NOW + 1, lease=300)  # long before expiry
        assert sorted(j.id for j in again) == sorted(j.id for j in jobs)
        assert all(j.attempt == 1 for j in again)
        assert await store.claim(["h"], 10, now=NOW + 2, lease=300) == []
