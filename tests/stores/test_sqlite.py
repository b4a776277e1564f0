"""SQLiteStore behaviour beyond the contract: durability, schema, locking, group commit, fires."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from sidecars._records import JobState, Outcome
from sidecars.exceptions import StoreUnavailable
from sidecars.stores import FireRequest, FireStatus, SQLiteStore
from sidecars.stores import sqlite as sqlite_module
from sidecars.stores._sqlite_schema import MIGRATIONS, MIGRATIONS_TABLE

from ._support import NOW, new_job
from .test_keys import keyed

pytestmark = pytest.mark.anyio


def raw(path: Path) -> sqlite3.Connection:
    """A plain second connection, as another process would have."""
    return sqlite3.connect(path, isolation_level=None)


class TestConfiguration:
    @pytest.mark.parametrize("value", ["OFF", "EXTRA", "normal!", ""])
    def test_synchronous_validated(self, tmp_path: Path, value: str) -> None:
        """Only NORMAL and FULL are accepted for synchronous."""
        with pytest.raises(ValueError, match="synchronous"):
            SQLiteStore(tmp_path / "x.db", synchronous=value)

    def test_negative_busy_timeout(self, tmp_path: Path) -> None:
        """A negative busy timeout is refused."""
        with pytest.raises(ValueError, match="busy_timeout"):
            SQLiteStore(tmp_path / "x.db", busy_timeout=-1)

    @pytest.mark.parametrize(("value", "pragma"), [("NORMAL", 1), ("full", 2)])
    async def test_synchronous_applied(self, tmp_path: Path, value: str, pragma: int) -> None:
        """The connection runs in WAL mode with the chosen synchronous level."""
        store = SQLiteStore(tmp_path / "x.db", synchronous=value)
        await store.open()
        try:
            conn = store._conn
            assert conn is not None
            rows = list(await conn.execute_fetchall("PRAGMA synchronous"))
            assert rows[0][0] == pragma
            rows = list(await conn.execute_fetchall("PRAGMA journal_mode"))
            assert rows[0][0] == "wal"
        finally:
            await store.close()

    def test_old_sqlite_refused(self) -> None:
        """A SQLite library older than 3.35 is refused with a clear message."""
        with pytest.raises(StoreUnavailable, match=r"3\.35"):
            sqlite_module.check_sqlite_version((3, 34, 1))
        sqlite_module.check_sqlite_version((3, 35, 0))

    async def test_old_sqlite_refused_at_open(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Opening on a too-old SQLite raises StoreUnavailable and creates nothing."""
        monkeypatch.setattr(sqlite_module.sqlite3, "sqlite_version_info", (3, 31, 1))
        store = SQLiteStore(tmp_path / "x.db")
        with pytest.raises(StoreUnavailable):
            await store.open()
        assert not (tmp_path / "x.db").exists()

    async def test_unopenable_path(self, tmp_path: Path) -> None:
        """A path that cannot be opened raises StoreUnavailable."""
        store = SQLiteStore(tmp_path / "missing-dir" / "x.db")
        with pytest.raises(StoreUnavailable):
            await store.open()


