"""Keeping leases: one renewal loop shape for claimed jobs and claimed fires alike."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, Protocol, TypeVar

import anyio

from ._clock import Clock, busy

__all__ = ("HeldLease", "LeaseKeeper")

log = logging.getLogger("sidecars")


class HeldLease(Protocol):
    """What the keeper needs of a held job or fire."""

    lease_until: float
    renewed: bool
    lost: bool
    scope: anyio.CancelScope | None


K = TypeVar("K", bound=Hashable)
H = TypeVar("H", bound=HeldLease)


class LeaseKeeper(Generic[K, H]):
    """Renews every held lease each ``every`` seconds; one that cannot be renewed is
    stopped (its scope cancelled) at its deadline, when another runner may hold it.

    Args:
        clock: the runner's clock.
        held: the leases held now, by key (shared with, and mutated by, the owner).
        key: the key of a held lease.
        renew: renews the given leases at ``now``; returns the keys still held.
        lease: the lease length, seconds.
        every: the renewal period, seconds.
        what: what is held, for log lines ("job", "fire").
    """

    def __init__(
        self,
        clock: Clock,
        held: dict[K, H],
        *,
        key: Callable[[H], K],
        renew: Callable[[list[H], float], Awaitable[set[K]]],
        lease: float,
        every: float,
        what: str,
    ) -> None:
        self.clock = clock
        self.held = held
        self.key = key
        self.renew = renew
        self.lease = lease
        self.every = every
        self.what = what
        self._claimed = anyio.Event()

    def claimed(self) -> None:
        """Say that something was claimed (the loop idles while nothing is held)."""
        self._claimed.set()

    async def run(self) -> None:
        """Renew until cancelled (run it under the runner's supervision)."""
        clock = self.clock
        while True:
            if not self.held:
                # Nothing to renew: wait for a claim instead of ticking (a fake clock
                # advanced by a month would otherwise stop at every tick).
                self._claimed = anyio.Event()
                await self._claimed.wait()
            deadline = clock.time() + self.every
            at_risk = [h.lease_until for h in self.held.values() if not h.renewed]
            if at_risk:
                deadline = min(deadline, min(at_risk))
            await clock.sleep_until(deadline)
            with busy(clock):  # a fake clock waits for the renewal to land
                if self.held:
                    await self._renew_once()

    async def _renew_once(self) -> None:
        now = self.clock.time()
        held = list(self.held.values())
        try:
            kept = await self.renew(held, now)
        except Exception:
            log.warning("sidecars: %s lease renewal failed; will retry", self.what, exc_info=True)
            kept = set()
        for h in held:
            if self.key(h) in kept:
                h.lease_until = now + self.lease
                h.renewed = True
                continue
            h.renewed = False
            if now >= h.lease_until and not h.lost:
                # Past the lease deadline another runner may hold it: stop.
                h.lost = True
                if h.scope is not None:
                    h.scope.cancel()
