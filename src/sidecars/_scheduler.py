"""STANDALONE sidecars: turn schedule instants into runs, once per (handle, fire instant).

One loop serves every standalone handle of a runner: it sleeps until the earliest next fire
across all of them (one timer, not one per handle), claims the fires due at that instant in
one store call, and starts their runs. Fires noticed late (downtime, a stalled loop) follow
each handle's misfire policy. Cluster-wide fires go through the store, which hands each
(handle, instant) to one runner only; ``per_replica`` fires skip the store.
"""

from __future__ import annotations

import logging
import math
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ._clock import busy
from ._crash import CrashPoints
from ._leases import LeaseKeeper
from ._worker import RunResult, execute
from .stores._base import FireClaim, FireRequest, FireStatus, Store

if TYPE_CHECKING:
    from ._runner import Runner
    from ._sidecar import Sidecar

__all__ = ("Scheduler", "fire_job_id")

log = logging.getLogger("sidecars")

# Fire ids are derived, so every process names a fire the same way.
_FIRE_NAMESPACE = uuid.UUID("6f1f6c8e-3b7a-4d55-9a3e-5c1d2b0e7f41")
# Re-claims of a fire whose holder died, in all (DESIGN: a fire that kills its process is
# not re-run forever).
_FIRE_MAX_ATTEMPTS = 3
# How often fire rows are pruned.
_PRUNE_EVERY = 3600.0


def fire_job_id(handle: str, fire_at: int) -> uuid.UUID:
    """The job id of a fire: the same in every process."""
    return uuid.uuid5(_FIRE_NAMESPACE, f"{handle}@{fire_at}")


def _instant(dt: datetime | None) -> int | None:
    """A trigger's datetime as whole epoch seconds (never earlier than the trigger said)."""
    if dt is None:
        return None
    return math.ceil(dt.timestamp() - 1e-6)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


class _Entry:
    """The schedule state of one standalone handle."""

    __slots__ = ("broken", "cursor", "next_fire", "replaying", "running", "sidecar")

    def __init__(self, sidecar: Sidecar[Any]) -> None:
        self.sidecar = sidecar
        # Every fire up to and including `cursor` has been dealt with by this process.
        self.cursor: int | None = None
        self.next_fire: int | None = None
        self.running = 0
        self.replaying = False
        self.broken = False

    def after(self, instant: float) -> int | None:
        """The next fire after ``instant``; None (and the handle stopped) for a trigger that
        misbehaves, so a faulty custom Trigger cannot spin the event loop."""
        if self.broken:
            return None
        trigger = self.sidecar.schedule
        assert trigger is not None
        try:
            found = trigger.next_after(_dt(instant))
        except Exception:
            self._break("raised from next_after()", exc_info=True)
            return None
        if found is None:
            return None
        if not isinstance(found, datetime) or found.utcoffset() is None:
            self._break(f"next_after() returned {found!r}, not an aware datetime")
            return None
        value = _instant(found)
        assert value is not None
        if value <= instant:
            self._break(
                f"next_after({_dt(instant).isoformat()}) returned {found.isoformat()}, which "
                "is not later"
            )
            return None
        return value

    def before(self, instant: float) -> int | None:
        """The last fire before ``instant``, checked like :meth:`after`."""
        if self.broken:
            return None
        trigger = self.sidecar.schedule
        assert trigger is not None
        try:
            found = trigger.previous_before(_dt(instant))
        except Exception:
            self._break("raised from previous_before()", exc_info=True)
            return None
        if found is None:
            return None
        if not isinstance(found, datetime) or found.utcoffset() is None:
            self._break(f"previous_before() returned {found!r}, not an aware datetime")
            return None
        value = _instant(found)
        assert value is not None
        if value >= instant:
            self._break(
                f"previous_before({_dt(instant).isoformat()}) returned {found.isoformat()}, "
                "which is not earlier"
            )
            return None
        return value

    def _break(self, why: str, *, exc_info: bool = False) -> None:
        self.broken = True
        log.error(
            "sidecars: %r: its schedule %s; this sidecar fires no more until restarted",
            self.sidecar.handle,
            why,
            exc_info=exc_info,
        )


class _HeldFire:
    __slots__ = ("lease", "lease_until", "lost", "renewed", "scope")

    def __init__(self, claim: FireClaim) -> None:
        self.lease = claim.lease()
        assert claim.lease_until is not None
        self.lease_until = claim.lease_until
        self.renewed = True
        self.lost = False
        self.scope: anyio.CancelScope | None = None


