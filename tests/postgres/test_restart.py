"""PostgreSQL restarted under a running runner: it recovers by itself and loses nothing."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import anyio
import pytest
from pydantic import BaseModel

from sidecars import JobContext, RunType, Sidecars, StoreUnavailable
from sidecars.stores.postgres import PostgresStore
from tests.pg_server import PgServer, ServerNotFound

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


class Task(BaseModel):
    n: int


@pytest.fixture
def own_server() -> Iterator[PgServer]:
    """A PostgreSQL server of this test's own, so restarting it disturbs no other test."""
    try:
        server = PgServer()
    except ServerNotFound as exc:  # pragma: no cover - the session fixture already decided
        pytest.fail(str(exc))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def restart(server: PgServer) -> None:
    """pg_ctl restart, its output to the server log: a restarted postmaster keeps any pipe
    it inherits open, so capturing its output would never finish."""
    command = [
        str(server.bindir / "pg_ctl"),
        "-D",
        str(server.data),
        "-l",
        str(server.log),
        "-m",
        "fast",
        "-w",
        "-t",
        "60",
        "restart",
    ]
    if server.user is not None:
        command = ["runuser", "-u", server.user, "--", *command]

    def run() -> None:
        subprocess.run(
            command,
            cwd=server.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
            timeout=90,
        )

    await anyio.to_thread.run_sync(run)


async def test_restart_while_jobs_flow_and_while_idle(own_server: PgServer) -> None:
    """pg_ctl restart while jobs flow, then again while idle: the runner recovers by itself,
    the next job is processed, and completed equals enqueued."""
    store = PostgresStore(own_server.dsn, schema="restart_test")
    sc = Sidecars(store, lease=3, lease_renew=1, poll_interval=0.2, grace=5)
    done: set[int] = set()

    @sc.sidecar(handle="flow", run_type=RunType.DEFERRED, concurrency=4)
    async def flow(job: JobContext[Task]) -> None:
        await anyio.sleep(0.01)
        done.add(job.payload.n)

    enqueued: list[int] = []
    refused = 0

    async def produce(first: int, count: int) -> None:
        nonlocal refused
        for n in range(first, first + count):
            while True:
                try:
                    with anyio.fail_after(15):  # bounded: never hangs on a dead server
                        await flow.enqueue(Task(n=n))
                    enqueued.append(n)
                    break
                except StoreUnavailable:
                    refused += 1
                    await anyio.sleep(0.1)
            await anyio.sleep(0.01)

    async with sc.run():
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, 0, 150)
            await anyio.sleep(0.5)
            await restart(own_server)
        with anyio.fail_after(30):
            while set(enqueued) - done:
                await anyio.sleep(0.05)
        # Idle now: restart again, then one more job must still go through.
        await restart(own_server)
        await produce(1000, 1)
        with anyio.fail_after(30):
            while 1000 not in done:
                await anyio.sleep(0.05)
        assert (await sc.stats()).loop_restarts >= 1
    assert sorted(done) == sorted(enqueued)
    assert len(enqueued) == 151
    check = PostgresStore(own_server.dsn, schema="restart_test")
    await check.open()
    try:
        assert check.pool is not None
        rows = await check.pool.fetch(
            "SELECT state, (payload->>'n')::int AS n FROM restart_test.jobs"
        )
    finally:
        await check.close()
    assert {row["state"] for row in rows} == {"succeeded"}  # nothing left behind
    # Every acknowledged job is there. An enqueue that raised while the server went away may
    # still have committed (its reply was lost), so a retry can add a second row with the
    # same payload: never more than the refusals, and never an unacknowledged payload.
    assert {row["n"] for row in rows} == set(enqueued)
    assert len(enqueued) <= len(rows) <= len(enqueued) + refused
