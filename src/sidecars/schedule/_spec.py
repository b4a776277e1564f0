"""The compiled form every calendar schedule is reduced to, and its day arithmetic.

Cron expressions and the declarative form both compile to a :class:`CalendarSpec`: sorted
tuples of allowed seconds, minutes, hours, months and years, plus a day rule. Which days of
a month match depends only on the month's length and the weekday of its 1st, so day sets are
computed once per such "shape" (at most 28 of them) and cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = (
    "MAX_YEAR",
    "MIN_YEAR",
    "CalendarSpec",
    "can_fire",
    "days_in_month",
    "fires_every_month",
    "is_leap",
    "ordinal",
    "weekday_of_first",
)

MIN_YEAR = 1970
MAX_YEAR = 2199

_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def is_leap(year: int) -> bool:
    """Gregorian leap year rule."""
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def days_in_month(year: int, month: int) -> int:
    """Length of ``month`` (1-12) in ``year``."""
    if month == 2 and is_leap(year):
        return 29
    return _MONTH_DAYS[month - 1]


def days_before_year(year: int) -> int:
    """Days from 0001-01-01 to ``year``-01-01 (proleptic Gregorian, as ``date.toordinal``)."""
    y = year - 1
    return y * 365 + y // 4 - y // 100 + y // 400


_CUMULATIVE = tuple(sum(_MONTH_DAYS[:i]) for i in range(12))


def ordinal(year: int, month: int, day: int) -> int:
    """Same value as ``date(year, month, day).toordinal()``, without building a date."""
    n = days_before_year(year) + _CUMULATIVE[month - 1] + day
    if month > 2 and is_leap(year):
        n += 1
    return n


def weekday_of_first(year: int, month: int) -> int:
    """Cron weekday (0 = Sunday) of the 1st of the month: ordinal 1 (0001-01-01) is a Monday."""
    return ordinal(year, month, 1) % 7


@dataclass(frozen=True, slots=True)
class CalendarSpec:
    """Which local wall-clock times match; the evaluator turns them into instants.

    Attributes:
        seconds, minutes, hours, months: sorted allowed values.
        years: sorted allowed years, or ``None`` for every year.
        dom_days: plain days of the month (1-31).
        dom_from_end: days counted back from the last (0 is the last day, 3 is ``L-3``).
        dom_last_weekday: ``LW``, the last Monday-Friday of the month.
        dom_nearest: ``nW`` days, each moved to the nearest weekday inside the month.
        dow_days: weekdays, cron numbering (0 = Sunday).
        dow_nth: ``(weekday, n)`` for the n-th weekday of the month, ``n == -1`` for the last.
        day_and: both day rules must hold (cron: one of the two fields starts with ``*``);
            otherwise a day matching either rule matches.
        times: explicit sorted seconds of the day (declarative ``at=``), used instead of the
            product of hours, minutes and seconds when set.
        fixed: local times are fixed times of day (DST: a gap fires once after it, a repeated
            time fires once); otherwise a wildcard pattern that fires at every real instant
            whose wall clock matches.
    """

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: tuple[int, ...]
    years: tuple[int, ...] | None
    dom_days: frozenset[int]
    dom_from_end: frozenset[int]
    dom_last_weekday: bool
    dom_nearest: frozenset[int]
    dow_days: frozenset[int]
    dow_nth: frozenset[tuple[int, int]]
    day_and: bool
    fixed: bool
    times: tuple[int, ...] | None = None
    _shapes: dict[tuple[int, int], tuple[int, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def days(self, ndays: int, wd1: int) -> tuple[int, ...]:
        """Matching days of a month of ``ndays`` days whose 1st falls on cron weekday ``wd1``."""
        key = (ndays, wd1)
        cached = self._shapes.get(key)
        if cached is None:
            cached = self._shapes[key] = self._compute_days(ndays, wd1)
        return cached

    def _compute_days(self, ndays: int, wd1: int) -> tuple[int, ...]:
        def weekday(day: int) -> int:
            return (wd1 + day - 1) % 7

        # None stands for "every day of the month", the common case, kept cheap.
        dom: set[int] | None = None
        if len(self.dom_days) < 31:
            dom = {d for d in self.dom_days if d <= ndays}
            dom.update(ndays - n for n in self.dom_from_end if ndays - n >= 1)
            if self.dom_last_weekday:
                last = ndays
                while weekday(last) in (0, 6):
                    last -= 1
                dom.add(last)
            for n in self.dom_nearest:
                # The nearest weekday never leaves the month: a Saturday 1st moves to Monday
                # the 3rd and a Sunday last day back to Friday; 31W does not exist in April.
                if n > ndays:
                    continue
                wd = weekday(n)
                if wd == 6:
                    dom.add(n - 1 if n > 1 else n + 2)
                elif wd == 0:
                    dom.add(n + 1 if n < ndays else n - 2)
                else:
                    dom.add(n)
        dow: set[int] | None = None
        if len(self.dow_days) < 7:
            dow = set()
            for wd in self.dow_days:
                dow.update(range(1 + (wd - wd1) % 7, ndays + 1, 7))
            for wd, n in self.dow_nth:
                if n == -1:
                    dow.add(ndays - (weekday(ndays) - wd) % 7)
                elif (day := 1 + (wd - wd1) % 7 + 7 * (n - 1)) <= ndays:
                    dow.add(day)
        if self.day_and:
            if dom is None:
                return tuple(range(1, ndays + 1)) if dow is None else tuple(sorted(dow))
            return tuple(sorted(dom if dow is None else dom & dow))
        if dom is None or dow is None:
            return tuple(range(1, ndays + 1))
        return tuple(sorted(dom | dow))

    def month_days(self, year: int, month: int) -> tuple[int, ...]:
        """Matching days of ``month`` in ``year`` (the month and year sets are not checked)."""
        return self.days(days_in_month(year, month), weekday_of_first(year, month))


def can_fire(spec: CalendarSpec) -> bool:
    """Whether any day ever matches (call :func:`fires_every_month` first, it is quicker).

    Weekdays repeat exactly every 400 Gregorian years (146,097 days are 20,871 weeks), and a
    month's matching days depend only on its length and the weekday of its 1st, so checking
    one 400-year cycle (or every allowed year, when there are fewer) decides it exactly.
    """
    years = spec.years if spec.years is not None else range(2000, 2400)
    seen: set[tuple[bool, int]] = set()
    for year in years:
        kind = (is_leap(year), weekday_of_first(year, 1))
        if kind in seen:
            continue
        seen.add(kind)
        if any(spec.month_days(year, month) for month in spec.months):
            return True
    return False


def fires_every_month(spec: CalendarSpec) -> bool:
    """A quick sufficient answer for the usual expressions: some day matches in any month."""
    dom_any = len(spec.dom_days) == 31
    dom_always = (
        (bool(spec.dom_days) and min(spec.dom_days) <= 28)
        or (bool(spec.dom_from_end) and min(spec.dom_from_end) <= 27)
        or spec.dom_last_weekday
        or (bool(spec.dom_nearest) and min(spec.dom_nearest) <= 28)
    )
    dow_any = len(spec.dow_days) == 7
    dow_always = bool(spec.dow_days) or (
        bool(spec.dow_nth) and min(n for _wd, n in spec.dow_nth) <= 4
    )
    if spec.day_and:
        return (dom_any and dow_always) or (dow_any and dom_always)
    return dom_always or dow_always
