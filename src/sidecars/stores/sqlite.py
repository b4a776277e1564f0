"""The embedded default store: one SQLite file, shared by the processes of one host."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from uuid import UUID, uuid4

import aiosqlite
import anyio
import anyio.lowlevel
import anyio.to_thread

from .._records import JobInfo, JobRef, JobState, Outcome
from ..exceptions import StoreUnavailable
from ._base import ClaimedJob, Finish, FireClaim, FireLease, FireRequest, Lease, NewJob
from ._convert import (
    FINISHED_STATES,
    LEASE_LOST_ERROR,
    PRUNE_BATCH,
    SUPERSEDED_ERROR,
    FireRow,
    FireState,
    KeyPlan,
    check_finish_state,
    check_list_args,
    claimed_jobs,
    decide_fires,
    job_info,
)
from ._sqlite_schema import MIGRATIONS, MIGRATIONS_TABLE

__all__ = ("MIN_SQLITE_VERSION", "SQLiteStore")

T = TypeVar("T")

MIN_SQLITE_VERSION = (3, 35, 0)
"""The oldest SQLite library the store runs on (``UPDATE … RETURNING`` arrived in 3.35)."""

_SYNCHRONOUS = ("NORMAL", "FULL")

# SQLite's own busy handler already waits up to busy_timeout inside each attempt; these
# retries cover the cases it does not (a busy handler is not called on some lock upgrades
# and while a WAL file is being recovered) without hammering the file.
_BUSY_RETRIES = 5
_BUSY_FIRST_DELAY = 0.02
_BUSY_MAX_DELAY = 1.0

# Result codes (the sqlite3 module names them only from Python 3.11).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6

# In the order _convert.job_info reads them.
_JOB_COLUMNS = (
    "id, handle, state, outcome, payload, attempts, max_attempts, run_at, created_at, "
    "started_at, finished_at, error, key"
)

_INSERT = (
    "INSERT INTO sidecars_jobs (id, handle, state, payload, attempts, max_attempts, run_at, "
    "created_at) VALUES (?, ?, 'queued', ?, 0, ?, ?, ?)"
)

# The conflict target names the key index only: a taken id still raises IntegrityError
# (and fails the batch), while a taken key just skips its row.
_INSERT_KEYED = (
    "INSERT INTO sidecars_jobs (id, handle, state, payload, attempts, max_attempts, run_at, "
    "created_at, key) VALUES (?, ?, 'queued', ?, 0, ?, ?, ?, ?) "
    "ON CONFLICT (handle, key) WHERE state = 'queued' AND key IS NOT NULL DO NOTHING"
)

# Read in the insert's write transaction, so each key has exactly one queued holder: the
# job just inserted, or the one that made it skip.
_KEY_HOLDERS = """
SELECT handle, key, id FROM sidecars_jobs
WHERE state = 'queued' AND key IS NOT NULL AND (handle, key) IN (
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)
)
"""

_FAIL_LOST = """
UPDATE sidecars_jobs
SET state = 'failed', outcome = 'lease_lost', error = :error, finished_at = :now,
    token = NULL, lease_until = NULL
WHERE state = 'running' AND handle IN ({handles}) AND lease_until <= :now
    AND attempts >= max_attempts
"""

# One branch per handle, each limited on its own, so every branch is a short ordered walk
# of the partial index however large the backlog; the outer ORDER BY merges them. Expired
# leases are rare, so one branch covers them for all handles. RETURNING order is
# unspecified, so the caller sorts again.
_CLAIM = """
UPDATE sidecars_jobs
SET state = 'running', attempts = attempts + 1, token = :token, lease_until = :until,
    started_at = :now
WHERE id IN (
    SELECT id FROM (
        {queued}
        UNION ALL
        SELECT id, run_at FROM (
            SELECT id, run_at FROM sidecars_jobs
            WHERE state = 'running' AND handle IN ({handles}) AND lease_until <= :now
            ORDER BY run_at, id LIMIT :limit
        )
    )
    ORDER BY run_at, id LIMIT :limit
)
RETURNING id, handle, payload, attempts, max_attempts, run_at
"""

_CLAIM_QUEUED = """
        SELECT id, run_at FROM (
            SELECT id, run_at FROM sidecars_jobs
            WHERE state = 'queued' AND handle {match} AND run_at <= :now
            ORDER BY run_at, id LIMIT :limit
        )"""

# SQLite caps a compound SELECT at 500 terms by default; past this many handles the
# queued jobs are read in one branch instead (correct, only slower on a large backlog).
_MAX_HANDLE_BRANCHES = 200


@functools.lru_cache(maxsize=64)
def _claim_sql(n_handles: int) -> str:
    handles = _placeholders(n_handles)
    if n_handles <= _MAX_HANDLE_BRANCHES:
        branches = [_CLAIM_QUEUED.format(match=f"= :h{i}") for i in range(n_handles)]
    else:
        branches = [_CLAIM_QUEUED.format(match=f"IN ({handles})")]
    return _CLAIM.format(queued="\n        UNION ALL".join(branches), handles=handles)


def _placeholders(n_handles: int) -> str:
    return ", ".join(f":h{i}" for i in range(n_handles))


# Batches travel as one JSON array bound to a single parameter, so a call is one statement
# however many leases it carries.
_LEASES = "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)"

_RENEW = f"""
UPDATE sidecars_jobs SET lease_until = ?
WHERE state = 'running' AND (id, token) IN ({_LEASES})
RETURNING id
"""

# OR IGNORE: a keyed job whose key a newer queued job holds cannot go back to the queue;
# it stays running here and _SUPERSEDE_RELEASE ends it, instead of the whole batch failing.
_RELEASE = f"""
UPDATE OR IGNORE sidecars_jobs
SET state = 'queued', token = NULL, lease_until = NULL, run_at = ?,
    attempts = max(attempts - 1, 0)
