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
