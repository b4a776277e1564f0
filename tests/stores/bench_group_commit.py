"""Group commit, measured: N enqueues from N concurrent tasks vs N sequential awaits.

Not collected by pytest (no ``test_`` prefix). Run:

    .venv/bin/python tests/stores/bench_group_commit.py [N] [NORMAL|FULL]
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio

from sidecars.stores import NewJob, SQLiteStore


def job() -> NewJob:
    now = time.time()
    return NewJob(
        id=uuid.uuid4(), handle="h", payload='{"n": 1}', run_at=now, created_at=now, max_attempts=5
    )


async def measure(directory: Path, mode: str, n: int, synchronous: str) -> float:
    store = SQLiteStore(directory / f"{mode}-{time.monotonic_ns()}.db", synchronous=synchronous)
    await store.open()
    jobs = [job() for _ in range(n)]
    started = time.perf_counter()
    if mode == "sequential":
        for one in jobs:
            await store.enqueue([one])
    else:
        async with anyio.create_task_group() as tg:
            for one in jobs:
                tg.start_soon(store.enqueue, [one])
    elapsed = time.perf_counter() - started
    await store.close()
    return elapsed


async def main(n: int, synchronous: str) -> None:
    with tempfile.TemporaryDirectory() as name:
        for mode in ("sequential", "concurrent") * 2:
            elapsed = await measure(Path(name), mode, n, synchronous)
            print(
                f"{synchronous:6} {mode:10} {n} jobs: {elapsed * 1000:7.1f} ms "
                f"({n / elapsed:7.0f} jobs/s)"
            )


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    anyio.run(main, count, sys.argv[2] if len(sys.argv) > 2 else "NORMAL", backend="asyncio")
