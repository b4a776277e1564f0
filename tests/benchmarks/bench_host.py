"""Host impact and idle cost: what sidecars costs the app it runs in.

Not collected by pytest. Run from the repository root (``nox -s bench`` runs it too):

    .venv/bin/python tests/benchmarks/bench_host.py [--seconds 10] [--rounds 2] [--rate 200]

The host impact part needs FastAPI and uvicorn (the ``examples`` or ``test`` extra); without
them it is listed as not run.

1. **Host impact.** The example app (``examples/fastapi_app``, wrapped by
   ``tests/benchmarks/_host_app.py``) runs under uvicorn in a subprocess, its SQLite file in
   a temporary directory. A client in this process offers ``GET /health`` at a fixed rate
   (open loop: each request has a scheduled send time, and its latency is measured from that
   time, so a stall delays every request behind it instead of hiding them). Four scenarios:
   a producer inside the app enqueues jobs at a fixed rate: none (idle), no-op MEMORY jobs,
   MEMORY jobs that ``await anyio.sleep(0.001)``, or no-op DEFERRED jobs on the SQLite file.
   Each scenario is measured in ``--rounds`` server runs of ``--seconds / --rounds`` each
   (a fresh server, a second of warm-up, then the window), the rounds in the order ABCD DCBA
   so that a busy spell of the machine falls on every scenario alike; the samples of a
   scenario are pooled. Every produced job must have run exactly once. The ratio is each
   busy scenario's p99 over the idle one's (target: at most 1.2x). Other processes on the
   machine show in the table (their CPU over the windows, and how late the client sent).

2. **Idle cost.** In this process, 50 sidecars (20 MEMORY, 15 DEFERRED on a SQLite file, 15
   STANDALONE on schedules that are not due) run idle under ``async with sc.run():``. Measured
   over ``--seconds``: CPU time per second, and event-loop wake-ups per second (calls of the
   selector's ``select`` that blocked and returned), against an empty loop sleeping as long.
   Each wake-up is traced to what caused it: the timer that fired (and the task that set it)
   or the callback a thread handed to the loop (and the task waiting for it). Target: at most
   one wake-up a second while nothing is due.

Exits with status 1 if a check fails (a request that did not answer 200, a job that did not
run exactly once, a schedule that fired); the latency and wake-up targets are reported only.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import importlib.util
import json
import os
import platform
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel

from sidecars import JobContext, RunType, Schedule, Sidecars
from sidecars.stores import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
HOST_APP = "tests.benchmarks._host_app:app"
WARMUP = 1.0  # seconds of offered load before each measured window
SPIN = 0.002  # seconds before a send time the client stops sleeping and polls
POOL = 32  # client connections opened before the load starts
P99_TARGET = 1.2
WAKE_TARGET = 1.0
BODY = b'{"ok":true}'
REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


# -- shared helpers ----------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def header(args: argparse.Namespace) -> str:
    packages = ["sidecars", "anyio", "pydantic", "aiosqlite", "fastapi", "uvicorn"]
    found = [f"{name} {version(name)}" for name in packages if importlib.util.find_spec(name)]
    http_impl = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop_impl = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return (
        f"Python {platform.python_version()}, {os.cpu_count()} cores, {', '.join(found)}, "
        f"SQLite {sqlite3.sqlite_version}; uvicorn {http_impl}/{loop_impl}, no access log; "
        f"GET /health at {args.rate}/s open loop, {args.seconds:g} s measured per scenario in "
        f"{args.rounds} rounds (each after {WARMUP:g} s of warm-up); idle cost over "
        f"{args.seconds:g} s"
    )


# -- 1. host impact: the server ----------------------------------------------------------------


@dataclass(frozen=True)
class HostRun:
    """One server run: which bench sidecar the producer feeds, and how fast."""

    name: str
    job: str = ""
    rate: int = 0


HOST_RUNS = [
    HostRun("idle"),
    HostRun("memory no-op 1,000/s", "bench_noop", 1000),
    HostRun("memory sleep(1 ms) 1,000/s", "bench_sleep", 1000),
    HostRun("deferred no-op 500/s (SQLite)", "bench_deferred", 500),
]


@dataclass
class Server:
    """The host app under uvicorn in a subprocess."""

    process: subprocess.Popen[bytes]
    port: int
    out: Path
    log: Path

    def get_json(self, path: str) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process (all its threads), from /proc."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(run: HostRun, data_dir: Path) -> Server:
    data_dir.mkdir(parents=True)
    port = free_port()
    out, log = data_dir / "produced.json", data_dir / "uvicorn.log"
    env = {
        **os.environ,
        "SIDECARS_EXAMPLE_DIR": str(data_dir),
        "BENCH_HOST_JOB": run.job,
        "BENCH_HOST_RATE": str(run.rate),
        "BENCH_HOST_OUT": str(out),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "uvicorn", HOST_APP, "--port", str(port)]
    command += ["--log-level", "warning", "--no-access-log", "--timeout-keep-alive", "60"]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=data_dir, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    server = Server(process, port, out, log)
    wait_ready(server)
    return server


def wait_ready(server: Server, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"uvicorn exited early:\n{server.log.read_text()}")
        try:
            server.get_json("/health")
            return
        except OSError:
            time.sleep(0.05)
    server.process.kill()
    raise RuntimeError(f"uvicorn did not start:\n{server.log.read_text()}")


def stop_server(server: Server) -> None:
    """SIGTERM, as a deploy would: the app drains its jobs and writes what ran."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@contextmanager
