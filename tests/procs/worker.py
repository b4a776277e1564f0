"""A real worker process for the multi-process tests: ``python worker.py DB LOG [options]``.

It declares one DEFERRED sidecar, ``record``, whose handler appends one line per run to LOG
(``start`` and ``end`` lines: job id, attempt, pid), so a test can count every run.
It runs until no queued or running job is left (``--until-empty``) or for ``--seconds``.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time

import anyio
from pydantic import BaseModel

from sidecars import JobContext, RunType, Sidecars


class Work(BaseModel):
    n: int
    sleep: float = 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("log")
    parser.add_argument("--enqueue", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--until-empty", action="store_true")
    parser.add_argument(
        "--enqueue-only", action="store_true", help="enqueue, then exit without closing"
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    sc = Sidecars(
        args.db,
        lease=args.lease,
        lease_renew=args.lease / 3,
        poll_interval=0.05,
        grace=5,
    )
    pid = os.getpid()
    log = open(args.log, "a", buffering=1)  # noqa: SIM115 - one line per write, kept open

    @sc.sidecar(handle="record", run_type=RunType.DEFERRED, concurrency=args.concurrency)
    async def record(job: JobContext[Work]) -> None:
        log.write(f"start {job.job_id} {job.attempt} {pid}\n")
        if job.payload.sleep:
            await anyio.sleep(job.payload.sleep)
        else:
            await anyio.lowlevel.checkpoint()
        log.write(f"end {job.job_id} {job.attempt} {pid}\n")

    def remaining() -> int:
        with sqlite3.connect(args.db, timeout=30) as conn:
            (n,) = conn.execute(
                "SELECT count(*) FROM sidecars_jobs WHERE state IN ('queued', 'running')"
            ).fetchone()
        return int(n)

    async def run() -> None:
        if args.enqueue:
            await record.enqueue_many(Work(n=i, sleep=args.sleep) for i in range(args.enqueue))
            print(f"enqueued {args.enqueue} at {time.time()}", flush=True)
        if args.enqueue_only:
            return  # the store is left open on purpose: exit must not hang on it
        async with sc.run():
            print("ready", flush=True)
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                await anyio.sleep(0.1)
                if args.until_empty and await anyio.to_thread.run_sync(remaining) == 0:
                    break

    anyio.run(run)
    log.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
