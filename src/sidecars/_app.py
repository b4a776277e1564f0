"""``Sidecars``: the registry of declarations, their configuration and the entry points."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, TypeVar, overload
from uuid import UUID

from ._clock import Clock, SystemClock
from ._ids import new_id
from ._memory import History, MemoryPool
from ._records import JobInfo, JobRef, JobState, RunType
from ._retry import RetryPolicy
from ._runner import Runner
from ._sidecar import _UNSET, Handler, Misfire, OnFull, Overlap, Sidecar
from ._stats import HandleStats, Stats
from ._trigger import Trigger
from ._worker import JobEvent
from .exceptions import (
    DuplicateHandle,
    InvalidArgument,
    InvalidDeclaration,
    NotRunning,
    SidecarsError,
)
from .stores._base import NewJob, Store

__all__ = ("Sidecars",)

log = logging.getLogger("sidecars")

P = TypeVar("P")


def _positive(name: str, value: float | timedelta) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise InvalidDeclaration(
            f"Sidecars: field {name!r}: expected seconds >= 0 or a timedelta, got {value!r}"
        )
    return float(seconds)


class Sidecars:
    """A set of sidecars, and the runner that runs them.

    Declare sidecars with :meth:`sidecar`, then run them in an ASGI app's lifespan
    (``FastAPI(lifespan=sc.lifespan)``) or in a script (``async with sc.run(): ...``).

    Args:
        store: where DEFERRED jobs and schedule fires are kept: a :class:`Store`, or a path
            for a :class:`~sidecars.stores.SQLiteStore` (default ``"sidecars.db"`` in the
            working directory). It is opened lazily, on first use.
        clock: where time is read (schedules, leases, records); a :class:`FakeClock` in
            tests. Timeouts always use the event loop's own clock.
        grace: seconds running and queued work gets to finish at shutdown before it is
            cancelled (default 25 s, under Kubernetes' 30 s termination grace).
        memory_history: how many recent MEMORY jobs :meth:`get_job` remembers.
        max_threads: how many sync handlers may run at once in worker threads.
        lease: seconds a claimed job is held before another runner may take it, unless
            renewed (default 30).
        lease_renew: seconds between lease renewals of running jobs (default 10; must be
            below ``lease``).
        poll_interval: seconds between looks for work enqueued by other processes (work
            enqueued in this process is picked up at once).
        fire_retention: how long STANDALONE fire records are kept (default 24 hours); at
            least each sidecar's ``misfire_grace`` plus ``lease``, or a late replica could
            fire an instant again.
        job_retention: how long finished (succeeded, failed, cancelled) DEFERRED jobs are
            kept before the runner deletes them (default 7 days; checked every seventh of
            that, between an hour and a day).
    """

    def __init__(
        self,
        store: Store | str | os.PathLike[str] | None = None,
        *,
        clock: Clock | None = None,
        grace: float | timedelta = 25.0,
        memory_history: int = 10_000,
        max_threads: int = 40,
        lease: float | timedelta = 30.0,
        lease_renew: float | timedelta = 10.0,
        poll_interval: float | timedelta = 1.0,
        fire_retention: float | timedelta = 86_400.0,
        job_retention: float | timedelta = 7 * 86_400.0,
    ) -> None:
        if store is None or isinstance(store, (str, os.PathLike)):
            from .stores.sqlite import SQLiteStore

            store = SQLiteStore("sidecars.db" if store is None else store)
        elif not isinstance(store, Store):
            raise InvalidDeclaration(
                f"Sidecars: field 'store': expected a Store or a file path, got {store!r}"
            )
        self.store: Store = store
        self._store_open = False
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.grace = _positive("grace", grace)
        self.lease = _positive("lease", lease)
        self.lease_renew = _positive("lease_renew", lease_renew)
        self.poll_interval = _positive("poll_interval", poll_interval)
        if not 0 < self.lease_renew < self.lease:
            raise InvalidDeclaration(
                f"Sidecars: field 'lease_renew': must be above 0 and below lease "
                f"({self.lease}s), got {self.lease_renew}s"
            )
        self.fire_retention = _positive("fire_retention", fire_retention)
        self.job_retention = _positive("job_retention", job_retention)
        if self.poll_interval <= 0:
            raise InvalidDeclaration("Sidecars: field 'poll_interval': must be above 0")
        if (
            isinstance(memory_history, bool)
            or not isinstance(memory_history, int)
            or memory_history < 0
        ):
            raise InvalidDeclaration(
                "Sidecars: field 'memory_history': expected an integer >= 0, "
                f"got {memory_history!r}"
            )
        self.memory_history = memory_history
        if isinstance(max_threads, bool) or not isinstance(max_threads, int) or max_threads < 1:
            raise InvalidDeclaration(
                f"Sidecars: field 'max_threads': expected an integer >= 1, got {max_threads!r}"
            )
        self.max_threads = max_threads
        self.sidecars: dict[str, Sidecar[Any]] = {}
        # Test support (sidecars.testing): enqueue listeners and eager mode.
        self._listeners: list[Callable[[Sidecar[Any], Any, float, JobRef], None]] = []
        self._eager = False
        self._told_no_runner = False
        self._hooks_start: list[Callable[[JobEvent], object]] = []
        self._hooks_end: list[Callable[[JobEvent], object]] = []
        self._runner: Runner | None = None
        self._last_runner: Runner | None = None
        # Kept on the instance, not the runner, so a test can read its jobs after the run.
        self.history = History(memory_history)

    # -- declaring -------------------------------------------------------------------------

    @overload
    def sidecar(
        self,
        *,
        handle: str,
        run_type: RunType,
        payload: type[P],
        concurrency: int = ...,
        timeout: float | timedelta | None = ...,
        max_pending: int = ...,
        on_full: OnFull = ...,
        schedule: Trigger | None = ...,
        per_replica: bool = ...,
        overlap: Overlap = ...,
        misfire: Misfire = ...,
        misfire_grace: float | timedelta = ...,
        misfire_tolerance: float | timedelta = ...,
        misfire_cap: int = ...,
        retry: RetryPolicy | None = ...,
    ) -> Callable[[Handler[Any]], Sidecar[P]]: ...

    @overload
    def sidecar(
        self,
        *,
        handle: str,
        run_type: RunType,
        concurrency: int = ...,
        timeout: float | timedelta | None = ...,
        max_pending: int = ...,
        on_full: OnFull = ...,
        schedule: Trigger | None = ...,
        per_replica: bool = ...,
        overlap: Overlap = ...,
        misfire: Misfire = ...,
        misfire_grace: float | timedelta = ...,
        misfire_tolerance: float | timedelta = ...,
        misfire_cap: int = ...,
        retry: RetryPolicy | None = ...,
    ) -> Callable[[Handler[P]], Sidecar[P]]: ...

    def sidecar(
        self,
        *misused: Any,
        handle: str = _UNSET,
        run_type: RunType = _UNSET,
        payload: Any = _UNSET,
        concurrency: int = 1,
        timeout: float | timedelta | None = None,
        max_pending: int = _UNSET,
        on_full: OnFull = _UNSET,
        schedule: Trigger | None = None,
        per_replica: bool = _UNSET,
        overlap: Overlap = _UNSET,
        misfire: Misfire = _UNSET,
        misfire_grace: float | timedelta = _UNSET,
        misfire_tolerance: float | timedelta = _UNSET,
        misfire_cap: int = _UNSET,
        retry: RetryPolicy | None = None,
    ) -> Callable[[Handler[Any]], Sidecar[Any]]:
        """Declare a sidecar; use as a decorator on its handler.

        Args:
            handle: a unique, stable name: the key of its jobs in the store.
            run_type: ``RunType.MEMORY``, ``DEFERRED`` or ``STANDALONE``.
            payload: the payload type, when the handler's ``JobContext[...]`` annotation
                cannot be read (it wins over the annotation).
            concurrency: how many of its jobs may run at once in this process.
            timeout: seconds (or a timedelta) after which a run is cancelled; None for none.
            max_pending: MEMORY: how many jobs may wait for a worker.
            on_full: MEMORY: when ``max_pending`` jobs wait, ``"wait"`` for room or
                ``"raise"`` :class:`QueueFull`.
            schedule: a :class:`Schedule` (or any :class:`Trigger`): required for
                STANDALONE; for DEFERRED, jobs become due at its next fire.
            per_replica: STANDALONE: fire in every process instead of once across all
                processes sharing the store (default False).
            overlap: STANDALONE: ``"skip"`` (default) a fire while the previous one still
                runs anywhere, or ``"allow"`` up to ``concurrency`` at once.
            misfire: STANDALONE: what to do with fires missed by more than
                ``misfire_tolerance`` (downtime): ``"skip"`` them, run the ``"latest"``
                (default), or replay ``"all"``, oldest first, one at a time.
            misfire_grace: STANDALONE: how old a missed fire may be and still be replayed
                (default 1 hour).
            misfire_tolerance: STANDALONE: how late a fire may be noticed and still count
                as on time (default 1 s).
            misfire_cap: STANDALONE: the most fires ``"all"`` replays (default 100).
            retry: how failed runs are retried (a :class:`RetryPolicy`). Default: DEFERRED
                5 attempts, 1 s doubling to 10 min with full jitter; MEMORY one attempt.
                STANDALONE fires are not retried: a failed fire waits for the next one.

        Raises:
            DuplicateHandle: the handle is already declared (both places are named).
            InvalidDeclaration: the settings do not fit together.
        """

        if misused or handle is _UNSET or run_type is _UNSET:
            name = getattr(misused[0], "__name__", None) if misused else handle
            raise InvalidDeclaration(
                f"sidecar {name!r}: declare it with keywords and parentheses: "
                "@sc.sidecar(handle='...', run_type=RunType.MEMORY, ...)"
            )

        def decorate(handler: Handler[Any]) -> Sidecar[Any]:
            if self._runner is not None:
                raise InvalidDeclaration(
                    f"sidecar {handle!r}: cannot be declared while the runner is running"
                )
            existing = self.sidecars.get(handle)
            if existing is not None:
                from ._sidecar import _where

                raise DuplicateHandle(
                    f"sidecar handle {handle!r} is declared twice: first by {existing.where}, "
                    f"again by {_where(handler)}"
                )
            made: Sidecar[Any] = Sidecar(
                self,
                handle=handle,
                run_type=run_type,
                handler=handler,
                payload=payload,
                concurrency=concurrency,
                timeout=timeout,
                max_pending=max_pending,
                on_full=on_full,
                schedule=schedule,
                per_replica=per_replica,
                overlap=overlap,
                misfire=misfire,
                misfire_grace=misfire_grace,
                misfire_tolerance=misfire_tolerance,
                misfire_cap=misfire_cap,
                retry=retry,
            )
            if made.run_type is RunType.STANDALONE and not made.fires.per_replica:
                needed = made.fires.misfire_grace + self.lease
                if self.fire_retention < needed:
                    raise InvalidDeclaration(
                        f"sidecar {handle!r}: field 'misfire_grace': fire records are kept "
                        f"{self.fire_retention:g}s (fire_retention), less than misfire_grace "
                        f"+ lease = {needed:g}s: a late replica could fire an instant twice"
                    )
            self.sidecars[handle] = made
            return made

        return decorate

    # -- events ----------------------------------------------------------------------------

    def on_job_start(self, hook: Callable[[JobEvent], object]) -> Callable[[JobEvent], object]:
        """Register a function called (synchronously) as each run starts; a decorator.

        For metrics: keep it quick. An error it raises is logged and ignored.
        """
        self._hooks_start.append(hook)
        return hook

    def on_job_end(self, hook: Callable[[JobEvent], object]) -> Callable[[JobEvent], object]:
        """Register a function called as each run ends, with its outcome and duration."""
        self._hooks_end.append(hook)
        return hook

    def _emit(self, hooks: list[Callable[[JobEvent], object]], event: JobEvent) -> None:
        for hook in hooks:
            try:
                hook(event)
            except Exception:  # noqa: PERF203 - one hook's failure must not skip the rest
                log.exception("sidecars: event hook %r failed", hook)

    # -- running ---------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """Whether a runner is running and taking work."""
        return self._runner is not None and self._runner.accepting

    @asynccontextmanager
    async def run(
        self,
        *,
        store: Store | None = None,
        clock: Clock | None = None,
        grace: float | timedelta | None = None,
        consume: bool | None = None,
    ) -> AsyncIterator[Sidecars]:
        """Run every sidecar while the context is entered; shut down gracefully on exit.

        The store is closed on exit (it opens again lazily if used afterwards).

        Args:
            store: overrides the store (tests).
            clock: overrides the clock (tests).
            grace: overrides the shutdown grace.
            consume: whether this process runs DEFERRED jobs and schedules. Default: the
                environment variable ``SIDECARS_CONSUME`` (``0`` makes a web process
                enqueue-only), else True. MEMORY jobs always run where they are sent.
        """
        if self._runner is not None:
            raise SidecarsError(
                "Sidecars: this instance is already running (one Sidecars object runs once "
                "at a time); in a test that runs it with sidecars_harness.run(sc), call the "
                "app without its lifespan, through httpx.ASGITransport, instead of "
                "TestClient(app), which would start the lifespan and run it again"
            )
        if store is not None:
            if self._store_open:
                await self.aclose()
            self.store = store
        if clock is not None:
            self.clock = clock
        if consume is None:
            consume = os.environ.get("SIDECARS_CONSUME", "1").strip().lower() not in (
                "0",
                "false",
                "no",
                "off",
            )
        runner = Runner(
            self,
            clock=self.clock,
            grace=self.grace if grace is None else _positive("grace", grace),
            consume=consume,
        )
        self._runner = runner
        try:
            async with runner.running():
                yield self
        finally:
            self._runner = None
            self._last_runner = runner
            await self.aclose()

    async def _open_store(self) -> Store:
        if not self._store_open:
            await self.store.open()
            self._store_open = True
        return self.store

    async def aclose(self) -> None:
        """Close the store (it opens again if used later). Safe to call more than once."""
        if self._store_open:
            self._store_open = False
            await self.store.close()

    async def __aenter__(self) -> Sidecars:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def lifespan(self, app: Any) -> Any:
        """An ASGI lifespan: ``FastAPI(lifespan=sc.lifespan)`` or ``Starlette(lifespan=...)``.

        Puts this object on ``app.state.sidecars`` (see :func:`sidecars.starlette.get_sidecars`).
        To combine with a lifespan of your own, use :func:`sidecars.starlette.lifespan`.
        """
        from .starlette import lifespan

        return lifespan(self)(app)

    # -- sending and reading ---------------------------------------------------------------

    def _memory_pool(self, sidecar: Sidecar[Any]) -> MemoryPool:
        runner = self._runner
        if runner is None:
            raise NotRunning(
                f"sidecar {sidecar.handle!r} (MEMORY) cannot take jobs: its runner is not "
                "running; start it with the app's lifespan (lifespan=sc.lifespan) or "
                "`async with sc.run():`"
            )
        return runner.memory_pool(sidecar.handle)

    async def _enqueue_memory(self, sidecar: Sidecar[Any], payload: Any, key: str | None) -> JobRef:
        """One MEMORY job: the path ``enqueue`` takes, with nothing per job it can skip."""
        if self._eager:
            (ref,) = await self._run_eager(sidecar, [payload])
            return ref
        pool = self._memory_pool(sidecar)
        text, copy = sidecar.codec.encode(payload)
        queued = pool.submit_nowait(text, copy, key)
        if queued is None:
            (ref,) = await pool.submit([(text, copy)], [key])
        else:
            ref = queued
        if self._listeners:
            self._notify(sidecar, copy, self.clock.time(), ref)
        return ref

    async def _enqueue_memory_many(
        self,
        sidecar: Sidecar[Any],
        payloads: Sequence[Any],
        keys: Sequence[str | None] | None = None,
    ) -> list[JobRef]:
        if self._eager:
            return await self._run_eager(sidecar, payloads)
        pool = self._memory_pool(sidecar)
        encoded = [sidecar.codec.encode(p) for p in payloads]
        refs = await pool.submit(encoded, keys)
        if self._listeners:
            now = self.clock.time()
            for (_, copy), ref in zip(encoded, refs, strict=True):
                self._notify(sidecar, copy, now, ref)
        return refs

    def _notify(self, sidecar: Sidecar[Any], payload: Any, run_at: float, ref: JobRef) -> None:
        for listener in self._listeners:
            listener(sidecar, payload, run_at, ref)

    async def _run_eager(self, sidecar: Sidecar[Any], payloads: Sequence[Any]) -> list[JobRef]:
        """Eager mode (tests): run each handler inline, in order, raising its error."""
        import anyio

        from ._records import JobContext

        encoded = [sidecar.codec.encode(p) for p in payloads]
        refs = []
        now = self.clock.time()
        for _, copy in encoded:
            ref = JobRef(id=new_id(), handle=sidecar.handle)
            self._notify(sidecar, copy, now, ref)
            context: JobContext[Any] = JobContext(
                payload=copy,
                job_id=ref.id,
                handle=sidecar.handle,
                attempt=1,
                scheduled_at=datetime.fromtimestamp(now, timezone.utc),
                logger=logging.getLogger(f"sidecars.job.{sidecar.handle}"),
            )
            if sidecar.is_async:
                await sidecar.handler(context)  # type: ignore[misc]
            else:
                await anyio.to_thread.run_sync(sidecar.handler, context)
            refs.append(ref)
        return refs

    async def _enqueue_deferred(
        self,
        sidecar: Sidecar[Any],
        payloads: Sequence[Any],
        *,
        run_at: datetime | None,
        delay: timedelta | float | None,
        keys: Sequence[str | None] | None = None,
        connection: Any = None,
    ) -> list[JobRef]:
        # Unlike memory jobs, deferred jobs are still taken during shutdown: they are
        # durable, and another runner (or this one, after a restart) will run them.
        if self._eager:
            return await self._run_eager(sidecar, payloads)
        runner = self._runner
        now = self.clock.time()
        due = _due(sidecar, now, run_at, delay)
        encoded = [sidecar.codec.encode(p) for p in payloads]
        texts = [text for text, _ in encoded]
        jobs = [
            NewJob(
                id=new_id(),
                handle=sidecar.handle,
                payload=text,
                run_at=due,
                created_at=now,
                max_attempts=sidecar.settings.max_attempts,
                key=keys[i] if keys is not None else None,
            )
            for i, text in enumerate(texts)
        ]
        if not jobs:
            return []
        store = await self._open_store()
        if connection is None:
            refs = await store.enqueue(jobs)
        else:
            enqueue_in = getattr(store, "enqueue_in", None)
            if enqueue_in is None:
                raise InvalidDeclaration(
                    f"sidecar {sidecar.handle!r}: field 'connection': {type(store).__name__} "
                    "cannot enqueue inside your transaction (PostgresStore can)"
                )
            refs = await enqueue_in(connection, jobs)
        if runner is not None:
            runner.stats_for(sidecar.handle).enqueued += sum(r.created for r in refs)
            if runner.deferred is not None:
                runner.deferred.wake()
        if runner is None and not self._told_no_runner:
            # Normal for scripts and enqueue-only processes, but a forgotten lifespan looks
            # the same: say so once.
            self._told_no_runner = True
            log.info(
                "sidecars: DEFERRED job(s) of %r stored; no runner runs in this process, so "
                "they run when one does (the app's lifespan=sc.lifespan, or a worker)",
                sidecar.handle,
            )
        if self._listeners:
            for (_, copy), ref in zip(encoded, refs, strict=True):
                if ref.created:
                    self._notify(sidecar, copy, due, ref)
        return refs

    async def get_job(self, job_id: UUID | str) -> JobInfo | None:
        """Read a job by id: a recent MEMORY job of this process, or a stored job.

        Returns:
            A frozen :class:`JobInfo`, or None if no such job is known.
        """
        uid = _as_uuid(job_id)
        if uid is None:
            return None
        record = self.history.get(uid)
        if record is not None:
            sidecar = self.sidecars.get(record.handle)
            return record.info(sidecar.retry.max_attempts if sidecar is not None else 1)
        if self._uses_store():
            store = await self._open_store()
            return await store.get_job(uid)
        return None

    async def cancel(self, job_id: UUID | str) -> JobState | None:
        """Cancel a job: a queued one at once; one running in this process cooperatively
        (its handler is cancelled at its next await and the job recorded ``cancelled``).

        A job running in another process is not stopped (it finishes; cancelling it there
        is planned work). Returns the job's state after the call, or None if unknown.
        """
        uid = _as_uuid(job_id)
        if uid is None:
            return None
        record = self.history.get(uid)
        runner = self._runner
        if record is not None:
            pool = runner.pools.get(record.handle) if runner is not None else None
            if pool is None:
                return record.state
            return pool.cancel(record)
        if not self._uses_store():
            return None
        store = await self._open_store()
        state = await store.cancel(uid, now=self.clock.time())
        if state is JobState.RUNNING and runner is not None and runner.deferred is not None:
            runner.deferred.cancel_running(uid)
        return state

    async def retry(self, job_id: UUID | str) -> bool:
        """Queue a failed or cancelled job again, due now, with its attempts reset.

        Returns:
            True if the job was failed or cancelled and is queued again.
        """
        uid = _as_uuid(job_id)
        if uid is None:
            return False
        record = self.history.get(uid)
        runner = self._runner
        if record is not None:
            if record.state not in (JobState.FAILED, JobState.CANCELLED):
                return False
            sidecar = self.sidecars.get(record.handle)
            pool = runner.pools.get(record.handle) if runner is not None else None
            if sidecar is None or pool is None:
                raise NotRunning(
                    f"sidecar {record.handle!r} (MEMORY): cannot retry a memory job without "
                    "a running runner"
                )
            await pool.retry(record, sidecar.codec.decode(record.payload_json))
            return True
        if not self._uses_store():
            return False
        store = await self._open_store()
        done = await store.retry(uid, now=self.clock.time())
        if done and runner is not None and runner.deferred is not None:
            runner.deferred.wake()
        return done

    def _uses_store(self) -> bool:
        return self._store_open or any(
            s.run_type is not RunType.MEMORY for s in self.sidecars.values()
        )

    async def stats(self) -> Stats:
        """A snapshot of counts per handle, and of the runner's health."""
        runner = self._runner or self._last_runner
        if runner is None:
            return Stats(
                running=False,
                handles={
                    h: HandleStats(handle=h, run_type=s.run_type) for h, s in self.sidecars.items()
                },
            )
        return runner.stats()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<Sidecars {len(self.sidecars)} sidecar(s), {state}>"


# The last instant a datetime can show (9999-12-31): a due time beyond could not be read back.
_LATEST = datetime(9999, 12, 31, tzinfo=timezone.utc).timestamp()


def _due(
    sidecar: Sidecar[Any], now: float, run_at: datetime | None, delay: timedelta | float | None
) -> float:
    """When a new DEFERRED job becomes due: ``run_at``, ``delay``, the next fire, or now."""
    handle = sidecar.handle
    if run_at is not None and delay is not None:
        raise InvalidArgument(f"sidecar {handle!r}: field 'delay': give run_at or delay, not both")
    if run_at is not None:
        if not isinstance(run_at, datetime) or run_at.utcoffset() is None:
            raise InvalidArgument(
                f"sidecar {handle!r}: field 'run_at': expected an aware datetime, got {run_at!r}"
                " (e.g. datetime.now(timezone.utc) + timedelta(hours=1))"
            )
        return run_at.timestamp()
    if delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or seconds < 0
            or now + seconds >= _LATEST
        ):
            raise InvalidArgument(
                f"sidecar {handle!r}: field 'delay': expected a finite number of seconds >= 0 "
                f"(or a timedelta) that ends before the year 9999, got {delay!r}"
            )
        return now + float(seconds)
    if sidecar.schedule is not None:
        fire = sidecar.schedule.next_after(datetime.fromtimestamp(now, timezone.utc))
        if fire is None:
            raise SidecarsError(
                f"sidecar {handle!r}: field 'schedule': the schedule never fires again, so "
                "the job would never become due; pass run_at= to choose a time"
            )
        return fire.timestamp()
    return now


def _as_uuid(job_id: UUID | str) -> UUID | None:
    if isinstance(job_id, UUID):
        return job_id
    try:
        return UUID(str(job_id))
    except ValueError:
        return None