WHERE state = 'running' AND (id, token) IN ({_LEASES})
"""

_SUPERSEDE_RELEASE = f"""
UPDATE sidecars_jobs
SET state = 'cancelled', outcome = 'cancelled', error = ?, finished_at = ?, token = NULL,
    lease_until = NULL
WHERE state = 'running' AND (id, token) IN ({_LEASES})
"""

_FINISH_ROWS = """
    SELECT json_extract(value, '$[0]') AS job_id, json_extract(value, '$[1]') AS job_token,
        json_extract(value, '$[2]') AS new_state, json_extract(value, '$[3]') AS new_outcome,
        json_extract(value, '$[4]') AS new_finished_at, json_extract(value, '$[5]') AS new_error,
        json_extract(value, '$[6]') AS new_retry_at
    FROM json_each(?)
"""

# OR IGNORE for the same reason as _RELEASE: a retry of a keyed job whose key is queued
# again meanwhile is skipped here and superseded by _SUPERSEDE_FINISH.
_FINISH = f"""
UPDATE OR IGNORE sidecars_jobs
SET state = r.new_state, outcome = r.new_outcome, error = r.new_error,
    finished_at = CASE WHEN r.new_state = 'queued' THEN NULL ELSE r.new_finished_at END,
    run_at = CASE WHEN r.new_state = 'queued'
        THEN coalesce(r.new_retry_at, r.new_finished_at) ELSE sidecars_jobs.run_at END,
    token = NULL, lease_until = NULL
FROM ({_FINISH_ROWS}) AS r
WHERE sidecars_jobs.id = r.job_id AND sidecars_jobs.token = r.job_token
    AND sidecars_jobs.state = 'running'
RETURNING id
"""

_SUPERSEDE_FINISH = f"""
UPDATE sidecars_jobs
SET state = 'cancelled', outcome = 'cancelled', error = ?, finished_at = r.new_finished_at,
    token = NULL, lease_until = NULL
FROM ({_FINISH_ROWS}) AS r
WHERE sidecars_jobs.id = r.job_id AND sidecars_jobs.token = r.job_token
    AND sidecars_jobs.state = 'running' AND r.new_state = 'queued'
RETURNING id
"""

_CANCEL = """
UPDATE sidecars_jobs
SET state = 'cancelled', outcome = 'cancelled', finished_at = ?, token = NULL,
    lease_until = NULL
WHERE id = ? AND state = 'queued'
RETURNING state
"""

# OR IGNORE: when another queued job holds the key, the row is left as it is (False).
_RETRY = """
UPDATE OR IGNORE sidecars_jobs
SET state = 'queued', run_at = ?, attempts = 0, token = NULL, lease_until = NULL,
    finished_at = NULL
