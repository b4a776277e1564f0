"""MEMORY sidecars: a bounded in-process queue per handle, drained by long-lived workers."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._clock import FakeClock, busy
from ._ids import new_id
from ._records import JobInfo, JobRef, JobState, Outcome, RunType
from ._worker import execute
from .exceptions import QueueFull, ShuttingDown

if TYPE_CHECKING:
    from ._runner import Runner
    from ._sidecar import Sidecar
    from ._stats import Counters

__all__ = ("History", "MemoryPool")

log = logging.getLogger("sidecars")

_NO_TRACKING = contextlib.nullcontext()


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc)


class MemoryRecord:
    """The mutable record of one memory job; a frozen :class:`JobInfo` is made on demand."""

    __slots__ = (
        "attempts",
        "cancel_requested",
        "created_at",
        "error",
        "finished_at",
        "handle",
        "id",
        "key",
        "outcome",
        "payload",
        "payload_json",
        "scope",
        "started_at",
        "state",
    )

    def __init__(
        self, handle: str, payload_json: str, payload: Any, now: float, key: str | None
    ) -> None:
        self.id = new_id()
        self.handle = handle
        self.payload_json = payload_json
        self.payload = payload  # the copy the handler gets
        self.created_at = now
        self.state = JobState.QUEUED
        self.attempts = 0
        self.key = key
        self.scope: anyio.CancelScope | None = None
        self.cancel_requested = False
        self.outcome: Outcome | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.error: str | None = None

    def info(self, max_attempts: int = 1) -> JobInfo:
        import json

        created = datetime.fromtimestamp(self.created_at, timezone.utc)
        return JobInfo(
            id=self.id,
            handle=self.handle,
            run_type=RunType.MEMORY,
            state=self.state,
            outcome=self.outcome,
            attempts=self.attempts,
            max_attempts=max_attempts,
            payload=json.loads(self.payload_json),
            created_at=created,
            run_at=created,
            started_at=_dt(self.started_at),
            finished_at=_dt(self.finished_at),
            error=self.error,
            key=self.key,
        )


class History:
    """A bounded map of recent memory jobs, oldest forgotten first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._records: OrderedDict[UUID, MemoryRecord] = OrderedDict()

    def add(self, record: MemoryRecord) -> None:
        records = self._records
        records[record.id] = record
        if len(records) > self._size:
            records.popitem(last=False)

    def get(self, job_id: UUID) -> MemoryRecord | None:
        return self._records.get(job_id)


