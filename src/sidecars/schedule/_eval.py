"""The evaluator: next and previous fire instants, as integer seconds since the epoch.

Calendar schedules are matched on the local wall clock, written as integer "wall seconds"
(the local date and time read as if it were UTC). Between two offset changes the wall
clock is the instant plus a constant offset, so the evaluator walks stretches of constant
offset (:func:`segment`) and, inside one, finds the first matching wall time with bit
operations on the spec's masks (the next allowed value at or after ``v`` is the lowest set
bit of ``mask >> v``). The DST policy lives at the edges of a stretch:

* after a jump forward, a fixed local time that fell in the gap fires once, at the first
  instant after the gap (the stretch's start);
* after a jump back, a fixed local time already shown before the jump does not fire again,
  while wildcard patterns match the repeated wall times a second time;
* an instant is returned once, so times swallowed by one gap fire once.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from datetime import date
from zoneinfo import ZoneInfo

from ._spec import (
    ALL_DOM,
    ALL_DOW,
    CalendarSpec,
    bits,
    days_in_month,
    fires_every_month,
    is_leap,
    ordinal,
    weekday_of_first,
)
from ._zone import EPOCH_ORDINAL, FAR_FUTURE, FAR_PAST, fixed_offset, segment

__all__ = ("CadenceEvaluator", "CronEvaluator")

DAY = 86400
# Stretches and calendar steps per call stay far below this; hitting it is a bug, not a
# slow schedule, so it raises instead of returning a wrong answer.
_STEP_LIMIT = 2000
_JUMP = 3 * DAY
_LAST_YEAR = 9998
# Month lengths and ordinal offsets of each month's 1st (index 1-12; [leap] for leap years).
_LEN = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_LEN_LEAP = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_CUM = (
    tuple(1 + sum(_LEN[1:m]) for m in range(13)),
    tuple(1 + sum(_LEN_LEAP[1:m]) for m in range(13)),
)


def _year_base(y: int) -> int:
    """Ordinal of the last day of year ``y - 1`` (``date.toordinal`` numbering)."""
    p = y - 1
    return p * 365 + p // 4 - p // 100 + p // 400


_FULL = tuple((1 << (n + 1)) - 2 for n in range(32))  # days 1..n


class _StepLimit(RuntimeError):
    pass


class CronEvaluator:
    """Fire instants of a :class:`CalendarSpec` in one zone.

    Times of day, months and days are bitmasks; "the next allowed value at or after ``v``"
    is the lowest set bit of ``mask >> v``. ``steps`` counts loop iterations (stretches,
    years and months visited) so tests can show that the work per call is bounded; it is not
    part of the public API.
    """

    __slots__ = (
        "_always",
        "_every_day",
        "_first_tod",
        "_fixed_off",
        "_h",
        "_last_tod",
        "_m",
        "_months",
        "_s",
        "_shapes",
        "_times",
        "_year_kinds",
        "_years",
        "_years_set",
        "spec",
        "steps",
        "zone",
    )

    def __init__(self, spec: CalendarSpec, zone: ZoneInfo) -> None:
        self.spec = spec
        self.zone = zone
        self.steps = 0
        self._fixed_off = fixed_offset(zone)
        times = self._times = spec.times
        h, m, s = self._h, self._m, self._s = spec.hour_mask, spec.minute_mask, spec.second_mask
        if times is not None:
            self._first_tod, self._last_tod = times[0], times[-1]
        else:
            self._first_tod = (
                (h & -h).bit_length() * 3600 + (m & -m).bit_length() * 60 + (s & -s).bit_length()
            ) - 3661
            self._last_tod = h.bit_length() * 3600 + m.bit_length() * 60 + s.bit_length() - 3661
        self._months = spec.month_mask
        years = self._years = spec.years
        self._years_set = None if years is None else frozenset(years)
        self._year_kinds: dict[tuple[bool, int], bool] = {}
        self._shapes = spec._shapes
        if spec.day_and:
            every = spec.dom_mask == ALL_DOM and spec.dow_mask == ALL_DOW
        else:
            every = spec.dom_mask == ALL_DOM or spec.dow_mask == ALL_DOW
        self._every_day = every
        self._always = every or fires_every_month(spec)

    @property
    def always_fires_monthly(self) -> bool:
        """Some day matches in every month (so every allowed year can fire)."""
        return self._always

    # -- instants -------------------------------------------------------------------------

    def next_instant(self, tmin: int) -> int | None:
        """The first fire at or after instant ``tmin``."""
        off = self._fixed_off
        if off is not None:
            fw = self.first_wall(tmin + off)
            return None if fw is None else fw - off
        fixed = self.spec.fixed
        zone = self.zone
        t = tmin
        w: int | None
        start, prev, off, end = segment(zone, t)
        if prev == off or not fixed or (prev < off and t > start):
            # The usual case, no offset change to mind at the start of this stretch.
            self.steps += 1
            lo = t + off
            w = self.first_wall(lo)
            if w is None:
                return None
            if w < end + off:
                return w - off
            memo_lo, memo_w, memo_t, has_memo = lo, w, t, True
            t = end
        else:
            memo_lo = memo_w = memo_t = 0
            has_memo = False
        for _ in range(_STEP_LIMIT):
            self.steps += 1
            if has_memo and memo_t + _JUMP < t < memo_w - _JUMP:
                # Stretches more than a few days past the search start and before the next
                # match hold only non-matching wall times: skip them in one go.
                t = memo_w - _JUMP
            start, prev, off, end = segment(zone, t)
            if fixed and prev < off and t <= start:
                lo = start + prev
                if has_memo and memo_lo <= lo <= memo_w:
                    w = memo_w
                else:
                    w = self.first_wall(lo)
                    if w is None:
                        return None
                    memo_lo, memo_w, memo_t, has_memo = lo, w, t, True
                if w < start + off:
                    return start
            lo = t + off
            if fixed and prev > off and lo < start + prev:
                lo = start + prev
            if has_memo and memo_lo <= lo <= memo_w:
                w = memo_w
            else:
                w = self.first_wall(lo)
                if w is None:
                    return None
                memo_lo, memo_w, memo_t, has_memo = lo, w, t, True
            if w < end + off:
                return w - off
            t = end
        raise _StepLimit(f"no answer after {_STEP_LIMIT} steps")  # pragma: no cover

    def prev_instant(self, tmax: int) -> int | None:
        """The last fire at or before instant ``tmax``."""
        off = self._fixed_off
        if off is not None:
            lw = self.last_wall(tmax + off)
            return None if lw is None else lw - off
        fixed = self.spec.fixed
        memo_hi = memo_w = memo_t = 0
        has_memo = False
        w: int | None
        t = tmax
        zone = self.zone
        for _ in range(_STEP_LIMIT):
            self.steps += 1
            if has_memo and memo_w + _JUMP < t < memo_t - _JUMP:
                t = memo_w + _JUMP
            start, prev, off, _end = segment(zone, t)
            hi = t + off
            if has_memo and memo_w <= hi <= memo_hi:
                w = memo_w
            else:
                w = self.last_wall(hi)
                if w is None:
                    return None
                memo_hi, memo_w, memo_t, has_memo = hi, w, t, True
            lowest = start + prev if fixed and prev > off else start + off
            if w >= lowest:
                return w - off
            if fixed and prev < off and w >= start + prev:
                return start  # a fixed time in the gap fires when the gap ends
            t = start - 1
        raise _StepLimit(f"no answer after {_STEP_LIMIT} steps")  # pragma: no cover

    # -- wall clock -----------------------------------------------------------------------

    def _day_mask(self, ndays: int, first: int) -> int:
        """Matching days of a month of ``ndays`` days whose 1st has ordinal ``first``."""
        if self._every_day:
            return _FULL[ndays]
        key = ndays * 8 + first % 7
        mask = self._shapes.get(key, -1)
        if mask < 0:
            mask = self.spec.days(ndays, first % 7)
        return mask

    def first_wall(self, w: int) -> int | None:
        """The smallest matching wall time at or after wall time ``w``."""
        days, sod = divmod(w, DAY)
        n = days + EPOCH_ORDINAL
        d = date.fromordinal(n)
        y, m, dd = d.year, d.month, d.day
        if self._months >> m & 1 and (self._years_set is None or y in self._years_set):
            ndays = 29 if m == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0) else _LEN[m]
            mask = self._day_mask(ndays, n - dd + 1)
            if mask >> dd & 1:
                tod = self._tod_ge(sod)
                if tod is not None:
                    return w - sod + tod
            rest = mask >> (dd + 1)
            if rest:  # later this month
                return (days + 1 + ((rest & -rest).bit_length() - 1)) * DAY + self._first_tod
            nxt = self._next_day(y, m + 1, 0)
        else:
            nxt = self._next_day(y, m, dd)
        return None if nxt is None else (nxt - EPOCH_ORDINAL) * DAY + self._first_tod

    def last_wall(self, w: int) -> int | None:
        """The largest matching wall time at or before wall time ``w``."""
        days, sod = divmod(w, DAY)
        n = days + EPOCH_ORDINAL
        d = date.fromordinal(n)
        y, m, dd = d.year, d.month, d.day
        if self._months >> m & 1 and (self._years_set is None or y in self._years_set):
            ndays = 29 if m == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0) else _LEN[m]
            mask = self._day_mask(ndays, n - dd + 1)
            if mask >> dd & 1:
                tod = self._tod_le(sod)
                if tod is not None:
                    return w - sod + tod
            before = mask & ((1 << dd) - 1)
            if before:  # earlier this month
                return (days - dd + before.bit_length() - 1) * DAY + self._last_tod
            prv = self._prev_day(y, m - 1, 32)
        else:
            prv = self._prev_day(y, m, dd)
        return None if prv is None else (prv - EPOCH_ORDINAL) * DAY + self._last_tod

    def _year_possible(self, y: int) -> bool:
        if self._always:
            return True
        # A year's months all follow from (leap year, weekday of 1 January): 14 kinds.
        kind = (is_leap(y), weekday_of_first(y, 1))
        ok = self._year_kinds.get(kind)
        if ok is None:
            ok = self._year_kinds[kind] = any(
                self._day_mask(days_in_month(y, m), ordinal(y, m, 1)) for m in bits(self._months)
            )
        return ok

    def _next_year(self, y: int) -> int | None:
        if self._years is None:
            return y + 1 if y < _LAST_YEAR else None
        i = bisect_right(self._years, y)
        return self._years[i] if i < len(self._years) else None

    def _prev_year(self, y: int) -> int | None:
        if self._years is None:
            return y - 1 if y > 1 else None
        i = bisect_left(self._years, y)
        return self._years[i - 1] if i else None

    def _next_day(self, y: int, m: int, dd: int) -> int | None:
        """Ordinal of the first matching day strictly after ``y-m-dd``."""
        months = self._months
        if self._years_set is not None and y not in self._years_set:
            nxt = self._next_year(y)
            if nxt is None:
                return None
            y, m, dd = nxt, 1, 0
        first_year = True
        for _ in range(_STEP_LIMIT):
            self.steps += 1
            # The rest of the starting year is searched directly: telling whether a year can
            # fire at all costs as much, and pays off only for the years skipped after it.
            if first_year or self._year_possible(y):
                first_year = False
                left = months >> m << m
                leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
                base = _year_base(y)
                while left:
                    low = left & -left
                    left ^= low
                    month = low.bit_length() - 1
                    first = base + _CUM[leap][month]
                    mask = self._day_mask(_LEN_LEAP[month] if leap else _LEN[month], first)
                    if month == m:
                        mask = mask >> (dd + 1) << (dd + 1)
                    if mask:
                        return first + _low(mask) - 1
                    self.steps += 1
            nxt = self._next_year(y)
            if nxt is None:
                return None
            y, m, dd = nxt, 1, 0
        raise _StepLimit(f"no day after {_STEP_LIMIT} steps")  # pragma: no cover

    def _prev_day(self, y: int, m: int, dd: int) -> int | None:
        """Ordinal of the last matching day strictly before ``y-m-dd``."""
        months = self._months
        if self._years_set is not None and y not in self._years_set:
            prv = self._prev_year(y)
            if prv is None:
                return None
            y, m, dd = prv, 12, 32
        first_year = True
        for _ in range(_STEP_LIMIT):
            self.steps += 1
            if first_year or self._year_possible(y):
                first_year = False
                left = months & ((2 << m) - 1)
                leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
                base = _year_base(y)
                while left:
                    month = left.bit_length() - 1
                    left ^= 1 << month
                    first = base + _CUM[leap][month]
                    mask = self._day_mask(_LEN_LEAP[month] if leap else _LEN[month], first)
                    if month == m:
                        mask &= (1 << dd) - 1
                    if mask:
                        return first + mask.bit_length() - 2
                    self.steps += 1
            prv = self._prev_year(y)
            if prv is None:
                return None
            y, m, dd = prv, 12, 32
        raise _StepLimit(f"no day before {_STEP_LIMIT} steps")  # pragma: no cover

    def _tod_ge(self, sod: int) -> int | None:
        times = self._times
        if times is not None:
            i = bisect_left(times, sod)
            return times[i] if i < len(times) else None
        hours, minutes = self._h, self._m
        h, rest = divmod(sod, 3600)
        mi, s = divmod(rest, 60)
        if hours >> h & 1:
            if minutes >> mi & 1:
                x = self._s >> s
                if x:
                    return sod + _low(x)
            x = minutes >> (mi + 1)
            if x:
                return h * 3600 + (mi + 1 + _low(x)) * 60 + _low(self._s)
        x = hours >> (h + 1)
        if x:
            return (h + 1 + _low(x)) * 3600 + self._first_tod % 3600
        return None

    def _tod_le(self, sod: int) -> int | None:
        times = self._times
        if times is not None:
            i = bisect_right(times, sod)
            return times[i - 1] if i else None
        hours, minutes = self._h, self._m
        h, rest = divmod(sod, 3600)
        mi, s = divmod(rest, 60)
        if hours >> h & 1:
            if minutes >> mi & 1:
                x = self._s & ((2 << s) - 1)
                if x:
                    return sod - s + x.bit_length() - 1
            x = minutes & ((1 << mi) - 1)
            if x:
                return h * 3600 + (x.bit_length() - 1) * 60 + self._s.bit_length() - 1
        x = hours & ((1 << h) - 1)
        if x:
            return (x.bit_length() - 1) * 3600 + self._last_tod % 3600
        return None


def _low(mask: int) -> int:
    """Index of the lowest set bit of a non-zero mask."""
    return (mask & -mask).bit_length() - 1


class CadenceEvaluator:
    """Instants ``anchor + k * every``, optionally kept only inside a local window.

    The window is a time-of-day interval ``[start, end)`` (wrapping past midnight when
    ``start > end``) on allowed weekdays; a wrapped window belongs to the day it opens.
    """

    __slots__ = ("_fixed_off", "anchor", "every", "steps", "weekdays", "window", "zone")

    def __init__(
        self,
        every: int,
        anchor: int,
        zone: ZoneInfo,
        window: tuple[int, int] | None,
        weekdays: frozenset[int] | None,
    ) -> None:
        self.every, self.anchor, self.zone = every, anchor, zone
        self.window, self.weekdays = window, weekdays
        self.steps = 0
        self._fixed_off = fixed_offset(zone)

    def _segment(self, t: int) -> tuple[int, int, int, int]:
        if self._fixed_off is not None:
            return FAR_PAST, self._fixed_off, self._fixed_off, FAR_FUTURE
        return segment(self.zone, t)

    def next_instant(self, tmin: int) -> int | None:
        """The first fire at or after instant ``tmin``."""
        every, anchor = self.every, self.anchor
        t = tmin
        for _ in range(_STEP_LIMIT):
            self.steps += 1
            f = anchor - (anchor - t) // every * every  # the grid point at or after t
            if self.window is None and self.weekdays is None:
                return f
            _start, _prev, off, end = self._segment(f)
            w = self._open_at_or_after(f + off)
            if w == f + off:
                return f
            t = w - off
            if t >= end:
                t = end
        raise _StepLimit(f"no answer after {_STEP_LIMIT} steps")  # pragma: no cover

    def prev_instant(self, tmax: int) -> int | None:
        """The last fire at or before instant ``tmax``."""
        every, anchor = self.every, self.anchor
        t = tmax
        for _ in range(_STEP_LIMIT):
            self.steps += 1
            f = anchor + (t - anchor) // every * every  # the grid point at or before t
            if self.window is None and self.weekdays is None:
                return f
            start, _prev, off, _end = self._segment(f)
            w = self._open_at_or_before(f + off)
            if w == f + off:
                return f
            t = w - off
            if t < start:
                t = start - 1
        raise _StepLimit(f"no answer after {_STEP_LIMIT} steps")  # pragma: no cover

    def _intervals(self, day: int) -> tuple[int, int] | None:
        """The allowed wall-time interval opening on ``day`` (days since the epoch)."""
        if self.weekdays is not None and (day + 4) % 7 not in self.weekdays:
            return None  # 1970-01-01 was a Thursday, cron weekday 4
        if self.window is None:
            return day * DAY, (day + 1) * DAY
        open_, close = self.window
        length = (close - open_) % DAY
        return day * DAY + open_, day * DAY + open_ + length

    def _open_at_or_after(self, w: int) -> int:
        day = w // DAY
        for d in range(day - 1, day + 9):
            span = self._intervals(d)
            if span is not None and w < span[1]:
                return max(w, span[0])
        raise _StepLimit("no open window within a week")  # pragma: no cover

    def _open_at_or_before(self, w: int) -> int:
        day = w // DAY
        for d in range(day, day - 9, -1):
            span = self._intervals(d)
            if span is not None and span[0] <= w:
                return min(w, span[1] - 1)
        raise _StepLimit("no open window within a week")  # pragma: no cover
