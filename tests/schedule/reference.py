"""A slow, obviously-correct reference for cron schedules, written independently of the
evaluator: it walks calendar days with ``datetime.date``, enumerates every matching time of
each day and resolves each local time with ``zoneinfo`` (PEP 495 ``fold``), then applies the
DST policy of the design document literally.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class Expr:
    """A cron expression as structured values, plus the text rendered from them."""

    text: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    months: frozenset[int]
    years: frozenset[int] | None
    dom_days: frozenset[int]
    dom_from_end: frozenset[int]
    dom_lw: bool
    dom_nearest: frozenset[int]
    dow_days: frozenset[int]
    dow_nth: frozenset[tuple[int, int]]
    day_and: bool
    fixed: bool


def _cron_weekday(d: date) -> int:
    return (d.weekday() + 1) % 7  # date: Monday 0; cron: Sunday 0


def day_matches(e: Expr, d: date) -> bool:
    """Whether date ``d`` matches the day, month and year fields."""
    if d.month not in e.months or (e.years is not None and d.year not in e.years):
        return False
    ndays = calendar.monthrange(d.year, d.month)[1]
    dom = d.day in e.dom_days or (ndays - d.day) in e.dom_from_end
    if e.dom_lw:
        last = date(d.year, d.month, ndays)
        while last.weekday() >= 5:
            last -= timedelta(days=1)
        dom = dom or d == last
    for n in e.dom_nearest:
        if n > ndays:
            continue
        target = date(d.year, d.month, n)
        if target.weekday() == 5:
            target += timedelta(days=-1 if n > 1 else 2)
        elif target.weekday() == 6:
            target += timedelta(days=1 if n < ndays else -2)
        dom = dom or d == target
    wd = _cron_weekday(d)
    dow = wd in e.dow_days
    for nth_wd, n in e.dow_nth:
        if nth_wd != wd:
            continue
        dow = dow or d.day + 7 > ndays if n == -1 else dow or (d.day - 1) // 7 + 1 == n
    return (dom and dow) if e.day_and else (dom or dow)


def _instants(e: Expr, zone: ZoneInfo, wall: datetime) -> list[int]:
    """Fire instants for one matching local wall time, by the DST policy."""
    first = int(wall.replace(tzinfo=zone, fold=0).timestamp())
    second = int(wall.replace(tzinfo=zone, fold=1).timestamp())
    if first == second:
        return [first]
    if first < second:  # repeated by a fall-back: fold=0 is the first occurrence
        return [first] if e.fixed else [first, second]
    # In a gap (PEP 495: fold=0 reads the offset before it, so it lands later).
    if not e.fixed:
        return []
    lo, hi = second, first  # wall(lo) < wall; the first instant after the gap is in (lo, hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).replace(tzinfo=None) > wall:
            hi = mid
        else:
            lo = mid
    return [hi]


def _day_instants(e: Expr, zone: ZoneInfo, d: date) -> list[int]:
    if not day_matches(e, d):
        return []
    out: list[int] = []
    for h in sorted(e.hours):
        for m in sorted(e.minutes):
            for s in sorted(e.seconds):
                out.extend(_instants(e, zone, datetime.combine(d, time(h, m, s))))
    return out


def next_after(e: Expr, zone: ZoneInfo, dt: datetime, horizon_days: int) -> datetime | None:
    """The first fire strictly after ``dt`` within ``horizon_days``, else ``None``."""
    ts = dt.timestamp()
    day = dt.astimezone(zone).date() - timedelta(days=2)
    best: int | None = None
    found_on: date | None = None
    for _ in range(horizon_days):
        for t in _day_instants(e, zone, day):
            if t > ts and (best is None or t < best):
                best, found_on = t, day
        if found_on is not None and day > found_on + timedelta(days=1):
            break
        day += timedelta(days=1)
    return None if best is None else datetime.fromtimestamp(best, zone)


def previous_before(e: Expr, zone: ZoneInfo, dt: datetime, horizon_days: int) -> datetime | None:
    """The last fire strictly before ``dt`` within ``horizon_days``, else ``None``."""
    ts = dt.timestamp()
    day = dt.astimezone(zone).date() + timedelta(days=2)
    best: int | None = None
    found_on: date | None = None
    for _ in range(horizon_days):
        for t in _day_instants(e, zone, day):
            if t < ts and (best is None or t > best):
                best, found_on = t, day
        if found_on is not None and day < found_on - timedelta(days=1):
            break
        day -= timedelta(days=1)
    return None if best is None else datetime.fromtimestamp(best, zone)
