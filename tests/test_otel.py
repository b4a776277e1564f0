"""OpenTelemetry: one span per job attempt, with the right attributes, and job metrics."""

from __future__ import annotations

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from pydantic import BaseModel

from sidecars import JobContext, RetryPolicy, RunType, Sidecars
from sidecars.otel import instrument

pytestmark = pytest.mark.anyio


class Task(BaseModel):
    n: int


async def test_one_span_per_attempt_with_attributes() -> None:
    """Each attempt of a job is one span carrying handle, job id, attempt and outcome."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    sc = Sidecars()
    instrument(sc, tracer_provider=tracer_provider, meter_provider=meter_provider)
    done = anyio.Event()

    @sc.sidecar(
        handle="flaky",
        run_type=RunType.MEMORY,
        retry=RetryPolicy(max_attempts=2, base_delay=0, jitter=False),
    )
    async def flaky(job: JobContext[Task]) -> None:
        if job.attempt == 1:
            raise ConnectionError("first try fails")
        done.set()

    async with sc.run():
        ref = await flaky.enqueue(Task(n=1))
        with anyio.fail_after(5):
            await done.wait()
    spans = sorted(exporter.get_finished_spans(), key=lambda s: s.attributes["sidecars.attempt"])
    assert [s.name for s in spans] == ["sidecars.job flaky"] * 2
    assert [dict(s.attributes) for s in spans] == [
        {
            "sidecars.handle": "flaky",
            "sidecars.job_id": str(ref.id),
            "sidecars.attempt": attempt,
            "sidecars.scheduled_at": spans[0].attributes["sidecars.scheduled_at"],
            "sidecars.outcome": outcome,
        }
        for attempt, outcome in ((1, "error"), (2, "ok"))
    ]
    assert spans[0].status.status_code is StatusCode.ERROR
    assert "first try fails" in (spans[0].status.description or "")
    assert spans[1].status.status_code is StatusCode.OK

    data = reader.get_metrics_data()
    names = {
        m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    assert {"sidecars.jobs.started", "sidecars.jobs.finished", "sidecars.job.duration"} <= set(
        names
    )
    finished = {
        p.attributes["sidecars.outcome"]: p.value
        for p in names["sidecars.jobs.finished"].data.data_points
    }
    assert finished == {"error": 1, "ok": 1}