class TestLifecycle:
    async def test_durable_across_reopen(self, tmp_path: Path) -> None:
        """Jobs and their states survive closing the store and opening a new one."""
        path = tmp_path / "jobs.db"
        first = SQLiteStore(path)
        jobs = [new_job(), new_job()]
        await first.enqueue(jobs)
        (claimed,) = await first.claim(["h"], 1, now=NOW, lease=30)
        await first.close()
        await first.close()

        second = SQLiteStore(path)
        try:
            info = await second.get_job(claimed.id)
            assert info is not None
            assert info.state is JobState.RUNNING
            assert info.attempts == 1
            others = [j for j in jobs if j.id != claimed.id]
            assert await second.get_job(others[0].id) is not None
        finally:
            await second.close()

    async def test_reopens_after_close(self, tmp_path: Path) -> None:
        """A closed store opens again when it is used."""
        store = SQLiteStore(tmp_path / "jobs.db")
        job = new_job()
        await store.enqueue([job])
        await store.close()
        try:
            assert await store.get_job(job.id) is not None
        finally:
            await store.close()

    async def test_lazy_open_happens_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Many tasks enqueueing before open share one connection, opened once."""
        store = SQLiteStore(tmp_path / "jobs.db")
        calls = 0
        connect = store._connect

        async def counting_connect() -> object:
            nonlocal calls
            calls += 1
            return await connect()

        monkeypatch.setattr(store, "_connect", counting_connect)
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(store.enqueue, [new_job()])
                    tg.start_soon(store.open)
        finally:
            await store.close()
        assert calls == 1

    async def test_one_migration_version(self, tmp_path: Path) -> None:
        """After opening twice the migrations table holds exactly one row per version."""
        path = tmp_path / "jobs.db"
        for _ in range(2):
            store = SQLiteStore(path)
            await store.open()
            await store.close()
        conn = raw(path)
        try:
            rows = conn.execute("SELECT version, applied_at FROM sidecars_migrations").fetchall()
        finally:
            conn.close()
        assert [r[0] for r in rows] == [v for v, _ in MIGRATIONS]
        assert rows[0][1] > 0

    async def test_newer_schema_refused(self, tmp_path: Path) -> None:
        """A file migrated by a newer sidecars is refused rather than misread."""
        path = tmp_path / "jobs.db"
        store = SQLiteStore(path)
        await store.open()
        await store.close()
        conn = raw(path)
        conn.execute("INSERT INTO sidecars_migrations VALUES (999, 0)")
        conn.close()
        with pytest.raises(StoreUnavailable, match="999"):
            await SQLiteStore(path).open()


class TestLocking:
    async def test_waits_out_a_short_lock(self, tmp_path: Path) -> None:
        """A write lock held briefly by another connection delays a call but does not fail it."""
        path = tmp_path / "jobs.db"
        store = SQLiteStore(path, busy_timeout=0.05)
        await store.open()
        other = raw(path)
        try:
            other.execute("BEGIN IMMEDIATE")
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.enqueue, [new_job()])
                await anyio.sleep(0.2)
                other.execute("COMMIT")
            assert len(await store.claim(["h"], 10, now=NOW, lease=30)) == 1
        finally:
            other.close()
            await store.close()

    async def test_gives_up_with_store_unavailable(self, tmp_path: Path) -> None:
        """A lock that outlasts every retry raises StoreUnavailable, not a raw sqlite3 error."""
        path = tmp_path / "jobs.db"
        store = SQLiteStore(path, busy_timeout=0.01)
        await store.open()
        other = raw(path)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.claim(["h"], 1, now=NOW, lease=30)
            other.execute("ROLLBACK")
            # The connection is usable again once the lock is gone.
            await store.enqueue([new_job()])
        finally:
            other.close()
            await store.close()


class TestGroupCommit:
    async def test_concurrent_enqueues_share_transactions(self, tmp_path: Path) -> None:
        """Concurrent enqueues are committed in far fewer transactions than calls."""
        store = SQLiteStore(tmp_path / "jobs.db")
        await store.open()
        inserts = 0
        original = sqlite_module.SQLiteStore._flush

        async def counting_flush(self: SQLiteStore, batch: sqlite_module._Batch) -> None:
            nonlocal inserts
            inserts += 1
            await original(self, batch)

        try:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(sqlite_module.SQLiteStore, "_flush", counting_flush)
                async with anyio.create_task_group() as tg:
                    for i in range(300):
                        tg.start_soon(store.enqueue, [new_job(run_at=NOW + i)])
            assert len(await store.claim(["h"], 1000, now=NOW + 300, lease=30)) == 300
        finally:
            await store.close()
        assert inserts <= 10

    async def test_batch_error_reaches_every_caller(self, tmp_path: Path) -> None:
        """When one job of a group fails, every caller of that group gets the error."""
        store = SQLiteStore(tmp_path / "jobs.db")
        existing = new_job()
        await store.enqueue([existing])
        errors: list[BaseException] = []

        async def enqueue(job_id_taken: bool) -> None:
            job = new_job(job_id=existing.id) if job_id_taken else new_job()
            try:
                await store.enqueue([job])
            except ValueError as exc:
                errors.append(exc)

        try:
            async with anyio.create_task_group() as tg:
                # Holding the connection's lock makes every call below join one group.
                await store._lock.acquire()
                for i in range(10):
                    tg.start_soon(enqueue, i == 4)
                await anyio.wait_all_tasks_blocked()
                assert store._pending is not None
                assert len(store._pending.jobs) == 10
                store._lock.release()
            assert len(errors) == 10
            assert await store.next_wakeup(["h"]) == NOW  # only the first job is stored
            assert len(await store.claim(["h"], 100, now=NOW, lease=30)) == 1
        finally:
            await store.close()


class TestClaimQuery:
    @pytest.mark.parametrize("extra_handles", [0, 3, 260])
    async def test_many_handles_oldest_first(self, tmp_path: Path, extra_handles: int) -> None:
        """Claims over one, a few, or hundreds of handles return the oldest due jobs first."""
        store = SQLiteStore(tmp_path / "jobs.db")
        handles = ["a", "b"] + [f"x{i}" for i in range(extra_handles)]
        jobs = [new_job(handles[i % len(handles)], run_at=NOW - i) for i in range(40)]
        try:
            await store.enqueue(jobs)
            claimed = await store.claim(handles, 5, now=NOW, lease=30)
            assert [j.run_at for j in claimed] == [NOW - i for i in range(39, 34, -1)]
        finally:
            await store.close()


class TestCancellation:
    async def test_cancelled_calls_leave_store_usable(self, tmp_path: Path) -> None:
        """Cancelling callers mid-transaction never leaves the connection inside a transaction."""
        store = SQLiteStore(tmp_path / "jobs.db")
        await store.enqueue([new_job() for _ in range(50)])

        async def churn() -> None:
            while True:
                await store.enqueue([new_job()])
                await store.claim(["h"], 3, now=NOW, lease=30)

        try:
            with anyio.move_on_after(0.2):
                async with anyio.create_task_group() as tg:
                    for _ in range(10):
                        tg.start_soon(churn)
            job = new_job(run_at=NOW - 1000)
            await store.enqueue([job])
            claimed = await store.claim(["h"], 1, now=NOW, lease=30)
            assert [j.id for j in claimed] == [job.id]
        finally:
            await store.close()


class TestFires:
    async def test_migrates_a_version_1_file(self, tmp_path: Path) -> None:
        """A file at schema version 1 gains the fires table on open and keeps its jobs."""
        path = tmp_path / "jobs.db"
        job = new_job()
        conn = raw(path)
        try:
            # The file as sidecars wrote it before fires existed.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(MIGRATIONS_TABLE)
            ((version, statements),) = [m for m in MIGRATIONS if m[0] == 1]
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO sidecars_migrations VALUES (?, 0)", (version,))
            conn.execute(
                "INSERT INTO sidecars_jobs (id, handle, state, payload, max_attempts, run_at, "
                "created_at) VALUES (?, 'h', 'queued', '{}', 1, ?, ?)",
                (str(job.id), NOW, NOW),
            )
        finally:
            conn.close()

        store = SQLiteStore(path)
        try:
            await store.open()
            assert await store.get_job(job.id) is not None
            (answer,) = await store.claim_fires(
                [FireRequest(handle="h", fire_at=int(NOW))], now=NOW, lease=30
            )
            assert answer.status is FireStatus.CLAIMED
        finally:
            await store.close()
        conn = raw(path)
        try:
            versions = [r[0] for r in conn.execute("SELECT version FROM sidecars_migrations")]
            indexes = {
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?",
                    ("sidecars_fires",),
                )
            }
        finally:
            conn.close()
        assert versions == [v for v, _ in MIGRATIONS]
        assert {"sidecars_fires_overlap", "sidecars_fires_age"} <= indexes

    async def test_migrates_a_version_2_file(self, tmp_path: Path) -> None:
        """A file at schema version 2 gains the key column and index on open, jobs kept."""
        path = tmp_path / "jobs.db"
        job = new_job()
        conn = raw(path)
        try:
            # The file as sidecars wrote it before unique keys existed.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(MIGRATIONS_TABLE)
            for version, statements in MIGRATIONS:
                if version > 2:
                    break
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO sidecars_migrations VALUES (?, 0)", (version,))
            conn.execute(
                "INSERT INTO sidecars_jobs (id, handle, state, payload, max_attempts, run_at, "
                "created_at) VALUES (?, 'h', 'queued', '{}', 1, ?, ?)",
                (str(job.id), NOW, NOW),
            )
        finally:
            conn.close()

        store = SQLiteStore(path)
        try:
            await store.open()
            info = await store.get_job(job.id)
            assert info is not None
            assert info.key is None
            first, second = keyed("k"), keyed("k")
            refs = await store.enqueue([first]) + await store.enqueue([second])
            assert [(r.id, r.created) for r in refs] == [(first.id, True), (first.id, False)]
        finally:
            await store.close()
        conn = raw(path)
        try:
            versions = [r[0] for r in conn.execute("SELECT version FROM sidecars_migrations")]
            indexes = {
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?",
                    ("sidecars_jobs",),
                )
            }
        finally:
            conn.close()
        assert versions == [v for v, _ in MIGRATIONS]
        assert "sidecars_jobs_key" in indexes

    async def test_connections_race_for_one_fire(self, tmp_path: Path) -> None:
        """Several stores (one connection each) claiming the same fires claim each once."""
        path = tmp_path / "jobs.db"
        stores = [SQLiteStore(path) for _ in range(4)]
        answers: list[FireStatus] = []
        requests = [
            FireRequest(handle="h", fire_at=int(NOW) + i, skip_if_running=False) for i in range(20)
        ]

        async def claim(store: SQLiteStore) -> None:
            for request in requests:
                (answer,) = await store.claim_fires([request], now=NOW, lease=30)
                answers.append(answer.status)

        try:
            for store in stores:
                await store.open()
            async with anyio.create_task_group() as tg:
                for store in stores:
                    for _ in range(3):
                        tg.start_soon(claim, store)
        finally:
            for store in stores:
                await store.close()
        assert answers.count(FireStatus.CLAIMED) == 20
        assert answers.count(FireStatus.TAKEN) == 20 * 11

    async def test_fire_rows_readable_in_sql(self, tmp_path: Path) -> None:
        """A fire row keeps its columns in plain SQL types, and survives reopening."""
        path = tmp_path / "jobs.db"
        store = SQLiteStore(path)
        try:
            (answer,) = await store.claim_fires(
                [FireRequest(handle="h", fire_at=int(NOW))], now=NOW, lease=30
            )
            await store.finish_fire(
                answer.lease(), outcome=Outcome.ERROR, finished_at=NOW + 1, error="boom"
            )
        finally:
            await store.close()
        conn = raw(path)
        try:
            row = conn.execute(
                "SELECT handle, fire_at, state, outcome, attempts, token, lease_until, "
                "claimed_at, finished_at, error FROM sidecars_fires"
            ).fetchone()
        finally:
            conn.close()
        assert row == ("h", int(NOW), "failed", "error", 1, None, None, NOW, NOW + 1, "boom")
        reopened = SQLiteStore(path)
        try:
            assert await reopened.last_fire("h") == int(NOW)
        finally:
            await reopened.close()

    async def test_prune_in_bounded_batches(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Pruning deletes at most one batch per transaction and still counts every row."""
        monkeypatch.setattr(sqlite_module, "_PRUNE_BATCH", 7)
        store = SQLiteStore(tmp_path / "jobs.db")
        transactions = 0
        write = store._write

        async def counting_write(what: str, body: Any) -> Any:
            nonlocal transactions
            transactions += what == "prune fires"
            return await write(what, body)

        monkeypatch.setattr(store, "_write", counting_write)
        try:
            requests = [FireRequest(handle="h", fire_at=int(NOW) + i) for i in range(30)]
            answers = await store.claim_fires(requests, now=NOW, lease=30)
            assert await store.prune_fires(before=NOW + 30) == 29  # the first still runs
            assert transactions == 5
            assert await store.last_fire("h") == int(NOW)
            assert answers[0].status is FireStatus.CLAIMED
        finally:
            await store.close()