class MemoryPool:
    """The queue and the workers of one MEMORY sidecar."""

    def __init__(self, runner: Runner, sidecar: Sidecar[Any]) -> None:
        self.runner = runner
        self.sidecar = sidecar
        self.handle = sidecar.handle
        send: MemoryObjectSendStream[MemoryRecord]
        receive: MemoryObjectReceiveStream[MemoryRecord]
        send, receive = anyio.create_memory_object_stream(sidecar.settings.max_pending)
        self._send = send
        self._receive = receive
        self.running = 0
        self._workers = 0
        self._keys: dict[str, MemoryRecord] = {}
        self.idle = anyio.Event()

    @property
    def pending(self) -> int:
        return self._send.statistics().current_buffer_used

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        for i in range(self.sidecar.settings.concurrency):
            self._workers += 1
            tg.start_soon(self._worker, name=f"sidecars memory worker {self.handle}#{i}")

    def submit_nowait(self, text: str, copy: Any, key: str | None) -> JobRef | None:
        """Queue one job if that needs no waiting; None when the queue is full and the
        sidecar waits for room (``on_full="block"``): then call :meth:`submit`."""
        runner = self.runner
        if not runner.accepting:
            raise ShuttingDown(f"sidecar {self.handle!r}: the runner is shutting down")
        if key is not None:
            queued = self._keys.get(key)
            if queued is not None and queued.state is JobState.QUEUED:
                return JobRef(id=queued.id, handle=self.handle, created=False)
        record = MemoryRecord(self.handle, text, copy, runner.clock.time(), key)
        try:
            self._send.send_nowait(record)
        except anyio.WouldBlock:
            if self.sidecar.settings.on_full == "raise":
                raise QueueFull(
                    f"sidecar {self.handle!r}: {self.sidecar.settings.max_pending} jobs "
                    "are already pending (max_pending); on_full='raise'"
                ) from None
            return None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ShuttingDown(f"sidecar {self.handle!r}: the runner is shutting down") from None
        self._queued(record)
        return JobRef(id=record.id, handle=self.handle)

    def _queued(self, record: MemoryRecord) -> None:
        self.runner.history.add(record)
        if record.key is not None:
            self._keys[record.key] = record
        self.runner.counters[self.handle].enqueued += 1

    async def submit(
        self, payloads: list[tuple[str, Any]], keys: Sequence[str | None] | None = None
    ) -> list[JobRef]:
        refs = []
        for i, (text, copy) in enumerate(payloads):
            key = keys[i] if keys is not None else None
            ref = self.submit_nowait(text, copy, key)
            if ref is None:
                # Full, on_full="block": wait for room.
                record = MemoryRecord(self.handle, text, copy, self.runner.clock.time(), key)
                try:
                    await self._send.send(record)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    raise ShuttingDown(
                        f"sidecar {self.handle!r}: the runner is shutting down"
                    ) from None
                self._queued(record)
                ref = JobRef(id=record.id, handle=self.handle)
            refs.append(ref)
        return refs

    def cancel(self, record: MemoryRecord) -> JobState:
        """Cancel a queued job (skipped when dequeued) or a running one (cooperatively)."""
        if record.state is JobState.QUEUED:
            record.state = JobState.CANCELLED
            record.outcome = Outcome.CANCELLED
            record.finished_at = self.runner.clock.time()
            self._forget_key(record)
            return JobState.CANCELLED
        if record.state is JobState.RUNNING and record.scope is not None:
            record.cancel_requested = True
            record.scope.cancel()
        return record.state

    async def retry(self, record: MemoryRecord, payload: Any) -> None:
        """Send a failed or cancelled job again, attempts reset."""
        record.state = JobState.QUEUED
        record.attempts = 0
        record.finished_at = None
        record.payload = payload
        await self._send.send(record)

    def _forget_key(self, record: MemoryRecord) -> None:
        if record.key is not None and self._keys.get(record.key) is record:
            del self._keys[record.key]

    def close_intake(self) -> None:
        self._send.close()

    def close(self) -> None:
        self._send.close()
        self._receive.close()

    def drop_pending(self) -> int:
        """Drop every job still queued (shutdown after grace); return how many."""
        dropped = 0
        now = self.runner.clock.time()
        while True:
            try:
                item = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            item.state = JobState.CANCELLED
            item.outcome = Outcome.SHUTDOWN
            item.finished_at = now
            dropped += 1
        return dropped

    async def _retry(self, item: MemoryRecord, delay: float) -> None:
        clock = self.runner.clock
        try:
            await clock.sleep_until(clock.time() + delay)
        except anyio.get_cancelled_exc_class():
            self._drop(item)  # shutdown while the retry waited
            raise
        try:
            self._send.send_nowait(item)
        except anyio.WouldBlock:
            try:
                await self._send.send(item)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._drop(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._drop(item)

    def _drop(self, item: MemoryRecord) -> None:
        item.state = JobState.CANCELLED
        item.outcome = Outcome.SHUTDOWN
        self.runner.stats_for(self.handle).dropped += 1

    async def _worker(self) -> None:
        try:
            while True:
                # One cancel scope per run of jobs, not per job: sc.cancel() cancels it to
                # stop the job this worker runs, and the worker then opens a fresh one.
                with anyio.CancelScope() as scope:
                    if await self._work(scope):
                        return
        finally:
            self._workers -= 1
            if self._workers == 0:
                self.idle.set()

    async def _work(self, scope: anyio.CancelScope) -> bool:
        """Run jobs until the queue ends (True) or a running job was cancelled (False)."""
        receive = self._receive
        sidecar = self.sidecar
        runner = self.runner
        clock = runner.clock
        tracked = isinstance(clock, FakeClock)  # a fake clock waits for work in progress
        stats = runner.stats_for(self.handle)
        while True:
            # Take queued work without a checkpoint per job; block only when empty.
            try:
                record = receive.receive_nowait()
            except anyio.WouldBlock:
                try:
                    record = await receive.receive()
                except anyio.EndOfStream:
                    return True
            except anyio.EndOfStream:
                return True
            if record.state is not JobState.QUEUED:
                continue  # cancelled while it waited
            self._forget_key(record)  # once it starts, the key is free again
            record.state = JobState.RUNNING
            record.started_at = started = clock.time()
            self.running += 1
            stats.running += 1
            record.attempts += 1
            record.scope = scope
            try:
                with busy(clock) if tracked else _NO_TRACKING:
                    result = await execute(
                        runner,
                        sidecar,
                        payload=record.payload,
                        job_id=record.id,
                        attempt=record.attempts,
                        scheduled_at=record.created_at,
                        started=started,
                    )
            except anyio.get_cancelled_exc_class():
                if record.cancel_requested:
                    self._cancelled(record, stats)
                    raise  # caught by this worker's scope, which is then replaced
                # Shutdown ran out of grace: the job is dropped, and says so.
                record.state = JobState.CANCELLED
                record.outcome = Outcome.SHUTDOWN
                stats.dropped += 1
                raise
            finally:
                record.scope = None
                self.running -= 1
                stats.running -= 1
                record.finished_at = clock.time()
            if record.cancel_requested:
                # Cancelled after its last checkpoint: the pending cancel must not reach
                # the next job, so this scope ends here.
                self._cancelled(record, stats)
                return False
            outcome = result.outcome
            record.outcome = outcome
            record.error = result.error
            stats.count(outcome)
            policy = sidecar.retry
            if (
                outcome is not Outcome.OK
                and record.attempts < policy.max_attempts
                and policy.retries(result.exception)
            ):
                # The retry waits outside the worker: the slot is free meanwhile.
                record.state = JobState.QUEUED
                runner.background(
                    functools.partial(self._retry, record, policy.delay(record.attempts))
                )
            else:
                record.state = JobState.SUCCEEDED if outcome is Outcome.OK else JobState.FAILED
                record.payload = None  # the history keeps the JSON, not the model
            if result.thread_done is not None:
                # A sync handler past its timeout still runs in its thread: keep the slot.
                self.running += 1
                try:
                    await result.release_slot()
                finally:
                    self.running -= 1

    def _cancelled(self, record: MemoryRecord, stats: Counters) -> None:
        record.cancel_requested = False
        record.state = JobState.CANCELLED
        record.outcome = Outcome.CANCELLED
        record.finished_at = self.runner.clock.time()
        stats.dropped += 1