def serving(run: HostRun, data_dir: Path) -> Iterator[Server]:
    server = start_server(run, data_dir)
    try:
        yield server
    finally:
        stop_server(server)


# -- 1. host impact: the open-loop client ------------------------------------------------------


@dataclass
class Load:
    """What one stretch of offered load saw."""

    latencies: list[float] = field(default_factory=list)  # ms, from the scheduled send time
    send_lags: list[float] = field(default_factory=list)  # ms the client itself sent late
    errors: Counter[str] = field(default_factory=Counter)


class Client:
    """Keep-alive HTTP/1.1 connections to the server, handed out first in, first out."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = deque()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def open(self, n: int) -> None:
        for _ in range(n):
            self.idle.append(await self.connect())

    def close(self) -> None:
        while self.idle:
            self.idle.popleft()[1].close()

    async def get(self) -> bytes:
        """One GET /health; returns the body, raises on anything but 200."""
        reader, writer = self.idle.popleft() if self.idle else await self.connect()
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        if status != b"200":
            writer.close()
            raise RuntimeError(f"status {status.decode()}")
        self.idle.append((reader, writer))
        return body


async def request(client: Client, scheduled: float, load: Load) -> None:
    loop = asyncio.get_running_loop()
    load.send_lags.append((loop.time() - scheduled) * 1000)
    try:
        body = await client.get()
    except (OSError, asyncio.IncompleteReadError, RuntimeError) as exc:
        load.errors[type(exc).__name__ + (f": {exc}" if isinstance(exc, RuntimeError) else "")] += 1
        return
    if body != BODY:
        load.errors[f"body {body[:40]!r}"] += 1
        return
    load.latencies.append((loop.time() - scheduled) * 1000)


async def until(when: float) -> None:
    """Wait until the loop's clock reads ``when``, to within tens of microseconds: a timer
    until ``SPIN`` before (epoll rounds its timeout up to the next millisecond), then yield
    to the loop (which goes on reading responses) until the time has come."""
    loop = asyncio.get_running_loop()
    if (coarse := when - loop.time() - SPIN) > 0:
        await asyncio.sleep(coarse)
    while loop.time() < when:
        await asyncio.sleep(0)


async def offer(client: Client, rate: float, seconds: float) -> Load:
    """Send ``rate * seconds`` requests, each at its scheduled time, whatever came before."""
    loop = asyncio.get_running_loop()
    load = Load()
    start = loop.time() + 0.01
    tasks = []
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        await until(scheduled)
        tasks.append(asyncio.create_task(request(client, scheduled, load)))
    await asyncio.gather(*tasks)
    return load


def machine_busy() -> float:
    """CPU seconds every process on the machine has used (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class Window:
    """The measured stretch of one server run."""

    load: Load
    seconds: float
    server_cpu: float  # seconds of server CPU during the window
    others_cpu: float  # seconds of CPU used by neither the server nor this process
    jobs_done: int  # bench jobs that finished during the window
    start: float  # time.monotonic() at the window's ends (shared with the server process)
    end: float


@dataclass
class Meter:
    """CPU and job counters read at a window's ends."""

    server: float
    machine: float
    own: float
    jobs: int
    at: float

    @classmethod
    def read(cls, server: Server, run: HostRun) -> Meter:
        jobs = jobs_succeeded(server, run)
        own = time.process_time()
        return cls(server.cpu_seconds(), machine_busy(), own, jobs, time.monotonic())


def window(load: Load, a: Meter, b: Meter) -> Window:
    server = b.server - a.server
    others = b.machine - a.machine - server - (b.own - a.own)
    return Window(load, b.at - a.at, server, max(0.0, others), b.jobs - a.jobs, a.at, b.at)


async def drive(server: Server, run: HostRun, rate: float, seconds: float) -> Window:
    client = Client(server.port)
    await client.open(POOL)
    try:
        await offer(client, rate, WARMUP)
        before = Meter.read(server, run)
        load = await offer(client, rate, seconds)
        after = Meter.read(server, run)
    finally:
        client.close()
    return window(load, before, after)


def jobs_succeeded(server: Server, run: HostRun) -> int:
    if not run.job:
        return 0
    return int(server.get_json("/stats")["handles"][run.job]["succeeded"])


# -- 1. host impact: checks and the table ------------------------------------------------------


@dataclass
class Round:
    """One server run of a scenario: what the client saw, what the server recorded."""

    window: Window
    problems: list[str]
    gc: list[tuple[float, int, float]]  # the server's GC pauses during the window


@dataclass
class HostResult:
    """A scenario over every round: samples pooled."""

    run: HostRun
    rounds: list[Round]

    @property
    def latencies(self) -> list[float]:
        return [x for r in self.rounds for x in r.window.load.latencies] or [float("nan")]

    @property
    def p99(self) -> float:
        return pct(self.latencies, 99)

    def per_second(self, value: Callable[[Window], float]) -> float:
        return sum(value(r.window) for r in self.rounds) / sum(
            r.window.seconds for r in self.rounds
        )


def read_record(server: Server) -> dict[str, Any] | None:
    """What the server wrote at shutdown: jobs produced and run, GC pauses."""
    if not server.out.exists():
        return None
    record: dict[str, Any] = json.loads(server.out.read_text())
    return record


def check_jobs(run: HostRun, r: dict[str, Any] | None) -> list[str]:
    """Every job the producer sent ran exactly once (read after the drained shutdown)."""
    if r is None:
        return ["the server wrote no record at shutdown"]
    if not run.job:
        return []
    n = r["produced"]
    if r["ran"] == r["distinct"] == r["in_range"] == r["succeeded"] == n and not r["failed"]:
        return []
    return [f"{run.job}: produced {n}, ran {r['ran']} ({r['distinct']} distinct), {r}"]


def check_load(load: Load, expected: int) -> list[str]:
    problems = [f"{n} x {what}" for what, n in load.errors.items()]
    if len(load.latencies) + sum(load.errors.values()) != expected:
        problems.append(f"{len(load.latencies)} answers of {expected} requests")
    return problems


def host_round(run: HostRun, rate: float, seconds: float, data_dir: Path) -> Round:
    with serving(run, data_dir) as server:
        measured = asyncio.run(drive(server, run, rate, seconds))
    record = read_record(server)
    problems = check_load(measured.load, int(rate * seconds))
    problems += check_jobs(run, record)
    if server.process.returncode not in (0, -signal.SIGTERM):
        problems.append(f"server exited {server.process.returncode}")
    if problems:
        problems.append(f"server log:\n{server.log.read_text()[-2000:]}")
    pauses = [(p[0], p[1], p[2]) for p in (record or {}).get("gc_pauses", [])]
    in_window = [p for p in pauses if measured.start <= p[0] <= measured.end]
    return Round(measured, problems, in_window)


def host_row(r: HostResult, idle_p99: float) -> str:
    lat = r.latencies
    by_round = ",".join(f"{pct(x.window.load.latencies or [0.0], 99):.1f}" for x in r.rounds)
    lags = [x for q in r.rounds for x in q.window.load.send_lags]
    gc_max = max((p[2] for q in r.rounds for p in q.gc), default=0.0)
    ok = "ok" if not any(q.problems for q in r.rounds) else "FAILED"
    return (
        f"{r.run.name:<30} {r.per_second(lambda w: w.jobs_done):6,.0f} {pct(lat, 50):6.2f} "
        f"{r.p99:6.2f} {by_round:>11} {max(lat):7.2f} {r.p99 / idle_p99:7.2f}x "
        f"{r.per_second(lambda w: w.server_cpu):7.0%} {r.per_second(lambda w: w.others_cpu):7.0%} "
        f"{pct(lags, 99):7.2f} {gc_max:6.1f}  {ok}"
    )


def host_table(results: list[HostResult]) -> list[str]:
    idle_p99 = results[0].p99
    lines = [
        f"{'host impact: run':<30} {'jobs/s':>6} {'p50 ms':>6} {'p99 ms':>6} {'p99 rounds':>11} "
        f"{'max ms':>7} {'p99/idle':>8} {'srv CPU':>7} {'others':>7} {'lag p99':>7} "
        f"{'GC max':>6}  check",
        "-" * 120,
        *(host_row(r, idle_p99) for r in results),
    ]
    busy = results[1:]
    met = [r.run.name for r in busy if r.p99 / idle_p99 <= P99_TARGET]
    lines.append(
        f"target busy p99 <= {P99_TARGET}x idle p99: met by {len(met)} of {len(busy)} busy runs"
        + (f" ({'; '.join(met)})" if met else "")
    )
    lines.append(
        "jobs/s: bench jobs finished during the windows; p99 rounds: each round's p99 (ms); srv "
        "CPU: the\nserver process (one core = 100%); others: CPU used meanwhile by other "
        "processes on the machine;\nlag p99: how late the client itself sent (ms); GC max: the "
        "server's longest garbage-collector pause (ms)"
    )
    return lines


def host_order(k: int) -> list[HostRun]:
    """Round k's order: forward, then backward (ABCD DCBA), so drift hits every run alike."""
    return HOST_RUNS if k % 2 == 0 else HOST_RUNS[::-1]


def host_impact(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    measured = measure_host(args)
    if isinstance(measured, str):
        return [measured], []
    results, problems = measured
    return host_table(results), problems


def measure_host(args: argparse.Namespace) -> tuple[list[HostResult], list[str]] | str:
    """Every scenario's pooled result (idle first) and the failed checks, or why not run."""
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        return f"host impact: not run: needs {' and '.join(missing)} ('.[examples]')"
    rounds: dict[str, list[Round]] = {run.name: [] for run in HOST_RUNS}
    seconds = args.seconds / args.rounds
    with tempfile.TemporaryDirectory(prefix="bench_host_") as tmp:
        for k in range(args.rounds):
            for i, run in enumerate(host_order(k)):
                data_dir = Path(tmp) / f"round{k}-{i}"
                rounds[run.name].append(host_round(run, args.rate, seconds, data_dir))
    results = [HostResult(run, rounds[run.name]) for run in HOST_RUNS]
    problems = [f"{r.run.name}: {p}" for r in results for q in r.rounds for p in q.problems]
    return results, problems


# -- 2. idle cost: the app ---------------------------------------------------------------------

N_MEMORY, N_DEFERRED, N_STANDALONE = 20, 15, 15


def idle_app(db: Path) -> Sidecars:
    """50 sidecars with nothing to do: no jobs sent, no schedule due for hours."""
    sc = Sidecars(SQLiteStore(db), grace=5)
    for i in range(N_MEMORY):
        sc.sidecar(handle=f"mem_{i}", run_type=RunType.MEMORY, concurrency=1 + i % 4)(noop)
    for i in range(N_DEFERRED):
        sc.sidecar(handle=f"def_{i}", run_type=RunType.DEFERRED, concurrency=2)(noop)
    for i in range(N_STANDALONE):
        schedule = Schedule.cron("0 3 1 * *") if i % 2 else Schedule(every=timedelta(hours=1))
        sc.sidecar(
            handle=f"std_{i}",
            run_type=RunType.STANDALONE,
            schedule=schedule,
            per_replica=i % 3 == 0,
        )(tick)
    return sc


class Never(BaseModel):
    """The payload of the idle app's jobs (none is ever sent)."""

    n: int


async def noop(job: JobContext[Never]) -> None:
    """A job that is never sent."""


async def tick(job: JobContext[None]) -> None:
    """A fire that is never due during the run."""


def due_during(sc: Sidecars, seconds: float) -> list[str]:
    """Schedules that would fire within the run (then the run would not be idle)."""
    now = datetime.now(timezone.utc)
    end = now + timedelta(seconds=seconds)
    due = []
    for handle, sidecar in sc.sidecars.items():
        if sidecar.schedule is not None:
            nxt = sidecar.schedule.next_after(now)
            if nxt is not None and nxt <= end:
                due.append(f"{handle} at {nxt:%H:%M:%S}")
    return due


# -- 2. idle cost: tracing the loop ------------------------------------------------------------


def task_name() -> str:
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return task.get_name() if task is not None else "(no task)"


def callback_name(callback: Callable[..., Any]) -> str:
    name = getattr(callback, "__qualname__", None) or repr(callback)
    return "sleep()" if name == "_set_result_unless_cancelled" else name


def waiter_of(args: tuple[Any, ...]) -> str:
    """The task waiting on the future a thread completes (aiosqlite, to_thread)."""
    for arg in args:
        for fn, _ctx in getattr(arg, "_callbacks", None) or ():
            task = getattr(fn, "__self__", None)
            if isinstance(task, asyncio.Task):
                return task.get_name()
    return "(no task)"


class LoopProbe:
    """Counts an asyncio loop's wake-ups and attributes each to what caused it.

    A wake-up is a call of the selector's ``select`` that could block (timeout None or
    above 0) and returned: after a timeout, the first timer that then fires is credited;
    after an event, the first callback a thread handed over with ``call_soon_threadsafe``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop: Any = loop
        self.reset()
        self._woke: str | None = None
        self._patch_select()
        self._patch_call_at()
        self._patch_threadsafe()

    def reset(self) -> None:
        self.iterations = 0
        self.wakeups = Counter[str]()  # "timer" / "event"
        self.causes = Counter[tuple[str, str, str]]()  # (kind, task, callback)
        self.fired = Counter[tuple[str, str]]()  # every timer that fired: (task, callback)
        self.cpu = time.process_time()
        self.usage = resource.getrusage(resource.RUSAGE_SELF)
        self.started = time.perf_counter()

    def _patch_select(self) -> None:
        selector = self.loop._selector
        real = selector.select

        def select(timeout: float | None = None) -> Any:
            events = real(timeout)
            self.iterations += 1
            if timeout is None or timeout > 0:
                self._woke = "event" if events else "timer"
                self.wakeups[self._woke] += 1
            return events

        selector.select = select

    def _credit(self, kind: str, task: str, callback: str) -> None:
        if self._woke == kind:
            self.causes[(kind, task, callback)] += 1
            self._woke = None

    def _patch_call_at(self) -> None:
        real = self.loop.call_at

        def call_at(when: float, callback: Any, *args: Any, context: Any = None) -> Any:
            key = (task_name(), callback_name(callback))

            def fire(*a: Any) -> Any:
                self.fired[key] += 1
                self._credit("timer", *key)
                return callback(*a)

            fire.bench_key = key  # type: ignore[attr-defined]
            return real(when, fire, *args, context=context)

        self.loop.call_at = call_at

    def _patch_threadsafe(self) -> None:
        real = self.loop.call_soon_threadsafe

        def call_soon_threadsafe(callback: Any, *args: Any, context: Any = None) -> Any:
            thread = threading.current_thread().name.split(" ")[0]

            def run(*a: Any) -> Any:
                name = f"{callback_name(callback)} from {thread}"
                self._credit("event", waiter_of(a), name)
                return callback(*a)

            return real(run, *args, context=context)

        self.loop.call_soon_threadsafe = call_soon_threadsafe

    def pending_timers(self) -> Counter[tuple[str, str]]:
        return Counter(
            getattr(h._callback, "bench_key", ("?", callback_name(h._callback)))
            for h in self.loop._scheduled
            if not h.cancelled()
        )


class StoreCalls:
    """Counts calls of a store's public coroutine methods, by calling task."""

    def __init__(self, store: Any) -> None:
        self.calls = Counter[tuple[str, str]]()
        for name in dir(type(store)):
            method = getattr(store, name)
            if not name.startswith("_") and asyncio.iscoroutinefunction(method):
                setattr(store, name, self._counted(name, method))

    def _counted(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[(task_name(), name)] += 1
            return await method(*args, **kwargs)

        return call


# -- 2. idle cost: the runs and the table ------------------------------------------------------


@dataclass
class IdleResult:
    seconds: float
    cpu: float
    switches: int
    iterations: int
    wakeups: Counter[str]
    causes: Counter[tuple[str, str, str]]
    fired: Counter[tuple[str, str]]
    pending: Counter[tuple[str, str]]
    store_calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    threads: list[str] = field(default_factory=list)
    bench_task: str = ""

    @property
    def wakeups_per_s(self) -> float:
        return sum(self.wakeups.values()) / self.seconds


def snapshot(probe: LoopProbe) -> IdleResult:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    switches = usage.ru_nvcsw + usage.ru_nivcsw - probe.usage.ru_nvcsw - probe.usage.ru_nivcsw
    return IdleResult(
        seconds=time.perf_counter() - probe.started,
        cpu=time.process_time() - probe.cpu,
        switches=switches,
        iterations=probe.iterations,
        wakeups=Counter(probe.wakeups),
        causes=Counter(probe.causes),
        fired=Counter(probe.fired),
        pending=probe.pending_timers(),
        threads=sorted(t.name for t in threading.enumerate()),
        bench_task=task_name(),
    )


async def idle_window(seconds: float, sc: Sidecars | None) -> IdleResult:
    """Sleep ``seconds`` in a traced loop: empty, or with ``sc`` running and settled."""
    probe = LoopProbe(asyncio.get_running_loop())
    if sc is None:
        probe.reset()
        await anyio.sleep(seconds)
        return snapshot(probe)
    calls = StoreCalls(sc.store)
    async with sc.run():
        await anyio.sleep(1.0)  # settle: store opened, schedules initialised
        probe.reset()
        calls.calls.clear()
        await anyio.sleep(seconds)
        result = snapshot(probe)
        result.store_calls = Counter(calls.calls)
    return result


def idle_checks(sc: Sidecars) -> list[str]:
    stats = asyncio.run(sc.stats())
    ran = {h: s.succeeded + s.failed + s.skipped for h, s in stats.handles.items()}
    return [f"idle cost: {h} ran {n} time(s) during the idle run" for h, n in ran.items() if n]


def per_second(r: IdleResult) -> tuple[float, ...]:
    """CPU seconds, wake-ups (all, by timer, by event), loop iterations, context switches."""
    s = r.seconds
    wakes = (r.wakeups_per_s, r.wakeups["timer"] / s, r.wakeups["event"] / s)
    return (r.cpu / s, *wakes, r.iterations / s, r.switches / s)


def idle_row(name: str, values: tuple[float, ...]) -> str:
    cpu, wake, timer, event, iterations, switches = values
    return (
        f"{name:<32} {cpu * 1000:8.2f} {wake:9.1f} {timer:7.1f} {event:7.1f} "
        f"{iterations:9.1f} {switches:8.1f}"
    )


def idle_rows(base: IdleResult, idle: IdleResult) -> list[str]:
    b, i = per_second(base), per_second(idle)
    return [
        f"{'idle cost: run':<32} {'CPU ms/s':>8} {'wakes/s':>9} {'timer':>7} {'event':>7} "
        f"{'iters/s':>9} {'ctxsw/s':>8}",
        "-" * 86,
        idle_row("empty loop (baseline)", b),
        idle_row(f"{len(IDLE_MIX)} sidecars, idle", i),
        idle_row("sidecars - baseline", tuple(x - y for x, y in zip(i, b, strict=True))),
    ]


IDLE_MIX = [f"mem_{i}" for i in range(N_MEMORY)] + [f"def_{i}" for i in range(N_DEFERRED)]
IDLE_MIX += [f"std_{i}" for i in range(N_STANDALONE)]


def cause_rows(r: IdleResult) -> list[str]:
    s = r.seconds
    lines = ["what woke the loop (sidecars run, per second):"]
    for (kind, task, cb), n in r.causes.most_common():
        who = "this benchmark's sleep" if task == r.bench_task else task
        lines.append(f"  {n / s:6.2f}/s  {kind:<5}  {who}: {cb}")
    unattributed = sum(r.wakeups.values()) - sum(r.causes.values())
    if unattributed:
        lines.append(f"  {unattributed / s:6.2f}/s  (no timer or thread callback followed)")
    lines.append("timers that fired (wake-up or not, per second):")
    for (task, cb), n in r.fired.most_common():
        who = "this benchmark's sleep" if task == r.bench_task else task
        lines.append(f"  {n / s:6.2f}/s  {who}: {cb}")
    lines.append("store calls (per second, by calling task):")
    for (task, method), n in r.store_calls.most_common():
        lines.append(f"  {n / s:6.2f}/s  {task}: {method}")
    lines.append(f"timers pending at the end ({sum(r.pending.values())}):")
    for (task, cb), n in r.pending.most_common():
        who = "this benchmark's sleep" if task == r.bench_task else task
        lines.append(f"  {n:3d} x {who}: {cb}")
    threads = Counter(name.split(" ")[0] for name in r.threads)
    lines.append("threads: " + ", ".join(f"{n} x {name}" for name, n in threads.items()))
    return lines


def measure_idle(
    args: argparse.Namespace,
) -> tuple[IdleResult, IdleResult, list[str], list[str]]:
    """The empty loop's and the idle app's results, schedules due meanwhile, problems."""
    base = anyio.run(idle_window, args.seconds, None)
    with tempfile.TemporaryDirectory(prefix="bench_idle_") as tmp:
        sc = idle_app(Path(tmp) / "idle.db")
        due = due_during(sc, args.seconds + 5)
        idle = anyio.run(idle_window, args.seconds, sc)
        problems = idle_checks(sc)
    return base, idle, due, problems


def idle_cost(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    base, idle, due, problems = measure_idle(args)
    wakes = idle.wakeups_per_s - base.wakeups_per_s
    lines = idle_rows(base, idle)
    lines.append(
        f"target <= {WAKE_TARGET:g} wake-up/s over the baseline: "
        f"{'met' if wakes <= WAKE_TARGET else 'missed'} ({wakes:.1f}/s)"
        + (f"; schedules due during the run: {', '.join(due)}" if due else "")
    )
    return [*lines, "", *cause_rows(idle)], problems


# -- main --------------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--rate", type=int, default=200, help="offered GET /health per second")
    parser.add_argument("--rounds", type=int, default=2, help="server runs per scenario")
    parser.add_argument("--only", default="host,idle", help="host, idle or both")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    parts = {p.strip() for p in args.only.split(",")}
    started = time.perf_counter()
    print(header(args))
    problems: list[str] = []
    for part, measure in (("host", host_impact), ("idle", idle_cost)):
        if part in parts:
            lines, found = measure(args)
            problems += found
            print("", *lines, sep="\n")
    print(f"\ntook {time.perf_counter() - started:.0f} s")
    for problem in problems:
        print(f"CHECK FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
