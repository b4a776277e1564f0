"""The PostgreSQL store: many replicas on many hosts sharing one database (asyncpg).

Install the ``postgres`` extra (``pip install 'sidecars[postgres]'``). This is the only module
of sidecars that imports :mod:`asyncpg`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar
from uuid import UUID, uuid4

import anyio
import anyio.lowlevel
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

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
from ._pg_schema import MIGRATIONS, MIGRATIONS_TABLE, quote_schema

log = logging.getLogger("sidecars")

__all__ = ("PostgresStore",)

_T = TypeVar("_T")

# A NOTIFY payload must stay under 8000 bytes; past this the payload is left empty, which
# listeners read as "any handle".
_MAX_NOTIFY_PAYLOAD = 7900

# Pruning deletes at most this many rows per statement, so it never holds many row locks
# or writes a large WAL burst in one transaction.
_PRUNE_BATCH = PRUNE_BATCH

# Reads as in the partial index jobs_finished, which pruning walks.
_FINISHED = repr(FINISHED_STATES)

# In the order _convert.job_info reads them.
_JOB_COLUMNS = (
    "id, handle, state, outcome, payload::text, attempts, max_attempts, run_at, created_at, "
    "started_at, finished_at, error, key"
)

# Rounds of insert-then-read for keyed jobs: a round repeats only when the queued job that
# made an insert skip was claimed before its id could be read back.
_KEY_ROUNDS = 5

# The conflict target of a small batch: the key index only, so a taken id still raises.
_ON_KEY = "ON CONFLICT (handle, key) WHERE state = 'queued' AND key IS NOT NULL DO NOTHING"

_NOTIFY_HANDLES = f"""
SELECT pg_notify($1, CASE WHEN octet_length(x) < {_MAX_NOTIFY_PAYLOAD} THEN x ELSE '' END)
FROM (SELECT string_agg(DISTINCT handle, E'\\n') AS x FROM {{source}}) AS a
WHERE x IS NOT NULL
"""


_COPY_COLUMNS = (
    "id",
    "handle",
    "state",
    "payload",
    "attempts",
    "max_attempts",
    "run_at",
    "created_at",
)


class _Sql:
    """Every statement of the store, formatted once with its quoted schema name."""

    def __init__(self, s: str) -> None:
        notify = _NOTIFY_HANDLES.format(source="ins")
        # One statement: the insert and its NOTIFY commit together (PostgreSQL delivers a
        # notification only when its transaction commits, and a rolled-back one never).
        # It returns the inserted ids, and one NULL row when it notified (the UNION ALL is
        # what makes the NOTIFY part run at all).
        insert = f"""
WITH ins AS (
    INSERT INTO {s}.jobs (id, handle, state, payload, attempts, max_attempts, run_at,
        created_at, key)
    SELECT i, h, 'queued', p::jsonb, 0, m, r, c, k
    FROM unnest($2::uuid[], $3::text[], $4::text[], $5::integer[], $6::float8[],
        $7::float8[], $8::text[]) AS t(i, h, p, m, r, c, k)
    {{conflict}}
    RETURNING id, handle
),
note AS ({notify})
SELECT id FROM ins UNION ALL SELECT NULL::uuid FROM note
"""
        self.insert = insert.format(conflict=_ON_KEY)
        # For COPY batches, which skip taken ids as well.
        self.insert_any = insert.format(conflict="ON CONFLICT DO NOTHING")
        self.key_holders = f"""
SELECT handle, key, id FROM {s}.jobs
WHERE state = 'queued' AND key IS NOT NULL
    AND (handle, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))
"""
        self.stage = """
CREATE TEMP TABLE sidecars_staging (
    id uuid, handle text, payload text, max_attempts integer, run_at float8,
    created_at float8, key text
) ON COMMIT DROP
"""
        # Any conflict skips the row: a taken id (a retried batch) or a taken key.
        self.from_stage = f"""
INSERT INTO {s}.jobs (id, handle, state, payload, attempts, max_attempts, run_at,
    created_at, key)
SELECT id, handle, 'queued', payload::jsonb, 0, max_attempts, run_at, created_at, key
FROM sidecars_staging
ON CONFLICT DO NOTHING
RETURNING id
"""
        self.notify_stage = _NOTIFY_HANDLES.format(source="sidecars_staging")
        # Exhausted expired leases fail first, in the same statement (data-modifying CTEs
        # always run); the rows they touch can never be picked (attempts < max_attempts).
        # Queued jobs are read in one branch per handle, each a short ordered walk of the
        # partial index however large the backlog; SKIP LOCKED inside each branch, so
        # concurrent claimers split the due jobs instead of queueing on each other.
        self.claim = f"""
WITH lost AS (
    UPDATE {s}.jobs
    SET state = 'failed', outcome = $6, error = $7, finished_at = $2, token = NULL,
        lease_until = NULL
    WHERE id IN (
        SELECT id FROM {s}.jobs
        WHERE state = 'running' AND handle = ANY($1::text[]) AND lease_until <= $2
            AND attempts >= max_attempts
        FOR UPDATE SKIP LOCKED
    )
),
picked AS (
    SELECT id, run_at FROM (
        SELECT q.id, q.run_at FROM unnest($1::text[]) AS h(name) CROSS JOIN LATERAL (
            SELECT id, run_at FROM {s}.jobs
            WHERE state = 'queued' AND handle = h.name AND run_at <= $2
            ORDER BY run_at, id LIMIT $3
            FOR UPDATE SKIP LOCKED
        ) AS q
        UNION ALL
        SELECT e.id, e.run_at FROM (
            SELECT id, run_at FROM {s}.jobs
            WHERE state = 'running' AND handle = ANY($1::text[]) AND lease_until <= $2
                AND attempts < max_attempts
            ORDER BY run_at, id LIMIT $3
            FOR UPDATE SKIP LOCKED
        ) AS e
    ) AS c
    ORDER BY run_at, id LIMIT $3
)
UPDATE {s}.jobs AS j
SET state = 'running', attempts = j.attempts + 1, token = $4, lease_until = $5,
    started_at = $2
FROM picked
WHERE j.id = picked.id
RETURNING j.id, j.handle, j.payload::text, j.attempts, j.max_attempts, j.run_at
"""
        # Renew, finish and release lock their rows in id order first: two of them over
        # overlapping jobs (a renewal racing the finish of a job it still lists) would
        # otherwise lock in whatever order their joins ran, and deadlock.
        self.renew = f"""
