"""A small FastAPI app whose background work runs as sidecars in its own lifespan.

Needs: ``pip install -e '.[examples]'`` (FastAPI and uvicorn).
Run:   ``uvicorn examples.fastapi_app:app``  (then ``curl -X POST localhost:8000/signup
-H 'content-type: application/json' -d '{"email": "ada@example.com"}'``)

Files are written under ``$SIDECARS_EXAMPLE_DIR`` (default ``./var``): the "mail" job writes
one file per signup into ``outbox/``, so nothing leaves the machine; deferred jobs are kept in
the SQLite file ``sidecars.db`` there, and report jobs write ``reports/<job id>.txt``.

Try: ``curl -X POST localhost:8000/reports -H 'content-type: application/json'
-d '{"title": "weekly"}'``, then ``curl localhost:8000/jobs/<job_id>``.

Schedules: ``heartbeat`` runs every ``$SIDECARS_EXAMPLE_HEARTBEAT`` seconds (default 5) once
across all worker processes and appends to ``heartbeat.log``; ``replica_heartbeat`` does the
same in every process (``replica_heartbeat.log``); ``POST /reports/monthly`` queues a report
for the 1st of next month at 03:00 America/Denver. Run several workers on one file with
``uvicorn examples.fastapi_app:app --workers 3``: each heartbeat instant appears once in
``heartbeat.log`` and three times in ``replica_heartbeat.log``.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from sidecars import (
    At,
    JobContext,
    JobInfo,
    PayloadError,
    QueueFull,
    RunType,
    Schedule,
    ShuttingDown,
    Sidecars,
)
from sidecars.fastapi import SidecarsDep

__all__ = ("app", "sc")

DATA_DIR = Path(os.environ.get("SIDECARS_EXAMPLE_DIR", "var"))
OUTBOX = DATA_DIR / "outbox"

REPORTS = DATA_DIR / "reports"
HEARTBEAT = timedelta(seconds=float(os.environ.get("SIDECARS_EXAMPLE_HEARTBEAT", "5")))
LEASE = float(os.environ.get("SIDECARS_EXAMPLE_LEASE", "30"))
DATA_DIR.mkdir(parents=True, exist_ok=True)

sc = Sidecars(DATA_DIR / "sidecars.db", grace=10, lease=LEASE, lease_renew=LEASE / 3)


EMAIL = r"^[^@\s]+@[^@\s]+$"


class WelcomeMail(BaseModel):
    """The payload of the welcome mail job."""

    email: str = Field(pattern=EMAIL)
    name: str = Field(default="", max_length=100)


@sc.sidecar(handle="mail_welcome", run_type=RunType.MEMORY, concurrency=3, timeout=30)
async def send_welcome(job: JobContext[WelcomeMail]) -> None:
    """Write the welcome mail to the outbox folder (a stand-in for an SMTP call)."""
    mail = job.payload
    body = f"To: {mail.email}\nSubject: Welcome{', ' + mail.name if mail.name else ''}!\n\nHello!\n"
    await anyio.Path(OUTBOX).mkdir(parents=True, exist_ok=True)
    target = anyio.Path(OUTBOX) / f"{job.job_id}.eml"
    tmp = target.with_suffix(".tmp")
    await tmp.write_text(body)
    await tmp.rename(target)  # readers never see a half-written mail
    job.logger.info("welcome mail for %s written to %s", mail.email, target)


class Report(BaseModel):
    """The payload of a report job."""

    title: str = Field(min_length=1, max_length=80, pattern=r"^[\w .-]+$")
    rows: int = Field(default=100, ge=1, le=100_000)


async def _write_report(job: JobContext[Report]) -> None:
    """Write a report file, idempotently (deferred jobs run at least once): the file is
    named after the job and replaced atomically, so a re-run rewrites the same file."""
    report = job.payload
    lines = [f"# {report.title}", f"attempt {job.attempt}, due {job.scheduled_at:%Y-%m-%d %H:%M}"]
    lines += [f"row {i}: {i * i}" for i in range(report.rows)]
    await anyio.Path(REPORTS).mkdir(parents=True, exist_ok=True)
    target = anyio.Path(REPORTS) / f"{job.job_id}.txt"
    tmp = target.with_suffix(".tmp")
    await tmp.write_text("\n".join(lines) + "\n")
    await tmp.rename(target)


@sc.sidecar(handle="report_build", run_type=RunType.DEFERRED, concurrency=2, timeout=120)
async def build_report(job: JobContext[Report]) -> None:
    """Build a report. Durable: survives a crash or a deploy and runs exactly when due."""
    await _write_report(job)


@sc.sidecar(
    handle="monthly_report",
    run_type=RunType.DEFERRED,
    schedule=Schedule(on_day_of_month=1, timezone="America/Denver", at=[At(3, 0)]),
    payload=Report,
)
async def monthly_report(job: JobContext[Report]) -> None:
    """Reports queued during a month all run on the 1st at 03:00 Denver time."""
    await _write_report(job)


def _append(path: Path, line: str) -> None:
    # One short O_APPEND write per line: lines from several processes never interleave.
    with path.open("a") as out:
        out.write(line)


@sc.sidecar(handle="heartbeat", run_type=RunType.STANDALONE, schedule=Schedule(every=HEARTBEAT))
async def heartbeat(job: JobContext[None]) -> None:
    """Once per instant across every process sharing the store."""
    _append(DATA_DIR / "heartbeat.log", f"{job.scheduled_at.timestamp():.0f} {os.getpid()}\n")


@sc.sidecar(
    handle="replica_heartbeat",
    run_type=RunType.STANDALONE,
    schedule=Schedule(every=HEARTBEAT),
    per_replica=True,
)
async def replica_heartbeat(job: JobContext[None]) -> None:
    """Once per instant in each process."""
    line = f"{job.scheduled_at.timestamp():.0f} {os.getpid()}\n"
    _append(DATA_DIR / "replica_heartbeat.log", line)


app = FastAPI(title="sidecars example", lifespan=sc.lifespan)


@app.exception_handler(PayloadError)
async def bad_payload(request: Request, exc: PayloadError) -> JSONResponse:
    """A payload the job refuses is the client's mistake."""
    return JSONResponse({"detail": str(exc), "errors": exc.errors}, status_code=422)


