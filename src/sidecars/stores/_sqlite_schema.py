"""The SQLite schema, as numbered migrations.

Each migration is a tuple of statements applied in one transaction together with its row in
``sidecars_migrations``. Migrations are append-only: a released one is never edited, a change
is a new number. Version 2 adds the fires table; version 3 the ``key`` column of unique jobs;
version 4 the index that job pruning walks.
"""

from __future__ import annotations

__all__ = ("MIGRATIONS", "MIGRATIONS_TABLE")

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS sidecars_migrations (
    version INTEGER PRIMARY KEY,
    applied_at REAL NOT NULL
)
"""

_V1 = (
    # Times are REAL epoch seconds, so SQL comparisons need no date parsing; ids are UUID
    # strings so rows stay readable with the sqlite3 shell.
    """
    CREATE TABLE sidecars_jobs (
        id TEXT PRIMARY KEY,
        handle TEXT NOT NULL,
        state TEXT NOT NULL
            CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
        outcome TEXT,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        run_at REAL NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        lease_until REAL,
        token TEXT,
        error TEXT
    )
    """,
    # Partial indexes: finished jobs, the bulk of an old table, are in neither, so a claim
    # walks only live rows, in due order per handle.
    """
    CREATE INDEX sidecars_jobs_queued ON sidecars_jobs (handle, run_at, id)
        WHERE state = 'queued'
    """,
    """
    CREATE INDEX sidecars_jobs_running ON sidecars_jobs (handle, lease_until)
        WHERE state = 'running'
    """,
)

_V2 = (
    # One row per (handle, fire instant): the primary key is what makes two runners that
    # claim the same fire agree, and its index also serves last_fire (the newest instant of
    # a handle is found walking it backwards). fire_at is whole epoch seconds.
    """
    CREATE TABLE sidecars_fires (
        handle TEXT NOT NULL,
        fire_at INTEGER NOT NULL,
        state TEXT NOT NULL
            CHECK (state IN ('running', 'succeeded', 'failed', 'skipped', 'released')),
        outcome TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        token TEXT,
        lease_until REAL,
        claimed_at REAL,
        finished_at REAL,
        error TEXT,
        PRIMARY KEY (handle, fire_at)
    )
    """,
    # The overlap check: is any fire of this handle running under an unexpired lease?
    """
    CREATE INDEX sidecars_fires_overlap ON sidecars_fires (handle, state, lease_until)
    """,
    # Pruning deletes by age across all handles, which the primary key cannot serve.
    """
    CREATE INDEX sidecars_fires_age ON sidecars_fires (fire_at)
    """,
)

_V3 = (
    # Nullable, so existing rows need no rewrite: ADD COLUMN only changes the schema text.
    """
    ALTER TABLE sidecars_jobs ADD COLUMN key TEXT
    """,
    # The unique-jobs rule lives here, not in Python, so processes sharing the file agree:
    # at most one queued job per (handle, key). Once a job is claimed it leaves the index,
    # and the same key may be queued again.
    """
    CREATE UNIQUE INDEX sidecars_jobs_key ON sidecars_jobs (handle, key)
        WHERE state = 'queued' AND key IS NOT NULL
    """,
)

_V4 = (
    # Retention pruning walks finished jobs by age. Partial, so live jobs (the ones claims
    # and enqueues write all day) pay nothing for it; pruning's WHERE repeats this state
    # list so that SQLite sees the index applies.
    """
    CREATE INDEX sidecars_jobs_finished ON sidecars_jobs (finished_at)
        WHERE state IN ('succeeded', 'failed', 'cancelled')
    """,
)

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, _V1),
    (2, _V2),
    (3, _V3),
    (4, _V4),
)
"""``(version, statements)`` pairs in ascending order."""