WITH l AS (SELECT * FROM unnest($2::uuid[], $3::text[]) AS l(id, token)),
locked AS (
    SELECT j.id FROM {s}.jobs AS j JOIN l ON j.id = l.id AND j.token = l.token
    WHERE j.state = 'running' ORDER BY j.id FOR UPDATE OF j
)
UPDATE {s}.jobs AS j SET lease_until = $1
FROM locked WHERE j.id = locked.id
RETURNING j.id
"""
        # A keyed job going back to the queue may meet a newer queued job with its key,
        # which would fail the whole statement: the batch statements leave those rows to
        # the one-row statements (no filter), each run in a savepoint of its own.
        keyed_requeue = "AND NOT (r.state = 'queued' AND j.key IS NOT NULL)"
        finish = f"""
WITH r AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::float8[],
        $6::text[], $7::float8[]) AS r(id, token, state, outcome, finished_at, error, retry_at)
),
locked AS (
    SELECT j.id FROM {s}.jobs AS j JOIN r ON j.id = r.id AND j.token = r.token
    WHERE j.state = 'running' {{only}} ORDER BY j.id FOR UPDATE OF j
)
UPDATE {s}.jobs AS j
SET state = r.state, outcome = r.outcome, error = r.error,
    finished_at = CASE WHEN r.state = 'queued' THEN NULL ELSE r.finished_at END,
    run_at = CASE WHEN r.state = 'queued'
        THEN coalesce(r.retry_at, r.finished_at) ELSE j.run_at END,
    token = NULL, lease_until = NULL
FROM r JOIN locked ON r.id = locked.id
WHERE j.id = locked.id
RETURNING j.id
"""
        self.finish = finish.format(only=keyed_requeue)
        self.finish_one = finish.format(only="")
        # Released jobs are due at once: tell the other replicas, as an enqueue would.
        release = f"""
WITH l AS (SELECT * FROM unnest($3::uuid[], $4::text[]) AS l(id, token)),
locked AS (
    SELECT j.id FROM {s}.jobs AS j JOIN l ON j.id = l.id AND j.token = l.token
    WHERE j.state = 'running' {{only}} ORDER BY j.id FOR UPDATE OF j
),
rel AS (
    UPDATE {s}.jobs AS j
    SET state = 'queued', token = NULL, lease_until = NULL, run_at = $2,
        attempts = greatest(j.attempts - 1, 0)
    FROM locked WHERE j.id = locked.id
    RETURNING j.handle
)
{_NOTIFY_HANDLES.format(source="rel")}"""
        self.release = release.format(only="AND j.key IS NULL")
        self.release_one = release.format(only="")
        self.held_by_tokens = f"""
SELECT id, token FROM {s}.jobs WHERE state = 'running' AND token = ANY($1::text[])
"""
        self.held_keyed = f"""
SELECT j.id, j.token FROM {s}.jobs AS j
JOIN unnest($1::uuid[], $2::text[]) AS l(id, token) ON j.id = l.id AND j.token = l.token
WHERE j.state = 'running' AND j.key IS NOT NULL
"""
        self.supersede = f"""
UPDATE {s}.jobs
SET state = 'cancelled', outcome = 'cancelled', error = $1, finished_at = $2, token = NULL,
    lease_until = NULL
WHERE id = $3 AND token = $4 AND state = 'running'
RETURNING id
"""
        self.cancel = f"""
UPDATE {s}.jobs
SET state = 'cancelled', outcome = 'cancelled', finished_at = $2, token = NULL,
    lease_until = NULL
WHERE id = $1 AND state = 'queued'
RETURNING state
"""
        self.state = f"SELECT state FROM {s}.jobs WHERE id = $1"
        self.retry = f"""
UPDATE {s}.jobs
SET state = 'queued', run_at = $2, attempts = 0, token = NULL, lease_until = NULL,
    finished_at = NULL
WHERE id = $1 AND state IN ('failed', 'cancelled')
RETURNING handle
"""
        self.notify = "SELECT pg_notify($1, $2)"
        self.get_job = f"SELECT {_JOB_COLUMNS} FROM {s}.jobs WHERE id = $1"
        # One statement per combination of filters, so each gets a plan of its own (a
        # "$1 IS NULL OR ..." form would share one generic plan between them).
        self.list_jobs = {
            (by_handle, by_state): (
                f"SELECT {_JOB_COLUMNS} FROM {s}.jobs WHERE "
                + " AND ".join(
                    ["true"]
                    + (["handle = $2"] if by_handle else [])
                    + ([f"state = ${2 + by_handle}"] if by_state else [])
                )
                + " ORDER BY created_at DESC, id DESC LIMIT $1"
            )
            for by_handle in (False, True)
            for by_state in (False, True)
        }
        self.next_wakeup = f"""
SELECT least(
    (SELECT min(run_at) FROM {s}.jobs WHERE state = 'queued' AND handle = ANY($1::text[])),
    (SELECT min(lease_until) FROM {s}.jobs
        WHERE state = 'running' AND handle = ANY($1::text[]))
)
"""
        self.prune_jobs = f"""
WITH d AS (
    DELETE FROM {s}.jobs WHERE id IN (
        SELECT id FROM {s}.jobs
        WHERE state IN {_FINISHED} AND finished_at < $1::float8
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    )
    RETURNING 1
)
SELECT count(*) FROM d
"""
        # Fire claims serialise per handle on a transaction-scoped advisory lock: the rules
        # read the handle's running fires (overlap) as well as the requested rows, so a
        # lock on the rows alone would let two replicas claim two overlapping fires.
        self.fire_locks = """
SELECT pg_advisory_xact_lock(hashtextextended($1 || h, 0)) FROM unnest($2::text[]) AS h
"""
        self.fire_rows = f"""
SELECT f.handle, f.fire_at, f.state, f.outcome, f.attempts, f.token, f.lease_until,
    f.claimed_at, f.finished_at, f.error
FROM unnest($1::text[], $2::bigint[]) AS k(handle, fire_at)
JOIN {s}.fires AS f ON f.handle = k.handle AND f.fire_at = k.fire_at
"""
        self.fires_running = f"""
SELECT handle, fire_at FROM {s}.fires
WHERE handle = ANY($1::text[]) AND state = 'running' AND lease_until > $2
"""
        self.fire_upsert = f"""
