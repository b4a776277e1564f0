"""A real process with one cluster-wide STANDALONE sidecar, for the fire crash tests:
``python fire_worker.py DB LOG --seconds S [--every E] [--lease L] [--body B]``.

The handler appends ``start``/``end`` lines (fire instant, attempt, pid) to LOG, so a test
can count every run of every fire.
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime, timedelta, timezone

import anyio

from sidecars import JobContext, RunType, Schedule, Sidecars, SystemClock


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("log")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=3.0)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--body", type=float, default=0.3)
    parser.add_argument(
        "--lag", type=float, default=0.0, help="run this many seconds behind the wall clock"
    )
    args = parser.parse_args()

    sc = Sidecars(args.db, lease=args.lease, lease_renew=args.lease / 3, grace=5)
    pid = os.getpid()

    @sc.sidecar(
        handle="fire",
        run_type=RunType.STANDALONE,
        schedule=Schedule(every=timedelta(seconds=args.every)),
    )
    async def fire(job: JobContext[None]) -> None:
        instant = int(job.scheduled_at.timestamp())
        with open(args.log, "a") as out:  # noqa: ASYNC230 - one short line, on purpose sync
            out.write(f"start {instant} {job.attempt} {pid}\n")
        await anyio.sleep(args.body)
        with open(args.log, "a") as out:  # noqa: ASYNC230 - one short line, on purpose sync
            out.write(f"end {instant} {job.attempt} {pid}\n")

    class Lagging(SystemClock):
        # Within the skew replicas are allowed (DESIGN: about a second), so a test can let
        # the other process win each instant's claim deterministically.
        def time(self) -> float:
            return super().time() - args.lag

        def now(self) -> datetime:
            return datetime.fromtimestamp(self.time(), timezone.utc)

    async def run() -> None:
        async with sc.run(clock=Lagging() if args.lag else None):
            print("ready", flush=True)
            await anyio.sleep(args.seconds)

    anyio.run(run)


if __name__ == "__main__":
    main()
