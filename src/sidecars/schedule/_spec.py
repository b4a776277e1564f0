"""The compiled form every calendar schedule is reduced to, and its day arithmetic.

Cron expressions and the declarative form both compile to a :class:`CalendarSpec`: bitmasks
of allowed seconds, minutes, hours, months, days of the month and weekdays (bit ``v`` set
when value ``v`` is allowed), sorted years, and a day rule. Which days of a month match
depends only on the month's length and the weekday of its 1st, so the day mask of each such
"shape" (at most 28 of them) is computed the first time it is needed and cached.
"""

from __future__ import annotations

__all__ = (
    "ALL_DOM",
    "ALL_DOW",
    "EMPTY_NTH",
    "MAX_YEAR",
    "MIN_YEAR",
    "CalendarSpec",
    "bits",
    "can_fire",
    "days_in_month",
    "fires_every_month",
    "is_leap",
    "mask_of",
    "ordinal",
    "weekday_of_first",
)

MIN_YEAR = 1970
MAX_YEAR = 2199

_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

ALL_DOM = (1 << 32) - 2  # days 1-31
ALL_DOW = (1 << 7) - 1  # weekdays 0-6
EMPTY_NTH: frozenset[tuple[int, int]] = frozenset()
# FULL[n]: days 1..n of a month of n days.
_FULL = tuple((1 << (n + 1)) - 2 for n in range(32))
# A 7-bit weekday mask repeated six times; shifted by the weekday of the 1st it gives the
# days of a month that fall on those weekdays (see CalendarSpec._compute).
_REP7 = sum(1 << (7 * k) for k in range(6))


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


def bits(mask: int) -> tuple[int, ...]:
    """The set bits of ``mask``, ascending."""
    out: list[int] = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return tuple(out)


def mask_of(values: object) -> int:
    """The bitmask of an iterable of small non-negative ints."""
    mask = 0
    for v in values:  # type: ignore[attr-defined]
        mask |= 1 << v
    return mask


