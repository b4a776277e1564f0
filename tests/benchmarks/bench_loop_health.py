"""Loop health: does an app keep answering while sync handlers block?

Run: ``python tests/benchmarks/bench_loop_health.py [requests]``

A Starlette app under a real uvicorn server on 127.0.0.1 has a MEMORY sidecar whose sync
handler sleeps 1 s (blocking I/O stands in). The script measures the latency of a trivial
endpoint three ways, side by side in one process: with no jobs (the floor), while ten sync
handlers sleep in sidecars' worker threads, and - for contrast - while the same ten sleeps
run as blocking calls inside async handlers (what sidecars protects you from).
"""

from __future__ import annotations

import socket
import statistics
import sys
import time
from typing import Any

import anyio
import httpx
import uvicorn
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sidecars import JobContext, RunType, Sidecars
from sidecars.stores import MemoryStore


class Nap(BaseModel):
    seconds: float


def make_app() -> tuple[Starlette, Any, Any]:
    sc = Sidecars(MemoryStore(), grace=5)

    @sc.sidecar(handle="sync_nap", run_type=RunType.MEMORY, concurrency=10)
    def sync_nap(job: JobContext[Nap]) -> None:
        time.sleep(job.payload.seconds)

    @sc.sidecar(handle="bad_async_nap", run_type=RunType.MEMORY, concurrency=10)
    async def bad_async_nap(job: JobContext[Nap]) -> None:
        time.sleep(job.payload.seconds)  # noqa: ASYNC251 - the anti-pattern, on purpose

    async def ping(request: Any) -> PlainTextResponse:
        return PlainTextResponse("pong")

    app = Starlette(routes=[Route("/ping", ping)], lifespan=sc.lifespan)
    return app, sync_nap, bad_async_nap


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def measure(client: httpx.AsyncClient, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await client.get(url)
        out.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200
        await anyio.sleep(0.005)
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def main(n: int) -> None:
    app, sync_nap, bad_async_nap = make_app()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    url = f"http://127.0.0.1:{port}/ping"
    results: dict[str, list[float]] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        while not server.started:
            await anyio.sleep(0.01)
        # The client runs in this process too but on the same loop; use a thread-free
        # transport over TCP so each request really crosses the server's event loop.
        async with httpx.AsyncClient() as client:
            await measure(client, url, 20)  # warm up
            results["idle (floor)"] = await measure(client, url, n)
            for _ in range(10):
                await sync_nap.enqueue(Nap(seconds=1.0))
            results["10 sync handlers sleeping 1 s"] = await measure(client, url, n)
            await anyio.sleep(1.2)
            for _ in range(10):
                await bad_async_nap.enqueue(Nap(seconds=0.1))
            results["contrast: time.sleep in async handlers"] = await measure(client, url, 50)
        server.should_exit = True
    print(f"{'scenario':<42} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    floor = statistics.median(results["idle (floor)"])
    for name, values in results.items():
        print(
            f"{name:<42} {pct(values, 50):8.2f} {pct(values, 99):8.2f} {max(values):8.2f}"
            f"   (p50 {pct(values, 50) / floor:.1f}x floor)"
        )


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 200)
