"""The runner: one task group holding every worker and loop of a :class:`Sidecars`.

It composes the parts (memory pools, the deferred consumer, later the scheduler) and owns
shutdown: stop intake, give running work ``grace`` seconds, then cancel and account for
what was dropped.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
import anyio.abc

from ._clock import Clock, busy
from ._crash import CrashPoints
from ._deferred import DeferredConsumer
from ._memory import MemoryPool
from ._records import RunType
from ._scheduler import Scheduler
from ._stats import Counters, HandleStats, Stats

if TYPE_CHECKING:
    from ._app import Sidecars

__all__ = ("Runner",)

log = logging.getLogger("sidecars")


def _prune_every(retention: float) -> float:
    """How often finished jobs are pruned: a seventh of the retention, between an hour and
    a day (daily for the default week), so a job goes within 1/7 of the retention after it
    is due to, and a fake clock moving over months stops rarely."""
    return min(86_400.0, max(3_600.0, retention / 7))


class Runner:
    """Runs the sidecars of one :class:`Sidecars` while its context is entered."""

    def __init__(self, app: Sidecars, *, clock: Clock, grace: float, consume: bool) -> None:
        self.app = app
        self.clock = clock
        self.grace = grace
        self.consume = consume
        self.deferred: DeferredConsumer | None = None
        self.scheduler: Scheduler | None = None
        self.accepting = False
        self.history = app.history
        self.counters: dict[str, Counters] = {h: Counters() for h in app.sidecars}
        self.pools: dict[str, MemoryPool] = {}
        self.loop_restarts = 0
        # Sync handlers get threads from a limiter of our own: anyio's default limiter is
        # shared with Starlette's sync endpoints, and jobs must not starve requests.
        self.thread_limiter = anyio.CapacityLimiter(app.max_threads)
        self._loggers: dict[str, logging.Logger] = {}
        self.stuck_threads: set[UUID] = set()
        self._tg: anyio.abc.TaskGroup | None = None

    def background(self, func: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start a task in the runner's task group (it is cancelled at shutdown)."""
        assert self._tg is not None
        self._tg.start_soon(func)

    def stats_for(self, handle: str) -> Counters:
        return self.counters[handle]

    def job_logger(self, handle: str) -> logging.Logger:
        logger = self._loggers.get(handle)
        if logger is None:
            logger = self._loggers[handle] = logging.getLogger(f"sidecars.job.{handle}")
        return logger

    def stats(self) -> Stats:
        handles = {}
        for handle, sidecar in self.app.sidecars.items():
            c = self.counters[handle]
            pool = self.pools.get(handle)
            handles[handle] = HandleStats(
                handle=handle,
                run_type=sidecar.run_type,
                enqueued=c.enqueued,
                running=c.running,
                pending=pool.pending if pool is not None else 0,
                succeeded=c.succeeded,
                failed=c.failed,
                timed_out=c.timed_out,
                dropped=c.dropped,
                skipped=c.skipped,
            )
        return Stats(
            running=self.accepting,
            handles=handles,
            loop_restarts=self.loop_restarts,
            stuck_threads=len(self.stuck_threads),
        )

    async def supervise(
        self, name: str, loop: Callable[[], Awaitable[None]], *, max_backoff: float = 5.0
    ) -> None:
        """Run a background loop forever, restarting it with backoff when it fails.

        An error never escapes into the task group (and so into the app's lifespan, where
        a server would keep serving without background work); it is logged and counted.
        """
        backoff = 0.1
        while True:
            started = anyio.current_time()
            try:
                await loop()
                return
            except Exception:
                self.loop_restarts += 1
                if anyio.current_time() - started > 60:
                    backoff = 0.1  # it had been healthy: this is a new outage
                log.exception(
                    "sidecars: background loop %s failed; restarting in %.1fs", name, backoff
                )
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, max_backoff)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Runner]:
        """Start every worker; on exit, shut down within the grace period."""
        app = self.app
        crash = CrashPoints()
        deferred = [s for s in app.sidecars.values() if s.run_type is RunType.DEFERRED]
        if deferred and self.consume:
            # Opened before taking work, so a broken store fails the start loudly.
            store = await app._open_store()
            self.deferred = DeferredConsumer(
                self,
                deferred,
                store,
                lease=app.lease,
                renew_every=app.lease_renew,
                poll_interval=app.poll_interval,
                crash=crash,
            )
        standalone = [s for s in app.sidecars.values() if s.run_type is RunType.STANDALONE]
        if standalone and self.consume:
            cluster = any(not s.fires.per_replica for s in standalone)
            self.scheduler = Scheduler(
                self,
                standalone,
                await app._open_store() if cluster else None,
                lease=app.lease,
                renew_every=app.lease_renew,
                retention=app.fire_retention,
                crash=crash,
            )
        body_error: Exception | None = None
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for handle, sidecar in app.sidecars.items():
                    if sidecar.run_type is RunType.MEMORY:
                        pool = MemoryPool(self, sidecar)
                        pool.start(tg)
                        self.pools[handle] = pool
                if self.deferred is not None:
                    self.deferred.start(tg)
                if self.scheduler is not None:
                    self.scheduler.start(tg, tg)
                if self.deferred is not None and hasattr(self.deferred.store, "prune_jobs"):
                    tg.start_soon(self.supervise, "job pruning", self._prune_jobs)
                self.accepting = True
                try:
                    yield self
                except Exception as exc:
                    # Raised by the body of `async with sc.run()`: re-raised as itself
                    # below, not wrapped in the task group's ExceptionGroup.
                    body_error = exc
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._shutdown(tg)
        finally:
            with anyio.CancelScope(shield=True):
                for pool in self.pools.values():
                    pool.close()
                if self.deferred is not None:
                    released = await self.deferred.release_held()
                    if released:
                        log.warning(
                            "sidecars: gave back %d deferred job(s) cancelled by shutdown; "
                            "they are due again at once",
                            released,
                        )
                    self.deferred.close()
                if self.scheduler is not None:
                    released = await self.scheduler.release_held()
                    if released:
                        log.warning(
                            "sidecars: gave back %d fire(s) cancelled by shutdown", released
                        )
        if body_error is not None:
            raise body_error

    async def _prune_jobs(self) -> None:
        """Delete finished jobs older than the app's job_retention, in batches, every
        seventh of the retention (an hour to a day)."""
        assert self.deferred is not None
        store: Any = self.deferred.store
        retention = self.app.job_retention
        while True:
            with busy(self.clock):
                removed = await store.prune_jobs(before=self.clock.time() - retention)
            if removed:
                log.info("sidecars: pruned %d finished job(s)", removed)
            await self.clock.sleep_until(self.clock.time() + _prune_every(retention))

    async def _shutdown(self, tg: anyio.abc.TaskGroup) -> None:
        self.accepting = False
        for pool in self.pools.values():
            pool.close_intake()
        deadline = anyio.current_time() + self.grace
        if self.deferred is not None:
            await self.deferred.stop_claiming(self.grace)
        if self.scheduler is not None:
            self.scheduler.stop()
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())) as waited:
            for pool in self.pools.values():
                await pool.idle.wait()
            if self.deferred is not None:
                await self.deferred.idle.wait()
            if self.scheduler is not None:
                await self.scheduler.idle.wait()
        running = sum(pool.running for pool in self.pools.values())
        dropped = 0
        for handle, pool in self.pools.items():
            n = pool.drop_pending()
            self.counters[handle].dropped += n
            dropped += n
        cancelled_deferred = len(self.deferred.held) if self.deferred is not None else 0
        if self.scheduler is not None:
            cancelled_deferred += self.scheduler._running
        if waited.cancelled_caught and (running or dropped or cancelled_deferred):
            log.warning(
                "sidecars: shutdown grace of %ss ran out: cancelling %d running memory "
                "job(s) and %d deferred job(s), dropping %d queued memory job(s)",
                self.grace,
                running,
                cancelled_deferred,
                dropped,
            )
            for handle, pool in self.pools.items():
                if pool.running:
                    log.warning("sidecars: %r: %d running job(s) cancelled", handle, pool.running)
        tg.cancel_scope.cancel()

    def memory_pool(self, handle: str) -> MemoryPool:
        return self.pools[handle]