class CalendarSpec:
    """Which local wall-clock times match; the evaluator turns them into instants.

    Treat instances as immutable values (they compare and hash by their fields); only the
    cache of day masks per month shape fills in as it is used.

    Attributes:
        second_mask, minute_mask, hour_mask, month_mask: allowed values as bitmasks.
        years: sorted allowed years, or ``None`` for every year.
        dom_mask: plain days of the month (bits 1-31).
        dom_from_end_mask: days counted back from the last (bit 0 is the last day, bit 3
            is ``L-3``).
        dom_last_weekday: ``LW``, the last Monday-Friday of the month.
        dom_nearest_mask: ``nW`` days, each moved to the nearest weekday inside the month.
        dow_mask: weekdays, cron numbering (bit 0 = Sunday).
        dow_nth: ``(weekday, n)`` for the n-th weekday of the month, ``n == -1`` for the last.
        day_and: both day rules must hold (cron: one of the two fields starts with ``*``);
            otherwise a day matching either rule matches.
        fixed: local times are fixed times of day (DST: a gap fires once after it, a repeated
            time fires once); otherwise a wildcard pattern that fires at every real instant
            whose wall clock matches.
        times: explicit sorted seconds of the day (declarative ``at=``), used instead of the
            product of hours, minutes and seconds when set.

    ``seconds``, ``minutes``, ``hours``, ``months`` (sorted tuples) and ``dom_days``,
    ``dom_from_end``, ``dom_nearest``, ``dow_days`` (frozensets) give the same sets as
    values.
    """

    __slots__ = (
        "_hash",
        "_shapes",
        "day_and",
        "dom_from_end_mask",
        "dom_last_weekday",
        "dom_mask",
        "dom_nearest_mask",
        "dow_mask",
        "dow_nth",
        "fixed",
        "hour_mask",
        "minute_mask",
        "month_mask",
        "second_mask",
        "times",
        "years",
    )

    def __init__(
        self,
        second_mask: int,
        minute_mask: int,
        hour_mask: int,
        month_mask: int,
        years: tuple[int, ...] | None,
        dom_mask: int,
        dom_from_end_mask: int,
        dom_last_weekday: bool,
        dom_nearest_mask: int,
        dow_mask: int,
        dow_nth: frozenset[tuple[int, int]],
        day_and: bool,
        fixed: bool,
        times: tuple[int, ...] | None = None,
    ) -> None:
        self.second_mask = second_mask
        self.minute_mask = minute_mask
        self.hour_mask = hour_mask
        self.month_mask = month_mask
        self.years = years
        self.dom_mask = dom_mask
        self.dom_from_end_mask = dom_from_end_mask
        self.dom_last_weekday = dom_last_weekday
        self.dom_nearest_mask = dom_nearest_mask
        self.dow_mask = dow_mask
        self.dow_nth = dow_nth
        self.day_and = day_and
        self.fixed = fixed
        self.times = times
        self._shapes: dict[int, int] = {}
        self._hash: int | None = None

    # -- value semantics ------------------------------------------------------------------

    def _fields(self) -> tuple[object, ...]:
        return (
            self.second_mask,
            self.minute_mask,
            self.hour_mask,
            self.month_mask,
            self.years,
            self.dom_mask,
            self.dom_from_end_mask,
            self.dom_last_weekday,
            self.dom_nearest_mask,
            self.dow_mask,
            self.dow_nth,
            self.day_and,
            self.fixed,
            self.times,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CalendarSpec):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = self._hash = hash(self._fields())
        return h

    def __repr__(self) -> str:
        return (
            f"CalendarSpec(seconds={self.seconds}, minutes={self.minutes}, hours={self.hours}, "
            f"months={self.months}, years={self.years}, dom_days={sorted(self.dom_days)}, "
            f"dom_from_end={sorted(self.dom_from_end)}, "
            f"dom_last_weekday={self.dom_last_weekday}, "
            f"dom_nearest={sorted(self.dom_nearest)}, dow_days={sorted(self.dow_days)}, "
            f"dow_nth={sorted(self.dow_nth)}, day_and={self.day_and}, fixed={self.fixed}, "
            f"times={self.times})"
        )

    # -- the sets as values ---------------------------------------------------------------

    @property
    def seconds(self) -> tuple[int, ...]:
        return bits(self.second_mask)

    @property
    def minutes(self) -> tuple[int, ...]:
        return bits(self.minute_mask)

    @property
    def hours(self) -> tuple[int, ...]:
        return bits(self.hour_mask)

    @property
    def months(self) -> tuple[int, ...]:
        return bits(self.month_mask)

    @property
    def dom_days(self) -> frozenset[int]:
        return frozenset(bits(self.dom_mask))

    @property
    def dom_from_end(self) -> frozenset[int]:
        return frozenset(bits(self.dom_from_end_mask))

    @property
    def dom_nearest(self) -> frozenset[int]:
        return frozenset(bits(self.dom_nearest_mask))

    @property
    def dow_days(self) -> frozenset[int]:
        return frozenset(bits(self.dow_mask))

    # -- days -----------------------------------------------------------------------------

    def days(self, ndays: int, wd1: int) -> int:
        """Day mask (bits 1..ndays) of a month of ``ndays`` days whose 1st is weekday ``wd1``."""
        key = ndays * 8 + wd1
        cached = self._shapes.get(key)
        if cached is None:
            cached = self._shapes[key] = self._compute(ndays, wd1)
        return cached

    def _compute(self, ndays: int, wd1: int) -> int:
        full = _FULL[ndays]
        # -1 stands for "every day of the month", the common case, kept cheap.
        dom = -1
        if self.dom_mask != ALL_DOM:
            dom = self.dom_mask & full
            fe = self.dom_from_end_mask
            while fe:
                low = fe & -fe
                fe ^= low
                n = low.bit_length() - 1
                if ndays - n >= 1:
                    dom |= 1 << (ndays - n)
            if self.dom_last_weekday:
                last = ndays
                while (wd1 + last - 1) % 7 in (0, 6):
                    last -= 1
                dom |= 1 << last
            near = self.dom_nearest_mask & full
            while near:
                # The nearest weekday never leaves the month: a Saturday 1st moves to Monday
                # the 3rd and a Sunday last day back to Friday; 31W does not exist in April.
                low = near & -near
                near ^= low
                n = low.bit_length() - 1
                wd = (wd1 + n - 1) % 7
                if wd == 6:
                    dom |= 1 << (n - 1 if n > 1 else n + 2)
                elif wd == 0:
                    dom |= 1 << (n + 1 if n < ndays else n - 2)
                else:
                    dom |= low
        dow = -1
        if self.dow_mask != ALL_DOW:
            # Bit d of the shifted pattern is weekday (wd1 + d - 1) % 7 of the mask.
            dow = ((self.dow_mask * _REP7) << 1 >> wd1) & full
            for wd, n in self.dow_nth:
                if n == -1:
                    dow |= 1 << (ndays - ((wd1 + ndays - 1) % 7 - wd) % 7)
                elif (day := 1 + (wd - wd1) % 7 + 7 * (n - 1)) <= ndays:
                    dow |= 1 << day
        if self.day_and:
            return dom & dow & full
        if dom == -1 or dow == -1:
            return full
        return dom | dow

    def month_days(self, year: int, month: int) -> tuple[int, ...]:
        """Matching days of ``month`` in ``year`` (the month and year sets are not checked)."""
        return bits(self.days(days_in_month(year, month), weekday_of_first(year, month)))

    def every_day(self) -> bool:
        """Whether every day of every month matches the day rule."""
        if self.day_and:
            return self.dom_mask == ALL_DOM and self.dow_mask == ALL_DOW
        return self.dom_mask == ALL_DOM or self.dow_mask == ALL_DOW