INSERT INTO {s}.fires (handle, fire_at, state, outcome, attempts, token, lease_until,
    claimed_at, finished_at, error)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::integer[],
    $6::text[], $7::float8[], $8::float8[], $9::float8[], $10::text[])
ON CONFLICT (handle, fire_at) DO UPDATE SET
    state = excluded.state, outcome = excluded.outcome, attempts = excluded.attempts,
    token = excluded.token, lease_until = excluded.lease_until,
    claimed_at = excluded.claimed_at, finished_at = excluded.finished_at,
    error = excluded.error
"""
        self.renew_fires = f"""
UPDATE {s}.fires AS f SET lease_until = $1
FROM unnest($2::text[], $3::bigint[], $4::text[]) AS l(handle, fire_at, token)
WHERE f.handle = l.handle AND f.fire_at = l.fire_at AND f.token = l.token
    AND f.state = 'running'
RETURNING f.handle, f.fire_at
"""
        self.release_fires = f"""
UPDATE {s}.fires AS f
SET state = 'released', token = NULL, lease_until = NULL,
    attempts = greatest(f.attempts - 1, 0)
FROM unnest($1::text[], $2::bigint[], $3::text[]) AS l(handle, fire_at, token)
WHERE f.handle = l.handle AND f.fire_at = l.fire_at AND f.token = l.token
    AND f.state = 'running'
"""
        self.finish_fire = f"""
UPDATE {s}.fires
SET state = $1, outcome = $2, error = $3, finished_at = $4, token = NULL,
    lease_until = NULL
WHERE handle = $5 AND fire_at = $6 AND token = $7 AND state = 'running'
RETURNING 1
"""
        self.last_fire = f"""
SELECT max(fire_at) FROM {s}.fires WHERE handle = $1 AND state <> 'released'
"""
        self.prune_fires = f"""
