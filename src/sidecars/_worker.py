"""Runs one job: builds its context, applies the timeout, reports the outcome and the events.

Sync handlers run in a worker thread under the runner's own limiter. A thread cannot be
interrupted, so at the timeout the run is *recorded* as timed out while the thread goes on;
the caller keeps the concurrency slot until ``RunResult.thread_done`` is set, so the limit is
never exceeded, and the runner reports the thread as stuck until it returns.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio

from ._records import JobContext, Outcome

if TYPE_CHECKING:
    from ._runner import Runner
    from ._sidecar import Sidecar

__all__ = ("JobEvent", "RunResult", "execute")

log = logging.getLogger("sidecars")


@dataclass(frozen=True, slots=True, kw_only=True)
class JobEvent:
    """What a job-event hook receives (see :meth:`Sidecars.on_job_start`).

    Attributes:
        handle: the sidecar.
        job_id: the job (for a fire: derived from handle and instant).
        attempt: the attempt number, from 1.
        scheduled_at: when the job was due (the fire instant for a fire).
        started_at: when this run started (wall clock of the runner's clock).
        outcome: None at start; how the run ended at the end.
        duration: None at start; seconds the run took (monotonic).
        error: None unless the run failed: the error, as text.
    """

    handle: str
    job_id: UUID
    attempt: int
    scheduled_at: datetime
    started_at: datetime
    outcome: Outcome | None = None
    duration: float | None = None
    error: str | None = None


@dataclass(slots=True)
class RunResult:
    """How one run ended.

    Attributes:
        outcome: ok, error or timeout.
        error: the error with its traceback, as text; None on success.
        exception: the exception raised (None on success and on timeout).
        thread_done: for a sync handler still running in its thread after its timeout,
            set when the thread returns; hold the concurrency slot until then.
    """

    outcome: Outcome
    error: str | None = None
    exception: BaseException | None = None
    thread_done: anyio.Event | None = None

    async def release_slot(self) -> None:
        """Wait until the handler's thread (if any) has really returned."""
        if self.thread_done is not None:
            await self.thread_done.wait()


_OK = RunResult(Outcome.OK)  # shared: a result is never changed once made


def describe_error(exc: BaseException) -> str:
    """An error as stored on a failed job: type, message and traceback."""
    head = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{head}\n\n{tb}".rstrip()


async def _in_thread(runner: Runner, sidecar: Sidecar[Any], context: JobContext[Any]) -> None:
    # abandon_on_cancel: shutdown must not wait forever on a thread that never returns.
    await anyio.to_thread.run_sync(
        sidecar.handler, context, limiter=runner.thread_limiter, abandon_on_cancel=True
    )


async def execute(
    runner: Runner,
    sidecar: Sidecar[Any],
    *,
    payload: Any,
    job_id: UUID,
    attempt: int,
    scheduled_at: float,
    started: float | None = None,
) -> RunResult:
    """Run one job's handler and say how it ended.

    ``started`` is the clock's reading when the run began, if the caller has one already.
    Handler errors are caught, logged and returned: they never escape into the runner.
    Cancellation from outside (shutdown, a lost lease) propagates as usual.
    """
    timeout = sidecar.settings.timeout
    handle = sidecar.handle
    app = runner.app
    started_wall = runner.clock.time() if started is None else started
    scheduled = datetime.fromtimestamp(scheduled_at, timezone.utc)
    context: JobContext[Any] = JobContext(
        payload=payload,
        job_id=job_id,
        handle=handle,
        attempt=attempt,
        scheduled_at=scheduled,
        deadline=None
        if timeout is None
        else datetime.fromtimestamp(started_wall + timeout, timezone.utc),
        logger=runner.job_logger(handle),
    )
    hooks_start, hooks_end = app._hooks_start, app._hooks_end
    if hooks_start:
        app._emit(
            hooks_start,
            JobEvent(
                handle=handle,
                job_id=job_id,
                attempt=attempt,
                scheduled_at=scheduled,
                started_at=datetime.fromtimestamp(started_wall, timezone.utc),
            ),
        )
    t0 = time.monotonic()
    result = await _call(runner, sidecar, context, timeout)
    duration = time.monotonic() - t0
    outcome = result.outcome
    if outcome is not Outcome.OK or log.isEnabledFor(logging.DEBUG):
        _log_end(handle, job_id, attempt, timeout, duration, result)
    if hooks_end:
        app._emit(
            hooks_end,
            JobEvent(
                handle=handle,
                job_id=job_id,
                attempt=attempt,
                scheduled_at=scheduled,
                started_at=datetime.fromtimestamp(started_wall, timezone.utc),
                outcome=outcome,
                duration=duration,
                error=result.error,
            ),
        )
    return result


def _log_end(
    handle: str,
    job_id: UUID,
    attempt: int,
    timeout: float | None,
    duration: float,
    result: RunResult,
) -> None:
    fields = {
        "handle": handle,
        "job_id": str(job_id),
        "attempt": attempt,
        "outcome": result.outcome.value,
        "duration": round(duration, 6),
    }
    if result.outcome is Outcome.OK:
        log.debug(
            "sidecar %r job %s succeeded (attempt %d, %.3fs)",
            handle,
            job_id,
            attempt,
            duration,
            extra=fields,
        )
    elif result.outcome is Outcome.TIMEOUT:
        log.warning(
            "sidecar %r job %s timed out after %ss (attempt %d)%s",
            handle,
            job_id,
            timeout,
            attempt,
            "; its thread is still running and keeps its slot"
            if result.thread_done is not None
            else "",
            extra=fields,
        )
    else:
        log.error(
            "sidecar %r job %s failed (attempt %d, %.3fs)",
            handle,
            job_id,
            attempt,
            duration,
            exc_info=result.exception,
            extra=fields,
        )


async def _call(
    runner: Runner, sidecar: Sidecar[Any], context: JobContext[Any], limit: float | None
) -> RunResult:
    handler = sidecar.handler
    try:
        if sidecar.is_async:
            if limit is None:
                # No cancel scope on the fast path (DESIGN "speed").
                await handler(context)  # type: ignore[misc]
                return _OK
            with anyio.move_on_after(limit) as scope:
                await handler(context)  # type: ignore[misc]
            if scope.cancel_called:
                return RunResult(Outcome.TIMEOUT, f"timed out after {limit}s")
            return _OK
        if limit is None:
            await _in_thread(runner, sidecar, context)
            return _OK
        return await _call_thread_with_timeout(runner, sidecar, context, limit)
    except Exception as exc:
        return RunResult(Outcome.ERROR, describe_error(exc), exc)


async def _call_thread_with_timeout(
    runner: Runner, sidecar: Sidecar[Any], context: JobContext[Any], limit: float
) -> RunResult:
    done = anyio.Event()
    failure: list[BaseException] = []

    async def run() -> None:
        try:
            await _in_thread(runner, sidecar, context)
        except Exception as exc:
            failure.append(exc)
        finally:
            done.set()
            runner.stuck_threads.discard(context.job_id)

    # The thread's task lives in the runner's task group: the run can be recorded as timed
    # out at the deadline while the thread, which cannot be interrupted, goes on.
    runner.background(run)
    with anyio.move_on_after(limit):
        await done.wait()
    if not done.is_set():
        runner.stuck_threads.add(context.job_id)
        return RunResult(Outcome.TIMEOUT, f"timed out after {limit}s", thread_done=done)
    if failure:
        return RunResult(Outcome.ERROR, describe_error(failure[0]), failure[0])
    return _OK
