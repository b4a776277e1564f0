"""Property tests: the evaluator against the brute-force reference, and bounded work."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sidecars.exceptions import InvalidSchedule
from sidecars.schedule import Schedule
from sidecars.schedule._zone import _year_table

from . import reference
from .reference import Expr

ZONES = (
    "UTC",
    "America/Denver",
    "America/New_York",
    "Europe/London",
    "Europe/Helsinki",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "Pacific/Apia",
    "Antarctica/Casey",
    "Africa/Casablanca",
    "America/St_Johns",
    "Asia/Tehran",
)
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


@st.composite
def _simple(draw: st.DrawFn, low: int, high: int, dense: bool) -> tuple[str, set[int], bool]:
    """One simple field: ``*``, ``*/k``, a value, a range, a stepped range or a list."""
    kind = draw(st.sampled_from(["star", "step", "value", "range", "list"] if dense else
                                ["value", "range", "list", "step"]))  # fmt: skip
    if kind == "star":
        return "*", set(range(low, high + 1)), True
    if kind == "step":
        k = draw(st.integers(1, max(1, (high - low) // 2)))
        return f"*/{k}", set(range(low, high + 1, k)), True
    if kind == "value":
        v = draw(st.integers(low, high))
        return str(v), {v}, False
    if kind == "range":
        a = draw(st.integers(low, high))
        b = draw(st.integers(a, high))
        k = draw(st.integers(1, 4))
        return (f"{a}-{b}/{k}" if k > 1 else f"{a}-{b}"), set(range(a, b + 1, k)), False
    values = draw(st.sets(st.integers(low, high), min_size=1, max_size=4))
    return ",".join(map(str, sorted(values))), values, False


@st.composite
def expressions(draw: st.DrawFn) -> Expr:
    """A random cron expression and its meaning, built without the parser."""
    with_seconds = draw(st.booleans())
    if with_seconds:
        stext, seconds, _ = draw(_simple(0, 59, dense=False))
        seconds = set(sorted(seconds)[:3])
        stext = ",".join(map(str, sorted(seconds)))
    else:
        stext, seconds = "", {0}
    mtext, minutes, mstar = draw(_simple(0, 59, dense=True))
    htext, hours, hstar = draw(_simple(0, 23, dense=True))
    if len(seconds) * len(minutes) * len(hours) > 1500:
        htext, hours, hstar = draw(_simple(0, 23, dense=False))

    dom_kind = draw(st.sampled_from(["star", "q", "simple", "L", "L-n", "LW", "W", "mix"]))
    dom_days: set[int] = set()
    from_end: set[int] = set()
    lw = False
    nearest: set[int] = set()
    if dom_kind in ("star", "q"):
        dtext, dom_days, dstar = ("*" if dom_kind == "star" else "?"), set(range(1, 32)), True
    elif dom_kind == "simple":
        dtext, dom_days, dstar = draw(_simple(1, 31, dense=True))
    else:
        dstar = False
        parts: list[str] = []
        if dom_kind in ("L", "mix"):
            parts.append("L")
            from_end.add(0)
        if dom_kind in ("L-n", "mix"):
            n = draw(st.integers(1, 10))
            parts.append(f"L-{n}")
            from_end.add(n)
        if dom_kind == "LW":
            parts.append("LW")
            lw = True
        if dom_kind in ("W", "mix"):
            n = draw(st.integers(1, 31))
            parts.append(f"{n}W")
            nearest.add(n)
        if dom_kind == "mix":
            v = draw(st.integers(1, 28))
            parts.append(str(v))
            dom_days.add(v)
        dtext = ",".join(parts)

    month_kind = draw(st.sampled_from(["star", "names", "simple"]))
    if month_kind == "star":
        motext, months = "*", set(range(1, 13))
    elif month_kind == "names":
        months = draw(st.sets(st.integers(1, 12), min_size=3, max_size=6))
        motext = ",".join(MONTHS[m - 1].lower() if m % 2 else MONTHS[m - 1] for m in sorted(months))
    else:
        motext, months, _ = draw(_simple(1, 12, dense=True))

    dow_kind = draw(st.sampled_from(["star", "q", "simple", "names", "nth", "last"]))
    dow_days: set[int] = set()
    nth: set[tuple[int, int]] = set()
    if dow_kind in ("star", "q"):
        wtext, dow_days, wstar = ("*" if dow_kind == "star" else "?"), set(range(7)), True
    elif dow_kind == "simple":
        wtext, raw, wstar = draw(_simple(0, 7, dense=True))
        dow_days = {v % 7 for v in raw}
    elif dow_kind == "names":
        a = draw(st.integers(0, 6))
        b = draw(st.integers(a, 6))
        wtext, dow_days, wstar = f"{DAYS[a]}-{DAYS[b]}", set(range(a, b + 1)), False
    elif dow_kind == "nth":
        wd, n = draw(st.integers(0, 7)), draw(st.integers(1, 5))
        wtext, nth, wstar = f"{wd}#{n}", {(wd % 7, n)}, False
    else:
        wd = draw(st.integers(0, 6))
        wtext, nth, wstar = f"{wd}L", {(wd, -1)}, False
    if dom_kind == "q" and dow_kind == "q":
        wtext = "*"

    text = " ".join(p for p in (stext, mtext, htext, dtext, motext, wtext) if p)
    return Expr(
        text=text,
        seconds=frozenset(seconds),
        minutes=frozenset(minutes),
        hours=frozenset(hours),
        months=frozenset(months),
        years=None,
        dom_days=frozenset(dom_days),
        dom_from_end=frozenset(from_end),
        dom_lw=lw,
        dom_nearest=frozenset(nearest),
        dow_days=frozenset(dow_days),
        dow_nth=frozenset(nth),
        day_and=dstar or wstar,
        fixed=not (mstar or hstar),
    )


@st.composite
def instants(draw: st.DrawFn, zone_name: str) -> datetime:
    """An instant in 1970-2100, often within hours of one of the zone's offset changes."""
    zone = ZoneInfo(zone_name)
    year = draw(st.integers(1970, 2100))
    start, end, _initial, changes, _ = _year_table(zone, year)
    if changes and draw(st.booleans()):
        t = draw(st.sampled_from(changes)) + draw(st.integers(-4 * 3600, 4 * 3600))
    else:
        t = draw(st.integers(start, end - 1))
    micro = draw(st.sampled_from([0, 0, 1, 500_000, 999_999]))
    return datetime.fromtimestamp(t, timezone.utc).replace(microsecond=micro).astimezone(zone)


