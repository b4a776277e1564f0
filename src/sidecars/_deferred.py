"""DEFERRED sidecars in a runner: claim due jobs, run them under renewed leases, finish them.

One claim loop serves every deferred handle of the runner. It claims for the handles with
free workers (and, for handles whose jobs are short, a few jobs ahead: see ``_Pool``),
hands the jobs to that handle's long-lived workers, and then sleeps until the earliest
moment a job can become claimable, an in-process wake-up (an enqueue, a freed worker), or
the poll interval (work enqueued by another process), whichever is first. Results are
stored by one writer task, in groups, each write also claiming the next jobs.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._clock import busy
from ._crash import CrashPoints
from ._leases import LeaseKeeper
from ._records import JobState, Outcome
from ._worker import RunResult, execute
from .exceptions import PayloadError
from .stores._base import ClaimedJob, Finish, Lease, Notifying, Store

if TYPE_CHECKING:
    from ._runner import Runner
    from ._sidecar import Sidecar

__all__ = ("DeferredConsumer",)

log = logging.getLogger("sidecars")

# How often a failed finish is tried again before the lease is left to expire (the job
# then runs again elsewhere: at-least-once).
_FINISH_TRIES = 5

# Claiming ahead (see _Pool): the time window, and the most jobs held per worker.
_AHEAD_WINDOW = 0.05
_AHEAD_PER_WORKER = 8


class _Held:
    """A job this process holds under a lease."""

    __slots__ = ("cancelled", "job", "lease_until", "lost", "renewed", "scope", "started")

    def __init__(self, job: ClaimedJob) -> None:
        self.job = job
        self.lease_until = job.lease_until
        self.renewed = True
        self.lost = False
        self.cancelled = False  # sc.cancel() asked for it
        self.started = False  # a worker has taken it
        self.scope: anyio.CancelScope | None = None


class _Pool:
    """The workers of one deferred handle and the jobs claimed for them.

    ``idle`` is the number of workers without a job; it goes below zero by the jobs claimed
    ahead, which wait here for a worker. A handle claims ahead only as many jobs as its
    workers start within about ``_AHEAD_WINDOW`` seconds at their recent pace: none for
    slow jobs (another replica may be idle), up to ``_AHEAD_PER_WORKER`` per worker for
    short ones, so a store call carries many jobs instead of one per worker.
    """

    def __init__(self, sidecar: Sidecar[Any]) -> None:
        self.sidecar = sidecar
        self.handle = sidecar.handle
        concurrency = sidecar.settings.concurrency
        self.idle = concurrency
        self.cap = concurrency * _AHEAD_PER_WORKER
        self.pace = 0.0  # recent seconds per job (moving average); 0 until measured
        self.running: dict[UUID, float] = {}  # jobs in a worker: when they started
        send: MemoryObjectSendStream[ClaimedJob]
        receive: MemoryObjectReceiveStream[ClaimedJob]
        send, receive = anyio.create_memory_object_stream(concurrency + self.cap)
        self.send = send
        self.receive = receive

    @property
    def room(self) -> int:
        """How many jobs to claim now: idle workers plus the jobs to hold ahead."""
        ahead = 0
        if self.pace > 0:
            concurrency = self.sidecar.settings.concurrency
            ahead = min(self.cap, int(concurrency * _AHEAD_WINDOW / self.pace))
        return self.idle + ahead

    def ran(self, seconds: float) -> None:
        self.pace = seconds if self.pace == 0 else 0.8 * self.pace + 0.2 * seconds


class _Finishing:
    """Results waiting to be stored, oldest first, and how many are not stored yet."""

    __slots__ = ("idle", "items", "unstored", "wake")

    def __init__(self) -> None:
        self.items: list[tuple[_Held, Finish]] = []
        self.unstored = 0  # queued or being stored
        self.wake = anyio.Event()
        self.idle = anyio.Event()  # set while unstored == 0
        self.idle.set()


class DeferredConsumer:
    """Claims and runs the DEFERRED jobs of one runner's handles."""

    def __init__(
        self,
        runner: Runner,
        sidecars: list[Sidecar[Any]],
        store: Store,
        *,
        lease: float,
        renew_every: float,
        poll_interval: float,
        crash: CrashPoints,
    ) -> None:
        self.runner = runner
        self.store = store
        self.lease = lease
        self.renew_every = renew_every
        self.poll_interval = poll_interval
        self.crash = crash
        self.pools = {s.handle: _Pool(s) for s in sidecars}
        self.held: dict[UUID, _Held] = {}
        self._wake = anyio.Event()
        self._stopping = False
        self._claim_scope = anyio.CancelScope()
        self._claim_done = anyio.Event()
        self._watch_scope = anyio.CancelScope()
        self._workers = 0
        self.idle = anyio.Event()
        self._finishing = _Finishing()

        async def renew(held: list[_Held], now: float) -> set[UUID]:
            leases = [Lease(id=h.job.id, token=h.job.token) for h in held]
            return await store.renew(leases, now=now, lease=lease)

        self._leases: LeaseKeeper[UUID, _Held] = LeaseKeeper(
            runner.clock,
            self.held,
            key=lambda h: h.job.id,
            renew=renew,
            lease=lease,
            every=renew_every,
            what="job",
        )

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        for pool in self.pools.values():
            for i in range(pool.sidecar.settings.concurrency):
                self._workers += 1
                tg.start_soon(self._worker, pool, name=f"sidecars deferred {pool.handle}#{i}")
        tg.start_soon(self._claim_loop_supervised, name="sidecars claim loop")
        tg.start_soon(self.runner.supervise, "result writer", self._store_results)
        tg.start_soon(self.runner.supervise, "lease renewal", self._leases.run)
        store = self.store
        if isinstance(store, Notifying):
            handles = list(self.pools)

            async def watch() -> None:
                await store.watch(handles, lambda _handle: self.wake())

            tg.start_soon(self._watch_supervised, watch, name="sidecars store watch")
        if not self._workers:
            self.idle.set()

    async def _idle_once_stored(self) -> None:
        await self._finishing.idle.wait()
        self.idle.set()

    def cancel_running(self, job_id: UUID) -> bool:
        """Cancel a job running in this process (cooperatively: at its next await)."""
        held = self.held.get(job_id)
        if held is None:
            return False
        held.cancelled = True
        if held.scope is not None:
            held.scope.cancel()
        return True

    def wake(self) -> None:
        """Look for due work now (an enqueue in this process, or a freed worker)."""
        self._wake.set()

    async def stop_claiming(self, limit: float) -> None:
        """Shutdown, first step: claim nothing more; give back jobs not yet started.

        A claim in flight is let finish (its rows are already taken in the store: cancelling
        it would leave them running under a lease nobody holds), for at most ``limit``.
        """
        self._stopping = True
        self._watch_scope.cancel()
        self.wake()
        with anyio.move_on_after(limit):
            await self._claim_done.wait()
        self._claim_scope.cancel()
        unstarted: list[Lease] = []
        for pool in self.pools.values():
            while True:
                try:
                    job = pool.receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
                self.held.pop(job.id, None)
                unstarted.append(Lease(id=job.id, token=job.token))
            pool.send.close()
        # Claimed after shutdown began, so never handed to a worker.
        for job_id, held in list(self.held.items()):
            if held.scope is None and not held.started:
                del self.held[job_id]
                unstarted.append(Lease(id=job_id, token=held.job.token))
        if unstarted:
            await self._release(unstarted)

    async def release_held(self) -> int:
        """Shutdown, last step: store results still waiting, then give back the leases of
        runs cancelled by shutdown."""
        with anyio.CancelScope(shield=True):
            while self._finishing.items:
                await self._store_group()
        leases = [Lease(id=h.job.id, token=h.job.token) for h in self.held.values()]
        self.held.clear()
        if leases:
            await self._release(leases)
        return len(leases)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.send.close()
            pool.receive.close()

    async def _release(self, leases: list[Lease]) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.store.release(leases, now=self.runner.clock.time())
            except Exception:
                log.exception(
                    "sidecars: could not release %d job(s) at shutdown; they run again when "
                    "their leases expire",
                    len(leases),
                )

    # -- claiming ----------------------------------------------------------------------

    async def _watch_supervised(self, watch: Any) -> None:
        with self._watch_scope:
            await self.runner.supervise("store watch", watch)

    async def _claim_loop_supervised(self) -> None:
        try:
            with self._claim_scope:
                await self.runner.supervise("claim loop", self._claim_loop)
        finally:
            self._claim_done.set()

    async def _claim_loop(self) -> None:
        clock = self.runner.clock
        spins = 0
        look_first = False
        while not self._stopping:
            with busy(clock):
                due = await self._claim_round(look_first=look_first)
                if due is not None and due <= clock.time():
                    # Claimable already (it became due while we were claiming): look again
                    # at once, unless the store keeps saying so without giving us anything.
                    spins += 1
                    if spins <= 3:
                        await anyio.lowlevel.checkpoint()
                        look_first = False
                        continue
                    due = None
                spins = 0
            # Only a poll has no reason to expect work: it reads before it writes.
            look_first = await self._wait(due) == "poll"

    async def _claim_round(self, *, look_first: bool = False) -> float | None:
        """Claim for every handle with idle workers, in one store call; return when to look
        next, if known.

        ``look_first``: a poll, with no sign of work; one read of the earliest due time
        decides whether to claim at all, so an idle runner's poll writes nothing.
        """
        clock = self.runner.clock
        store = self.store
        # A fresh event before looking, so a wake-up that arrives meanwhile is kept.
        self._wake = anyio.Event()
        await self._give_back_ahead()
        claims = [(h, room) for h, p in self.pools.items() if (room := p.room) > 0]
        if not claims:
            return None
        if look_first:
            due = await store.next_wakeup([h for h, _ in claims])
            if due is None or due > clock.time():
                return due
        await self._finish_and_claim([], claims)
        free = [p.handle for p in self.pools.values() if p.room > 0]
        return await store.next_wakeup(free) if free else None

    async def _give_back_ahead(self) -> None:
        """Give back jobs claimed ahead once their handle's jobs are no longer short (one
        running now has outlasted the window, or the recent pace has): another replica may
        be idle. They are due again at once, their attempt not counted."""
        now = time.monotonic()
        leases: list[Lease] = []
        for pool in self.pools.values():
            if pool.idle >= 0:
                continue
            longest = now - min(pool.running.values(), default=now)
            if max(longest, pool.pace) <= _AHEAD_WINDOW:
                continue
            pool.pace = max(pool.pace, longest)  # claim nothing ahead until jobs are short
            while pool.idle < 0:
                try:
                    job = pool.receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
                self.held.pop(job.id, None)
                leases.append(Lease(id=job.id, token=job.token))
                pool.idle += 1
        if leases:
            log.debug("sidecars: gave back %d job(s) claimed ahead of slow ones", len(leases))
            await self._release(leases)

    def _hand_out(self, jobs: list[ClaimedJob]) -> None:
        """Hold claimed jobs and queue them for their handles' workers."""
        if jobs:
            self._leases.claimed()
        for job in jobs:
            pool = self.pools[job.handle]
            self.held[job.id] = _Held(job)
            pool.idle -= 1
            if self._stopping:
                continue  # shutdown began meanwhile: stop_claiming gives it back
            pool.send.send_nowait(job)
            self.crash.reached("after_claim")

    async def _wait(self, due: float | None) -> str:
        """Wait for a wake-up, the due time or the poll interval; say which came."""
        wake = self._wake
        if wake.is_set():
            return "wake"
        clock = self.runner.clock
        reason = "poll"
        # The poll interval is real time: it exists to notice other processes' work.
        with anyio.move_on_after(self.poll_interval):
            async with anyio.create_task_group() as tg:

                async def until_due(when: float) -> None:
                    nonlocal reason
                    await clock.sleep_until(when)
                    reason = "due"
                    tg.cancel_scope.cancel()

                if due is not None:
                    tg.start_soon(until_due, due)
                await wake.wait()
                reason = "wake"
                tg.cancel_scope.cancel()
        return reason

    # -- leases ------------------------------------------------------------------------

    # -- running -----------------------------------------------------------------------

    async def _worker(self, pool: _Pool) -> None:
        receive = pool.receive
        try:
            while True:
                try:
                    job = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        job = await receive.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                started = pool.running[job.id] = time.monotonic()
                try:
                    with busy(self.runner.clock):
                        await self._run(pool, job)
                finally:
                    pool.running.pop(job.id, None)
                    pool.ran(time.monotonic() - started)
                    pool.idle += 1
                    self.wake()
        finally:
            self._workers -= 1
            if self._workers == 0:
                self.runner.background(self._idle_once_stored)

    async def _run(self, pool: _Pool, job: ClaimedJob) -> None:
        runner = self.runner
        sidecar = pool.sidecar
        counters = runner.stats_for(pool.handle)
        held = self.held.get(job.id)
        if held is None:  # given back by shutdown before it started
            return
        held.started = True
        counters.running += 1
        try:
            try:
                payload = sidecar.codec.decode(job.payload)
            except PayloadError as exc:
                # Retrying cannot help a payload that no longer fits its model.
                log.error("sidecars: %s", exc)
                counters.failed += 1
                await self._finish_one(
                    held,
                    _result(
                        job,
                        JobState.FAILED,
                        Outcome.ERROR,
                        runner.clock.time(),
                        error=f"the stored payload no longer validates: {exc}",
                    ),
                )
                return
            with anyio.CancelScope() as scope:
                held.scope = scope
                try:
                    if held.lost or held.cancelled:
                        # Cancelled, or its lease lost, while it waited for a worker (claimed
                        # ahead): the handler is not started at all.
                        scope.cancel()
                        await anyio.lowlevel.checkpoint()
                    result = await self._execute(sidecar, payload, job)
                except anyio.get_cancelled_exc_class():
                    if not (held.lost or held.cancelled):
                        # Shutdown ran out of grace; the lease is given back after the task
                        # group has stopped (release_held), without counting the attempt.
                        counters.dropped += 1
                    raise
            if held.cancelled and not held.lost:
                log.info("sidecars: %r job %s cancelled while running", pool.handle, job.id)
                counters.dropped += 1
                await self._finish_one(
                    held,
                    _result(job, JobState.CANCELLED, Outcome.CANCELLED, runner.clock.time()),
                )
                return
            if held.lost:
                log.warning(
                    "sidecars: %r job %s lost its lease (attempt %d) and was stopped",
                    pool.handle,
                    job.id,
                    job.attempt,
                )
                counters.failed += 1
                self.held.pop(job.id, None)
                return
            self.crash.reached("before_complete")
            outcome, error = result.outcome, result.error
            counters.count(outcome)
            now = runner.clock.time()
            policy = sidecar.retry
            if outcome is Outcome.OK:
                finish = _result(job, JobState.SUCCEEDED, outcome, now)
            elif job.attempt < job.max_attempts and policy.retries(result.exception):
                retry_at = now + policy.delay(job.attempt)
                finish = _result(job, JobState.QUEUED, outcome, now, error, retry_at)
            else:
                finish = _result(job, JobState.FAILED, outcome, now, error)
            await self._finish_one(held, finish)
            # A sync handler past its timeout still runs in its thread: keep the slot.
            await result.release_slot()
        finally:
            counters.running -= 1

    async def _execute(self, sidecar: Sidecar[Any], payload: Any, job: ClaimedJob) -> RunResult:
        if not self.crash.armed:
            return await execute(
                self.runner,
                sidecar,
                payload=payload,
                job_id=job.id,
                attempt=job.attempt,
                scheduled_at=job.run_at,
            )
        result: list[RunResult] = []
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                result.append(
                    await execute(
                        self.runner,
                        sidecar,
                        payload=payload,
                        job_id=job.id,
                        attempt=job.attempt,
                        scheduled_at=job.run_at,
                    )
                )

            tg.start_soon(run)
            # Once the handler has started and reached its first await:
            await anyio.lowlevel.checkpoint()
            if not result:
                self.crash.reached("mid_handler")
        return result[0]

    async def _finish_one(self, held: _Held, result: Finish) -> None:
        """Queue one result to be stored; the worker goes on to its next job meanwhile.

        The lease stays held (and renewed) until the result is stored. Results that
        arrive while a write is in flight are stored together by the next one.
        """
        finishing = self._finishing
        finishing.items.append((held, result))
        finishing.unstored += 1
        if finishing.idle.is_set():
            finishing.idle = anyio.Event()
        finishing.wake.set()

    async def _store_results(self) -> None:
        """The result writer: stores queued results in groups, one write at a time."""
        finishing = self._finishing
        while True:
            await finishing.wake.wait()
            finishing.wake = anyio.Event()
            while finishing.items:
                with busy(self.runner.clock):
                    await self._store_group()

    async def _store_group(self) -> None:
        """Store every queued result in one call (claiming for idle workers in the same
        call), tried again on errors until the leases would run out."""
        finishing = self._finishing
        group, finishing.items = finishing.items, []
        results = [result for _, result in group]
        applied: set[UUID] = set()
        with anyio.CancelScope(shield=True):
            try:
                for attempt in range(1, _FINISH_TRIES + 1):
                    applied, error = await self._try_store(results)
                    if error is None:
                        break
                    deadline = min(held.lease_until for held, _ in group)
                    if attempt == _FINISH_TRIES or self.runner.clock.time() >= deadline:
                        log.error(
                            "sidecars: could not store the results of %d job(s); they run "
                            "again when their leases expire",
                            len(group),
                            exc_info=error,
                        )
                        for _, result in group:
                            self.held.pop(result.id, None)
                        return
                    await anyio.sleep(min(0.1 * 2**attempt, 2.0))
                if any(result.state is JobState.QUEUED for result in results):
                    self.wake()  # a retry is due later: the claim loop plans its wake-up
                for held, result in group:
                    if result.id not in applied:
                        log.warning(
                            "sidecars: the result of %r job %s was refused: its lease had "
                            "been taken by another runner",
                            held.job.handle,
                            held.job.id,
                        )
                    self.held.pop(result.id, None)
            finally:
                finishing.unstored -= len(group)
                if finishing.unstored == 0:
                    finishing.idle.set()

    async def _try_store(self, results: list[Finish]) -> tuple[set[UUID], Exception | None]:
        try:
            return await self._store_batch(results), None
        except Exception as exc:
            return set(), exc

    async def _store_batch(self, results: list[Finish]) -> set[UUID]:
        if self._stopping:
            return await self.store.finish(results)
        claims = [(h, room) for h, p in self.pools.items() if (room := p.room) > 0]
        if not claims:
            return await self.store.finish(results)
        applied, jobs = await self._finish_and_claim(results, claims)
        if len(jobs) < sum(want for _, want in claims):
            # Workers stay idle: the claim loop (which saw their slots reserved meanwhile)
            # plans when to look next.
            self.wake()
        return applied

    async def _finish_and_claim(
        self, results: list[Finish], claims: list[tuple[str, int]]
    ) -> tuple[set[UUID], list[ClaimedJob]]:
        """Store results and claim, the claimed slots reserved while the call is in flight
        (so the claim loop and the result writer never claim the same slots), then hand
        the jobs out."""
        for handle, want in claims:
            self.pools[handle].idle -= want
        try:
            applied, jobs = await _finish_and_claim(
                self.store, results, claims, self.runner.clock.time(), self.lease
            )
        finally:
            for handle, want in claims:
                self.pools[handle].idle += want
        self._hand_out(jobs)
        return applied, jobs