@app.exception_handler(QueueFull)
@app.exception_handler(ShuttingDown)
async def busy(request: Request, exc: Exception) -> JSONResponse:
    """No room for the job right now: ask the client to retry."""
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})


class Signup(BaseModel):
    """A signup request."""

    email: str = Field(pattern=EMAIL)
    name: str = Field(default="", max_length=100)


@app.post("/signup", status_code=202)
async def signup(body: Signup) -> dict[str, Any]:
    """Register a user and send the welcome mail in the background."""
    ref = await send_welcome.enqueue(WelcomeMail(email=body.email, name=body.name))
    return {"job_id": str(ref.id)}


class ReportRequest(Report):
    """A report request: the report, and ``delay`` seconds from now (0 for at once)."""

    delay: float = Field(default=0.0, ge=0, le=86_400)


@app.post("/reports", status_code=202)
async def request_report(body: ReportRequest) -> dict[str, Any]:
    """Queue a report; the answer comes once the job is committed to the store."""
    ref = await build_report.enqueue(Report(title=body.title, rows=body.rows), delay=body.delay)
    return {"job_id": str(ref.id)}


@app.post("/reports/monthly", status_code=202)
async def request_monthly_report(body: Report) -> dict[str, Any]:
    """Queue a report for the next monthly run (the 1st, 03:00 America/Denver)."""
    ref = await monthly_report.enqueue(body)
    info = await sc.get_job(ref.id)
    return {"job_id": str(ref.id), "run_at": info.run_at.isoformat() if info else None}


@app.get("/jobs/{job_id}")
async def get_job(job_id: str, sidecars: SidecarsDep) -> JobInfo:
    """Read a job's state."""
    info = await sidecars.get_job(job_id)
    if info is None:
        raise HTTPException(status_code=404, detail="no such job")
    return info


@app.get("/stats")
async def stats(sidecars: SidecarsDep) -> Any:
    """Counts per sidecar."""
    return await sidecars.stats()


@app.get("/health")
async def health() -> dict[str, bool]:
    """A trivial endpoint: the process is up and answering."""
    return {"ok": True}