HORIZON = 800


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), expr=expressions(), zone_name=st.sampled_from(ZONES))
def test_next_and_previous_agree_with_reference(
    data: st.DataObject, expr: Expr, zone_name: str
) -> None:
    """next_after and previous_before return what the brute-force reference computes."""
    try:
        schedule = Schedule.cron(expr.text, timezone=zone_name)
    except InvalidSchedule:
        assume(False)
        raise
    zone = ZoneInfo(zone_name)
    dt = data.draw(instants(zone_name))
    expected_next = reference.next_after(expr, zone, dt, HORIZON)
    if expected_next is not None:
        got = schedule.next_after(dt)
        assert got is not None, expr.text
        assert got.timestamp() == expected_next.timestamp(), (expr.text, dt, got, expected_next)
    expected_prev = reference.previous_before(expr, zone, dt, HORIZON)
    if expected_prev is not None:
        got = schedule.previous_before(dt)
        assert got is not None, expr.text
        assert got.timestamp() == expected_prev.timestamp(), (expr.text, dt, got, expected_prev)


@settings(max_examples=200, deadline=None)
@given(expr=expressions(), zone_name=st.sampled_from(ZONES), year=st.integers(1970, 2150))
def test_work_per_call_is_bounded(expr: Expr, zone_name: str, year: int) -> None:
    """Any valid expression answers within a few hundred evaluator steps per call."""
    try:
        schedule = Schedule.cron(expr.text, timezone=zone_name)
    except InvalidSchedule:
        return
    ev = schedule._evaluator
    dt = datetime(year, 6, 15, 12, tzinfo=timezone.utc)
    for call in (schedule.next_after, schedule.previous_before):
        ev.steps = 0
        call(dt)
        assert ev.steps <= 300, (expr.text, ev.steps)


@pytest.mark.parametrize(
    "expression",
    [
        "0 0 29 2 1",  # Feb 29 on a Monday: both fields restricted, so either matches
        "0 0 ? 2 FRI#5",  # a fifth Friday in February: leap years starting on a Friday
        "0 0 */29 2 MON",  # Feb 1 or 29 that is a Monday
        "0 0 29 2 */7",  # Feb 29 that is a Sunday
        "0 0 0 L 2 * 2196",  # one day in a far year
        "0 59 23 31 12 * 1970",  # in the past from anywhere
        "0 0 5W,LW 2 SUN#5",
    ],
)
@pytest.mark.parametrize("zone_name", ["UTC", "America/Denver", "Pacific/Apia"])
def test_rare_schedules_take_few_steps(expression: str, zone_name: str) -> None:
    """The rarest schedules found still answer in a bounded number of steps."""
    schedule = Schedule.cron(expression, timezone=zone_name)
    ev = schedule._evaluator
    for year in (1970, 2001, 2099, 2150):
        dt = datetime(year, 3, 1, tzinfo=timezone.utc)
        for call in (schedule.next_after, schedule.previous_before):
            ev.steps = 0
            call(dt)
            assert ev.steps <= 300, (expression, year, ev.steps)
