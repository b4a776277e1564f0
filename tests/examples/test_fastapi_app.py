"""The example FastAPI app, end to end under a real uvicorn process."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from .conftest import Server, stop_server


def wait_for(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_signup_sends_the_welcome_mail(example_server: Server) -> None:
    """POST /signup answers at once and the MEMORY job writes the mail file."""
    response = httpx.post(
        f"{example_server.url}/signup", json={"email": "ada@example.com", "name": "Ada"}
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    mail = example_server.data_dir / "outbox" / f"{job_id}.eml"
    wait_for(mail)
    assert "To: ada@example.com" in mail.read_text()
    deadline = time.monotonic() + 5
    while True:
        info = httpx.get(f"{example_server.url}/jobs/{job_id}").json()
        if info["state"] == "succeeded" or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert (info["state"], info["outcome"]) == ("succeeded", "ok")


def test_bad_email_is_refused(example_server: Server) -> None:
    """A signup with a malformed address is refused with 422 and sends nothing."""
    response = httpx.post(f"{example_server.url}/signup", json={"email": "not-an-email"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "email"]
    assert not (example_server.data_dir / "outbox").exists()


def test_health_answers(example_server: Server) -> None:
    """GET /health answers 200 with {"ok": true}."""
    response = httpx.get(f"{example_server.url}/health")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


def test_unknown_job_is_404(example_server: Server) -> None:
    """GET /jobs/{id} of an unknown id is 404."""
    response = httpx.get(f"{example_server.url}/jobs/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404


def test_shutdown_drains_sent_mails(example_server: Server) -> None:
    """Mails sent just before SIGTERM are still written: shutdown drains the queue."""
    ids = []
    for i in range(20):
        r = httpx.post(f"{example_server.url}/signup", json={"email": f"u{i}@example.com"})
        ids.append(r.json()["job_id"])
    stop_server(example_server)
    # uvicorn re-raises SIGTERM after a graceful shutdown, so -15 is a clean exit too.
    assert example_server.process.returncode in (0, -15), example_server.output()
    assert "Application shutdown complete" in example_server.output()
    for job_id in ids:
        assert (example_server.data_dir / "outbox" / f"{job_id}.eml").exists()


def wait_for_state(
    server: Server, job_id: str, state: str, timeout: float = 15.0
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, object] = httpx.get(f"{server.url}/jobs/{job_id}").json()
        if info.get("state") == state:
            return info
        assert time.monotonic() < deadline, info
        time.sleep(0.05)


def test_report_is_a_durable_deferred_job(example_server: Server) -> None:
    """POST /reports queues a deferred job; GET /jobs/{id} shows it until succeeded, and the
    report file exists."""
    response = httpx.post(f"{example_server.url}/reports", json={"title": "weekly", "rows": 3})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    info = wait_for_state(example_server, job_id, "succeeded")
    assert (info["run_type"], info["outcome"], info["attempts"]) == ("deferred", "ok", 1)
    report = example_server.data_dir / "reports" / f"{job_id}.txt"
    assert report.read_text().splitlines()[0] == "# weekly"
    assert (example_server.data_dir / "sidecars.db").exists()


def test_delayed_report_survives_a_restart(tmp_path: Path) -> None:
    """A report queued with a delay, then the server restarted, still runs after the restart."""
    from .conftest import start_server

    data = tmp_path / "data"
    server = start_server(data)
    try:
        response = httpx.post(f"{server.url}/reports", json={"title": "later", "delay": 1.5})
        job_id = response.json()["job_id"]
        assert httpx.get(f"{server.url}/jobs/{job_id}").json()["state"] == "queued"
    finally:
        stop_server(server)
    assert not (data / "reports" / f"{job_id}.txt").exists()
    server = start_server(data)
    try:
        wait_for_state(server, job_id, "succeeded")
    finally:
        stop_server(server)
    assert (data / "reports" / f"{job_id}.txt").exists()


def test_invalid_report_is_refused(example_server: Server) -> None:
    """A report with a bad title is refused with 422 and nothing is stored."""
    response = httpx.post(f"{example_server.url}/reports", json={"title": "../../etc"})
    assert response.status_code == 422
