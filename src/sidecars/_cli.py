"""The ``sidecars`` command: run a worker, inspect jobs, explain schedules, migrate.

Every command that needs your app takes ``module:attribute`` naming your :class:`Sidecars`
(the working folder is put on ``sys.path`` first, as uvicorn does)::

    sidecars worker myapp.jobs:sc
    sidecars jobs show myapp.jobs:sc 3f2a...
    sidecars schedule explain "0 3 1 * *" --tz America/Denver --next 3
    sidecars migrate myapp.jobs:sc
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from enum import Enum
from typing import Any

import anyio

from ._app import Sidecars
from .exceptions import InvalidSchedule, SidecarsError

__all__ = ("main",)


_MISSING: Any = object()


class CommandError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def load(target: str) -> Sidecars:
    """Import ``module:attribute`` and return the Sidecars it names."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise CommandError(f"expected module:attribute (such as myapp.jobs:sc), got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(f"cannot import {module_name!r}: {exc}") from exc
    value: Any = module
    for part in attr.split("."):
        value = getattr(value, part, _MISSING)
        if value is _MISSING:
            raise CommandError(f"{module_name!r} has no attribute {attr!r}")
    if not isinstance(value, Sidecars):
        raise CommandError(f"{target} is a {type(value).__name__}, not a Sidecars")
    return value


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _print_json(value: Any) -> None:
    print(json.dumps(_jsonable(value), indent=2, sort_keys=True))


# -- worker ---------------------------------------------------------------------------------


async def _worker(sc: Sidecars, grace: float | None) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with sc.run(consume=True, grace=grace):
            handles = ", ".join(sorted(sc.sidecars)) or "none"
            print(f"sidecars worker: running {len(sc.sidecars)} sidecar(s): {handles}", flush=True)
            async for signum in signals:
                # From here on a second signal ends the process at once, mid-drain.
                for again in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(again, lambda *_: os._exit(1))
                print(
                    f"sidecars worker: {signal.Signals(signum).name}: draining (send it again "
                    "to exit at once; leases cover what is left)",
                    flush=True,
                )
                break
    print("sidecars worker: stopped", flush=True)


def cmd_worker(args: argparse.Namespace) -> int:
    sc = load(args.target)
    anyio.run(_worker, sc, args.grace)
    return 0


# -- jobs -----------------------------------------------------------------------------------


