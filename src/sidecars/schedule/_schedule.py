"""The public :class:`Schedule`, its declarative form, :class:`At` and :class:`Weekday`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from enum import IntEnum
from typing import Union, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..exceptions import InvalidSchedule
from ._eval import CadenceEvaluator, CronEvaluator
from ._parse import MONTH_NAMES, WEEKDAY_NAMES, parse_cron
from ._spec import CalendarSpec, can_fire, fires_every_month, mask_of

__all__ = ("At", "Schedule", "Weekday")

_EPOCH = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)
_FULL_MONTHS = (
    "JANUARY", "FEBRUARY", "MARCH", "APRIL", "MAY", "JUNE",
    "JULY", "AUGUST", "SEPTEMBER", "OCTOBER", "NOVEMBER", "DECEMBER",
)  # fmt: skip


class Weekday(IntEnum):
    """Days of the week in cron numbering: Sunday is 0 (cron also reads 7 as Sunday)."""

    SUNDAY = 0
    MONDAY = 1
    TUESDAY = 2
    WEDNESDAY = 3
    THURSDAY = 4
    FRIDAY = 5
    SATURDAY = 6


@dataclass(frozen=True, slots=True)
class At:
    """A local time of day for the declarative form, e.g. ``At(3)`` or ``At(17, 30)``.

    Attributes:
        hour: 0-23.
        minute: 0-59.
        second: 0-59.
    """

    hour: int
    minute: int = 0
    second: int = 0

    def __post_init__(self) -> None:
        for name, value, high in (("hour", self.hour, 23), ("minute", self.minute, 59),
                                  ("second", self.second, 59)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
                raise InvalidSchedule(
                    f"invalid At: {name} must be an int in 0-{high}, got {value!r}"
                )

    @property
    def seconds(self) -> int:
        """Seconds since midnight."""
        return self.hour * 3600 + self.minute * 60 + self.second

    def __str__(self) -> str:
        text = f"{self.hour:02d}:{self.minute:02d}"
        return f"{text}:{self.second:02d}" if self.second else text


_WEEKDAY_LOOKUP = {
    **{name: i for i, name in enumerate(WEEKDAY_NAMES)},
    **{day.name: day.value for day in Weekday},
}

WeekdayLike = Union[int, Weekday, str]  # noqa: UP007 -- a runtime alias must work on 3.10 too
MonthLike = Union[int, str]  # noqa: UP007


def _zone(value: str | ZoneInfo, context: str) -> ZoneInfo:
    if isinstance(value, ZoneInfo):
        return value
    if not isinstance(value, str):
        raise InvalidSchedule(f"{context}: timezone must be a zone name or ZoneInfo, got {value!r}")
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidSchedule(
            f"{context}: unknown timezone {value!r} (use an IANA name such as 'Europe/Paris')"
        ) from None


def _cron_zone(value: str | ZoneInfo, expression: str) -> ZoneInfo:
    """:func:`_zone` for a cron expression, building the error context only on an error."""
    if type(value) is str:
        try:
            return ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    elif isinstance(value, ZoneInfo):
        return value
    return _zone(value, f"invalid cron expression {expression!r}")


def _seq(value: object) -> list[object]:
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return [value]


def _weekday(value: object, context: str) -> int:
    if isinstance(value, str):
        found = _WEEKDAY_LOOKUP.get(value.strip().upper())
        if found is not None:
            return found
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 7:
        return value % 7
    raise InvalidSchedule(
        f"{context}: unknown weekday {value!r} (0-7 with 0 and 7 Sunday, or a name)"
    )


def _month(value: object, context: str) -> int:
    if isinstance(value, str):
        key = value.strip().upper()
        if key in MONTH_NAMES:
            return MONTH_NAMES.index(key) + 1
        if key in _FULL_MONTHS:
            return _FULL_MONTHS.index(key) + 1
    elif isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 12:
        return value
    raise InvalidSchedule(f"{context}: unknown month {value!r} (1-12 or a name)")


def _timestamp(dt: datetime) -> float:
    if not isinstance(dt, datetime):
        raise TypeError(f"expected an aware datetime, got {type(dt).__name__}")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(
            f"naive datetime {dt.isoformat()} has no time zone; pass an aware datetime "
            "(e.g. datetime.now(timezone.utc))"
        )
    return dt.timestamp()


class Schedule:
    """When something fires: a cron expression or a declarative calendar, or a cadence.

    Build one with :meth:`Schedule.cron` or with keywords::

        Schedule(on_day_of_month=1, at=[At(3)], timezone="America/Denver")
        Schedule(on_weekdays=["MON", "FRI"], at=[At(9), At(17, 30)])
        Schedule(on_nth_weekday=[(3, Weekday.FRIDAY)], in_months=["JAN", "JUL"])
        Schedule(on_day_of_month=-1)                     # the last day of every month
        Schedule(every=timedelta(minutes=5))             # elapsed time, aligned to the epoch
        Schedule(every=timedelta(minutes=30), between=(At(9), At(17)), on_weekdays=range(1, 6))

    Calendar keywords all have to hold (a day must be the 13th *and* a Friday for
    ``on_day_of_month=13, on_weekdays=[5]``); ``at`` defaults to midnight.

    Args:
        every: a cadence: fire every this long (whole seconds, at least one second),
            counted in elapsed time, not wall-clock time.
        anchor: an aware datetime the cadence is aligned to (default: the Unix epoch).
        between: with ``every``, keep only fires whose local time of day is in
            ``[start, end)``; a window with ``start > end`` runs past midnight.
        at: local times of day (default ``At(0)``).
        on_day_of_month: days 1-31, or negative days counted from the month's end
            (-1 is the last day, -2 the day before).
        on_weekdays: weekdays as cron numbers (0 or 7 Sunday, 1 Monday ... 6 Saturday),
            :class:`Weekday` members or names (``"MON"``, ``"monday"``).
        on_nth_weekday: ``(n, weekday)`` pairs: n-th weekday of the month (1-5), or the
            last one for ``n == -1``.
        in_months: months 1-12 or names.
        timezone: an IANA zone name or a ``ZoneInfo``; local times are read in it.

    Raises:
        InvalidSchedule: a value is out of range or the keywords contradict each other.
    """

    # A calendar schedule's spec and value key come from its evaluator; only a cadence sets
    # _key. A cron schedule's repr (_repr None) is built when asked for.
    __slots__ = ("_evaluator", "_expression", "_key", "_repr", "_zone")

    _evaluator: CronEvaluator | CadenceEvaluator
    _expression: str | None
    _key: tuple[object, ...]
    _repr: str | None
    _zone: ZoneInfo

    def __init__(
        self,
        *,
        every: timedelta | None = None,
        anchor: datetime | None = None,
        between: tuple[At, At] | None = None,
        at: At | Sequence[At] | None = None,
        on_day_of_month: int | Iterable[int] | None = None,
        on_weekdays: WeekdayLike | Iterable[WeekdayLike] | None = None,
        on_nth_weekday: tuple[int, WeekdayLike] | Iterable[tuple[int, WeekdayLike]] | None = None,
        in_months: MonthLike | Iterable[MonthLike] | None = None,
        timezone: str | ZoneInfo = "UTC",
    ) -> None:
        ctx = "invalid schedule"
        zone = _zone(timezone, ctx)
        named: tuple[tuple[str, object], ...] = (
            ("at", at),
            ("on_day_of_month", on_day_of_month),
            ("on_weekdays", on_weekdays),
            ("on_nth_weekday", on_nth_weekday),
            ("in_months", in_months),
            ("anchor", anchor),
            ("between", between),
        )
        given = {name: value for name, value in named if value is not None}
        args = ", ".join(f"{k}={v!r}" for k, v in given.items())
        if every is not None:
            self._init_cadence(every, anchor, between, on_weekdays, zone, given)
            return
        if "anchor" in given or "between" in given:
            name = "anchor" if "anchor" in given else "between"
            raise InvalidSchedule(f"{ctx}: {name}= only applies to a cadence (every=)")
        if not given:
            raise InvalidSchedule(
                f"{ctx}: give every= for a cadence, or at least one of at=, on_day_of_month=, "
                "on_weekdays=, on_nth_weekday=, in_months="
            )
        times = _seq(at) if at is not None else [At(0)]
        if not times or not all(isinstance(t, At) for t in times):
            raise InvalidSchedule(f"{ctx}: at= takes At(...) values, got {at!r}")
        tods = tuple(sorted({t.seconds for t in times if isinstance(t, At)}))

        dom_days: set[int] = set()
        from_end: set[int] = set()
        if on_day_of_month is not None:
            values = _seq(list(on_day_of_month) if isinstance(on_day_of_month, range)
                          else on_day_of_month)  # fmt: skip
            if not values:
                raise InvalidSchedule(f"{ctx}: on_day_of_month= is empty")
            for v in values:
                if (
                    isinstance(v, bool)
                    or not isinstance(v, int)
                    or not (1 <= v <= 31 or -31 <= v <= -1)
                ):
                    raise InvalidSchedule(
                        f"{ctx}: on_day_of_month= takes 1-31 or -1..-31 (from the end), got {v!r}"
                    )
                if v > 0:
                    dom_days.add(v)
                else:
                    from_end.add(-v - 1)
        else:
            dom_days = set(range(1, 32))
        dow_days: set[int] = set()
        nth: set[tuple[int, int]] = set()
        if on_weekdays is not None:
            values = _seq(list(on_weekdays) if isinstance(on_weekdays, range) else on_weekdays)
            if not values:
                raise InvalidSchedule(f"{ctx}: on_weekdays= is empty")
            dow_days = {_weekday(v, f"{ctx}: on_weekdays=") for v in values}
        if on_nth_weekday is not None:
            pairs = [on_nth_weekday] if _is_pair(on_nth_weekday) else _seq(on_nth_weekday)
            if not pairs:
                raise InvalidSchedule(f"{ctx}: on_nth_weekday= is empty")
            for pair in pairs:
                if not _is_pair(pair):
                    raise InvalidSchedule(
                        f"{ctx}: on_nth_weekday= takes (n, weekday) pairs, got {pair!r}"
                    )
                n, wd = cast("tuple[int, object]", pair)
                if isinstance(n, bool) or not isinstance(n, int) or not (1 <= n <= 5 or n == -1):
                    raise InvalidSchedule(
                        f"{ctx}: on_nth_weekday= n must be 1-5 or -1 (the last), got {n!r}"
                    )
                nth.add((_weekday(wd, f"{ctx}: on_nth_weekday="), n))
        if on_weekdays is None and on_nth_weekday is None:
            dow_days = set(range(7))
        months = list(range(1, 13))
        if in_months is not None:
            raw = list(in_months) if isinstance(in_months, range) else in_months
            months = sorted({_month(v, f"{ctx}: in_months=") for v in _seq(raw)})
        if not months:
            raise InvalidSchedule(f"{ctx}: in_months= is empty")
        spec = CalendarSpec(
            mask_of({t % 60 for t in tods}),
            mask_of({t // 60 % 60 for t in tods}),
            mask_of({t // 3600 for t in tods}),
            mask_of(months),
            None,
            mask_of(dom_days),
            mask_of(from_end),
            False,
            0,
            mask_of(dow_days),
            frozenset(nth),
            True,
            True,
            tods,
        )
        if not fires_every_month(spec) and not can_fire(spec):
            raise InvalidSchedule(f"{ctx}: {args} can never fire: no day matches all of them")
        self._setup_calendar(spec, zone, None, f"Schedule({args}, timezone={_zone_name(zone)!r})")

    def _init_cadence(
        self,
        every: timedelta,
        anchor: datetime | None,
        between: tuple[At, At] | None,
        on_weekdays: object,
        zone: ZoneInfo,
        given: Mapping[str, object],
    ) -> None:
        ctx = "invalid schedule"
        for name in ("at", "on_day_of_month", "on_nth_weekday", "in_months"):
            if name in given:
                raise InvalidSchedule(
                    f"{ctx}: every= is a cadence and cannot be combined with {name}= "
                    "(use a calendar schedule, or between=/on_weekdays= to limit the cadence)"
                )
        if not isinstance(every, timedelta):
            raise InvalidSchedule(f"{ctx}: every= takes a timedelta, got {every!r}")
        if every.microseconds or every < timedelta(seconds=1):
            raise InvalidSchedule(f"{ctx}: every= must be whole seconds, at least 1 s, got {every}")
        step = int(every.total_seconds())
        anchor_ts = 0
        if anchor is not None:
            if not isinstance(anchor, datetime) or anchor.utcoffset() is None:
                raise InvalidSchedule(f"{ctx}: anchor= must be an aware datetime, got {anchor!r}")
            if anchor.microsecond:
                raise InvalidSchedule(f"{ctx}: anchor= must be whole seconds, got {anchor}")
            anchor_ts = int(anchor.timestamp())
        window = None
        if between is not None:
            if not (
                isinstance(between, tuple)
                and len(between) == 2
                and all(isinstance(b, At) for b in between)
            ):
                raise InvalidSchedule(f"{ctx}: between= takes (At(...), At(...)), got {between!r}")
            window = (between[0].seconds, between[1].seconds)
            length = (window[1] - window[0]) % 86400
            if length == 0:
                raise InvalidSchedule(f"{ctx}: between= window {between[0]}-{between[1]} is empty")
            if step > length:
                raise InvalidSchedule(
                    f"{ctx}: every={every} is longer than the between= window "
                    f"{between[0]}-{between[1]}, so some windows would never fire"
                )
        weekdays = None
        if on_weekdays is not None:
            values = _seq(list(on_weekdays) if isinstance(on_weekdays, range) else on_weekdays)
            if not values:
                raise InvalidSchedule(f"{ctx}: on_weekdays= is empty")
            weekdays = frozenset(_weekday(v, f"{ctx}: on_weekdays=") for v in values)
            if step > 86400:
                raise InvalidSchedule(
                    f"{ctx}: every={every} is longer than a day, so on_weekdays= could skip "
                    "allowed days entirely"
                )
        self._expression = None
        self._zone = zone
        self._evaluator = CadenceEvaluator(step, anchor_ts, zone, window, weekdays)
        self._key = ("every", step, anchor_ts % step, window, weekdays, _zone_name(zone))
        parts = [f"every={every!r}"]
        if anchor is not None:
            parts.append(f"anchor={anchor!r}")
        if between is not None:
            parts.append(f"between={between!r}")
        if weekdays is not None:
            parts.append(f"on_weekdays={sorted(weekdays)!r}")
        self._repr = f"Schedule({', '.join(parts)}, timezone={_zone_name(zone)!r})"

    def _setup_calendar(
        self,
        spec: CalendarSpec,
        zone: ZoneInfo,
        expression: str | None,
        text: str | None,
        evaluator: CronEvaluator | None = None,
    ) -> None:
        # object.__setattr__: instances are immutable once _repr is set (see __setattr__).
        _set(self, "_zone", zone)
        _set(self, "_expression", expression)
        _set(self, "_evaluator", evaluator or CronEvaluator(spec, zone))
        _set(self, "_repr", text)

    @classmethod
    def cron(cls, expression: str, timezone: str | ZoneInfo = "UTC") -> Schedule:
        """Build a schedule from a cron expression.

        Args:
            expression: 5 fields (minute hour day-of-month month day-of-week), 6 (a leading
                seconds field), 7 (and a trailing year), or a macro such as ``@daily``.
            timezone: an IANA zone name or a ``ZoneInfo``.

        Raises:
            InvalidSchedule: naming the expression, the field and the value.
        """
        if not isinstance(expression, str):
            raise InvalidSchedule(f"a cron expression must be a str, got {expression!r}")
        zone = _cron_zone(timezone, expression)
        spec = parse_cron(expression)
        evaluator = CronEvaluator(spec, zone)
        if not evaluator.always_fires_monthly and not can_fire(spec):
            raise InvalidSchedule(
                f"invalid cron expression {expression!r}: it can never fire (no date matches its "
                "day-of-month, month, day-of-week and year fields together)"
            )
        self = cls.__new__(cls)
        self._setup_calendar(spec, zone, expression, None, evaluator)
        return self

    # -- properties -----------------------------------------------------------------------

    @property
    def timezone(self) -> ZoneInfo:
        """The zone local times are read in (cadences use it only for ``between=``)."""
        return self._zone

    @property
    def is_cadence(self) -> bool:
        """Whether this is an ``every=`` cadence rather than a calendar schedule."""
        return self._spec is None

    @property
    def every(self) -> timedelta | None:
        """The cadence period, or ``None`` for a calendar schedule."""
        ev = self._evaluator
        return timedelta(seconds=ev.every) if isinstance(ev, CadenceEvaluator) else None

    @property
    def expression(self) -> str | None:
        """The cron expression this was built from, or ``None`` for the declarative form."""
        return self._expression

    # -- evaluation -----------------------------------------------------------------------

    def next_after(self, dt: datetime, /) -> datetime | None:
        """The first fire strictly after ``dt``.

        Args:
            dt: an aware datetime, in any zone.

        Returns:
            An aware datetime in the schedule's zone (whole seconds), or ``None`` when the
            schedule never fires again (its year field is in the past, or the next fire
            would lie past the year 9999, which no datetime can show).

        Raises:
            ValueError: ``dt`` is naive.
        """
        if dt.__class__ is datetime and dt.tzinfo.__class__ is ZoneInfo:
            ts = dt.timestamp()  # aware: a ZoneInfo always gives an offset
        else:
            ts = _timestamp(dt)
        try:
            t = self._evaluator.next_instant(math.floor(ts) + 1)
            return None if t is None else datetime.fromtimestamp(t, self._zone)
        except (OverflowError, ValueError, OSError):
            return None  # beyond what a datetime can show

    def previous_before(self, dt: datetime, /) -> datetime | None:
        """The last fire strictly before ``dt``, or ``None`` if there is none.

        Raises:
            ValueError: ``dt`` is naive.
        """
        ts = _timestamp(dt)
        try:
            t = self._evaluator.prev_instant(math.ceil(ts) - 1)
            return None if t is None else datetime.fromtimestamp(t, self._zone)
        except (OverflowError, ValueError, OSError):
            return None  # before what a datetime can show

    def fires(self, after: datetime) -> Iterator[datetime]:
        """Iterate over the fires strictly after ``after``, in order (endless for most).

        Raises:
            ValueError: ``after`` is naive.
        """
        t = math.floor(_timestamp(after)) + 1
        evaluate, zone = self._evaluator.next_instant, self._zone
        while (f := evaluate(t)) is not None:
            yield datetime.fromtimestamp(f, zone)
            t = f + 1

    def preview(self, n: int, after: datetime) -> list[datetime]:
        """The next ``n`` fires strictly after ``after`` (fewer if the schedule ends)."""
        out: list[datetime] = []
        for fire in self.fires(after):
            if len(out) >= n:
                break
            out.append(fire)
        return out

    def describe(self) -> str:
        """The schedule in plain English, e.g. ``"At 03:00 on day 1 of every month (UTC)"``."""
        from ._describe import describe_cadence, describe_calendar

        ev = self._evaluator
        if isinstance(ev, CadenceEvaluator):
            return describe_cadence(ev, _zone_name(self._zone))
        assert self._spec is not None
        return describe_calendar(self._spec, _zone_name(self._zone))

    # -- value semantics ------------------------------------------------------------------

    def __repr__(self) -> str:
        if self._repr is None:
            return f"Schedule.cron({self._expression!r}, timezone={_zone_name(self._zone)!r})"
        return self._repr

    @property
    def _spec(self) -> CalendarSpec | None:
        ev = self._evaluator
        return ev.spec if isinstance(ev, CronEvaluator) else None

    def _value(self) -> tuple[object, ...]:
        ev = self._evaluator
        if isinstance(ev, CronEvaluator):
            return ("calendar", ev.spec, _zone_name(self._zone))
        return self._key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return self._value() == other._value()

    def __hash__(self) -> int:
        return hash(self._value())

    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(self, "_repr"):
            raise AttributeError(f"{type(self).__name__} is immutable")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")


_set = object.__setattr__


def _is_pair(value: object) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], int)


def _zone_name(zone: ZoneInfo) -> str:
    return zone.key if zone.key is not None else str(zone)
