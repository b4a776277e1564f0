"""Runs one job: builds its context, applies the timeout, and reports the outcome."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio

from ._records import JobContext, Outcome

if TYPE_CHECKING:
    from ._runner import Runner
    from ._sidecar import Sidecar

__all__ = ("execute",)

log = logging.getLogger("sidecars")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"


async def execute(
    runner: Runner,
    sidecar: Sidecar[Any],
    *,
    payload: Any,
    job_id: UUID,
    attempt: int,
    scheduled_at: float,
    deadline_scope: anyio.CancelScope | None = None,
) -> tuple[Outcome, str | None]:
    """Run one job's handler and return its outcome and error text.

    Handler errors are caught, logged and returned: they never escape into the runner.
    Cancellation from outside (shutdown, a lost lease) propagates as usual.
    """
    timeout = sidecar.settings.timeout
    handle = sidecar.handle
    logger = runner.job_logger(handle)
    deadline = None if timeout is None else runner.clock.time() + timeout
    context: JobContext[Any] = JobContext(
        payload=payload,
        job_id=job_id,
        handle=handle,
        attempt=attempt,
        scheduled_at=datetime.fromtimestamp(scheduled_at, timezone.utc),
        deadline=None if deadline is None else datetime.fromtimestamp(deadline, timezone.utc),
        logger=logger,
    )
    handler = sidecar.handler
    try:
        if timeout is None:
            # No cancel scope on the fast path (DESIGN "speed").
            if sidecar.is_async:
                await handler(context)  # type: ignore[misc]
            else:
                await anyio.to_thread.run_sync(handler, context, limiter=runner.thread_limiter)
        else:
            with anyio.move_on_after(timeout) as scope:
                if sidecar.is_async:
                    await handler(context)  # type: ignore[misc]
                else:
                    await anyio.to_thread.run_sync(handler, context, limiter=runner.thread_limiter)
            if scope.cancel_called:
                log.warning(
                    "sidecar %r job %s timed out after %ss (attempt %d)",
                    handle,
                    job_id,
                    timeout,
                    attempt,
                )
                return Outcome.TIMEOUT, f"timed out after {timeout}s"
    except Exception as exc:
        log.error("sidecar %r job %s failed (attempt %d)", handle, job_id, attempt, exc_info=exc)
        return Outcome.ERROR, _describe(exc)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("sidecar %r job %s succeeded (attempt %d)", handle, job_id, attempt)
    return Outcome.OK, None