class Scheduler:
    """Fires the STANDALONE sidecars of one runner."""

    def __init__(
        self,
        runner: Runner,
        sidecars: list[Sidecar[Any]],
        store: Store | None,
        *,
        lease: float,
        renew_every: float,
        retention: float,
        crash: CrashPoints,
    ) -> None:
        self.runner = runner
        self.store = store
        self.lease = lease
        self.renew_every = renew_every
        self.retention = retention
        self.crash = crash
        self.entries = [_Entry(s) for s in sidecars]
        self.held: dict[tuple[str, int], _HeldFire] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._running = 0
        self.idle = anyio.Event()
        self.idle.set()
        fire_store = store

        async def renew(held: list[_HeldFire], now: float) -> set[tuple[str, int]]:
            assert fire_store is not None
            return await fire_store.renew_fires([h.lease for h in held], now=now, lease=lease)

        self._leases: LeaseKeeper[tuple[str, int], _HeldFire] = LeaseKeeper(
            runner.clock,
            self.held,
            key=lambda h: (h.lease.handle, h.lease.fire_at),
            renew=renew,
            lease=lease,
            every=renew_every,
            what="fire",
        )
        self._scope = anyio.CancelScope()
        self._next_prune = 0.0
        # Fires another runner holds: (handle, fire_at) -> when its lease runs out. Checked
        # again then; if the holder died, the fire is claimed and run here.
        self._watch: dict[tuple[str, int], tuple[_Entry, float]] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, tg: anyio.abc.TaskGroup, fires_tg: anyio.abc.TaskGroup) -> None:
        self._tg = fires_tg
        tg.start_soon(self._loop_supervised, name="sidecars scheduler")
        if self.store is not None and any(not e.sidecar.fires.per_replica for e in self.entries):
            tg.start_soon(self.runner.supervise, "fire lease renewal", self._leases.run)

    def stop(self) -> None:
        """Shutdown: schedule nothing more (running fires keep their grace)."""
        self._scope.cancel()

    async def release_held(self) -> int:
        """Give back fires cancelled by shutdown: claimable again, attempt not counted."""
        leases = [h.lease for h in self.held.values()]
        self.held.clear()
        if leases and self.store is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await self.store.release_fires(leases, now=self.runner.clock.time())
                except Exception:
                    log.exception("sidecars: could not release %d fire(s)", len(leases))
        return len(leases)

    # -- the loop ----------------------------------------------------------------------

    async def _loop_supervised(self) -> None:
        with self._scope:
            await self.runner.supervise("scheduler", self._loop)

    async def _loop(self) -> None:
        clock = self.runner.clock
        with busy(clock):
            await self._initialise()
        while True:
            pending: list[float] = [e.next_fire for e in self.entries if e.next_fire is not None]
            pending.extend(check for _, check in self._watch.values())
            if not pending:
                log.info("sidecars: no schedule will fire again; the scheduler stops")
                return
            await clock.sleep_until(min(pending))
            with busy(clock):
                await self._tick()
                await self._check_holders()

    async def _initialise(self) -> None:
        """Set each handle's cursor: its stored last fire, or now for a fresh start."""
        now = self.runner.clock.time()
        for entry in self.entries:
            if entry.cursor is not None:  # a restart of the loop after an error
                continue
            last = None
            if self.store is not None and not entry.sidecar.fires.per_replica:
                last = await self.store.last_fire(entry.sidecar.handle)
            if last is None:
                # Nothing recorded (first start, or per replica): nothing has been missed;
                # a fire exactly at start-up (within the tolerance) still counts.
                tolerance = entry.sidecar.fires.misfire_tolerance
                entry.cursor = math.ceil(now - tolerance) - 1
            else:
                entry.cursor = last
                if last >= now - entry.sidecar.fires.misfire_grace:
                    # The last fire may have died with its runner: look at it now.
                    self._watch[(entry.sidecar.handle, last)] = (entry, now)
            entry.next_fire = entry.after(entry.cursor)
        await self._prune(now)

    async def _check_holders(self) -> None:
        """Claim fires whose holder's lease ran out (a dead runner): at-least-once."""
        now = self.runner.clock.time()
        due = [(key, entry) for key, (entry, check) in self._watch.items() if check <= now]
        if not due:
            return
        requests = []
        for key, entry in due:
            del self._watch[key]
            if key[1] >= now - entry.sidecar.fires.misfire_grace:
                requests.append((entry, key[1]))
        if requests:
            # A re-run is never skipped for overlap: the newer fire that may be running now
            # must not swallow the one its dead holder never finished (at-least-once).
            await self._fire_many(requests, rerun=True)

    async def _tick(self) -> None:
        clock = self.runner.clock
        now = clock.time()
        requests: list[tuple[_Entry, int]] = []
        for entry in self.entries:
            if entry.next_fire is None or entry.next_fire > now:
                continue
            on_time, late = self._due(entry, now)
            if late:
                self._start_replay(entry, late)
            requests.extend((entry, fire_at) for fire_at in on_time)
            entry.cursor = math.floor(now)
            entry.next_fire = entry.after(entry.cursor)
        if requests:
            await self._fire_many(requests)
        await self._prune(now)

    def _due(self, entry: _Entry, now: float) -> tuple[list[int], list[int]]:
        """Fires of ``entry`` after its cursor up to ``now``: (on time, missed to replay)."""
        settings = entry.sidecar.fires
        assert entry.cursor is not None
        assert entry.next_fire is not None
        on_time: list[int] = []
        # On-time fires lie within the tolerance; with a 1 s cadence there may be two.
        first = max(entry.cursor, math.ceil(now - settings.misfire_tolerance) - 1)
        fire = entry.after(first)
        while fire is not None and fire <= now:
            on_time.append(fire)
            fire = entry.after(fire)
        oldest_on_time = on_time[0] if on_time else math.floor(now) + 1
        if entry.next_fire >= oldest_on_time or settings.misfire == "skip":
            if entry.next_fire < oldest_on_time:
                log.warning(
                    "sidecars: %r missed fires since %s; misfire='skip'",
                    entry.sidecar.handle,
                    _dt(entry.next_fire).isoformat(),
                )
            return on_time, []
        # Missed fires: after the cursor, before the on-time ones, within misfire_grace.
        floor = max(entry.cursor, math.ceil(now - settings.misfire_grace) - 1)
        late: list[int] = []
        if settings.misfire == "latest":
            latest = entry.before(oldest_on_time)
            if latest is not None and latest > floor:
                late.append(latest)
        else:
            fire = entry.after(floor)
            while fire is not None and fire < oldest_on_time and len(late) < settings.misfire_cap:
                late.append(fire)
                fire = entry.after(fire)
        if late:
            # Expected after any restart, so INFO; a replay of many fires is worth a WARNING.
            level = logging.WARNING if len(late) > 1 else logging.INFO
            span = _dt(late[0]).isoformat()
            if len(late) > 1:
                span += f" to {_dt(late[-1]).isoformat()}"
            log.log(
                level,
                "sidecars: %r missed %s; misfire=%r runs %d now (%s)",
                entry.sidecar.handle,
                "a fire" if len(late) == 1 else "fires",
                settings.misfire,
                len(late),
                span,
            )
        return on_time, late

    def _start_replay(self, entry: _Entry, fires: list[int]) -> None:
        if entry.replaying:
            return  # a replay is already going; it covers the older fires
        entry.replaying = True
        assert self._tg is not None
        self._tg.start_soon(
            self._replay, entry, fires, name=f"sidecars replay {entry.sidecar.handle}"
        )

    async def _replay(self, entry: _Entry, fires: list[int]) -> None:
        """Missed fires, oldest first, one at a time."""
        try:
            with busy(self.runner.clock):
                for fire_at in fires:
                    claim = await self._claim(entry, fire_at)
                    if claim is not None:
                        await self._run(entry, fire_at, claim)
        finally:
            entry.replaying = False

    # -- claiming and running ----------------------------------------------------------

    def _overlaps(self, entry: _Entry) -> bool:
        settings = entry.sidecar.fires
        limit = 1 if settings.overlap == "skip" else entry.sidecar.settings.concurrency
        return entry.running >= limit

    async def _claim(self, entry: _Entry, fire_at: int) -> FireClaim | None:
        (claim,) = await self._claim_many([(entry, fire_at)])
        return claim

    async def _claim_many(
        self, requests: list[tuple[_Entry, int]], *, rerun: bool = False
    ) -> list[FireClaim | None]:
        """Claim fires; None for a fire this process must not run."""
        runner = self.runner
        answers: list[FireClaim | None] = [None] * len(requests)
        store_requests: list[tuple[int, FireRequest]] = []
        for i, (entry, fire_at) in enumerate(requests):
            handle = entry.sidecar.handle
            local_overlap = self._overlaps(entry)
            if entry.sidecar.fires.per_replica or self.store is None:
                if local_overlap:
                    self._count_skip(entry, fire_at)
                else:
                    answers[i] = FireClaim(
                        handle=handle, fire_at=fire_at, status=FireStatus.CLAIMED, attempt=1
                    )
                continue
            if local_overlap and entry.sidecar.fires.overlap == "allow":
                # Our own slots are full: leave the fire to another replica.
                continue
            store_requests.append(
                (
                    i,
                    FireRequest(
                        handle=handle,
                        fire_at=fire_at,
                        skip_if_running=entry.sidecar.fires.overlap == "skip" and not rerun,
                        max_attempts=_FIRE_MAX_ATTEMPTS,
                    ),
                )
            )
        if store_requests:
            assert self.store is not None
            claims = await self.store.claim_fires(
                [r for _, r in store_requests], now=runner.clock.time(), lease=self.lease
            )
            for (i, _), claim in zip(store_requests, claims, strict=True):
                entry = requests[i][0]
                if claim.status is FireStatus.TAKEN and claim.lease_until is not None:
                    # Running elsewhere: check back just after its lease would run out.
                    self._watch[(claim.handle, claim.fire_at)] = (entry, claim.lease_until + 0.05)
                elif claim.status is FireStatus.CLAIMED:
                    answers[i] = claim
                    self.held[(claim.handle, claim.fire_at)] = _HeldFire(claim)
                    self._leases.claimed()
                elif claim.status is FireStatus.SKIPPED:
                    self._count_skip(entry, claim.fire_at)
        return answers

    def _count_skip(self, entry: _Entry, fire_at: int) -> None:
        self.runner.stats_for(entry.sidecar.handle).skipped += 1
        log.info(
            "sidecars: %r fire at %s skipped: the previous fire is still running",
            entry.sidecar.handle,
            _dt(fire_at).isoformat(),
        )

    async def _fire_many(self, requests: list[tuple[_Entry, int]], *, rerun: bool = False) -> None:
        claims = await self._claim_many(requests, rerun=rerun)
        assert self._tg is not None
        for (entry, fire_at), claim in zip(requests, claims, strict=True):
            if claim is not None:
                entry.running += 1  # counted now, so a second fire this tick sees it
                self._tg.start_soon(self._run_started, entry, fire_at, claim)

    async def _run_started(self, entry: _Entry, fire_at: int, claim: FireClaim) -> None:
        entry.running -= 1
        with busy(self.runner.clock):
            await self._run(entry, fire_at, claim)

    async def _run(self, entry: _Entry, fire_at: int, claim: FireClaim) -> None:
        runner = self.runner
        sidecar = entry.sidecar
        handle = sidecar.handle
        counters = runner.stats_for(handle)
        held = self.held.get((handle, fire_at))
        entry.running += 1
        counters.running += 1
        self._running += 1
        self.idle = anyio.Event() if self._running == 1 else self.idle
        try:
            with anyio.CancelScope() as scope:
                if held is not None:
                    held.scope = scope
                    if held.lost:
                        scope.cancel()
                try:
                    result = await self._execute(sidecar, fire_at, claim)
                except anyio.get_cancelled_exc_class():
                    counters.dropped += 1
                    raise
            if held is not None and held.lost:
                log.warning(
                    "sidecars: %r fire at %s lost its lease and was stopped",
                    handle,
                    _dt(fire_at).isoformat(),
                )
                counters.failed += 1
                self.held.pop((handle, fire_at), None)
                return
            outcome, error = result.outcome, result.error
            counters.count(outcome)
            if held is not None and self.store is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        applied = await self.store.finish_fire(
                            held.lease,
                            outcome=outcome,
                            finished_at=runner.clock.time(),
                            error=error,
                        )
                    except Exception:
                        log.exception("sidecars: could not record %r fire at %s", handle, fire_at)
                    else:
                        if not applied:
                            log.warning(
                                "sidecars: the result of %r fire at %s was refused: its "
                                "lease had been taken by another runner",
                                handle,
                                fire_at,
                            )
                self.held.pop((handle, fire_at), None)
            await result.release_slot()
        finally:
            entry.running -= 1
            counters.running -= 1
            self._running -= 1
            if self._running == 0:
                self.idle.set()

    async def _execute(self, sidecar: Sidecar[Any], fire_at: int, claim: FireClaim) -> RunResult:
        kwargs: dict[str, Any] = {
            "payload": None,
            "job_id": fire_job_id(sidecar.handle, fire_at),
            "attempt": max(claim.attempt, 1),
            "scheduled_at": float(fire_at),
        }
        if not self.crash.armed:
            return await execute(self.runner, sidecar, **kwargs)
        result: list[RunResult] = []
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                result.append(await execute(self.runner, sidecar, **kwargs))

            tg.start_soon(run)
            await anyio.lowlevel.checkpoint()
            if not result:
                self.crash.reached("during_fire")
        return result[0]

    # -- leases and pruning ------------------------------------------------------------

    async def _prune(self, now: float) -> None:
        if self.store is None or now < self._next_prune:
            return
        self._next_prune = now + _PRUNE_EVERY
        try:
            removed = await self.store.prune_fires(before=now - self.retention)
        except Exception:
            log.warning("sidecars: pruning fire rows failed; will retry", exc_info=True)
            self._next_prune = now + 60
            return
        if removed:
            log.debug("sidecars: pruned %d fire row(s)", removed)