async def _finish_and_claim(
    store: Store,
    results: list[Finish],
    claims: list[tuple[str, int]],
    now: float,
    lease: float,
) -> tuple[set[UUID], list[ClaimedJob]]:
    """``store.finish_and_claim``, or its two halves for a store written before it existed."""
    combined = getattr(store, "finish_and_claim", None)
    if combined is not None:
        answer: tuple[set[UUID], list[ClaimedJob]] = await combined(
            results, claims, now=now, lease=lease
        )
        return answer
    applied = await store.finish(results) if results else set()
    jobs: list[ClaimedJob] = []
    for handle, limit in claims:
        try:
            jobs += await store.claim([handle], limit, now=now, lease=lease)
        except Exception:  # noqa: PERF203 (one try per handle: a few)
            if not jobs and not results:
                raise
            break  # keep what is stored and claimed; the claim loop tries again
    return applied, jobs


def _result(
    job: ClaimedJob,
    state: JobState,
    outcome: Outcome,
    now: float,
    error: str | None = None,
    retry_at: float | None = None,
) -> Finish:
    """The result of one run of ``job``, fenced by its claim's token."""
    return Finish(
        id=job.id,
        token=job.token,
        state=state,
        outcome=outcome,
        finished_at=now,
        error=error,
        retry_at=retry_at,
    )
