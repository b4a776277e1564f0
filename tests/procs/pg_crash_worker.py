"""A real process with one cluster-wide STANDALONE sidecar on a PostgresStore, for the fire
crash tests: ``python pg_crash_worker.py --dsn DSN --schema SCHEMA --dir DIR --name NAME
[--every E] [--lease L] [--body B] [--lag S]``.

The handler of ``fire`` appends ``start``/``end`` lines (fire instant, attempt, pid) to
``DIR/NAME.log``, one ``write`` per line, so a SIGKILL loses at most the line being written.
The process creates ``DIR/NAME.ready`` once its runner runs and stops when ``DIR/stop``
exists (``--seconds`` is only a safety net). ``--lag`` runs the process on a clock that
many seconds behind the wall clock: a replica within the clock skew sidecars tolerates,
which reaches every fire instant after the others, so a test knows who claims it first.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio

from sidecars import JobContext, RunType, Schedule, Sidecars, SystemClock
from sidecars.stores.postgres import PostgresStore


class LaggingClock(SystemClock):
    """The wall clock, ``lag`` seconds behind."""

    def __init__(self, lag: float) -> None:
        self.lag = lag

    def time(self) -> float:
        return super().time() - self.lag

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), timezone.utc)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", default=os.environ.get("SIDECARS_TEST_PG_DSN"))
    parser.add_argument("--schema", default=os.environ.get("SIDECARS_TEST_PG_SCHEMA"))
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--body", type=float, default=0.3)
    parser.add_argument("--lag", type=float, default=0.0)
    args = parser.parse_args()
    if not args.dsn:
        parser.error("give --dsn or set SIDECARS_TEST_PG_DSN")

    store = PostgresStore(args.dsn, schema=args.schema or "sidecars", max_size=4)
    sc = Sidecars(
        store,
        lease=args.lease,
        lease_renew=args.lease / 4,
        poll_interval=0.5,
        grace=5,
        clock=LaggingClock(args.lag) if args.lag else None,
    )
    pid = os.getpid()
    # Line-buffered: every line reaches the file with one write, in the order written.
    out = open(args.dir / f"{args.name}.log", "a", buffering=1)  # noqa: SIM115

    @sc.sidecar(
        handle="fire",
        run_type=RunType.STANDALONE,
        schedule=Schedule(every=timedelta(seconds=args.every)),
    )
    async def fire(job: JobContext[None]) -> None:
        instant = int(job.scheduled_at.timestamp())
        out.write(f"start {instant} {job.attempt} {pid}\n")
        await anyio.sleep(args.body)
        out.write(f"end {instant} {job.attempt} {pid}\n")

    async def serve() -> None:
        deadline = time.monotonic() + args.seconds
        stop = anyio.Path(args.dir / "stop")
        async with sc.run():
            (args.dir / f"{args.name}.ready").touch()
            while not await stop.exists() and time.monotonic() < deadline:
                await anyio.sleep(0.05)

    try:
        anyio.run(serve)
    finally:
        out.close()


if __name__ == "__main__":
    main()
