"""Cron expressions (5, 6 or 7 fields, macros, L/W/#) compiled to a :class:`CalendarSpec`."""

from __future__ import annotations

import re

from ..exceptions import InvalidSchedule
from ._spec import MAX_YEAR, MIN_YEAR, CalendarSpec

__all__ = ("MACROS", "MONTH_NAMES", "WEEKDAY_NAMES", "parse_cron")

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
WEEKDAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_MONTHS = {name: i + 1 for i, name in enumerate(MONTH_NAMES)}
_WEEKDAYS = {name: i for i, name in enumerate(WEEKDAY_NAMES)}

# (name, low, high, names); day of week allows 7 as a second Sunday.
_SECOND = ("second", 0, 59, None)
_MINUTE = ("minute", 0, 59, None)
_HOUR = ("hour", 0, 23, None)
_DOM = ("day-of-month", 1, 31, None)
_MONTH = ("month", 1, 12, _MONTHS)
_DOW = ("day-of-week", 0, 7, _WEEKDAYS)
_YEAR = ("year", MIN_YEAR, MAX_YEAR, None)
_Field = tuple[str, int, int, "dict[str, int] | None"]

_NTH = re.compile(r"(\w+)#(\d+)")
_LAST_DOW = re.compile(r"(\w+)L")
_NEAREST = re.compile(r"(\d+)W")
_FROM_END = re.compile(r"L-(\d+)")


class _FieldError(Exception):
    """A problem in one field; :func:`parse_cron` adds the expression and field name."""


def _number(token: str, fld: _Field) -> int:
    _name, low, high, names = fld
    if names is not None and token.upper() in names:
        return names[token.upper()]
    if not token.isdigit():
        raise _FieldError(f"unknown value {token!r}")
    value = int(token)
    if not low <= value <= high:
        raise _FieldError(f"value {value} is out of range {low}-{high}")
    return value


def _values(part: str, fld: _Field) -> range:
    """One list member without L/W/#: ``*``, ``n``, ``a-b``, each optionally ``/step``."""
    _, low, high, _names = fld
    base, slash, step_text = part.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit():
            raise _FieldError(f"invalid step {step_text!r} in {part!r}")
        step = int(step_text)
        if step == 0:
            raise _FieldError(f"step must be at least 1 in {part!r}")
    if base == "*":
        start, stop = low, high
    elif base == "?":
        raise _FieldError("'?' is only allowed in the day-of-month and day-of-week fields")
    elif "-" in base:
        first, _, last = base.partition("-")
        start, stop = _number(first, fld), _number(last, fld)
        if start > stop:
            raise _FieldError(
                f"range {base!r} is reversed (ranges do not wrap around; use a list such as "
                f"'{first}-{high},{low}-{last}')"
            )
    else:
        start = _number(base, fld)
        # "10/5" means 10, 15, ... up to the field's maximum, as in Quartz and cronie.
        stop = high if slash else start
    return range(start, stop + 1, step)


_FULL = {f[0]: tuple(range(f[1], f[2] + 1)) for f in (_SECOND, _MINUTE, _HOUR, _MONTH, _YEAR)}


def _sorted(text: str, fld: _Field) -> tuple[int, ...]:
    """Sorted values of a simple field, with shortcuts for the usual ``*`` and ``n``."""
    if text == "*":
        return _FULL[fld[0]]
    if text.isdigit():
        return (_number(text, fld),)
    return tuple(sorted(_simple(text, fld)))


def _simple(text: str, fld: _Field) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        if not part:
            raise _FieldError(f"empty list member in {text!r}")
        out.update(_values(part, fld))
    return out


_ALL_DAYS = frozenset(range(1, 32))
_ALL_WEEKDAYS = frozenset(range(7))


