"""The evaluator: next and previous fire instants, as integer seconds since the epoch.

Calendar schedules are matched on the local wall clock, written as integer "wall seconds"
(the local date and time read as if it were UTC). Between two offset changes the wall
clock is the instant plus a constant offset, so the evaluator walks stretches of constant
offset (:func:`segment`) and, inside one, finds the first matching wall time with bisection
over sorted tuples. The DST policy lives at the edges of a stretch:

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

from ._spec import CalendarSpec, fires_every_month, is_leap, ordinal, weekday_of_first
from ._zone import EPOCH_ORDINAL, FAR_FUTURE, FAR_PAST, fixed_offset, segment

__all__ = ("CadenceEvaluator", "CronEvaluator")

DAY = 86400
# Stretches and calendar steps per call stay far below this; hitting it is a bug, not a
# slow schedule, so it raises instead of returning a wrong answer.
_STEP_LIMIT = 2000
_JUMP = 3 * DAY
_LAST_YEAR = 9998


class _StepLimit(RuntimeError):
    pass


class CronEvaluator:
    """Fire instants of a :class:`CalendarSpec` in one zone.

    ``steps`` counts loop iterations (stretches, years and months visited) so tests can
    show that the work per call is bounded; it is not part of the public API.
    """

    __slots__ = (
        "_always",
        "_first_tod",
        "_fixed_off",
        "_hours",
        "_last_tod",
        "_minutes",
        "_months",
        "_months_set",
        "_seconds",
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
        self._hours, self._minutes, self._seconds = spec.hours, spec.minutes, spec.seconds
        times = spec.times
        if times is None and len(spec.hours) * len(spec.minutes) * len(spec.seconds) <= 24:
            # One bisect over every time of the day beats three nested ones.
            times = tuple(
                h * 3600 + m * 60 + s
                for h in spec.hours
                for m in spec.minutes
                for s in spec.seconds
            )
        self._times = times
        if times is not None:
            self._first_tod, self._last_tod = times[0], times[-1]
        else:
            self._first_tod = spec.hours[0] * 3600 + spec.minutes[0] * 60 + spec.seconds[0]
            self._last_tod = spec.hours[-1] * 3600 + spec.minutes[-1] * 60 + spec.seconds[-1]
        self._months = spec.months
        self._months_set = frozenset(spec.months)
        self._years = spec.years
        self._years_set = None if spec.years is None else frozenset(spec.years)
        self._year_kinds: dict[tuple[bool, int], bool] = {}
        self._always = fires_every_month(spec)

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
        memo_lo = memo_w = memo_t = 0
        has_memo = False
        w: int | None
        t = tmin
        for _ in range(_STEP_LIMIT):
            self.steps += 1
            if has_memo and memo_t + _JUMP < t < memo_w - _JUMP:
                # Stretches more than a few days past the search start and before the next
                # match hold only non-matching wall times: skip them in one go.
                t = memo_w - _JUMP
            start, prev, off, end = segment(self.zone, t)
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
        for _ in range(_STEP_LIMIT):
            self.steps += 1
            if has_memo and memo_w + _JUMP < t < memo_t - _JUMP:
                t = memo_w + _JUMP
            start, prev, off, _end = segment(self.zone, t)
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

    def first_wall(self, w: int) -> int | None:
        """The smallest matching wall time at or after wall time ``w``."""
        days, sod = divmod(w, DAY)
        d = date.fromordinal(days + EPOCH_ORDINAL)
        y, m, dd = d.year, d.month, d.day
        if self._day_ok(y, m, dd):
            tod = self._tod_ge(sod)
            if tod is not None:
                return w - sod + tod
        nxt = self._next_day(y, m, dd)
        return None if nxt is None else (nxt - EPOCH_ORDINAL) * DAY + self._first_tod

    def last_wall(self, w: int) -> int | None:
        """The largest matching wall time at or before wall time ``w``."""
        days, sod = divmod(w, DAY)
        d = date.fromordinal(days + EPOCH_ORDINAL)
        y, m, dd = d.year, d.month, d.day
        if self._day_ok(y, m, dd):
            tod = self._tod_le(sod)
            if tod is not None:
                return w - sod + tod
        prv = self._prev_day(y, m, dd)
        return None if prv is None else (prv - EPOCH_ORDINAL) * DAY + self._last_tod

    def _day_ok(self, y: int, m: int, dd: int) -> bool:
        if m not in self._months_set or (self._years_set is not None and y not in self._years_set):
            return False
        return dd in self.spec.month_days(y, m)

    def _year_possible(self, y: int) -> bool:
        if self._always:
            return True
        # A year's months all follow from (leap year, weekday of 1 January): 14 kinds.
        kind = (is_leap(y), weekday_of_first(y, 1))
        ok = self._year_kinds.get(kind)
        if ok is None:
            spec = self.spec
            ok = self._year_kinds[kind] = any(spec.month_days(y, m) for m in self._months)
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
        month_days = self.spec.month_days
        if self._years_set is not None and y not in self._years_set:
            nxt = self._next_year(y)
            if nxt is None:
                return None
            y, m, dd = nxt, 1, 0
        for _ in range(_STEP_LIMIT):
            self.steps += 1
            if self._year_possible(y):
                for month in months[bisect_left(months, m) :]:
                    days = month_days(y, month)
                    i = bisect_right(days, dd) if month == m else 0
                    if i < len(days):
                        return ordinal(y, month, days[i])
                    self.steps += 1
            nxt = self._next_year(y)
            if nxt is None:
                return None
            y, m, dd = nxt, 1, 0
        raise _StepLimit(f"no day after {_STEP_LIMIT} steps")  # pragma: no cover

    def _prev_day(self, y: int, m: int, dd: int) -> int | None:
        """Ordinal of the last matching day strictly before ``y-m-dd``."""
        months = self._months
        month_days = self.spec.month_days
        if self._years_set is not None and y not in self._years_set:
            prv = self._prev_year(y)
            if prv is None:
                return None
            y, m, dd = prv, 12, 32
        for _ in range(_STEP_LIMIT):
            self.steps += 1
            if self._year_possible(y):
                for month in reversed(months[: bisect_right(months, m)]):
                    days = month_days(y, month)
                    i = bisect_left(days, dd) if month == m else len(days)
                    if i:
                        return ordinal(y, month, days[i - 1])
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
        hours, minutes, seconds = self._hours, self._minutes, self._seconds
        h, rest = divmod(sod, 3600)
        mi, s = divmod(rest, 60)
        i = bisect_left(hours, h)
        if i < len(hours) and hours[i] == h:
            j = bisect_left(minutes, mi)
            if j < len(minutes) and minutes[j] == mi:
                k = bisect_left(seconds, s)
                if k < len(seconds):
                    return sod - s + seconds[k]
                j += 1
            if j < len(minutes):
                return h * 3600 + minutes[j] * 60 + seconds[0]
            i += 1
        if i < len(hours):
            return hours[i] * 3600 + minutes[0] * 60 + seconds[0]
        return None

    def _tod_le(self, sod: int) -> int | None:
        times = self._times
        if times is not None:
            i = bisect_right(times, sod)
            return times[i - 1] if i else None
        hours, minutes, seconds = self._hours, self._minutes, self._seconds
        h, rest = divmod(sod, 3600)
        mi, s = divmod(rest, 60)
        i = bisect_right(hours, h)
        if i and hours[i - 1] == h:
            j = bisect_right(minutes, mi)
            if j and minutes[j - 1] == mi:
                k = bisect_right(seconds, s)
                if k:
                    return sod - s + seconds[k - 1]
                j -= 1
            if j:
                return h * 3600 + minutes[j - 1] * 60 + seconds[-1]
            i -= 1
        if i:
            return hours[i - 1] * 3600 + minutes[-1] * 60 + seconds[-1]
        return None


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
