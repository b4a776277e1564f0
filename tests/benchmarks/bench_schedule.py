"""Schedule evaluation speed, side by side with croniter and cronsim.

Needs the ``bench`` extra (``pip install -e '.[bench]'``). Run::

    python tests/benchmarks/bench_schedule.py

Two measurements per expression, in microseconds per call (best of several rounds):

* ``first``: a fresh schedule, parse and first fire (``Schedule.cron(...).next_after``,
  ``croniter(...).get_next``, ``next(CronSim(...))``);
* ``repeat``: the following fires one by one. Ours is stateless (``next_after(previous)``),
  croniter continues its iterator, cronsim is timed both continuing one iterator
  (``cronsim-it``) and building one per start, as a stateless caller has to (``cronsim-new``).

Ratios are the peer's time divided by ours (higher is better for sidecars).
"""

from __future__ import annotations

import sys
import timeit
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from croniter import croniter
from cronsim import CronSim

from sidecars.schedule import Schedule

CASES = [
    ("*/5 * * * *", "UTC"),
    ("0 3 1 * *", "America/Denver"),
    ("0 0 29 2 *", "UTC"),
    ("0 9 * * 1-5", "UTC"),
    ("0 0 L * *", "UTC"),
]
START = (2024, 1, 17, 10, 7, 30)
REPEAT = 200  # fires per repeat round


def _best(fn: object, number: int, rounds: int = 5) -> float:
    """Best-of-rounds microseconds per call of ``fn()``."""
    timer = timeit.Timer(fn)  # type: ignore[arg-type]
    return min(timer.repeat(repeat=rounds, number=number)) / number * 1e6


def _per_fire(run: object) -> float:
    """Microseconds per fire of ``run()``, which computes REPEAT fires."""
    return _best(run, number=3) / REPEAT


def bench(expr: str, zone_name: str) -> dict[str, float]:
    zone = ZoneInfo(zone_name)
    start = datetime(*START, tzinfo=zone)
    out: dict[str, float] = {}

    # Sanity: all three agree on the first fires before anything is timed.
    ours = Schedule.cron(expr, timezone=zone_name).preview(5, start)
    it = croniter(expr, start)
    theirs = [it.get_next(datetime) for _ in range(5)]
    sim = CronSim(expr, start)
    sims = [next(sim) for _ in range(5)]
    assert [f.timestamp() for f in ours] == [f.timestamp() for f in theirs], (ours, theirs)
    assert [f.timestamp() for f in ours] == [f.timestamp() for f in sims], (ours, sims)

    out["first/sidecars"] = _best(
        lambda: Schedule.cron(expr, timezone=zone_name).next_after(start), 2000
    )
    out["first/croniter"] = _best(lambda: croniter(expr, start).get_next(datetime), 500)
    out["first/cronsim"] = _best(lambda: next(CronSim(expr, start)), 2000)

    sched = Schedule.cron(expr, timezone=zone_name)

    def ours_repeat() -> None:
        t = start
        for _ in range(REPEAT):
            t = sched.next_after(t)  # type: ignore[assignment]

    def croniter_repeat() -> None:
        c = croniter(expr, start)
        for _ in range(REPEAT):
            c.get_next(datetime)

    def cronsim_iter() -> None:
        c = CronSim(expr, start)
        for _ in range(REPEAT):
            next(c)

    def cronsim_new() -> None:
        t = start
        for _ in range(REPEAT):
            t = next(CronSim(expr, t))

    out["repeat/sidecars"] = _per_fire(ours_repeat)
    out["repeat/croniter"] = _per_fire(croniter_repeat)
    out["repeat/cronsim-it"] = _per_fire(cronsim_iter)
    out["repeat/cronsim-new"] = _per_fire(cronsim_new)
    return out


def main() -> None:
    print(f"Python {sys.version.split()[0]}; µs per call, best of 5; ratio = peer / sidecars\n")
    head = (
        f"{'expression':<16} {'zone':<15} {'kind':<7} {'sidecars':>9} {'croniter':>9} "
        f"{'(x)':>6} {'cronsim':>9} {'(x)':>6} {'cs-new':>9} {'(x)':>6}"
    )
    print(head)
    print("-" * len(head))
    worst = {"croniter": float("inf"), "cronsim": float("inf")}
    for expr, zone in CASES:
        r = bench(expr, zone)
        first = r["first/sidecars"]
        print(
            f"{expr:<16} {zone:<15} {'first':<7} {first:>9.2f} {r['first/croniter']:>9.2f} "
            f"{r['first/croniter'] / first:>6.1f} {r['first/cronsim']:>9.2f} "
            f"{r['first/cronsim'] / first:>6.1f} {'':>9} {'':>6}"
        )
        rep = r["repeat/sidecars"]
        print(
            f"{'':<16} {'':<15} {'repeat':<7} {rep:>9.2f} {r['repeat/croniter']:>9.2f} "
            f"{r['repeat/croniter'] / rep:>6.1f} {r['repeat/cronsim-it']:>9.2f} "
            f"{r['repeat/cronsim-it'] / rep:>6.1f} {r['repeat/cronsim-new']:>9.2f} "
            f"{r['repeat/cronsim-new'] / rep:>6.1f}"
        )
        worst["croniter"] = min(
            worst["croniter"], r["first/croniter"] / first, r["repeat/croniter"] / rep
        )
        worst["cronsim"] = min(
            worst["cronsim"],
            r["first/cronsim"] / first,
            r["repeat/cronsim-it"] / rep,
            r["repeat/cronsim-new"] / rep,
        )
    print(
        f"\nworst ratio: croniter {worst['croniter']:.1f}x (target 5x), "
        f"cronsim {worst['cronsim']:.1f}x (target 2x)"
    )


if __name__ == "__main__":
    main()
