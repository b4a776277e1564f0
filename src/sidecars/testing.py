"""Test your sidecars without sleeping: a fake clock, a fresh store, and assertions.

With the pytest plugin (installed with sidecars; fixtures prefixed ``sidecars_``)::

    async def test_monthly_report(sidecars_harness):
        async with sidecars_harness.run(sc):               # your app's own Sidecars
            await monthly_report.enqueue(Report(title="x"))
            sidecars_harness.assert_enqueued("monthly_report", payload=Report(title="x"))
            await sidecars_harness.advance(timedelta(days=31))  # runs what falls due

Without pytest, build a :class:`SidecarsHarness` yourself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

from ._app import Sidecars
from ._clock import FakeClock
from ._records import JobRef
from ._sidecar import Sidecar
from .stores import MemoryStore, SQLiteStore, Store

__all__ = ("EnqueuedJob", "FakeClock", "SidecarsHarness")

_NOTHING: Any = object()


@dataclass(frozen=True, slots=True, kw_only=True)
class EnqueuedJob:
    """One job sent while a harness was running.

    Attributes:
        handle: the sidecar.
        payload: the validated payload, as the handler receives it.
        run_at: when it was due (aware UTC).
        job_id: its id.
    """

    handle: str
    payload: Any
    run_at: datetime
    job_id: UUID


class SidecarsHarness:
    """Runs a :class:`Sidecars` under a :class:`FakeClock` and a throwaway store.

    Args:
        store: the store for the run (default: a fresh :class:`MemoryStore`); pass a
            :class:`SQLiteStore` on a temporary file to test against the real default.
        start: where the fake clock starts (default 2030-01-01 00:00 UTC).
    """

    def __init__(self, store: Store | None = None, *, start: datetime | None = None) -> None:
        self.store: Store = store if store is not None else MemoryStore()
        self.clock = FakeClock(start or datetime(2030, 1, 1, tzinfo=timezone.utc))
        self.enqueued: list[EnqueuedJob] = []
        self._sc: Sidecars | None = None

    @classmethod
    def on_sqlite(cls, folder: Path, *, start: datetime | None = None) -> SidecarsHarness:
        """A harness whose store is a fresh SQLite file in ``folder``."""
        return cls(SQLiteStore(folder / "sidecars-test.db"), start=start)

    @asynccontextmanager
    async def run(
        self, sc: Sidecars, *, eager: bool = False, grace: float = 5.0
    ) -> AsyncIterator[Sidecars]:
        """Run ``sc`` on this harness's clock and store (restored afterwards).

        Args:
            sc: your app's :class:`Sidecars` (declared at module level, as in the app).
            eager: run each handler inline inside ``enqueue`` and raise its error there
                (no store, no retries, no delays): the quickest unit test of a handler.
            grace: the shutdown grace for this run.
        """
        saved_store, saved_clock, saved_open = sc.store, sc.clock, sc._store_open
        listener = self._record
        sc._listeners.append(listener)
        sc._eager = eager
        self._sc = sc
        try:
            if eager:
                sc.clock = self.clock
                yield sc
            else:
                async with sc.run(store=self.store, clock=self.clock, grace=grace):
                    yield sc
        finally:
            sc._listeners.remove(listener)
            sc._eager = False
            sc.store, sc.clock, sc._store_open = saved_store, saved_clock, saved_open
            self._sc = None

    def _record(self, sidecar: Sidecar[Any], payload: Any, run_at: float, ref: JobRef) -> None:
        self.enqueued.append(
            EnqueuedJob(
                handle=sidecar.handle,
                payload=payload,
                run_at=datetime.fromtimestamp(run_at, timezone.utc),
                job_id=ref.id,
            )
        )

    async def advance(self, delta: timedelta | float) -> None:
        """Move the fake time forward, running each fire and due job on the way."""
        await self.clock.advance(delta)

    async def advance_to(self, when: datetime) -> None:
        """Move the fake time to ``when``, running each fire and due job on the way."""
        await self.clock.advance_to(when)

    async def run_until_idle(self) -> None:
        """Run everything that is due now (memory and deferred jobs, fires) to completion,
        without moving the clock."""
        await self.clock.settle()

    def jobs(self, handle: str) -> list[EnqueuedJob]:
        """The jobs of ``handle`` sent during the run, in order."""
        return [job for job in self.enqueued if job.handle == handle]

    def assert_enqueued(
        self, handle: str, *, payload: Any = _NOTHING, count: int | None = None
    ) -> EnqueuedJob:
        """Assert that a job of ``handle`` (with ``payload``, if given) was sent.

        Args:
            handle: the sidecar.
            payload: the payload expected (a model instance or a dict of its fields).
            count: how many matching jobs are expected (default: at least one).

        Returns:
            The last matching job.
        """
        self._check_handle(handle)
        sent = self.jobs(handle)
        matching = [job for job in sent if payload is _NOTHING or _same(job.payload, payload)]
        if matching and (count is None or len(matching) == count):
            return matching[-1]
        want = "a job" if payload is _NOTHING else f"a job with payload {payload!r}"
        if count is not None:
            want = f"{count} job(s)" + ("" if payload is _NOTHING else f" with payload {payload!r}")
        lines = [f"expected {want} of sidecar {handle!r}; found {len(matching)} matching."]
        if sent:
            lines.append(f"Jobs of {handle!r} sent ({len(sent)}):")
            lines += [f"  - {job.payload!r} due {job.run_at.isoformat()}" for job in sent[-10:]]
        else:
            others = sorted({job.handle for job in self.enqueued})
            lines.append(
                f"No job of {handle!r} was sent"
                + (f" (jobs were sent to: {', '.join(others)})." if others else ".")
            )
        raise AssertionError("\n".join(lines))

    def assert_not_enqueued(self, handle: str) -> None:
        """Assert that no job of ``handle`` was sent."""
        self._check_handle(handle)
        sent = self.jobs(handle)
        if sent:
            raise AssertionError(
                f"expected no job of sidecar {handle!r}; {len(sent)} were sent, the first "
                f"with payload {sent[0].payload!r}"
            )

    def _check_handle(self, handle: str) -> None:
        sc = self._sc
        if sc is not None and handle not in sc.sidecars:
            known = ", ".join(sorted(sc.sidecars)) or "none"
            raise AssertionError(f"no sidecar is declared with handle {handle!r} (known: {known})")


def _same(actual: Any, expected: Any) -> bool:
    if actual == expected:
        return True
    dump = getattr(actual, "model_dump", None)
    return isinstance(expected, dict) and dump is not None and dump() == expected