class TestNextWakeupReuse:
    async def test_idle_polls_reuse_the_answer_until_a_process_writes(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An unchanged file answers next_wakeup without a query; a write by another
        connection (another process) or by this store is seen by the next call."""
        path = tmp_path / "w.db"
        store = SQLiteStore(path)
        other = SQLiteStore(path)
        monkeypatch.setattr(sqlite_module, "_WAKEUP_SETTLE", 0)  # files count as settled
        try:
            await other.enqueue([new_job("h", run_at=NOW + 50)])
            assert await store.next_wakeup(["h"]) == NOW + 50
            reads = 0
            real_read = store._read

            async def counted(sql: str, params: Any) -> list[Any]:
                nonlocal reads
                reads += 1
                return await real_read(sql, params)

            monkeypatch.setattr(store, "_read", counted)
            for _ in range(3):
                assert await store.next_wakeup(["h"]) == NOW + 50
            assert reads == 0
            await other.enqueue([new_job("h", run_at=NOW + 5)])  # another writer
            assert await store.next_wakeup(["h"]) == NOW + 5
            assert reads == 1
            with raw(path) as conn:  # a plain connection, as another program's
                conn.execute("UPDATE sidecars_jobs SET run_at = ?", (NOW + 1,))
            assert await store.next_wakeup(["h"]) == NOW + 1
            await store.enqueue([new_job("h", run_at=NOW)])  # this store's own write
            assert await store.next_wakeup(["h"]) == NOW
            assert reads == 3
            monkeypatch.setattr(sqlite_module, "_WAKEUP_REUSE", 0.0)
            assert await store.next_wakeup(["h"]) == NOW  # too old to reuse: read again
            assert reads == 4
            monkeypatch.setattr(sqlite_module, "_WAKEUP_REUSE", 10.0)
            monkeypatch.setattr(sqlite_module, "_WAKEUP_SETTLE", 60 * 10**9)
            for _ in range(2):  # the file changed within the last minute: never reused
                assert await store.next_wakeup(["h"]) == NOW
            assert reads == 6
        finally:
            await store.close()
            await other.close()


async def test_a_missing_folder_is_named_in_the_error(tmp_path: Path) -> None:
    """A store whose folder does not exist says so, naming the folder."""
    store = SQLiteStore(tmp_path / "nowhere" / "jobs.db")
    with pytest.raises(StoreUnavailable, match=r"its folder .*nowhere.* does not exist"):
        await store.open()
    await store.close()
