"""PostgreSQL-specific behaviour of unique job keys: replicas racing, COPY batches, the
caller's transaction, and the migration that adds keys."""

from __future__ import annotations

import time

import anyio
import asyncpg
import pytest

from sidecars import JobRef, JobState
from sidecars.stores._pg_schema import MIGRATIONS, MIGRATIONS_TABLE, quote_schema

from ..stores._support import NOW, new_job
from ..stores.test_keys import keyed
from .conftest import MakeStore

pytestmark = pytest.mark.anyio

LEASE = 30.0


class TestReplicas:
    async def test_two_stores_race_for_one_key(self, make_store: MakeStore) -> None:
        """Two stores (two pools) enqueueing one key at once create exactly one job."""
        stores = [make_store(), make_store()]
        refs: list[JobRef] = []

        async def send(i: int) -> None:
            refs.extend(await stores[i % 2].enqueue([keyed("k"), keyed(f"own{i}")]))

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(send, i)
        shared = refs[::2]
        created = [r for r in shared if r.created]
        assert len(created) == 1
        assert {r.id for r in shared} == {created[0].id}
        assert all(r.created for r in refs[1::2])
        claimed = await stores[0].claim(["h"], 100, now=NOW, lease=LEASE)
        assert len(claimed) == 41

    async def test_race_while_the_holder_is_claimed(self, make_store: MakeStore) -> None:
        """Enqueues of one key racing with claims always answer with a real job."""
        enqueuer, claimer = make_store(), make_store()
        refs: list[JobRef] = []
        done = anyio.Event()

        async def send() -> None:
            for _ in range(100):
                refs.extend(await enqueuer.enqueue([keyed("k")]))
            done.set()

        async def take() -> None:
            while not done.is_set():
                await claimer.claim(["h"], 10, now=NOW, lease=LEASE)

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            tg.start_soon(take)
        for ref in refs:
            assert await enqueuer.get_job(ref.id) is not None


class TestBulkKeys:
    async def test_copy_batch_with_keys(self, make_store: MakeStore) -> None:
        """A COPY batch answers taken keys, repeated keys and taken ids like a small batch."""
        store = make_store(copy_threshold=10)
        held = keyed("held")
        existing = new_job()
        await store.enqueue([held, existing])
        fresh = [keyed(f"k{i}") for i in range(10)]
        batch = [*fresh, keyed("held"), keyed("k3"), existing, keyed(None)]
        refs = await store.enqueue(batch)
        assert [(r.id, r.created) for r in refs] == [
            *((j.id, True) for j in fresh),
            (held.id, False),
            (fresh[3].id, False),
            (existing.id, False),
            (batch[-1].id, True),
        ]
        assert len(await store.claim(["h"], 100, now=NOW, lease=LEASE)) == 13

    async def test_bulk_enqueue_counts_new_jobs(self, make_store: MakeStore) -> None:
        """bulk_enqueue counts only the jobs it inserted, keyed ones included."""
        store = make_store()
        await store.enqueue([keyed("a")])
        assert await store.bulk_enqueue([keyed("a"), keyed("b"), keyed("b"), keyed(None)]) == 2

    async def test_keys_inside_the_callers_transaction(
        self, make_store: MakeStore, pg_server: str
    ) -> None:
        """enqueue_in answers keys, and a rolled-back transaction leaves the key free."""
        store = make_store()
        held = keyed("k")
        await store.enqueue([held])
        conn = await asyncpg.connect(pg_server)
        try:
            async with conn.transaction():
                refs = await store.enqueue_in(conn, [keyed("k"), keyed("other")])
            assert [(r.id, r.created) for r in refs] == [(held.id, False), (refs[1].id, True)]
            tx = conn.transaction()
            await tx.start()
            (ref,) = await store.enqueue_in(conn, [keyed("later")])
            await tx.rollback()
        finally:
            await conn.close()
        assert await store.get_job(ref.id) is None
        assert (await store.enqueue([keyed("later")]))[0].created


class TestKeyMigration:
    async def test_migrates_a_version_1_schema(
        self, make_store: MakeStore, pg_server: str, pg_schema: str
    ) -> None:
        """A schema at version 1 gains the key column and index on open and keeps its jobs."""
        s = quote_schema(pg_schema)
        job = new_job()
        conn = await asyncpg.connect(pg_server)
        try:
            await conn.execute(f"CREATE SCHEMA {s}")
            await conn.execute(MIGRATIONS_TABLE.format(s=s))
            ((version, statements),) = [m for m in MIGRATIONS if m[0] == 1]
            for statement in statements:
                await conn.execute(statement.format(s=s))
            await conn.execute(f"INSERT INTO {s}.migrations VALUES ($1, $2)", version, time.time())
            await conn.execute(
                f"INSERT INTO {s}.jobs (id, handle, state, payload, max_attempts, run_at, "
                "created_at) VALUES ($1, 'h', 'queued', '{}', 1, $2, $2)",
                job.id,
                NOW,
            )
        finally:
            await conn.close()
        store = make_store()
        assert await store.migrate() == MIGRATIONS[-1][0] == 2
        info = await store.get_job(job.id)
        assert info is not None
        assert info.state is JobState.QUEUED
        assert info.key is None
        first, second = keyed("k"), keyed("k")
        refs = await store.enqueue([first]) + await store.enqueue([second])
        assert [(r.id, r.created) for r in refs] == [(first.id, True), (first.id, False)]
        conn = await asyncpg.connect(pg_server)
        try:
            versions = [r[0] for r in await conn.fetch(f"SELECT version FROM {s}.migrations")]
            index = await conn.fetchval("SELECT to_regclass($1)", f"{pg_schema}.jobs_key")
        finally:
            await conn.close()
        assert sorted(versions) == [1, 2]
        assert index is not None
