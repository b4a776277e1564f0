"""The ``sidecars`` command line: schedule explain, jobs, migrate, and the worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.examples.conftest import ROOT, start_server, stop_server

APP = """
from pydantic import BaseModel
from sidecars import JobContext, RunType, Sidecars

sc = Sidecars("{db}")

class Task(BaseModel):
    n: int

@sc.sidecar(handle="task", run_type=RunType.DEFERRED)
async def task(job: JobContext[Task]) -> None:
    if job.payload.n < 0:
        raise ValueError("negative")
"""


def sidecars(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", "sidecars", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_schedule_explain_prints_the_next_instants(tmp_path: Path) -> None:
    """`schedule explain "0 3 1 * *" --tz America/Denver --next 3` prints the right instants,
    ISO 8601 with their offsets, across the DST change."""
    out = sidecars(
        "schedule",
        "explain",
        "0 3 1 * *",
        "--tz",
        "America/Denver",
        "--next",
        "3",
        "--after",
        "2030-01-15T00:00:00+00:00",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "At 03:00 on day 1 of every month (America/Denver)"
    assert [line.split()[0] for line in lines[1:]] == [
        "2030-02-01T03:00:00-07:00",
        "2030-03-01T03:00:00-07:00",
        "2030-04-01T03:00:00-06:00",
    ]
    as_json = sidecars(
        "schedule",
        "explain",
        "*/15 * * * *",
        "--next",
        "2",
        "--json",
        "--after",
        "2030-01-01T00:00:00+00:00",
        cwd=tmp_path,
    )
    assert json.loads(as_json.stdout)["next"] == [
        "2030-01-01T00:15:00+00:00",
        "2030-01-01T00:30:00+00:00",
    ]


def test_schedule_explain_reports_bad_expressions(tmp_path: Path) -> None:
    """A bad expression is a one-line error naming the field, exit status 2."""
    out = sidecars("schedule", "explain", "61 * * * *", cwd=tmp_path)
    assert out.returncode == 2
    assert "minute" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_target_is_a_clear_error(tmp_path: Path) -> None:
    """A target that is not module:attribute of a Sidecars says so."""
    for target, fragment in [
        ("nomodule", "module:attribute"),
        ("no_such_module:sc", "cannot import"),
        ("json:dumps", "not a Sidecars"),
    ]:
        out = sidecars("migrate", target, cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        assert fragment in out.stderr


def test_jobs_show_retry_cancel_and_migrate(tmp_path: Path) -> None:
    """jobs show/cancel/retry and migrate work on an app's store, in text and JSON."""
    db = tmp_path / "cli.db"
    (tmp_path / "cliapp.py").write_text(APP.format(db=db))
    script = (
        "import anyio, cliapp\n"
        "async def main():\n"
        "    async with cliapp.sc:\n"
        "        ref = await cliapp.task.enqueue(cliapp.Task(n=1))\n"
        "        print(ref.id)\n"
        "anyio.run(main)\n"
    )
    assert sidecars("migrate", "cliapp:sc", cwd=tmp_path).returncode == 0
    made = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    job_id = made.stdout.strip()
    shown = sidecars("jobs", "show", "cliapp:sc", job_id, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "state     queued" in shown.stdout
    assert '"n": 1' in shown.stdout
    cancelled = sidecars("jobs", "cancel", "cliapp:sc", job_id, "--json", cwd=tmp_path)
    assert json.loads(cancelled.stdout) == {"job_id": job_id, "state": "cancelled"}
    retried = sidecars("jobs", "retry", "cliapp:sc", job_id, cwd=tmp_path)
    assert retried.returncode == 0
    assert "queued again" in retried.stdout
    info = json.loads(sidecars("jobs", "show", "cliapp:sc", job_id, "--json", cwd=tmp_path).stdout)
    assert (info["state"], info["attempts"]) == ("queued", 0)
    listed = sidecars("jobs", "list", "cliapp:sc", "--state", "queued", cwd=tmp_path)
    assert job_id in listed.stdout
    missing = sidecars(
        "jobs", "show", "cliapp:sc", "00000000-0000-0000-0000-000000000000", cwd=tmp_path
    )
    assert missing.returncode == 2
    assert "no job" in missing.stderr


@pytest.mark.slow
def test_worker_runs_jobs_of_an_enqueue_only_web_app_and_drains_on_sigterm(
    tmp_path: Path,
) -> None:
    """`sidecars worker examples.fastapi_app:sc` runs the jobs an enqueue-only web process
    (SIDECARS_CONSUME=0) stored in the same SQLite file, and drains on SIGTERM."""
    data = tmp_path / "data"
    server = start_server(data, env={"SIDECARS_CONSUME": "0"})
    worker = None
    try:
        job_id = httpx.post(f"{server.url}/reports", json={"title": "from web"}).json()["job_id"]
        time.sleep(1.0)
        assert httpx.get(f"{server.url}/jobs/{job_id}").json()["state"] == "queued"
        env = {**os.environ, "SIDECARS_EXAMPLE_DIR": str(data), "PYTHONPATH": str(ROOT)}
        env.pop("SIDECARS_CONSUME", None)
        worker = subprocess.Popen(
            [sys.executable, "-m", "sidecars", "worker", "examples.fastapi_app:sc"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while httpx.get(f"{server.url}/jobs/{job_id}").json()["state"] != "succeeded":
            assert time.monotonic() < deadline, "the worker never ran the job"
            assert worker.poll() is None, worker.communicate()
            time.sleep(0.05)
        assert (data / "reports" / f"{job_id}.txt").exists()
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
        assert worker.returncode == 0, err
        assert "draining" in out
        assert "stopped" in out
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.communicate()
        stop_server(server)


SLOW_APP = '''
import anyio
from pydantic import BaseModel
from sidecars import JobContext, RunType, Sidecars

sc = Sidecars("{db}", poll_interval=0.05)

class Nap(BaseModel):
    seconds: float

@sc.sidecar(handle="nap", run_type=RunType.DEFERRED)
async def nap(job: JobContext[Nap]) -> None:
    print("napping", flush=True)
    await anyio.sleep(job.payload.seconds)
'''


@pytest.mark.slow
def test_worker_second_signal_exits_at_once(tmp_path: Path) -> None:
    """While the worker drains a long job, a second SIGTERM ends it at once (the lease
    covers the job, which another runner picks up later)."""
    db = tmp_path / "slow.db"
    (tmp_path / "slowapp.py").write_text(SLOW_APP.format(db=db))
    enqueue = (
        "import anyio, slowapp\n"
        "async def main():\n"
        "    async with slowapp.sc:\n"
        "        await slowapp.nap.enqueue(slowapp.Nap(seconds=60))\n"
        "anyio.run(main)\n"
    )
    subprocess.run([sys.executable, "-c", enqueue], cwd=tmp_path, check=True, timeout=30)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "sidecars", "worker", "slowapp:sc"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        lines = []
        deadline = time.monotonic() + 20
        while "napping" not in "".join(lines):
            assert time.monotonic() < deadline, lines
            lines.append(worker.stdout.readline())
        worker.send_signal(signal.SIGTERM)
        while "draining" not in "".join(lines):
            assert time.monotonic() < deadline, lines
            lines.append(worker.stdout.readline())
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=10)
        assert time.monotonic() - started < 5  # not the 25 s grace
        assert worker.returncode == 1
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.communicate()