_FEBRUARY = 1 << 2
_THIRTY = (1 << 4) | (1 << 6) | (1 << 9) | (1 << 11)
_THIRTY_ONE = (1 << 1) | (1 << 3) | (1 << 5) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 12)


def can_fire(spec: CalendarSpec) -> bool:
    """Whether any day ever matches (call :func:`fires_every_month` first, it is quicker).

    Weekdays repeat exactly every 400 Gregorian years (146,097 days are 20,871 weeks), and a
    month's matching days depend only on its length and the weekday of its 1st. Without a
    year field every month takes each of its lengths with its 1st on each weekday within one
    cycle (February's 29 days included: leap years start on every weekday), so trying those
    at most 28 shapes decides it exactly; with one, every allowed year is checked.
    """
    months = spec.month_mask
    if spec.years is None:
        longest = 31 if months & _THIRTY_ONE else 30 if months & _THIRTY else 29
        if spec.dom_mask & _FULL[longest] and (spec.dow_mask == ALL_DOW or not spec.day_and):
            return True  # a plain day of the month that the longest allowed month has
        lengths: list[int] = []
        if months & _THIRTY_ONE:
            lengths.append(31)
        if months & _THIRTY:
            lengths.append(30)
        if months & _FEBRUARY:
            lengths += (29, 28)
        days = spec.days
        return any(days(ndays, wd1) for ndays in lengths for wd1 in range(7))
    seen: set[tuple[bool, int]] = set()
    for year in spec.years:
        kind = (is_leap(year), weekday_of_first(year, 1))
        if kind in seen:
            continue
        seen.add(kind)
        if any(spec.month_days(year, month) for month in spec.months):
            return True
    return False


_FIRST_28 = _FULL[28]


def fires_every_month(spec: CalendarSpec) -> bool:
    """A quick sufficient answer for the usual expressions: some day matches in any month."""
    dom_always = bool(
        spec.dom_mask & _FIRST_28
        or spec.dom_from_end_mask & ((1 << 28) - 1)
        or spec.dom_last_weekday
        or spec.dom_nearest_mask & _FIRST_28
    )
    dow_always = bool(spec.dow_mask) or (
        bool(spec.dow_nth) and min(n for _wd, n in spec.dow_nth) <= 4
    )
    if spec.day_and:
        return (spec.dom_mask == ALL_DOM and dow_always) or (
            spec.dow_mask == ALL_DOW and dom_always
        )
    return dom_always or dow_always