def _parse_dom(text: str) -> tuple[frozenset[int], set[int], bool, set[int]]:
    if text == "*":
        return _ALL_DAYS, set(), False, set()
    if text.isdigit():
        return frozenset((_number(text, _DOM),)), set(), False, set()
    days: set[int] = set()
    from_end: set[int] = set()
    nearest: set[int] = set()
    last_weekday = False
    for part in text.split(","):
        upper = part.upper()
        if "L" not in upper and "W" not in upper:
            if not part:
                raise _FieldError(f"empty list member in {text!r}")
            days.update(_values(part, _DOM))
        elif upper == "L":
            from_end.add(0)
        elif upper == "LW":
            last_weekday = True
        elif m := _FROM_END.fullmatch(upper):
            n = int(m.group(1))
            if not 1 <= n <= 30:
                raise _FieldError(f"offset {n} in {part!r} is out of range 1-30")
            from_end.add(n)
        elif m := _NEAREST.fullmatch(upper):
            nearest.add(_number(m.group(1), _DOM))
        elif not part:
            raise _FieldError(f"empty list member in {text!r}")
        else:
            days.update(_values(part, _DOM))
    return frozenset(days), from_end, last_weekday, nearest


def _parse_dow(text: str) -> tuple[frozenset[int], set[tuple[int, int]]]:
    if text == "*":
        return _ALL_WEEKDAYS, set()
    days: set[int] = set()
    nth: set[tuple[int, int]] = set()
    for part in text.split(","):
        if "#" not in part and not part.upper().endswith("L"):
            if not part:
                raise _FieldError(f"empty list member in {text!r}")
            days.update(v % 7 for v in _values(part, _DOW))
        elif m := _NTH.fullmatch(part):
            wd = _number(m.group(1), _DOW) % 7
            n = int(m.group(2))
            if not 1 <= n <= 5:
                raise _FieldError(f"occurrence #{n} in {part!r} is out of range 1-5")
            nth.add((wd, n))
        elif part.upper() == "L":
            raise _FieldError("'L' alone is ambiguous here; write e.g. '5L' for the last Friday")
        elif m := _LAST_DOW.fullmatch(part.upper()):
            nth.add((_number(m.group(1), _DOW) % 7, -1))
        elif not part:
            raise _FieldError(f"empty list member in {text!r}")
        else:
            days.update(v % 7 for v in _values(part, _DOW))
    return frozenset(days), nth


def parse_cron(expression: str) -> CalendarSpec:
    """Compile a cron expression; raise :class:`InvalidSchedule` naming the field and value."""
    text = expression.strip()
    if text.startswith("@"):
        macro = MACROS.get(text.lower())
        if macro is None:
            known = ", ".join(MACROS)
            raise InvalidSchedule(
                f"invalid cron expression {expression!r}: unknown macro (known: {known})"
            )
        text = macro
    fields = text.split()
    if len(fields) == 5:
        fields = ["0", *fields, "*"]
    elif len(fields) == 6:
        fields = [*fields, "*"]
    elif len(fields) != 7:
        raise InvalidSchedule(
            f"invalid cron expression {expression!r}: expected 5, 6 or 7 fields, got {len(fields)}"
        )
    sec, minute, hour, dom, month, dow, year = fields
    current = "second"
    try:
        current = "second"
        seconds = _sorted(sec, _SECOND)
        current = "minute"
        minutes = _sorted(minute, _MINUTE)
        current = "hour"
        hours = _sorted(hour, _HOUR)
        current = "day-of-month"
        dom_days, from_end, last_weekday, nearest = _parse_dom("*" if dom == "?" else dom)
        current = "month"
        months = _sorted(month, _MONTH)
        current = "day-of-week"
        dow_days, nth = _parse_dow("*" if dow == "?" else dow)
        current = "year"
        years = None if year == "*" else _sorted(year, _YEAR)
    except _FieldError as exc:
        raise InvalidSchedule(
            f"invalid cron expression {expression!r}: {current} field: {exc}"
        ) from None
    return CalendarSpec(
        seconds=seconds,
        minutes=minutes,
        hours=hours,
        months=months,
        years=years,
        dom_days=dom_days,
        dom_from_end=frozenset(from_end),
        dom_last_weekday=last_weekday,
        dom_nearest=frozenset(nearest),
        dow_days=dow_days,
        dow_nth=frozenset(nth),
        # Vixie cron and cronie: a '*'-led day field (or '?') means "both must match".
        day_and=dom.startswith("*") or dom == "?" or dow.startswith("*") or dow == "?",
        # cronie: a job whose minute or hour starts with '*' runs by the clock across DST;
        # any other is a time of day. Seconds only subdivide a minute, so they do not count.
        fixed=not (minute.startswith("*") or hour.startswith("*")),
    )
