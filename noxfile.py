"""Developer sessions: ``nox -s tests lint typecheck docs bench examples``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.10", "3.11", "3.12"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite (the same command as the README and CI)."""
    session.install("-e", ".[test,postgres]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def examples(session: nox.Session) -> None:
    """Run only the tests that exercise examples/."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "tests/examples", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "examples", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[lint,postgres]")
    session.run("mypy", "--strict", "src")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site, failing on any warning."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict")


@nox.session
def bench(session: nox.Session) -> None:
    """Print the benchmark table: floors, sidecars and peers side by side (not tests).

    ``tests/benchmarks/bench_jobs.py`` runs every comparison (memory, SQLite, PostgreSQL,
    CRON++, host impact and idle cost) in its own process and prints one table; the other
    ``bench_*.py`` scripts there print the details of one part each.
    """
    session.install("-e", ".[bench,postgres,examples]")
    session.run("python", "tests/benchmarks/bench_jobs.py", *session.posargs)
