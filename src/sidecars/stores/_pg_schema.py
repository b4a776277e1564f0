"""The PostgreSQL schema, as numbered migrations.

Each migration is a tuple of statements applied in one transaction together with its row in
the ``migrations`` table of the store's schema. ``{s}`` in a statement stands for the quoted
schema name (validated by :func:`quote_schema` before it is ever formatted in). Migrations
are append-only: a released one is never edited, a change is a new number.
"""

from __future__ import annotations

import re

__all__ = ("MIGRATIONS", "MIGRATIONS_TABLE", "SCHEMA_PATTERN", "quote_schema")

SCHEMA_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,47}")
"""Accepted schema names: lower case ASCII letters, digits and underscores, not starting
with a digit, at most 48 characters (so derived names such as the NOTIFY channel stay under
PostgreSQL's 63-byte identifier limit)."""


def quote_schema(name: object) -> str:
    """The schema name, checked against :data:`SCHEMA_PATTERN`, as a quoted identifier.

    Raises:
        ValueError: the name does not match the pattern (the message names ``schema``).
    """
    if not isinstance(name, str) or SCHEMA_PATTERN.fullmatch(name) is None:
        raise ValueError(
            f"schema must be 1-48 lower case letters, digits or underscores, not starting "
            f"with a digit; got {name!r}"
        )
    # The pattern admits no quote character, so quoting cannot be escaped; quoting still
    # keeps reserved words such as "user" usable.
    return f'"{name}"'


MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS {s}.migrations (
    version integer PRIMARY KEY,
    applied_at double precision NOT NULL
)
"""

_V1 = (
    # Times are double precision epoch seconds, as in the SQLite store: every time comes
    # from the caller's clock (never SQL now()), and comparisons need no conversion.
    """
    CREATE TABLE {s}.jobs (
        id uuid PRIMARY KEY,
        handle text NOT NULL,
        state text NOT NULL
            CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
        outcome text,
        payload jsonb NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        max_attempts integer NOT NULL,
        run_at double precision NOT NULL,
        created_at double precision NOT NULL,
        started_at double precision,
        finished_at double precision,
        lease_until double precision,
        token text,
        error text
    )
    """,
    # Partial indexes: finished jobs, the bulk of an old table, are in none of the live
    # ones, so a claim walks only live rows, in due order per handle.
    """
    CREATE INDEX jobs_queued ON {s}.jobs (handle, run_at, id) WHERE state = 'queued'
    """,
    """
    CREATE INDEX jobs_running ON {s}.jobs (handle, lease_until) WHERE state = 'running'
    """,
    # Retention pruning walks finished jobs by age.
    """
    CREATE INDEX jobs_finished ON {s}.jobs (finished_at)
        WHERE state IN ('succeeded', 'failed', 'cancelled')
    """,
    # One row per (handle, fire instant): the primary key is what makes two runners that
    # claim the same fire agree, and serves last_fire walking backwards. fire_at is whole
    # epoch seconds.
    """
    CREATE TABLE {s}.fires (
        handle text NOT NULL,
        fire_at bigint NOT NULL,
        state text NOT NULL
            CHECK (state IN ('running', 'succeeded', 'failed', 'skipped', 'released')),
        outcome text,
        attempts integer NOT NULL DEFAULT 0,
        token text,
        lease_until double precision,
        claimed_at double precision,
        finished_at double precision,
        error text,
        PRIMARY KEY (handle, fire_at)
    )
    """,
    # The overlap check: is any fire of this handle running under an unexpired lease?
    """
    CREATE INDEX fires_running ON {s}.fires (handle, lease_until) WHERE state = 'running'
    """,
    # Pruning deletes by age across all handles, which the primary key cannot serve.
    """
    CREATE INDEX fires_age ON {s}.fires (fire_at)
    """,
)

_V2 = (
    # Nullable without a default: PostgreSQL adds the column without rewriting the table.
    """
    ALTER TABLE {s}.jobs ADD COLUMN key text
    """,
    # The unique-jobs rule lives here, so replicas agree: at most one queued job per
    # (handle, key). A claimed job leaves the index, and the key may be queued again.
    """
    CREATE UNIQUE INDEX jobs_key ON {s}.jobs (handle, key)
        WHERE state = 'queued' AND key IS NOT NULL
    """,
)

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = ((1, _V1), (2, _V2))
"""``(version, statements)`` pairs in ascending order."""
