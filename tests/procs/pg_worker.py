"""A real process on a PostgresStore, for the fleet tests and the latency benchmark:
``python pg_worker.py MODE --dsn DSN --schema SCHEMA --dir DIR --name NAME [options]``.

The DSN and schema may also come from ``SIDECARS_TEST_PG_DSN`` and ``SIDECARS_TEST_PG_SCHEMA``.
Every process appends its own lines to ``DIR/NAME.log`` (one ``write`` per line, so a
SIGKILL loses at most the line being written), creates ``DIR/NAME.ready`` once its runner
runs, and stops when ``DIR/stop`` exists (``--seconds`` is only a safety net).

Modes:

- ``fleet``: a runner with a one-second cluster-wide STANDALONE ``tick`` (lines
  ``tick INSTANT ATTEMPT PID``), a one-second ``per_replica`` STANDALONE ``replica``
  (``replica INSTANT PID``) and a DEFERRED ``cron_job`` scheduled by the 6-field cron
  ``CRON`` (``cron JOB_ID SCHEDULED_AT STARTED ATTEMPT PID``).
- ``cron-enqueuer``: the same declarations, run enqueue-only (``consume=False``, as a web
  process would): sends a ``cron_job`` every ``--every`` seconds until ``DIR/stop-enqueue``
  exists (``enq JOB_ID BEFORE AFTER``, the wall times around each ``enqueue``).
- ``drain``: a runner with a DEFERRED ``record`` (``start``/``end`` lines: job id, attempt,
  pid), each run sleeping ``--sleep`` seconds.
- ``enqueue``: sends ``--count`` ``record`` jobs without a runner, then exits.
- ``latency``: an idle runner with a DEFERRED ``ping`` whose handler writes
  ``ping N STARTED`` as its first act.
- ``listen``: plain asyncpg, no sidecars: ``LISTEN`` on ``RAW_CHANNEL`` and write
  ``notify PAYLOAD RECEIVED`` per notification (the benchmark's raw floor).
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import TextIO

import anyio
from pydantic import BaseModel

from sidecars import JobContext, RunType, Schedule, Sidecars
from sidecars.stores.postgres import PostgresStore

CRON = "*/3 * * * * *"
RAW_CHANNEL = "sidecars_bench_raw"


class Work(BaseModel):
    n: int
    sleep: float = 0.0


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "mode", choices=["fleet", "cron-enqueuer", "drain", "enqueue", "latency", "listen"]
    )
    parser.add_argument("--dsn", default=os.environ.get("SIDECARS_TEST_PG_DSN"))
    parser.add_argument("--schema", default=os.environ.get("SIDECARS_TEST_PG_SCHEMA"))
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--every", type=float, default=0.3)
    args = parser.parse_args()
    if not args.dsn:
        parser.error("give --dsn or set SIDECARS_TEST_PG_DSN")
    return args


def _sidecars(args: argparse.Namespace) -> Sidecars:
    store = PostgresStore(args.dsn, schema=args.schema or "sidecars", max_size=4)
    return Sidecars(
        store,
        lease=args.lease,
        lease_renew=args.lease / 4,
        # NOTIFY wakes the runners; polling only backs it up (and must not help the
        # latency benchmark, which uses the default).
        poll_interval=0.5 if args.mode != "latency" else 1.0,
        grace=5,
    )


def _declare_fleet(sc: Sidecars, out: TextIO) -> None:
    pid = os.getpid()

    @sc.sidecar(
        handle="tick",
        run_type=RunType.STANDALONE,
        schedule=Schedule(every=timedelta(seconds=1)),
        misfire="all",  # every instant must run once, even if all replicas stall
    )
    async def tick(job: JobContext[None]) -> None:
        out.write(f"tick {int(job.scheduled_at.timestamp())} {job.attempt} {pid}\n")

    @sc.sidecar(
        handle="replica",
        run_type=RunType.STANDALONE,
        schedule=Schedule(every=timedelta(seconds=1)),
        per_replica=True,
        # The test reads these lines as "this replica was up at that instant", so a replica
        # the loaded machine stalls for over a second must still run each instant, late.
        misfire="all",
        overlap="allow",
        concurrency=4,
    )
    async def replica(job: JobContext[None]) -> None:
        out.write(f"replica {int(job.scheduled_at.timestamp())} {pid}\n")

    @sc.sidecar(
        handle="cron_job", run_type=RunType.DEFERRED, schedule=Schedule.cron(CRON), concurrency=4
    )
    async def cron_job(job: JobContext[Work]) -> None:
        started = time.time()
        out.write(
            f"cron {job.job_id} {job.scheduled_at.timestamp():.6f} {started:.6f} "
            f"{job.attempt} {pid}\n"
        )


def _declare_record(sc: Sidecars, out: TextIO, concurrency: int) -> None:
    pid = os.getpid()

    @sc.sidecar(handle="record", run_type=RunType.DEFERRED, concurrency=concurrency)
    async def record(job: JobContext[Work]) -> None:
        out.write(f"start {job.job_id} {job.attempt} {pid}\n")
        if job.payload.sleep:
            await anyio.sleep(job.payload.sleep)
        out.write(f"end {job.job_id} {job.attempt} {pid}\n")


def _declare_ping(sc: Sidecars, out: TextIO) -> None:
    @sc.sidecar(handle="ping", run_type=RunType.DEFERRED)
    async def ping(job: JobContext[Work]) -> None:
        started = time.time()  # first: this is the moment the benchmark measures
        out.write(f"ping {job.payload.n} {started:.6f}\n")


async def _until(path: Path, deadline: float) -> None:
    while not await anyio.Path(path).exists() and time.monotonic() < deadline:
        await anyio.sleep(0.05)


async def _serve(sc: Sidecars, args: argparse.Namespace, *, consume: bool = True) -> None:
    deadline = time.monotonic() + args.seconds
    async with sc.run(consume=consume):
        (args.dir / f"{args.name}.ready").touch()
        await _until(args.dir / "stop", deadline)


async def _cron_enqueuer(sc: Sidecars, args: argparse.Namespace, out: TextIO) -> None:
    cron_job = sc.sidecars["cron_job"]
    deadline = time.monotonic() + args.seconds
    stop = args.dir / "stop-enqueue"
    async with sc.run(consume=False):
        (args.dir / f"{args.name}.ready").touch()
        n = 0
        while not stop.exists() and time.monotonic() < deadline:
            before = time.time()
            ref = await cron_job.enqueue(Work(n=n))
            after = time.time()
            out.write(f"enq {ref.id} {before:.6f} {after:.6f}\n")
            n += 1
            await anyio.sleep(args.every)


async def _enqueue(sc: Sidecars, args: argparse.Namespace) -> None:
    record = sc.sidecars["record"]
    async with sc:
        await record.enqueue_many(Work(n=i, sleep=args.sleep) for i in range(args.count))
    (args.dir / f"{args.name}.ready").touch()


async def _listen(args: argparse.Namespace, out: TextIO) -> None:
    import asyncpg

    conn = await asyncpg.connect(args.dsn)

    def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        out.write(f"notify {payload} {time.time():.6f}\n")

    try:
        await conn.add_listener(RAW_CHANNEL, on_notify)
        (args.dir / f"{args.name}.ready").touch()
        await _until(args.dir / "stop", time.monotonic() + args.seconds)
    finally:
        await conn.close()


def main() -> None:
    args = _args()
    # Line-buffered: every line reaches the file with one write, in the order written.
    out = open(args.dir / f"{args.name}.log", "a", buffering=1)  # noqa: SIM115
    try:
        if args.mode == "listen":
            anyio.run(_listen, args, out)
            return
        sc = _sidecars(args)
        if args.mode in ("fleet", "cron-enqueuer"):
            _declare_fleet(sc, out)
        elif args.mode == "latency":
            _declare_ping(sc, out)
        else:
            _declare_record(sc, out, args.concurrency)
        if args.mode == "cron-enqueuer":
            anyio.run(_cron_enqueuer, sc, args, out)
        elif args.mode == "enqueue":
            anyio.run(_enqueue, sc, args)
        else:
            anyio.run(_serve, sc, args)
    finally:
        out.close()


if __name__ == "__main__":
    main()
