"""The example FastAPI app with a job producer in its lifespan, for ``bench_host.py``.

Not a benchmark by itself: ``bench_host.py`` serves it with uvicorn
(``uvicorn tests.benchmarks._host_app:app``). It imports the example app and its
``Sidecars``, declares three more sidecars on it (``bench_noop`` and ``bench_sleep``, MEMORY;
``bench_deferred``, DEFERRED on the example's SQLite file), and wraps the app's lifespan with
a producer that enqueues into one of them at a fixed rate, from inside the process, so the
job load adds no HTTP load. Every app of a benchmark run is the same; only the load differs.

Environment:

* ``BENCH_HOST_JOB``: the handle to feed (``bench_noop``, ``bench_sleep``, ``bench_deferred``),
  or empty for none;
* ``BENCH_HOST_RATE``: jobs per second (default 1000);
* ``BENCH_HOST_OUT``: where to write, at shutdown, the JSON record of what was produced and
  what ran (after the producer stopped and every produced job had its run), with the
  garbage collector's pauses (``time.monotonic()`` start, generation, milliseconds).
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from examples.fastapi_app import app, sc
from pydantic import BaseModel

from sidecars import JobContext, RunType, Sidecar

__all__ = ("app",)

TICK = 0.005  # the producer enqueues what is due every 5 ms (5 jobs a tick at 1,000/s)
DRAIN_LIMIT = 30.0  # seconds shutdown waits for produced jobs to run


class Tick(BaseModel):
    """A benchmark job: its sequence number, to check each ran exactly once."""

    seq: int


RAN: dict[str, list[int]] = {"bench_noop": [], "bench_sleep": [], "bench_deferred": []}


@sc.sidecar(handle="bench_noop", run_type=RunType.MEMORY, concurrency=8)
async def bench_noop(job: JobContext[Tick]) -> None:
    """Does nothing."""
    RAN["bench_noop"].append(job.payload.seq)


@sc.sidecar(handle="bench_sleep", run_type=RunType.MEMORY, concurrency=8)
async def bench_sleep(job: JobContext[Tick]) -> None:
    """Waits 1 ms, as a job waiting on a fast service would."""
    await anyio.sleep(0.001)
    RAN["bench_sleep"].append(job.payload.seq)


@sc.sidecar(handle="bench_deferred", run_type=RunType.DEFERRED, concurrency=8)
async def bench_deferred(job: JobContext[Tick]) -> None:
    """Does nothing, durably."""
    RAN["bench_deferred"].append(job.payload.seq)


SIDECARS: dict[str, Sidecar[Tick]] = {
    "bench_noop": bench_noop,
    "bench_sleep": bench_sleep,
    "bench_deferred": bench_deferred,
}


class Producer:
    """Enqueues ``rate`` jobs a second into one sidecar, catching up if it falls behind."""

    def __init__(self, sidecar: Sidecar[Tick], rate: float) -> None:
        self.sidecar = sidecar
        self.rate = rate
        self.sent = 0

    async def run(self) -> None:
        start = anyio.current_time()
        while True:
            due = int((anyio.current_time() - start) * self.rate)
            while self.sent < due:
                await self.sidecar.enqueue(Tick(seq=self.sent))
                self.sent += 1
            await anyio.sleep(TICK)


async def drain(handle: str, produced: int) -> None:
    """Wait until every produced job has run (or DRAIN_LIMIT passes)."""
    with anyio.move_on_after(DRAIN_LIMIT):
        while len(RAN.get(handle, [])) < produced:
            await anyio.sleep(0.01)


class GcPauses:
    """Records the garbage collector's pauses: [monotonic start, generation, ms] each."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, int, float]] = []
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.monotonic()
        else:
            ms = (time.monotonic() - self._started) * 1000
            self.pauses.append((self._started, info["generation"], ms))


GC = GcPauses()


async def report(handle: str, produced: int, rate: float, out: Path) -> None:
    """Write what was produced and what ran, as JSON, for the benchmark to check."""
    seqs = RAN.get(handle, [])
    counts = (await sc.stats()).handles.get(handle)
    record = {
        "job": handle,
        "rate": rate,
        "produced": produced,
        "ran": len(seqs),
        "distinct": len(set(seqs)),
        "in_range": sum(1 for s in set(seqs) if 0 <= s < produced),
        "succeeded": counts.succeeded if counts else 0,
        "failed": counts.failed + counts.timed_out + counts.dropped if counts else 0,
        "gc_pauses": GC.pauses,
    }
    await anyio.Path(out).write_text(json.dumps(record))


original_lifespan = app.router.lifespan_context


@asynccontextmanager
async def bench_lifespan(asgi_app: Any) -> AsyncIterator[Any]:
    """The example's lifespan, plus the producer while the app serves."""
    handle = os.environ.get("BENCH_HOST_JOB", "")
    rate = float(os.environ.get("BENCH_HOST_RATE", "1000"))
    out = os.environ.get("BENCH_HOST_OUT")
    producer = Producer(SIDECARS[handle], rate) if handle else None
    async with original_lifespan(asgi_app) as state:
        async with anyio.create_task_group() as tg:
            if producer is not None:
                tg.start_soon(producer.run, name="bench producer")
            try:
                yield state
            finally:
                tg.cancel_scope.cancel()
        produced = producer.sent if producer is not None else 0
        await drain(handle, produced)
        if out:
            await report(handle, produced, rate, Path(out))


app.router.lifespan_context = bench_lifespan