WITH d AS (
    DELETE FROM {s}.fires WHERE (handle, fire_at) IN (
        SELECT handle, fire_at FROM {s}.fires
        WHERE fire_at < $1::float8 AND state <> 'running'
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    )
    RETURNING 1
)
SELECT count(*) FROM d
"""
        self.migrations_table = MIGRATIONS_TABLE.format(s=s)
        self.has_migrations = "SELECT to_regclass($1) IS NOT NULL"
        self.version = f"SELECT coalesce(max(version), 0) FROM {s}.migrations"
        self.record_version = f"INSERT INTO {s}.migrations (version, applied_at) VALUES ($1, $2)"


class _Batch:
    """Jobs of concurrent ``enqueue`` calls that commit together."""

    __slots__ = ("done", "error", "jobs", "refs")

    def __init__(self) -> None:
        self.jobs: list[NewJob] = []
        self.refs: list[JobRef] = []
        self.done = anyio.Event()
        self.error: BaseException | None = None


class PostgresStore:
    """A :class:`~sidecars.stores.Store` in PostgreSQL, shared by replicas on many hosts.

    Claims take due jobs with ``FOR UPDATE SKIP LOCKED``, so any number of runners split the
    work without waiting on each other; every claim, renewal and finish is one statement
    for the whole batch, fenced by the claim's token. Enqueues send a ``NOTIFY`` (one per
    transaction) that :meth:`watch` turns into wake-ups, so idle runners start new work at
    once and poll only as a fallback. All times come from the caller's clock, never from
    SQL ``now()``: replicas need their clocks within about a second of each other.

    The store opens lazily on its first call (or :meth:`open`): it creates a connection
    pool (unless given one) and applies the schema's migrations under an advisory lock, so
    pods starting together agree. Concurrent ``enqueue`` calls are group-committed.

    Args:
        dsn: a libpq connection string or URI, e.g.
            ``"postgresql://app@db.internal/app"``. Give either ``dsn`` or ``pool``.
        pool: an ``asyncpg.Pool`` of your own; the store never closes it.
        schema: the PostgreSQL schema holding the store's tables, created if missing:
            1-48 lower case letters, digits or underscores, not starting with a digit.
            It is quoted in every statement; never build it from untrusted input.
        listen: use LISTEN/NOTIFY wake-ups. ``False`` for PgBouncer in transaction mode:
            the pool is then created with ``statement_cache_size=0`` and :meth:`watch`
            idles, leaving wake-ups to polling.
        min_size: the pool's minimum number of connections (with ``dsn``).
        max_size: the pool's maximum number of connections (with ``dsn``).
        retention: how long :meth:`prune_jobs` keeps finished jobs by default.
        copy_threshold: batches of at least this many jobs are enqueued through ``COPY``
            (see :meth:`bulk_enqueue`).
        command_timeout: seconds before a statement is abandoned, or None.
        connect_kwargs: more keyword arguments for ``asyncpg.create_pool`` and
            ``asyncpg.connect`` (``ssl``, ``server_settings``, ...).

    Raises:
        ValueError: both or neither of ``dsn`` and ``pool`` are given, or ``schema``,
            ``min_size``, ``max_size``, ``retention`` or ``copy_threshold`` is invalid.

    Example:
        >>> store = PostgresStore("postgresql://app@db/app", schema="jobs", max_size=20)
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: asyncpg.Pool | None = None,
        schema: str = "sidecars",
        listen: bool = True,
        min_size: int = 1,
        max_size: int = 10,
        retention: timedelta = timedelta(days=7),
        copy_threshold: int = 500,
        command_timeout: float | None = 60.0,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if (dsn is None) == (pool is None):
            raise ValueError("PostgresStore needs exactly one of dsn= and pool=")
        quoted = quote_schema(schema)
        if min_size < 0 or max_size < 1 or min_size > max_size:
            raise ValueError(
                f"min_size and max_size must satisfy 0 <= min_size <= max_size and "
                f"max_size >= 1; got {min_size} and {max_size}"
            )
        if retention <= timedelta(0):
            raise ValueError(f"retention must be positive, not {retention!r}")
        if copy_threshold < 1:
            raise ValueError(f"copy_threshold must be >= 1, not {copy_threshold!r}")
        self.dsn = dsn
        self.schema = schema
        self.listen = listen
        self.min_size = min_size
        self.max_size = max_size
        self.retention = retention
        self.copy_threshold = copy_threshold
        self.command_timeout = command_timeout
        self.connect_kwargs = dict(connect_kwargs or {})
        self.channel = f"{schema}_jobs"
        """The NOTIFY channel enqueues signal on."""
        self._sql = _Sql(quoted)
        self._user_pool = pool
        self._pool: asyncpg.Pool | None = pool
        self._migrated = False
        # Tokens of claims whose answer was lost (the connection failed): their jobs may be
        # running under a lease nobody holds; the next claim gives them back first.
        self._lost_claims: list[str] = []
        self._open_lock = anyio.Lock()
        self._enqueue_lock = anyio.Lock()
        self._pending: _Batch | None = None

    def __repr__(self) -> str:
        where = "pool=..." if self.dsn is None else "dsn=..."
        return f"PostgresStore({where}, schema={self.schema!r}, listen={self.listen})"

    @property
    def pool(self) -> asyncpg.Pool | None:
        """The connection pool in use (None before the store opens)."""
        return self._pool if self._migrated else None

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and bring the schema up to date. Safe to call more than once.

        Raises:
            StoreUnavailable: the server cannot be reached, or the schema is newer than
                this version of sidecars.
        """
        await self._ready()

    async def close(self) -> None:
        """Close the pool the store created (never one passed in). Safe to call again.

        The store opens again if it is used after closing. Jobs of claims whose answer was
        lost are given back first, if the server can be reached.
        """
        with anyio.CancelScope(shield=True):
            if self._lost_claims and self._pool is not None:
                with anyio.move_on_after(5):
                    await self._release_lost_claims(time.time())
            async with self._open_lock:
                pool = self._pool
                self._migrated = False
                if pool is not None and pool is not self._user_pool:
                    self._pool = None
                    await pool.close()

    async def migrate(self) -> int:
        """Apply pending migrations now; return the schema version.

        Opening the store already does this; call it from a deploy step to migrate before
        the application starts (``sidecars migrate`` will wrap it).

        Raises:
            StoreUnavailable: the server cannot be reached, or the schema is newer than
                this version of sidecars.
        """
        pool = await self._ready()
        async with pool.acquire() as conn:
            return int(await conn.fetchval(self._sql.version))

    async def _ready(self) -> asyncpg.Pool:
        """The open pool with the schema migrated, opening both first if needed."""
        pool = self._pool
        if pool is not None and self._migrated:
            return pool
        # Shielded: a cancelled open would leave a half-created pool behind.
        with anyio.CancelScope(shield=True):
            async with self._open_lock:
                if self._pool is None:
                    self._pool = await self._create_pool()
                if not self._migrated:
                    try:
                        async with self._pool.acquire() as conn:
                            await self._migrate(conn)
                    except _CONNECTION_ERRORS as exc:
                        raise self._unavailable("open", exc) from exc
                    self._migrated = True
                return self._pool

    async def _create_pool(self) -> asyncpg.Pool:
        kwargs: dict[str, Any] = {
            "min_size": self.min_size,
            "max_size": self.max_size,
            "command_timeout": self.command_timeout,
        }
        if not self.listen:
            # PgBouncer in transaction mode hands each transaction to any server
            # connection: named prepared statements would not be found there.
            kwargs["statement_cache_size"] = 0
        kwargs.update(self.connect_kwargs)
        try:
            return await asyncpg.create_pool(self.dsn, **kwargs)
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable("connect", exc) from exc

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        latest = MIGRATIONS[-1][0]
        # The common case, a current schema, needs no lock and no CREATE privilege.
        if await conn.fetchval(self._sql.has_migrations, f"{self.schema}.migrations"):
            current = int(await conn.fetchval(self._sql.version))
            self._check_version(current, latest)
            if current == latest:
                return
        async with conn.transaction():
            # Transaction-scoped: released by the commit (or rollback) whatever happens,
            # and the second of two pods starting together waits here, then finds the
            # schema current.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"sidecars.migrate:{self.schema}",
            )
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_schema(self.schema)}")
            await conn.execute(self._sql.migrations_table)
            current = int(await conn.fetchval(self._sql.version))
            self._check_version(current, latest)
            quoted = quote_schema(self.schema)
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    await conn.execute(statement.format(s=quoted))
                await conn.execute(self._sql.record_version, version, time.time())

    def _check_version(self, current: int, latest: int) -> None:
        if current > latest:
            raise StoreUnavailable(
                f"PostgreSQL schema {self.schema!r} has version {current}, newer than this "
                f"version of sidecars knows ({latest}); upgrade sidecars"
            )

    # -- plumbing --------------------------------------------------------------------

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"PostgreSQL store (schema {self.schema!r}) could not {what}: {exc}"
        )

    async def _write(self, what: str, body: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        """Run ``body`` on a pooled connection, shielded from cancellation.

        A cancelled caller is stopped before the statement is sent; once sent, the call
        completes and returns its result, so a claim's jobs are never dropped on the floor
        (``command_timeout`` bounds how long that can take).
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        with anyio.CancelScope(shield=True):
            pool = await self._ready()
            try:
                async with pool.acquire(timeout=self.command_timeout) as conn:
                    result = await body(conn)
            except _CONNECTION_ERRORS as exc:
                raise self._unavailable(what, exc) from exc
        return result

    async def _fetch(self, what: str, sql: str, *args: Any) -> list[Any]:
        async def body(conn: asyncpg.Connection) -> list[Any]:
            return list(await conn.fetch(sql, *args))

        return await self._write(what, body)

    async def _read(self, sql: str, *args: Any) -> list[Any]:
        # Reads change nothing, so they stay cancellable.
        pool = await self._ready()
        try:
            async with pool.acquire(timeout=self.command_timeout) as conn:
                return list(await conn.fetch(sql, *args))
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable("read", exc) from exc

    # -- enqueue ---------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[JobRef]:
        """Insert jobs durably; return once they are committed, one reference per job.

        Calls made while a commit is in flight are gathered and committed together by the
        next one, in one statement. An error (a taken id) fails the whole group and is
        raised to every caller in it; a taken key does not: its job answers with the queued
        job's id and ``created=False``. A batch of at least ``copy_threshold`` jobs goes
        through ``COPY`` instead (see :meth:`bulk_enqueue`), which skips ids that already
        exist (their references say ``created=False``).

        Raises:
            ValueError: a job id already exists (or appears twice in the group).
            StoreUnavailable: the server cannot be reached.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        if not jobs:
            return []
        if len(jobs) >= self.copy_threshold:

            async def copy(conn: asyncpg.Connection) -> list[JobRef]:
                return await self._copy(conn, jobs)

            return await self._write("bulk enqueue", copy)
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
        try:
            with anyio.CancelScope(shield=True):
                async with self._enqueue_lock:
                    # Detached only now that the previous commit is done, so callers that
                    # arrived meanwhile have all joined this one.
                    if self._pending is batch:
                        self._pending = None

                    async def body(conn: asyncpg.Connection) -> list[JobRef]:
                        return await self._insert(conn, batch.jobs)

                    batch.refs = await self._write("enqueue", body)
        except Exception as exc:
            batch.error = exc
        except BaseException:
            batch.error = StoreUnavailable("enqueue was interrupted before it committed")
            raise
        finally:
            if self._pending is batch:
                self._pending = None
            batch.done.set()

    async def enqueue_in(
        self, connection: asyncpg.Connection, jobs: Sequence[NewJob]
    ) -> list[JobRef]:
        """Insert jobs on the caller's own asyncpg connection, inside its transaction.

        Run inside ``async with connection.transaction():`` the jobs exist if and only if
        that transaction commits, and the wake-up is sent on commit. Outside a transaction
        the insert commits at once. Batches of at least ``copy_threshold`` jobs use
        ``COPY`` (in a savepoint) and skip ids that already exist. Keys work as with
        :meth:`enqueue`; a batch with keys runs in a savepoint of its own.

        Returns:
            One reference per job, in order.

        Raises:
            ValueError: a job id already exists (smaller batches only).
            StoreUnavailable: the store cannot open its own pool (it migrates the schema
                first).
        """
        if not jobs:
            return []
        await self._ready()
        if len(jobs) >= self.copy_threshold:
            return await self._copy(connection, jobs)
        return await self._insert(connection, jobs)

    async def bulk_enqueue(
        self, jobs: Sequence[NewJob], *, connection: asyncpg.Connection | None = None
    ) -> int:
        """Insert many jobs through ``COPY``; return how many were new.

        The rows are copied into a temporary staging table, then inserted with
        ``ON CONFLICT DO NOTHING``: a job whose id already exists (a retried batch), or
        whose key a queued job holds, is skipped rather than failing the batch. One
        transaction and one ``NOTIFY`` for the lot. With ``connection``, runs on it (inside
        its transaction, if any).

        Raises:
            StoreUnavailable: the server cannot be reached.
        """
        if not jobs:
            return 0
        if connection is not None:
            await self._ready()
            refs = await self._copy(connection, jobs)
        else:

            async def body(conn: asyncpg.Connection) -> list[JobRef]:
                return await self._copy(conn, jobs)

            refs = await self._write("bulk enqueue", body)
        return sum(ref.created for ref in refs)

    async def _insert(self, conn: asyncpg.Connection, jobs: Sequence[NewJob]) -> list[JobRef]:
        plan = KeyPlan(jobs)
        keyed = [job for job in plan.unique if job.key is not None]
        try:
            if not keyed:
                # The common case stays one statement, with no transaction of its own.
                await self._insert_rows(conn, self._sql.insert, plan.unique)
                return plan.refs([(job.id, True) for job in plan.unique])
            # Keyed rows in key order, so two batches sharing keys wait on each other's
            # rows in the same order rather than deadlocking.
            ordered = [job for job in plan.unique if job.key is None]
            ordered += sorted(keyed, key=lambda job: (job.handle, job.key or ""))
            async with conn.transaction():
                inserted = await self._insert_rows(conn, self._sql.insert, ordered)
                holders = await self._settle_keys(conn, keyed, inserted, self._sql.insert)
        except asyncpg.UniqueViolationError as exc:
            raise ValueError(f"cannot enqueue this batch (is a job id taken?): {exc}") from exc
        missing = [job for job in keyed if (job.handle, job.key) not in holders]
        if missing:
            raise StoreUnavailable(
                f"PostgreSQL store (schema {self.schema!r}) could not enqueue: the queued "
                f"job of key {missing[0].key!r} kept changing"
            )
        return plan.refs(_answers(plan.unique, inserted, holders))

    async def _insert_rows(
        self, conn: asyncpg.Connection, sql: str, jobs: Sequence[NewJob]
    ) -> set[UUID]:
        """Run one insert statement over ``jobs``; return the ids it inserted."""
        rows = await conn.fetch(
            sql,
            self.channel,
            [job.id for job in jobs],
            [job.handle for job in jobs],
            [job.payload for job in jobs],
            [job.max_attempts for job in jobs],
            [job.run_at for job in jobs],
            [job.created_at for job in jobs],
            [job.key for job in jobs],
        )
        return {row[0] for row in rows if row[0] is not None}

    async def _settle_keys(
        self,
        conn: asyncpg.Connection,
        keyed: Sequence[NewJob],
        inserted: set[UUID],
        insert: str,
    ) -> dict[tuple[str, str], UUID]:
        """The queued holder of each key of ``keyed``, after their insert.

        A job that was skipped answers with the queued job holding its key. Should that job
        be claimed before its id is read (another replica), the skipped job is inserted
        again, as the index now allows; ``inserted`` gains the ids inserted so. A key
        missing from the answer after a few rounds was never settled (or, for a COPY
        batch, its job's id was taken).
        """
        holders = {(job.handle, job.key or ""): job.id for job in keyed if job.id in inserted}
        pending = [job for job in keyed if job.id not in inserted]
        for _ in range(_KEY_ROUNDS):
            if not pending:
                break
            rows = await conn.fetch(
                self._sql.key_holders,
                [job.handle for job in pending],
                [job.key for job in pending],
            )
            holders.update({(row[0], row[1]): row[2] for row in rows})
            pending = [job for job in pending if (job.handle, job.key or "") not in holders]
            if not pending:
                break
            added = await self._insert_rows(conn, insert, pending)
            inserted |= added
            holders.update(
                {(job.handle, job.key or ""): job.id for job in pending if job.id in added}
            )
            pending = [job for job in pending if job.id not in added]
        return holders

    async def _copy(self, conn: asyncpg.Connection, jobs: Sequence[NewJob]) -> list[JobRef]:
        plan = KeyPlan(jobs)
        if all(job.key is None for job in plan.unique):
            # Fresh ids, no keys: COPY straight into the table. Only a retried batch (its
            # ids already stored) conflicts; then the staging path below skips those ids.
            try:
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "jobs",
                        schema_name=self.schema,
                        records=[
                            (j.id, j.handle, "queued", j.payload, 0, j.max_attempts, j.run_at,
                             j.created_at)
                            for j in plan.unique
                        ],
                        columns=_COPY_COLUMNS,
                    )  # fmt: skip
                    handles = "\n".join(sorted({job.handle for job in plan.unique}))
                    if len(handles.encode()) >= _MAX_NOTIFY_PAYLOAD:
                        handles = ""  # too long for a notification: "every handle"
                    await conn.execute("SELECT pg_notify($1, $2)", self.channel, handles)
            except asyncpg.UniqueViolationError:
                pass
            else:
                return plan.refs([(job.id, True) for job in plan.unique])
        records = [
            (
                job.id,
                job.handle,
                job.payload,
                job.max_attempts,
                job.run_at,
                job.created_at,
                job.key,
            )
            for job in plan.unique
        ]
        keyed = [job for job in plan.unique if job.key is not None]
        # A savepoint inside the caller's transaction, or a transaction of its own: the
        # staging table is dropped with it either way.
        async with conn.transaction():
            await conn.execute(self._sql.stage)
            await conn.copy_records_to_table(
                "sidecars_staging",
                records=records,
                columns=(
                    "id",
                    "handle",
                    "payload",
                    "max_attempts",
                    "run_at",
                    "created_at",
                    "key",
                ),
            )
            inserted = {row[0] for row in await conn.fetch(self._sql.from_stage)}
            if inserted:
                await conn.execute(self._sql.notify_stage, self.channel)
            await conn.execute("DROP TABLE sidecars_staging")
            holders = await self._settle_keys(conn, keyed, inserted, self._sql.insert_any)
        return plan.refs(_answers(plan.unique, inserted, holders))

    # -- jobs ------------------------------------------------------------------------

    async def cancel(self, job_id: UUID, *, now: float) -> JobState | None:
        """Cancel a queued job; return its state afterwards, or None for an unknown id.

        A running job is left to its runner (the answer is ``RUNNING``); a finished one is
        left as it is (the answer is its state).
        """

        async def body(conn: asyncpg.Connection) -> Any:
            state = await conn.fetchval(self._sql.cancel, job_id, now)
            # Not queued: read the state afresh (a claim may have just taken the row).
            return state if state is not None else await conn.fetchval(self._sql.state, job_id)

        state = await self._write("cancel", body)
        return None if state is None else JobState(state)

    async def retry(self, job_id: UUID, *, now: float) -> bool:
        """Queue a failed or cancelled job again, due at ``now``, its attempts reset to 0.

        The outcome and error of the last run stay until the next run ends.

        Returns:
            True if the job is queued again; False if it was in another state, is unknown,
            or has a key that another queued job of its handle holds (it is left as it is).
        """

        async def body(conn: asyncpg.Connection) -> bool:
            try:
                async with conn.transaction():
                    handle = await conn.fetchval(self._sql.retry, job_id, now)
                    if handle is not None:
                        await conn.execute(self._sql.notify, self.channel, handle)
            except asyncpg.UniqueViolationError:
                return False
            return handle is not None

        return bool(await self._write("retry", body))

    async def claim(
        self, handles: Sequence[str], limit: int, *, now: float, lease: float
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` due jobs of ``handles`` for ``lease`` seconds.

        One statement: jobs whose lease expired after their last allowed attempt are failed
        with outcome ``LEASE_LOST``, and due jobs are locked with ``SKIP LOCKED`` and marked
        running, so concurrent claimers on any number of hosts never wait on each other
        and never get the same job.
        """
        if not handles or limit <= 0:
            return []
        if self._lost_claims:
            await self._release_lost_claims(now)
        names = list(dict.fromkeys(handles))
        token = uuid4().hex
        until = now + lease
        try:
            rows = await self._fetch(
                "claim",
                self._sql.claim,
                names,
                now,
                limit,
                token,
                until,
                Outcome.LEASE_LOST.value,
                LEASE_LOST_ERROR,
            )
        except StoreUnavailable:
            # The claim may have committed before the connection failed.
            self._lost_claims = [*self._lost_claims[-99:], token]
            raise
        return claimed_jobs(rows, token=token, until=until)

    async def _release_lost_claims(self, now: float) -> None:
        """Give back the jobs of claims whose answer never arrived, without counting the
        attempt, instead of leaving them until their leases expire."""
        tokens = list(self._lost_claims)
        try:
            rows = await self._read(self._sql.held_by_tokens, tokens)
            if rows:
                await self.release([Lease(id=row[0], token=row[1]) for row in rows], now=now)
        except StoreUnavailable:
            return  # still unreachable: the next claim tries again
        if rows:
            log.info("sidecars: gave back %d job(s) of a claim whose answer was lost", len(rows))
        self._lost_claims = [t for t in self._lost_claims if t not in tokens]

    async def renew(self, leases: Sequence[Lease], *, now: float, lease: float) -> set[UUID]:
        """Extend held leases to ``now + lease``; return the ids still held."""
        if not leases:
            return set()
        rows = await self._fetch(
            "renew",
            self._sql.renew,
            now + lease,
            [item.id for item in leases],
            [item.token for item in leases],
        )
        return {row[0] for row in rows}

    async def finish(self, results: Sequence[Finish]) -> set[UUID]:
        """Record the end of runs in one statement; return the ids whose token matched.

        Raises:
            ValueError: a result's state is ``RUNNING``.
        """
        if not results:
            return set()
        for result in results:
            check_finish_state(result.state)

        if all(result.state is not JobState.QUEUED for result in results):
            # No retries to re-queue: one statement, its own transaction.
            rows = await self._fetch("finish", self._sql.finish, *_finish_columns(results))
            return {row[0] for row in rows}

        async def body(conn: asyncpg.Connection) -> set[UUID]:
            async with conn.transaction():
                rows = await conn.fetch(self._sql.finish, *_finish_columns(results))
                applied = {row[0] for row in rows}
                # Keyed retries, one savepoint each: a key queued again meanwhile
                # supersedes the job instead of failing the batch.
                for result in results:
                    if result.state is not JobState.QUEUED or result.id in applied:
                        continue
                    one = await self._requeue(
                        conn,
                        self._sql.finish_one,
                        _finish_columns([result]),
                        job_id=result.id,
                        token=result.token,
                        now=result.finished_at,
                    )
                    applied.update(row[0] for row in one)
                return applied

        return await self._write("finish", body)

    async def finish_and_claim(
        self,
        results: Sequence[Finish],
        claims: Sequence[tuple[str, int]],
        *,
        now: float,
        lease: float,
    ) -> tuple[set[UUID], list[ClaimedJob]]:
        """:meth:`finish`, then :meth:`claim` for each ``(handle, limit)``.

        The two touch different rows (running ones, due ones), so they run at the same time
        on two pooled connections: a round costs one commit's latency, not two. A failed
        claim answers with no jobs (the runner claims again later); a failed finish raises,
        as :meth:`finish` does.
        """
        claimed: list[ClaimedJob] = []

        async def claim_all() -> None:
            """Claim per handle into ``claimed``; a failure keeps what was claimed before it
            (committed) and is raised only when nothing was."""
            for handle, limit in claims:
                try:
                    claimed.extend(await self.claim([handle], limit, now=now, lease=lease))
                except StoreUnavailable:  # noqa: PERF203 (one per handle: a few)
                    if not claimed:
                        raise
                    log.warning("sidecars: a claim failed; claiming again later")
                    return

        if not results:
            await claim_all()
            return set(), claimed

        async def claim_beside() -> None:
            with contextlib.suppress(StoreUnavailable):  # the runner claims again later
                await claim_all()

        failed: list[Exception] = []
        applied: set[UUID] = set()
        async with anyio.create_task_group() as tg:
            tg.start_soon(claim_beside)
            try:
                applied = await self.finish(results)
            except Exception as exc:
                failed.append(exc)
        if failed:
            if claimed:
                # The caller sees an error and no jobs: give back what was claimed.
                with contextlib.suppress(StoreUnavailable):
                    await self.release([Lease(id=j.id, token=j.token) for j in claimed], now=now)
            raise failed[0]
        return applied, claimed

    async def release(self, leases: Sequence[Lease], *, now: float) -> None:
        """Give held jobs back, due at ``now``, without counting the attempt."""
        if not leases:
            return
        ids = [item.id for item in leases]
        tokens = [item.token for item in leases]

        async def body(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute(self._sql.release, self.channel, now, ids, tokens)
                # Keyed jobs one savepoint each: a key queued again meanwhile supersedes
                # the job instead of failing the batch.
                for job_id, token in await conn.fetch(self._sql.held_keyed, ids, tokens):
                    await self._requeue(
                        conn,
                        self._sql.release_one,
                        (self.channel, now, [job_id], [token]),
                        job_id=job_id,
                        token=token,
                        now=now,
                    )

        await self._write("release", body)

    async def _requeue(
        self,
        conn: asyncpg.Connection,
        sql: str,
        args: Sequence[Any],
        *,
        job_id: UUID,
        token: str,
        now: float,
    ) -> list[Any]:
        """Run a statement that puts one keyed job back in the queue, in a savepoint.

        If a newer queued job holds the key, the job ends cancelled (superseded) instead;
        either way the rows the statement returned.
        """
        try:
            async with conn.transaction():
                return list(await conn.fetch(sql, *args))
        except asyncpg.UniqueViolationError:
            return list(await conn.fetch(self._sql.supersede, SUPERSEDED_ERROR, now, job_id, token))

    async def get_job(self, job_id: UUID) -> JobInfo | None:
        """Read one job, or None if the id is unknown."""
        rows = await self._read(self._sql.get_job, job_id)
        return job_info(rows[0]) if rows else None

    async def list_jobs(
        self,
        *,
        handle: str | None = None,
        state: str | JobState | None = None,
        limit: int = 50,
    ) -> list[JobInfo]:
        """The newest jobs first (by ``created_at``, then id), optionally filtered.

        No index serves this order (one would cost every enqueue a write), so the server
        reads the jobs that pass the filters and keeps the newest ``limit``; pruning keeps
        that set small.

        Args:
            handle: only jobs of this handle.
            state: only jobs in this state (a :class:`~sidecars.JobState` or its value).
            limit: at most this many jobs, 1 to 10,000.

        Raises:
            ValueError: ``state`` is not a job state, or ``limit`` is out of range.
            StoreUnavailable: the server cannot be reached.
        """
        handle, wanted, limit = check_list_args(handle, state, limit)
        args: list[Any] = [limit]
        if handle is not None:
            args.append(handle)
        if wanted is not None:
            args.append(wanted.value)
        sql = self._sql.list_jobs[(handle is not None, wanted is not None)]
        return [job_info(row) for row in await self._read(sql, *args)]

    async def next_wakeup(self, handles: Sequence[str]) -> float | None:
        """The earliest time a job of ``handles`` becomes claimable, or None."""
        if not handles:
            return None
        rows = await self._read(self._sql.next_wakeup, list(dict.fromkeys(handles)))
        value = rows[0][0] if rows else None
        return None if value is None else float(value)

    async def prune_jobs(self, *, before: float | None = None) -> int:
        """Delete finished jobs (succeeded, failed, cancelled) that ended before ``before``.

        Rows go in batches of a thousand, each its own short transaction; batches already
        committed stay deleted if the call is cancelled. A running consuming runner calls
        this regularly (every seventh of the retention, an hour to a day) with its own clock
        and the app's ``job_retention``.

        Args:
            before: epoch seconds; by default, this host's wall clock minus ``retention``
                (the one place the store reads a clock, kept for callers of earlier
                versions; pass ``before`` to stay on your own clock).

        Returns:
            How many jobs were deleted.
        """
        if before is None:
            before = time.time() - self.retention.total_seconds()
        return await self._prune(self._sql.prune_jobs, before, "prune jobs")

    async def _prune(self, sql: str, before: float, what: str) -> int:
        total = 0
        while True:
            rows = await self._fetch(what, sql, before, _PRUNE_BATCH)
            deleted = int(rows[0][0])
            total += deleted
            if deleted < _PRUNE_BATCH:
                return total

    # -- wake-ups --------------------------------------------------------------------

    async def watch(self, handles: Sequence[str], wake: Callable[[str], None]) -> None:
        """Call ``wake(handle)`` when a job of ``handles`` is enqueued anywhere.

        Holds one connection of its own (a new one with ``dsn``, one of the pool with
        ``pool``) listening on :attr:`channel`, and wakes every handle once as soon as it
        listens, for jobs enqueued before. Runs until cancelled; raises
        :class:`~sidecars.exceptions.StoreUnavailable` when the connection is lost, so the
        runner restarts it. With ``listen=False`` it only sleeps: polling finds the work.
        """
        if not self.listen:
            await anyio.sleep_forever()
        wanted = frozenset(handles)
        if not wanted:
            await anyio.sleep_forever()
        pool = await self._ready()
        lost = anyio.Event()

        def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            names = payload.split("\n") if payload else wanted
            for name in names:
                if name in wanted:
                    wake(name)

        def on_lost(_conn: object) -> None:
            lost.set()

        try:
            if self.dsn is not None:
                kwargs = {"command_timeout": self.command_timeout, **self.connect_kwargs}
                conn = await asyncpg.connect(self.dsn, **kwargs)
            else:
                conn = await pool.acquire(timeout=self.command_timeout)
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable("listen", exc) from exc
        try:
            conn.add_termination_listener(on_lost)
            await conn.add_listener(self.channel, on_notify)
            for name in wanted:
                wake(name)
            while True:
                with anyio.move_on_after(_KEEPALIVE):
                    await lost.wait()
                if lost.is_set() or conn.is_closed():
                    raise StoreUnavailable(
                        f"PostgreSQL store (schema {self.schema!r}) lost its LISTEN connection"
                    )
                # A round trip now and then notices a connection dropped silently.
                await conn.execute("SELECT 1")
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable("listen", exc) from exc
        finally:
            with anyio.CancelScope(shield=True):
                conn.remove_termination_listener(on_lost)
                if self.dsn is not None:
                    await _close_quietly(conn)
                else:
                    if not conn.is_closed():
                        with contextlib.suppress(*_CONNECTION_ERRORS):
                            await conn.remove_listener(self.channel, on_notify)
                    await pool.release(conn)

    # -- fires -----------------------------------------------------------------------

    async def claim_fires(
        self, requests: Sequence[FireRequest], *, now: float, lease: float
    ) -> list[FireClaim]:
        """Claim fires for ``lease`` seconds, one answer per request, in order.

        One transaction per batch under a transaction-scoped advisory lock per handle
        (taken in sorted order, so batches never deadlock): two replicas claiming the same
        fire at the same instant get exactly one ``CLAIMED``, and the overlap check sees
        every running fire of the handle. Requests are answered one after another, so a
        later request of the batch sees what an earlier one claimed.
        """
        if not requests:
            return []
        handles = sorted({r.handle for r in requests})

        async def body(conn: asyncpg.Connection) -> list[FireClaim]:
            async with conn.transaction():
                await conn.execute(self._sql.fire_locks, f"sidecars.fires:{self.schema}:", handles)
                rows = {
                    (row.handle, row.fire_at): row
                    for row in map(
                        _fire_row,
                        await conn.fetch(
                            self._sql.fire_rows,
                            [r.handle for r in requests],
                            [r.fire_at for r in requests],
                        ),
                    )
                }
                running: dict[str, set[int]] = {}
                for handle, fire_at in await conn.fetch(self._sql.fires_running, handles, now):
                    running.setdefault(handle, set()).add(fire_at)
                answers, changed = decide_fires(requests, rows, running, now=now, lease=lease)
                if changed:
                    await conn.execute(self._sql.fire_upsert, *_fire_columns(changed.values()))
                return answers

        return await self._write("claim fires", body)

    async def renew_fires(
        self, leases: Sequence[FireLease], *, now: float, lease: float
    ) -> set[tuple[str, int]]:
        """Extend held fire leases to ``now + lease``; return the pairs still held."""
        if not leases:
            return set()
        rows = await self._fetch(
            "renew fires", self._sql.renew_fires, now + lease, *_fire_leases(leases)
        )
        return {(row[0], row[1]) for row in rows}

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
        rows = await self._fetch(
            "finish a fire",
            self._sql.finish_fire,
            state.value,
            outcome.value,
            error,
            finished_at,
            lease.handle,
            lease.fire_at,
            lease.token,
        )
        return bool(rows)

    async def release_fires(self, leases: Sequence[FireLease], *, now: float) -> None:
        """Give held fires back, claimable again, without counting the attempt."""
        if not leases:
            return
        await self._fetch("release fires", self._sql.release_fires, *_fire_leases(leases))

    async def last_fire(self, handle: str) -> int | None:
        """The latest fire instant of ``handle`` with a row in any state but released."""
        rows = await self._read(self._sql.last_fire, handle)
        value = rows[0][0] if rows else None
        return None if value is None else int(value)

    async def prune_fires(self, *, before: float) -> int:
        """Delete fire rows with ``fire_at < before`` that are not running; return how many.

        Rows go in batches of a thousand, each its own short transaction.
        """
        return await self._prune(self._sql.prune_fires, before, "prune fires")


_CONNECTION_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # A connection left mid-protocol by a server that went away mid-statement.
    asyncpg.exceptions.InternalClientError,
    asyncpg.CannotConnectNowError,
    asyncpg.InsufficientPrivilegeError,
    TimeoutError,
)

# How often an idle LISTEN connection is checked with a round trip (seconds).
_KEEPALIVE = 15.0


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await conn.close(timeout=5)
    except Exception:
        conn.terminate()


def _answers(
    jobs: Sequence[NewJob], inserted: set[UUID], holders: Mapping[tuple[str, str], UUID]
) -> list[tuple[UUID, bool]]:
    """``(id, created)`` per job of a batch whose keys are settled (see KeyPlan.refs)."""
    answers: list[tuple[UUID, bool]] = []
    seen: set[UUID] = set()
    for job in jobs:
        holder = None if job.key is None else holders.get((job.handle, job.key))
        if holder is None:
            # Unkeyed, or keyed with a taken id (COPY skips those): created only by the
            # first occurrence of an id the insert returned.
            answers.append((job.id, job.id in inserted and job.id not in seen))
        else:
            answers.append((holder, holder == job.id and job.id not in seen))
        seen.add(job.id)
    return answers


def _finish_columns(results: Sequence[Finish]) -> tuple[list[Any], ...]:
    """Finish results as the seven column arrays the finish statements unnest."""
    return (
        [r.id for r in results],
        [r.token for r in results],
        [r.state.value for r in results],
        [r.outcome.value for r in results],
        [r.finished_at for r in results],
        [r.error for r in results],
        [r.retry_at for r in results],
    )


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


def _fire_columns(rows: Any) -> list[list[Any]]:
    """Fire rows as the ten column arrays the upsert unnests."""
    columns: list[list[Any]] = [[] for _ in range(10)]
    for row in rows:
        values = (
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
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


def _fire_leases(leases: Sequence[FireLease]) -> tuple[list[str], list[int], list[str]]:
    return (
        [item.handle for item in leases],
        [item.fire_at for item in leases],
        [item.token for item in leases],
    )
