"""Fixtures that start the example app under a real uvicorn subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    log = data_dir / "uvicorn.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "SIDECARS_EXAMPLE_DIR": str(data_dir), **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "examples.fastapi_app:app",
                "--port",
                str(port),
                *extra,
            ],
            cwd=data_dir,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(url=f"http://127.0.0.1:{port}", data_dir=data_dir, process=process, log=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited early:\n{server.output()}")
        try:
            httpx.get(f"{server.url}/stats", timeout=1)
            return server
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"uvicorn did not start:\n{server.output()}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture
def example_server(tmp_path: Path) -> Iterator[Server]:
    """The example app running under uvicorn, writing its files under tmp_path."""
    server = start_server(tmp_path / "data")
    try:
        yield server
    finally:
        stop_server(server)
