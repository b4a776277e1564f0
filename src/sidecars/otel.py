"""OpenTelemetry for sidecars: one span per job attempt, and job metrics.

Needs the ``otel`` extra (``pip install 'sidecars[otel]'``: the OpenTelemetry API); without
it nothing here is imported and sidecars records nothing. Call :func:`instrument` once::

    from sidecars.otel import instrument
    instrument(sc)  # uses the global tracer and meter providers

Spans are named ``sidecars.job <handle>``, with attributes ``sidecars.handle``,
``sidecars.job_id``, ``sidecars.attempt``, ``sidecars.scheduled_at`` and, at the end,
``sidecars.outcome`` (status ERROR unless ok). Metrics: ``sidecars.jobs.started`` and
``sidecars.jobs.finished`` counters (by handle and outcome), ``sidecars.jobs.running`` (an
up-down counter) and ``sidecars.job.duration`` (a histogram, seconds).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from opentelemetry import metrics, trace
from opentelemetry.trace import Status, StatusCode

from ._app import Sidecars
from ._records import Outcome
from ._worker import JobEvent

__all__ = ("instrument",)


def instrument(
    sc: Sidecars,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> None:
    """Record a span per job attempt and job metrics for ``sc``.

    Args:
        sc: the sidecars to observe.
        tracer_provider: where spans go (default: the global provider).
        meter_provider: where metrics go (default: the global provider).
    """
    tracer = trace.get_tracer("sidecars", tracer_provider=tracer_provider)
    meter = metrics.get_meter("sidecars", meter_provider=meter_provider)
    started = meter.create_counter("sidecars.jobs.started", description="runs started")
    finished = meter.create_counter("sidecars.jobs.finished", description="runs finished")
    running = meter.create_up_down_counter("sidecars.jobs.running", description="runs now")
    duration = meter.create_histogram(
        "sidecars.job.duration", unit="s", description="how long runs take"
    )
    open_spans: dict[tuple[UUID, int], Any] = {}

    def on_start(event: JobEvent) -> None:
        attributes: dict[str, str | int] = {
            "sidecars.handle": event.handle,
            "sidecars.job_id": str(event.job_id),
            "sidecars.attempt": event.attempt,
            "sidecars.scheduled_at": event.scheduled_at.isoformat(),
        }
        span = tracer.start_span(f"sidecars.job {event.handle}", attributes=attributes)
        open_spans[(event.job_id, event.attempt)] = span
        started.add(1, {"sidecars.handle": event.handle})
        running.add(1, {"sidecars.handle": event.handle})

    def on_end(event: JobEvent) -> None:
        outcome = event.outcome.value if event.outcome is not None else "unknown"
        labels = {"sidecars.handle": event.handle, "sidecars.outcome": outcome}
        finished.add(1, labels)
        running.add(-1, {"sidecars.handle": event.handle})
        if event.duration is not None:
            duration.record(event.duration, labels)
        span = open_spans.pop((event.job_id, event.attempt), None)
        if span is None:
            return
        span.set_attribute("sidecars.outcome", outcome)
        if event.outcome is Outcome.OK:
            span.set_status(Status(StatusCode.OK))
        else:
            first_line = (event.error or outcome).splitlines()[0]
            span.set_status(Status(StatusCode.ERROR, first_line))
        span.end()

    sc.on_job_start(on_start)
    sc.on_job_end(on_end)