def _show(info: Any, as_json: bool) -> None:
    if as_json:
        _print_json(info)
        return
    rows = [
        ("id", info.id),
        ("handle", info.handle),
        ("state", info.state.value),
        ("outcome", info.outcome.value if info.outcome else "-"),
        ("attempts", f"{info.attempts} of {info.max_attempts}"),
        ("due", info.run_at.isoformat()),
        ("created", info.created_at.isoformat()),
        ("started", info.started_at.isoformat() if info.started_at else "-"),
        ("finished", info.finished_at.isoformat() if info.finished_at else "-"),
        ("key", info.key or "-"),
        ("payload", json.dumps(info.payload)),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if info.error:
        print("error:")
        print("  " + info.error.replace("\n", "\n  "))


async def _jobs(args: argparse.Namespace) -> int:
    sc = load(args.target)
    async with sc:
        if args.jobs_command == "show":
            info = await sc.get_job(args.job_id)
            if info is None:
                raise CommandError(f"no job {args.job_id}")
            _show(info, args.json)
            return 0
        if args.jobs_command == "retry":
            done = await sc.retry(args.job_id)
            _say(
                args,
                {"job_id": args.job_id, "retried": done},
                "queued again" if done else "not retried (only failed or cancelled jobs are)",
            )
            return 0 if done else 1
        if args.jobs_command == "cancel":
            state = await sc.cancel(args.job_id)
            if state is None:
                raise CommandError(f"no job {args.job_id}")
            _say(args, {"job_id": args.job_id, "state": state.value}, f"state: {state.value}")
            return 0
        store: Any = await sc._open_store()
        if args.jobs_command == "list":
            lister = getattr(store, "list_jobs", None)
            if lister is None:
                raise CommandError(f"{type(store).__name__} cannot list jobs")
            jobs = await lister(handle=args.handle, state=args.state, limit=args.limit)
            if args.json:
                _print_json(jobs)
            else:
                for info in jobs:
                    print(
                        f"{info.id}  {info.handle:<24} {info.state.value:<9} "
                        f"{(info.outcome.value if info.outcome else '-'):<10} "
                        f"{info.attempts}/{info.max_attempts}  {info.run_at.isoformat()}"
                    )
                print(f"({len(jobs)} job(s))")
            return 0
        # purge
        pruner = getattr(store, "prune_jobs", None)
        if pruner is None:
            raise CommandError(f"{type(store).__name__} cannot purge jobs")
        before = sc.clock.time() - args.older_than * 86_400
        removed = await pruner(before=before)
        _say(args, {"removed": removed}, f"removed {removed} finished job(s)")
        return 0


def _say(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if args.json:
        _print_json(data)
    else:
        print(text)


def cmd_jobs(args: argparse.Namespace) -> int:
    return anyio.run(_jobs, args)


# -- schedule -------------------------------------------------------------------------------


def cmd_schedule(args: argparse.Namespace) -> int:
    from .schedule import Schedule

    try:
        schedule = Schedule.cron(args.expression, timezone=args.tz)
    except InvalidSchedule as exc:
        raise CommandError(str(exc)) from None
    if args.after:
        after = datetime.fromisoformat(args.after)
        if after.tzinfo is None:
            after = after.replace(tzinfo=schedule.timezone)
    else:
        after = datetime.now(timezone.utc)
    fires = schedule.preview(args.next, after=after)
    if args.json:
        _print_json(
            {
                "expression": args.expression,
                "timezone": args.tz,
                "description": schedule.describe(),
                "after": after.isoformat(),
                "next": [f.isoformat() for f in fires],
            }
        )
        return 0
    print(schedule.describe())
    for fire in fires:
        utc = fire.astimezone(timezone.utc)
        print(f"  {fire.isoformat()}   ({utc:%Y-%m-%d %H:%M:%S} UTC)")
    if not fires:
        print("  (never fires again)")
    return 0


# -- migrate --------------------------------------------------------------------------------


async def _migrate(args: argparse.Namespace) -> int:
    sc = load(args.target)
    migrate = getattr(sc.store, "migrate", None)
    async with sc:
        if migrate is not None:
            await migrate()
        else:
            await sc._open_store()  # stores without migrate() bring their schema up on open
    print(f"{type(sc.store).__name__}: schema up to date")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    return anyio.run(_migrate, args)


# -- entry point ----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sidecars", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="run the sidecars as a dedicated worker")
    w.add_argument("target", help="module:attribute of your Sidecars, e.g. myapp.jobs:sc")
    w.add_argument("--grace", type=float, default=None, help="shutdown grace, seconds")
    w.set_defaults(func=cmd_worker)

    j = sub.add_parser("jobs", help="list, show, retry, cancel or purge jobs")
    jsub = j.add_subparsers(dest="jobs_command", required=True)
    for name, text in (
        ("show", "one job"),
        ("retry", "queue a failed or cancelled job again"),
        ("cancel", "cancel a queued job"),
    ):
        c = jsub.add_parser(name, help=text)
        c.add_argument("target")
        c.add_argument("job_id")
        c.add_argument("--json", action="store_true", help="machine-readable output")
    lst = jsub.add_parser("list", help="recent jobs")
    lst.add_argument("target")
    lst.add_argument("--handle")
    lst.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    lst.add_argument("--limit", type=int, default=50)
    lst.add_argument("--json", action="store_true")
    pg = jsub.add_parser("purge", help="delete finished jobs older than N days")
    pg.add_argument("target")
    pg.add_argument("--older-than", type=float, default=7.0, metavar="DAYS")
    pg.add_argument("--json", action="store_true")
    j.set_defaults(func=cmd_jobs)

    s = sub.add_parser("schedule", help="explain a cron expression")
    ssub = s.add_subparsers(dest="schedule_command", required=True)
    e = ssub.add_parser("explain", help="describe an expression and list its next fires")
    e.add_argument("expression")
    e.add_argument("--tz", default="UTC", help="IANA time zone (default UTC)")
    e.add_argument("--next", type=int, default=5, help="how many fires (default 5)")
    e.add_argument("--after", help="start from this ISO 8601 time (default now)")
    e.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_schedule)

    m = sub.add_parser("migrate", help="bring the store's schema up to date")
    m.add_argument("target")
    m.set_defaults(func=cmd_migrate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sidecars`` command."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CommandError as exc:
        print(f"sidecars: {exc}", file=sys.stderr)
        return 2
    except SidecarsError as exc:
        print(f"sidecars: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
