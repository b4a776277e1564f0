"""Lifespan integration with Starlette and FastAPI: composition, the getter, and jobs that
belong to the lifespan rather than to a request."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from sidecars import JobContext, RunType, Sidecars
from sidecars.fastapi import SidecarsDep
from sidecars.starlette import get_sidecars, lifespan

pytestmark = pytest.mark.anyio


class Note(BaseModel):
    text: str


def make_sidecars(out: list[str]) -> tuple[Sidecars, Any]:
    sc = Sidecars(grace=5)

    @sc.sidecar(handle="note", run_type=RunType.MEMORY)
    async def note(job: JobContext[Note]) -> None:
        out.append(job.payload.text)

    return sc, note


def test_fastapi_lifespan_runs_jobs_and_exposes_sidecars() -> None:
    """FastAPI(lifespan=sc.lifespan) runs jobs sent from endpoints; the dependency finds sc."""
    out: list[str] = []
    sc, note = make_sidecars(out)
    app = FastAPI(lifespan=sc.lifespan)

    @app.post("/notes")
    async def post(body: Note, sidecars: SidecarsDep) -> dict[str, str]:
        assert sidecars is sc
        ref = await note.enqueue(body)
        return {"id": str(ref.id)}

    with TestClient(app) as client:
        assert sc.is_running
        job_id = client.post("/notes", json={"text": "hi"}).json()["id"]
        assert get_sidecars(app) is sc
    assert not sc.is_running
    assert out == ["hi"]
    assert str(job_id)


def test_user_lifespan_is_composed_around_the_sidecars() -> None:
    """A user's own lifespan runs outside the sidecars; its state reaches requests."""
    out: list[str] = []
    events: list[str] = []
    sc, note = make_sidecars(out)

    @asynccontextmanager
    async def mine(app: Starlette) -> AsyncIterator[dict[str, str]]:
        events.append(f"user start, sidecars running={sc.is_running}")
        yield {"db": "pool"}
        events.append(f"user stop, sidecars running={sc.is_running}")

    async def endpoint(request: Request) -> JSONResponse:
        await note.enqueue(Note(text=request.state.db))
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/", endpoint, methods=["POST"])], lifespan=lifespan(sc, mine))
    with TestClient(app) as client:
        assert client.post("/").json() == {"ok": True}
    assert out == ["pool"]
    assert events == ["user start, sidecars running=False", "user stop, sidecars running=False"]


def test_async_generator_lifespan_is_accepted() -> None:
    """A bare async generator function works as the user's lifespan."""
    out: list[str] = []
    sc, _ = make_sidecars(out)
    seen: list[bool] = []

    async def mine(app: Starlette) -> AsyncIterator[None]:
        yield
        seen.append(True)

    app = Starlette(lifespan=lifespan(sc, mine))
    with TestClient(app):
        assert sc.is_running
    assert seen == [True]


def test_getter_raises_lookup_error_without_lifespan() -> None:
    """get_sidecars raises LookupError for an app without a sidecars lifespan."""
    app = Starlette()
    with pytest.raises(LookupError, match=r"lifespan=sc\.lifespan"):
        get_sidecars(app)

    async def endpoint(request: Request) -> Response:
        get_sidecars(request)
        return Response()

    app = Starlette(routes=[Route("/", endpoint)])
    with TestClient(app) as client, pytest.raises(LookupError):
        client.get("/")


def test_getter_from_request() -> None:
    """A request reaches the app's Sidecars through get_sidecars."""
    out: list[str] = []
    sc, _ = make_sidecars(out)
    found: list[Sidecars] = []

    async def endpoint(request: Request) -> Response:
        found.append(get_sidecars(request))
        return Response()

    app = Starlette(routes=[Route("/", endpoint)], lifespan=sc.lifespan)
    with TestClient(app) as client:
        client.get("/")
    assert found == [sc]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_job_outlives_a_disconnected_client_behind_base_http_middleware(
    tmp_path: Path,
) -> None:
    """A job sent from a request completes though the client hangs up right after the
    response and a BaseHTTPMiddleware sits in front (jobs belong to the lifespan)."""
    done = tmp_path / "done.txt"
    sc = Sidecars(grace=5)
    started = anyio.Event()

    @sc.sidecar(handle="slow_write", run_type=RunType.MEMORY)
    async def slow_write(job: JobContext[Note]) -> None:
        started.set()
        await anyio.sleep(0.3)  # still running well after the client is gone
        await anyio.Path(done).write_text(job.payload.text)

    class Passthrough(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            return await call_next(request)

    async def endpoint(request: Request) -> JSONResponse:
        await slow_write.enqueue(Note(text="written"))
        return JSONResponse({"queued": True})

    app = Starlette(
        routes=[Route("/go", endpoint, methods=["POST"])],
        middleware=[Middleware(Passthrough)],
        lifespan=sc.lifespan,
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
            stream = await anyio.connect_tcp("127.0.0.1", port)
            await stream.send(b"POST /go HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            reply = await stream.receive()
            await stream.aclose()  # hang up at once
            assert b"202" in reply or b"200" in reply
            await started.wait()
            while not done.exists():
                await anyio.sleep(0.01)
        server.should_exit = True
    assert done.read_text() == "written"
    assert (await sc.stats()).handles["slow_write"].succeeded == 1


async def test_httpx_asgi_transport_round_trip() -> None:
    """Inside ``async with sc.run()``, an ASGI client can send jobs without a server."""
    out: list[str] = []
    sc, note = make_sidecars(out)
    app = FastAPI()

    @app.post("/n")
    async def post(body: Note) -> dict[str, str]:
        ref = await note.enqueue(body)
        return {"id": str(ref.id)}

    async with sc.run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/n", json={"text": "via httpx"})
            assert response.status_code == 200
    assert out == ["via httpx"]


def test_lifespan_can_make_the_app_enqueue_only(tmp_path: Path) -> None:
    """lifespan(sc, consume=False): DEFERRED jobs are stored but not run by this app."""
    from sidecars.stores import MemoryStore

    sc = Sidecars(MemoryStore())
    ran: list[str] = []

    @sc.sidecar(handle="later", run_type=RunType.DEFERRED)
    async def later(job: JobContext[Note]) -> None:
        ran.append(job.payload.text)

    async def endpoint(request: Request) -> JSONResponse:
        ref = await later.enqueue(Note(text="x"))
        return JSONResponse({"id": str(ref.id)})

    app = Starlette(
        routes=[Route("/", endpoint, methods=["POST"])], lifespan=lifespan(sc, consume=False)
    )
    with TestClient(app) as client:
        job_id = client.post("/").json()["id"]
        time.sleep(0.2)
        assert sc._runner is not None
        assert sc._runner.deferred is None  # nothing consumes here
    assert ran == []
    assert job_id


async def test_a_second_run_of_a_running_instance_says_what_to_do() -> None:
    """Starting a Sidecars that already runs (a TestClient's lifespan inside the harness's
    run) raises an error that says why and what to use instead."""
    from sidecars import SidecarsError

    sc = Sidecars()
    async with sc.run():
        with pytest.raises(SidecarsError, match=r"already running.*httpx\.ASGITransport"):
            async with sc.run():
                pass
        assert sc.is_running