WHERE id = ? AND state IN ('failed', 'cancelled')
RETURNING id
"""

# How long a next_wakeup answer may be reused while the files look unchanged (seconds).
_WAKEUP_REUSE = 10.0
# Files modified less than this long ago (nanoseconds) are not trusted to be settled.
_WAKEUP_SETTLE = 500_000_000

_NEXT_WAKEUP = """
SELECT min(t) FROM (
    SELECT min(run_at) AS t FROM sidecars_jobs WHERE state = 'queued' AND handle IN ({handles})
    UNION ALL
    SELECT min(lease_until) FROM sidecars_jobs
    WHERE state = 'running' AND handle IN ({handles})
)
"""

_FIRE_COLUMNS = (
    "handle, fire_at, state, outcome, attempts, token, lease_until, claimed_at, finished_at, error"
)

# The rows a batch of fire requests names, read in the claim's write transaction, so what
# the rules decide from them cannot change before the write.
# CROSS JOIN keeps json_each outermost, so each key is one primary-key lookup rather than
# a walk over all rows of its handle (a key repeated in the batch just reads twice).
_FIRE_ROWS = f"""
SELECT {", ".join(f"f.{c}" for c in _FIRE_COLUMNS.split(", "))}
FROM json_each(?) AS k CROSS JOIN sidecars_fires AS f
WHERE f.handle = json_extract(k.value, '$[0]') AND f.fire_at = json_extract(k.value, '$[1]')
"""

_FIRES_RUNNING = """
SELECT handle, fire_at FROM sidecars_fires
WHERE handle IN (SELECT value FROM json_each(?)) AND state = 'running' AND lease_until > ?
"""

_FIRE_UPSERT = f"""
INSERT INTO sidecars_fires ({_FIRE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (handle, fire_at) DO UPDATE SET
    state = excluded.state, outcome = excluded.outcome, attempts = excluded.attempts,
    token = excluded.token, lease_until = excluded.lease_until,
    claimed_at = excluded.claimed_at, finished_at = excluded.finished_at,
    error = excluded.error
"""

_FIRE_LEASES = """
    SELECT json_extract(value, '$[0]') AS l_handle, json_extract(value, '$[1]') AS l_fire_at,
        json_extract(value, '$[2]') AS l_token
    FROM json_each(?)
"""

_RENEW_FIRES = f"""
UPDATE sidecars_fires SET lease_until = ?
FROM ({_FIRE_LEASES}) AS l
WHERE handle = l.l_handle AND fire_at = l.l_fire_at AND token = l.l_token
    AND state = 'running'
RETURNING handle, fire_at
"""

_RELEASE_FIRES = f"""
UPDATE sidecars_fires
SET state = 'released', token = NULL, lease_until = NULL, attempts = max(attempts - 1, 0)
FROM ({_FIRE_LEASES}) AS l
WHERE handle = l.l_handle AND fire_at = l.l_fire_at AND token = l.l_token
    AND state = 'running'
"""

_FINISH_FIRE = """
UPDATE sidecars_fires
SET state = ?, outcome = ?, error = ?, finished_at = ?, token = NULL, lease_until = NULL
WHERE handle = ? AND fire_at = ? AND token = ? AND state = 'running'
RETURNING 1
"""

_LAST_FIRE = "SELECT max(fire_at) FROM sidecars_fires WHERE handle = ? AND state != 'released'"

# Pruning deletes at most PRUNE_BATCH rows per transaction, so a large backlog never holds
# the write lock for long: other processes' claims queue behind one short batch at a time.
_PRUNE_BATCH = PRUNE_BATCH

# The state list must read exactly as in the partial index sidecars_jobs_finished (schema
# version 4): SQLite uses a partial index only when the query's WHERE visibly implies it.
_PRUNE_JOBS = f"""
DELETE FROM sidecars_jobs WHERE rowid IN (
    SELECT rowid FROM sidecars_jobs
    WHERE state IN {FINISHED_STATES!r} AND finished_at < ? LIMIT ?
)
"""

_PRUNE_FIRES = """
DELETE FROM sidecars_fires WHERE rowid IN (
    SELECT rowid FROM sidecars_fires WHERE fire_at < ? AND state != 'running' LIMIT ?
)
"""


class _Batch:
    """Rows of concurrent ``enqueue`` calls that commit together."""

    __slots__ = ("done", "error", "jobs", "refs")

    def __init__(self) -> None:
        self.jobs: list[NewJob] = []
        self.refs: list[JobRef] = []
        self.done = anyio.Event()
        self.error: BaseException | None = None


class SQLiteStore:
    """A :class:`~sidecars.stores.Store` in one SQLite file (the embedded default).

    Any number of processes on the same host may share the file: every write is one
    ``BEGIN IMMEDIATE`` transaction, so SQLite's file locks serialise them, and readers do
    not block writers under the WAL journal. SQLite's locks rely on the host's own file
    locking: **do not put the file on a network file system** (NFS, SMB, most container
    volumes shared between hosts); use PostgreSQL for replicas on several hosts.

    Each instance keeps one connection, opened lazily by its first call (or by
    :meth:`open`), which is the single writer of its process; concurrent ``enqueue`` calls
    are group-committed in one transaction. The schema is created or migrated on open.
    A store that is never closed does not keep the interpreter alive at exit (every write
    has committed before its call returned), but :meth:`close` releases the file cleanly.

    Args:
        path: the database file, created if missing.
        synchronous: ``"NORMAL"`` (default: a power loss may drop the last commits, never
            corrupt the file) or ``"FULL"`` (every commit survives a power loss, slower).
        busy_timeout: how long, in seconds, to wait for another process's write lock before
            retrying; after a few retries the call raises
            :class:`~sidecars.exceptions.StoreUnavailable`.

    Raises:
        ValueError: ``synchronous`` is not ``"NORMAL"`` or ``"FULL"``, or ``busy_timeout``
            is negative.

    Example:
        >>> store = SQLiteStore("jobs.db", synchronous="FULL")
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = "sidecars.db",
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 5.0,
    ) -> None:
        mode = synchronous.upper() if isinstance(synchronous, str) else synchronous
        if mode not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        if busy_timeout < 0:
            raise ValueError(f"busy_timeout must be >= 0 seconds, not {busy_timeout!r}")
        self.path = os.fspath(path)
        self.synchronous = mode
        self.busy_timeout = float(busy_timeout)
        self._conn: aiosqlite.Connection | None = None
        # One connection runs one transaction at a time: this lock keeps the statements of
        # two tasks from interleaving inside each other's BEGIN ... COMMIT.
        self._lock = anyio.Lock()
        self._pending: _Batch | None = None
        self._writes = 0  # write transactions this process has committed or tried
        # next_wakeup answers, kept while neither this process nor any other wrote.
        self._wakeups: dict[
            tuple[str, ...], tuple[tuple[tuple[int, int, int], ...], int, float, float | None]
        ] = {}

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, synchronous={self.synchronous!r})"

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and bring the schema up to date. Safe to call more than once.

        Raises:
            StoreUnavailable: the file cannot be opened, SQLite is older than 3.35, or the
                schema is newer than this version of sidecars.
        """
        async with self._lock:
            await self._connection()

    async def close(self) -> None:
        """Close the connection once running calls are done. Safe to call more than once.

        The store opens again if it is used after closing.
        """
        with anyio.CancelScope(shield=True):
            async with self._lock:
                conn, self._conn = self._conn, None
                if conn is not None:
                    await conn.close()

    async def _connection(self) -> aiosqlite.Connection:
        """The open connection, connecting first if needed. Call with ``_lock`` held."""
        if self._conn is not None:
            return self._conn
        # Shielded: a cancelled open would leave a half-open connection and its thread.
        with anyio.CancelScope(shield=True):
            conn = await self._connect()
        self._conn = conn
        return conn

    async def _connect(self) -> aiosqlite.Connection:
        check_sqlite_version(sqlite3.sqlite_version_info)
        conn = aiosqlite.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        _daemonize(conn)
        try:
            await conn
        except sqlite3.Error as exc:
            # aiosqlite stops its thread on a failed connect without waiting for it; wait
            # here, or the thread may report to an event loop that has closed meanwhile.
            thread = _worker_thread(conn)
            if thread is not None:
                await anyio.to_thread.run_sync(thread.join, 5.0)
            folder = _missing_folder(self.path)
            if folder is not None:
                raise StoreUnavailable(
                    f"cannot open SQLite store {self.path!r}: its folder {folder!r} does not "
                    "exist (sidecars creates the file, not the folder)"
                ) from exc
            raise StoreUnavailable(f"cannot open SQLite store {self.path!r}: {exc}") from exc
        try:
            rows = await self._retry_busy(
                "set the WAL journal", lambda: conn.execute_fetchall("PRAGMA journal_mode=WAL")
            )
            mode = next(iter(rows))[0]
            if str(mode).lower() != "wal":
                raise StoreUnavailable(
                    f"SQLite store {self.path!r} cannot use the WAL journal (got {mode!r}); "
                    "is it on a network or read-only file system?"
                )
            await conn.execute(f"PRAGMA synchronous={self.synchronous}")
            await self._migrate(conn)
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreUnavailable(f"cannot open SQLite store {self.path!r}: {exc}") from exc
            raise
        return conn

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        # The check and the migration share one write transaction, so processes opening a
        # new file together queue on its lock: the first creates the schema, the others
        # then find it current.
        await self._retry_busy("migrate", lambda: conn.execute("BEGIN IMMEDIATE"))
        try:
            await conn.execute(MIGRATIONS_TABLE)
            rows = await conn.execute_fetchall(
                "SELECT coalesce(max(version), 0) FROM sidecars_migrations"
            )
            current = int(next(iter(rows))[0])
            latest = MIGRATIONS[-1][0]
            if current > latest:
                raise StoreUnavailable(
                    f"SQLite store {self.path!r} has schema version {current}, newer than "
                    f"this version of sidecars knows ({latest}); upgrade sidecars"
                )
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO sidecars_migrations (version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )
            await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise

    # -- plumbing --------------------------------------------------------------------

    async def _retry_busy(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        delay = _BUSY_FIRST_DELAY
        attempt = 0
        while True:
            try:
                return await op()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                attempt += 1
                if attempt > _BUSY_RETRIES:
                    raise StoreUnavailable(
                        f"SQLite store {self.path!r} stayed locked by another process; "
                        f"could not {what} after {attempt} attempts"
                    ) from exc
            # Full jitter, so two processes that collided do not collide again in step.
            await anyio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, _BUSY_MAX_DELAY)

    async def _write(self, what: str, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``body`` in one ``BEGIN IMMEDIATE`` transaction on the connection's thread.

        The whole transaction (begin, statements, commit or rollback) is one call into the
        connection's thread: one thread hop per transaction, not one per statement, and a
        transaction can never be left open. Shielded from cancellation: once started, the
        call completes and returns its result, so a claim's jobs are never dropped on the
        floor; a cancelled caller is stopped before the transaction starts instead. A
        transaction that found the file locked is rolled back and tried again, whole.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        with anyio.CancelScope(shield=True):
            async with self._lock:
                conn = await self._connection()

                def transaction(db: sqlite3.Connection) -> T:
                    db.execute("BEGIN IMMEDIATE")
                    try:
                        result = body(db)
                        db.execute("COMMIT")
                    except BaseException:
                        if db.in_transaction:
                            # SQLite may already have rolled back (for example a full disk).
                            with contextlib.suppress(sqlite3.OperationalError):
                                db.execute("ROLLBACK")
                        raise
                    return result

                try:
                    result = await self._retry_busy(what, lambda: _on_thread(conn, transaction))
                except sqlite3.OperationalError as exc:
                    raise StoreUnavailable(f"SQLite store {self.path!r}: {exc}") from exc
                finally:
                    self._writes += 1
        return result

    async def _read(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[Any]:
        await anyio.lowlevel.checkpoint_if_cancelled()
        with anyio.CancelScope(shield=True):
            async with self._lock:
                conn = await self._connection()
                try:
                    rows = await self._retry_busy(
                        "read", lambda: conn.execute_fetchall(sql, params)
                    )
                except sqlite3.OperationalError as exc:
                    raise StoreUnavailable(f"SQLite store {self.path!r}: {exc}") from exc
        return list(rows)

    # -- the protocol ----------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[JobRef]:
        """Insert jobs durably; return once they are committed, one reference per job.

        Calls made while a commit is in flight are gathered and committed together by the
        next one, so many concurrent enqueues cost few transactions. An error (a taken id)
        fails the whole group and is raised to every caller in it; a taken key does not:
        its job answers with the queued job's id and ``created=False``. A caller cancelled
        while waiting may still have its jobs committed.

        Raises:
            ValueError: a job id already exists (or appears twice in the group).
            StoreUnavailable: the file stayed locked or cannot be written.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        if not jobs:
            return []
        batch = self._pending
        if batch is not None:
            start = len(batch.jobs)
            batch.jobs.extend(jobs)
            await batch.done.wait()
        else:
            batch = self._pending = _Batch()
            start = 0
            batch.jobs.extend(jobs)
            await self._flush(batch)
        if batch.error is not None:
            raise batch.error
        return batch.refs[start : start + len(jobs)]

    async def _flush(self, batch: _Batch) -> None:
        def insert(db: sqlite3.Connection) -> list[JobRef]:
            # Detached only now that the lock is ours, so callers arriving while the previous
            # transaction ran have all joined this one.
            if self._pending is batch:
                self._pending = None
            return _insert(db, batch.jobs)

        try:
            batch.refs = await self._write("enqueue", insert)
        except sqlite3.IntegrityError as exc:
            batch.error = ValueError(f"cannot enqueue this batch (is a job id taken?): {exc}")
            batch.error.__cause__ = exc
        except Exception as exc:
            batch.error = exc
        except BaseException:
            batch.error = StoreUnavailable("enqueue was interrupted before it committed")
            raise
        finally:
            if self._pending is batch:
                self._pending = None
            batch.done.set()

    async def claim(
        self, handles: Sequence[str], limit: int, *, now: float, lease: float
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` due jobs of ``handles`` for ``lease`` seconds.

        Jobs whose lease expired after their last allowed attempt are failed with outcome
        ``LEASE_LOST`` in the same transaction.
        """
        if not handles or limit <= 0:
            return []
        names = list(dict.fromkeys(handles))
        token = uuid4().hex
        until = now + lease

        def body(db: sqlite3.Connection) -> list[Any]:
            return _claim_rows(db, names, limit, now=now, token=token, until=until)

        rows = await self._write("claim", body)
        return claimed_jobs(rows, token=token, until=until)

    async def finish_and_claim(
        self,
        results: Sequence[Finish],
        claims: Sequence[tuple[str, int]],
        *,
        now: float,
        lease: float,
    ) -> tuple[set[UUID], list[ClaimedJob]]:
        """:meth:`finish`, then :meth:`claim` up to ``limit`` jobs per ``(handle, limit)``,
        all in one transaction (one commit instead of two)."""
        for result in results:
            check_finish_state(result.state)
        data = _finish_data(results)
        token = uuid4().hex
        until = now + lease
        wanted = [(handle, limit) for handle, limit in claims if limit > 0]

        def body(db: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            finished = _finish_rows(db, data, results) if results else []
            rows: list[Any] = []
            for handle, limit in wanted:
                rows += _claim_rows(db, [handle], limit, now=now, token=token, until=until)
            return finished, rows

        finished, rows = await self._write("finish and claim", body)
        return {UUID(row[0]) for row in finished}, claimed_jobs(rows, token=token, until=until)

    async def renew(self, leases: Sequence[Lease], *, now: float, lease: float) -> set[UUID]:
        """Extend held leases to ``now + lease``; return the ids still held."""
        if not leases:
            return set()
        pairs = json.dumps([[str(item.id), item.token] for item in leases])

        def body(db: sqlite3.Connection) -> list[Any]:
            return list(_fetchall(db, _RENEW, (now + lease, pairs)))

        return {UUID(row[0]) for row in await self._write("renew", body)}

    async def finish(self, results: Sequence[Finish]) -> set[UUID]:
        """Record the end of runs; return the ids whose token matched.

        Raises:
            ValueError: a result's state is ``RUNNING``.
        """
        if not results:
            return set()
        for result in results:
            check_finish_state(result.state)
        data = _finish_data(results)

        def body(db: sqlite3.Connection) -> list[Any]:
            return _finish_rows(db, data, results)

        return {UUID(row[0]) for row in await self._write("finish", body)}

    async def release(self, leases: Sequence[Lease], *, now: float) -> None:
        """Give held jobs back, due at ``now``, without counting the attempt."""
        if not leases:
            return
        pairs = json.dumps([[str(item.id), item.token] for item in leases])

        def body(db: sqlite3.Connection) -> None:
            cursor = db.execute(_RELEASE, (now, pairs))
            if cursor.rowcount < len(leases):
                db.execute(_SUPERSEDE_RELEASE, (SUPERSEDED_ERROR, now, pairs))

        await self._write("release", body)

    async def get_job(self, job_id: UUID) -> JobInfo | None:
        """Read one job, or None if the id is unknown."""
        rows = await self._read(
            f"SELECT {_JOB_COLUMNS} FROM sidecars_jobs WHERE id = ?", (str(job_id),)
        )
        return job_info(rows[0]) if rows else None

    async def list_jobs(
        self,
        *,
        handle: str | None = None,
        state: str | JobState | None = None,
        limit: int = 50,
    ) -> list[JobInfo]:
        """The newest jobs first (by ``created_at``, then id), optionally filtered.

        No index serves this order (one would cost every enqueue a write), so a listing
        reads the jobs that pass the filters and sorts them; pruning keeps that set small.

        Args:
            handle: only jobs of this handle.
            state: only jobs in this state (a :class:`~sidecars.JobState` or its value).
            limit: at most this many jobs, 1 to 10,000.

        Raises:
            ValueError: ``state`` is not a job state, or ``limit`` is out of range.
        """
        handle, wanted, limit = check_list_args(handle, state, limit)
        where: list[str] = []
        params: list[Any] = []
        if handle is not None:
            where.append("handle = ?")
            params.append(handle)
        if wanted is not None:
            where.append("state = ?")
            params.append(wanted.value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._read(
            f"SELECT {_JOB_COLUMNS} FROM sidecars_jobs {clause} "
            "ORDER BY created_at DESC, id DESC LIMIT ?",
            (*params, limit),
        )
        return [job_info(row) for row in rows]

    async def prune_jobs(self, *, before: float) -> int:
        """Delete finished jobs (succeeded, failed, cancelled) with ``finished_at < before``.

        ``before`` is required: a store never reads the clock, so it cannot know what
        "a week ago" is (the runner passes its clock's time minus ``job_retention``). Rows
        are deleted in batches of a thousand, each its own transaction, so other processes'
        claims wait for one short batch at most; batches already committed stay deleted if
        the call is cancelled.

        Returns:
            How many jobs were deleted.
        """
        return await self._prune_batches("prune jobs", _PRUNE_JOBS, before)

    async def cancel(self, job_id: UUID, *, now: float) -> JobState | None:
        """Cancel a queued job; return its state afterwards, or None for an unknown id.

        A running job is left to its runner (the answer is ``RUNNING``); a finished one is
        left as it is (the answer is its state).
        """

        def body(db: sqlite3.Connection) -> list[Any]:
            rows = list(_fetchall(db, _CANCEL, (now, str(job_id))))
            if not rows:
                rows = list(
                    _fetchall(db, "SELECT state FROM sidecars_jobs WHERE id = ?", (str(job_id),))
                )
            return rows

        rows = await self._write("cancel", body)
        return JobState(rows[0][0]) if rows else None

    async def retry(self, job_id: UUID, *, now: float) -> bool:
        """Queue a failed or cancelled job again, due at ``now``, its attempts reset to 0.

        The outcome and error of the last run stay until the next run ends.

        Returns:
            True if the job is queued again; False if it was in another state, is unknown,
            or has a key that another queued job of its handle holds (it is left as it is).
        """

        def body(db: sqlite3.Connection) -> list[Any]:
            return list(_fetchall(db, _RETRY, (now, str(job_id))))

        return bool(await self._write("retry", body))

    async def next_wakeup(self, handles: Sequence[str]) -> float | None:
        """The earliest time a job of ``handles`` becomes claimable, or None."""
        if not handles:
            return None
        names = list(dict.fromkeys(handles))
        # An idle runner asks this every poll interval. If no process has written to the
        # file since the last answer (its size and modification time, and the WAL's, are
        # as they were, and this process has not written), the answer is the same: no
        # query, no thread hop. A write within the same clock tick as the last one could
        # leave both unchanged, so an answer is reused for at most _WAKEUP_REUSE seconds.
        key = tuple(names)
        files = self._file_state()
        # A file written in the last moments may hold a commit this process cannot see
        # yet (another process's WAL grows before its commit is visible): never reuse or
        # keep an answer then.
        if files is not None and time.time_ns() - max(m for _, _, m in files) < _WAKEUP_SETTLE:
            files = None
        cached = self._wakeups.get(key)
        if (
            cached is not None
            and files is not None
            and cached[0] == files
            and cached[1] == self._writes
            and time.monotonic() - cached[2] < _WAKEUP_REUSE
        ):
            return cached[3]
        writes = self._writes
        placeholders = _placeholders(len(names))
        rows = await self._read(
            _NEXT_WAKEUP.format(handles=placeholders),
            {f"h{i}": name for i, name in enumerate(names)},
        )
        value = rows[0][0] if rows else None
        answer = None if value is None else float(value)
        if files is not None:
            if len(self._wakeups) > 64:
                self._wakeups.clear()
            self._wakeups[key] = (files, writes, time.monotonic(), answer)
        return answer

    def _file_state(self) -> tuple[tuple[int, int, int], ...] | None:
        """Inode, size and modification time of the file and its WAL (None if unavailable)."""
        try:
            states = []
            for path in (self.path, self.path + "-wal"):
                st = os.stat(path)
                states.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            return None
        return tuple(states)

    async def claim_fires(
        self, requests: Sequence[FireRequest], *, now: float, lease: float
    ) -> list[FireClaim]:
        """Claim fires for ``lease`` seconds, one answer per request, in order.

        The whole batch is one ``BEGIN IMMEDIATE`` transaction: the rows are read and
        written under the file's write lock, so two processes claiming the same fire at
        the same instant get exactly one ``CLAIMED``. Requests are answered one after
        another, so a later request of the batch sees what an earlier one claimed.
        """
        if not requests:
            return []
        keys = json.dumps([[r.handle, r.fire_at] for r in requests])
        handles = json.dumps(list(dict.fromkeys(r.handle for r in requests)))

        def body(db: sqlite3.Connection) -> list[FireClaim]:
            rows = {
                (row.handle, row.fire_at): row
                for row in map(_fire_row, _fetchall(db, _FIRE_ROWS, (keys,)))
            }
            running: dict[str, set[int]] = {}
            for handle, fire_at in _fetchall(db, _FIRES_RUNNING, (handles, now)):
                running.setdefault(handle, set()).add(fire_at)
            answers, changed = decide_fires(requests, rows, running, now=now, lease=lease)
            if changed:
                db.executemany(_FIRE_UPSERT, [_fire_params(r) for r in changed.values()])
            return answers

        return await self._write("claim fires", body)

    async def renew_fires(
        self, leases: Sequence[FireLease], *, now: float, lease: float
    ) -> set[tuple[str, int]]:
        """Extend held fire leases to ``now + lease``; return the pairs still held."""
        if not leases:
            return set()
        data = _fire_leases(leases)

        def body(db: sqlite3.Connection) -> list[Any]:
            return list(_fetchall(db, _RENEW_FIRES, (now + lease, data)))

        return {(row[0], row[1]) for row in await self._write("renew fires", body)}

    async def finish_fire(
        self,
        lease: FireLease,
        *,
        outcome: Outcome,
        finished_at: float,
        error: str | None = None,
    ) -> bool:
        """Record the end of a fire: succeeded for ``OK``, else failed.

        Returns:
            True if the lease was still held and the result applied.
        """
        state = FireState.SUCCEEDED if outcome is Outcome.OK else FireState.FAILED
        params = (
            state.value,
            outcome.value,
            error,
            finished_at,
            lease.handle,
            lease.fire_at,
            lease.token,
        )

        def body(db: sqlite3.Connection) -> list[Any]:
            return list(_fetchall(db, _FINISH_FIRE, params))

        return bool(await self._write("finish a fire", body))

    async def release_fires(self, leases: Sequence[FireLease], *, now: float) -> None:
        """Give held fires back, claimable again, without counting the attempt."""
        if not leases:
            return
        data = _fire_leases(leases)

        def body(db: sqlite3.Connection) -> None:
            db.execute(_RELEASE_FIRES, (data,))

        await self._write("release fires", body)

    async def last_fire(self, handle: str) -> int | None:
        """The latest fire instant of ``handle`` with a row in any state but released."""
        rows = await self._read(_LAST_FIRE, (handle,))
        value = rows[0][0] if rows else None
        return None if value is None else int(value)

    async def prune_fires(self, *, before: float) -> int:
        """Delete fire rows with ``fire_at < before`` that are not running; return how many.

        Rows are deleted in batches of a thousand, each its own transaction, so pruning a
        large table never keeps other writers waiting long. If the call is cancelled, the
        batches already committed stay deleted.
        """
        return await self._prune_batches("prune fires", _PRUNE_FIRES, before)

    async def _prune_batches(self, what: str, sql: str, before: float) -> int:
        def body(db: sqlite3.Connection) -> int:
            cursor = db.execute(sql, (before, _PRUNE_BATCH))
            return cursor.rowcount

        total = 0
        while True:
            deleted = await self._write(what, body)
            total += deleted
            if deleted < _PRUNE_BATCH:
                return total


def _insert(db: sqlite3.Connection, jobs: Sequence[NewJob]) -> list[JobRef]:
    """Insert a batch inside the caller's write transaction; one reference per job."""
    plan = KeyPlan(jobs)
    plain = [job for job in plan.unique if job.key is None]
    keyed = [job for job in plan.unique if job.key is not None]
    if plain:
        db.executemany(
            _INSERT,
            [
                (str(j.id), j.handle, j.payload, j.max_attempts, j.run_at, j.created_at)
                for j in plain
            ],
        )
    holders: dict[tuple[str, str], UUID] = {}
    if keyed:
        db.executemany(
            _INSERT_KEYED,
            [
                (str(j.id), j.handle, j.payload, j.max_attempts, j.run_at, j.created_at, j.key)
                for j in keyed
            ],
        )
        keys = json.dumps([[j.handle, j.key] for j in keyed])
        for handle, key, id_ in _fetchall(db, _KEY_HOLDERS, (keys,)):
            holders[(handle, key)] = UUID(id_)
    answers: list[tuple[UUID, bool]] = []
    for job in plan.unique:
        if job.key is None:
            answers.append((job.id, True))
        else:
            holder = holders[(job.handle, job.key)]
            answers.append((holder, holder == job.id))
    return plan.refs(answers)


def _fire_row(row: Any) -> FireRow:
    handle, fire_at, state, outcome, attempts, token, lease_until, claimed_at, finished, error = row
    return FireRow(
        handle=handle,
        fire_at=fire_at,
        state=FireState(state),
        outcome=None if outcome is None else Outcome(outcome),
        attempts=attempts,
        token=token,
        lease_until=lease_until,
        claimed_at=claimed_at,
        finished_at=finished,
        error=error,
    )


def _fire_params(row: FireRow) -> tuple[Any, ...]:
    return (
        row.handle,
        row.fire_at,
        row.state.value,
        None if row.outcome is None else row.outcome.value,
        row.attempts,
        row.token,
        row.lease_until,
        row.claimed_at,
        row.finished_at,
        row.error,
    )


def _fire_leases(leases: Sequence[FireLease]) -> str:
    return json.dumps([[item.handle, item.fire_at, item.token] for item in leases])


def check_sqlite_version(version: tuple[int, int, int]) -> None:
    """Refuse a SQLite library older than :data:`MIN_SQLITE_VERSION`.

    Raises:
        StoreUnavailable: ``version`` is too old.
    """
    if version < MIN_SQLITE_VERSION:
        found = ".".join(map(str, version))
        need = ".".join(map(str, MIN_SQLITE_VERSION))
        raise StoreUnavailable(
            f"SQLiteStore needs SQLite >= {need} (for UPDATE ... RETURNING); this Python "
            f"is linked against SQLite {found}. Upgrade Python or use another store."
        )


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    message = str(exc)
    return "database is locked" in message or "database table is locked" in message


async def _rollback(conn: aiosqlite.Connection) -> None:
    # SQLite may already have rolled back on the error (for example a full disk).
    with contextlib.suppress(sqlite3.OperationalError):
        await conn.execute("ROLLBACK")


def _claim_rows(
    db: sqlite3.Connection, names: list[str], limit: int, *, now: float, token: str, until: float
) -> list[Any]:
    """Claim inside the caller's write transaction: fail lost leases, take due jobs."""
    placeholders = _placeholders(len(names))
    params: dict[str, Any] = {f"h{i}": name for i, name in enumerate(names)}
    db.execute(
        _FAIL_LOST.format(handles=placeholders),
        {**params, "now": now, "error": LEASE_LOST_ERROR},
    )
    return _fetchall(
        db,
        _claim_sql(len(names)),
        {**params, "now": now, "token": token, "until": until, "limit": limit},
    )


def _finish_data(results: Sequence[Finish]) -> str:
    return json.dumps(
        [
            [str(r.id), r.token, r.state.value, r.outcome.value, r.finished_at, r.error, r.retry_at]
            for r in results
        ]
    )


def _finish_rows(db: sqlite3.Connection, data: str, results: Sequence[Finish]) -> list[Any]:
    """Finish inside the caller's write transaction; the ids whose token matched."""
    rows = _fetchall(db, _FINISH, (data,))
    if len(rows) < len(results) and any(r.state is JobState.QUEUED for r in results):
        rows += _fetchall(db, _SUPERSEDE_FINISH, (SUPERSEDED_ERROR, data))
    return rows


def _missing_folder(path: str) -> str | None:
    """The folder of a file path when it does not exist (None for URIs and when it does)."""
    if path.startswith("file:") or path == ":memory:":
        return None
    folder = os.path.dirname(os.path.abspath(path))
    return None if os.path.isdir(folder) else folder


def _fetchall(db: sqlite3.Connection, sql: str, params: Any = ()) -> list[Any]:
    return db.execute(sql, params).fetchall()


async def _on_thread(conn: aiosqlite.Connection, func: Callable[[sqlite3.Connection], T]) -> T:
    """Call ``func`` with the sqlite3 connection, on the connection's own thread.

    aiosqlite runs each statement as one call queued to that thread; this queues a whole
    function the same way (its ``_execute``), so many statements cost one hop.
    """
    db: sqlite3.Connection = conn._conn
    result: T = await conn._execute(func, db)  # type: ignore[no-untyped-call]
    return result


def _worker_thread(conn: aiosqlite.Connection) -> threading.Thread | None:
    # Recent aiosqlite keeps its thread as `_thread`; older releases subclass Thread.
    thread: object = conn if isinstance(conn, threading.Thread) else getattr(conn, "_thread", None)
    return thread if isinstance(thread, threading.Thread) else None


def _daemonize(conn: aiosqlite.Connection) -> None:
    # aiosqlite runs each connection on a non-daemon thread, which would keep the
    # interpreter waiting forever at exit for a store a script opened with an enqueue and
    # never closed. Every write has committed before its call returned, so letting that
    # idle thread die with the process loses nothing; the WAL is checkpointed by the next
    # connection.
    thread = _worker_thread(conn)
    if thread is not None and not thread.is_alive():
        thread.daemon = True
