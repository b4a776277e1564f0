"""Cron expressions (5, 6 or 7 fields, macros, L/W/#) compiled to a :class:`CalendarSpec`.

Each field is read in one pass straight into a bitmask (bit ``v`` set when value ``v`` is
allowed); the usual forms (``*``, ``n``, ``*/s``) take a shortcut.
"""

from __future__ import annotations

import re

from ..exceptions import InvalidSchedule
from ._spec import ALL_DOM, ALL_DOW, EMPTY_NTH, MAX_YEAR, MIN_YEAR, CalendarSpec, bits

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

_SUNDAY_7 = 1 << 7


def _tokens(fld: tuple[str, int, int, dict[str, int] | None]) -> dict[str, int]:
    """Masks of the field's most common spellings: ``*``, ``*/s``, each value and name."""
    _name, low, high, names = fld
    table = {str(v): 1 << v for v in range(low, high + 1)}
    table.update({name: 1 << v for name, v in (names or {}).items()})
    table["*"] = _progression(low, high, 1)
    for step in range(2, high - low + 2):
        table[f"*/{step}"] = _progression(low, high, step)
    return table


class _FieldError(Exception):
    """A problem in one field; :func:`parse_cron` adds the expression and field name."""


def _number(token: str, fld: _Field) -> int:
    _name, low, high, names = fld
    if names is not None:
        value = names.get(token.upper())
        if value is not None:
            return value
    if not token.isdigit():
        raise _FieldError(f"unknown value {token!r}")
    value = int(token)
    if not low <= value <= high:
        raise _FieldError(f"value {value} is out of range {low}-{high}")
    return value


def _progression(start: int, stop: int, step: int) -> int:
    """Mask of ``range(start, stop + 1, step)`` (``start <= stop``), without a loop."""
    if step == 1:
        return (1 << (stop + 1)) - (1 << start)
    count = (stop - start) // step + 1
    return ((1 << (count * step)) - 1) // ((1 << step) - 1) << start


def _values(part: str, fld: _Field) -> int:
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
        if not slash:
            return 1 << start
        stop = high
    return _progression(start, stop, step)


_SECOND_TOKENS = _tokens(_SECOND)
_MINUTE_TOKENS = _tokens(_MINUTE)
_HOUR_TOKENS = _tokens(_HOUR)
_DOM_TOKENS = _tokens(_DOM)
_MONTH_TOKENS = _tokens(_MONTH)


def _simple(text: str, fld: _Field) -> int:
    """Mask of a field without L/W/# (the common spellings are looked up before this)."""
    if text.isdigit():
        return 1 << _number(text, fld)
    first, dash, last = text.partition("-")
    if dash and first.isdigit() and last.isdigit():  # "a-b", the next most common form
        start, stop = int(first), int(last)
        if fld[1] <= start <= stop <= fld[2]:
            return (1 << (stop + 1)) - (1 << start)
    if "," not in text:
        if not text:
            raise _FieldError(f"empty list member in {text!r}")
        return _values(text, fld)
    mask = 0
    for part in text.split(","):
        if not part:
            raise _FieldError(f"empty list member in {text!r}")
        mask |= _values(part, fld)
    return mask


def _parse_dom(text: str) -> tuple[int, int, bool, int]:
    """(plain days, days from the end, ``LW``, ``nW`` days) as masks."""
    if text == "*":
        return ALL_DOM, 0, False, 0
    upper = text.upper()
    if "L" not in upper and "W" not in upper:
        return _simple(text, _DOM), 0, False, 0
    if upper == "L":
        return 0, 1, False, 0
    days = from_end = nearest = 0
    last_weekday = False
    for part in text.split(","):
        upper = part.upper()
        if "L" not in upper and "W" not in upper:
            if not part:
                raise _FieldError(f"empty list member in {text!r}")
            days |= _values(part, _DOM)
        elif upper == "L":
            from_end |= 1
        elif upper == "LW":
            last_weekday = True
        elif m := _FROM_END.fullmatch(upper):
            n = int(m.group(1))
            if not 1 <= n <= 30:
                raise _FieldError(f"offset {n} in {part!r} is out of range 1-30")
            from_end |= 1 << n
        elif m := _NEAREST.fullmatch(upper):
            nearest |= 1 << _number(m.group(1), _DOM)
        else:
            days |= _values(part, _DOM)
    return days, from_end, last_weekday, nearest


def _weekdays(mask: int) -> int:
    """Fold 7 (the second Sunday) onto 0."""
    if mask & _SUNDAY_7:
        return (mask ^ _SUNDAY_7) | 1
    return mask


_DOW_TOKENS = {text: _weekdays(mask) for text, mask in _tokens(_DOW).items()}


def _parse_dow(text: str) -> tuple[int, frozenset[tuple[int, int]]]:
    if text == "*":
        return ALL_DOW, EMPTY_NTH
    if "#" not in text and "L" not in text.upper():
        return _weekdays(_simple(text, _DOW)), EMPTY_NTH
    days = 0
    nth: set[tuple[int, int]] = set()
    for part in text.split(","):
        if "#" not in part and not part.upper().endswith("L"):
            if not part:
                raise _FieldError(f"empty list member in {text!r}")
            days |= _weekdays(_values(part, _DOW))
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
        else:
            days |= _weekdays(_values(part, _DOW))
    return days, frozenset(nth)


def parse_cron(expression: str) -> CalendarSpec:
    """Compile a cron expression; raise :class:`InvalidSchedule` naming the field and value."""
    if not expression.isascii():
        # str.isdigit() accepts other scripts' digits (Arabic-Indic, full-width): cron means ASCII.
        raise InvalidSchedule(
            f"invalid cron expression {expression!r}: only ASCII digits, names and symbols "
            "are allowed"
        )
    fields = expression.split()
    if len(fields) == 5 and fields[0][0] != "@":
        sec = "0"
        minute, hour, dom, month, dow = fields
        year = "*"
    elif fields and fields[0][0] == "@":
        macro = MACROS.get(expression.strip().lower())
        if macro is None:
            known = ", ".join(MACROS)
            raise InvalidSchedule(
                f"invalid cron expression {expression!r}: unknown macro (known: {known})"
            )
        sec = "0"
        minute, hour, dom, month, dow = macro.split()
        year = "*"
    elif len(fields) == 6:
        sec, minute, hour, dom, month, dow = fields
        year = "*"
    elif len(fields) == 7:
        sec, minute, hour, dom, month, dow, year = fields
    else:
        raise InvalidSchedule(
            f"invalid cron expression {expression!r}: expected 5, 6 or 7 fields, got {len(fields)}"
        )
    current = "second"
    try:
        seconds = _SECOND_TOKENS.get(sec) or _simple(sec, _SECOND)
        current = "minute"
        minutes = _MINUTE_TOKENS.get(minute) or _simple(minute, _MINUTE)
        current = "hour"
        hours = _HOUR_TOKENS.get(hour) or _simple(hour, _HOUR)
        current = "day-of-month"
        dom_days = _DOM_TOKENS.get(dom, 0)
        from_end = nearest = 0
        last_weekday = False
        if not dom_days:
            dom_days, from_end, last_weekday, nearest = _parse_dom("*" if dom == "?" else dom)
        current = "month"
        months = _MONTH_TOKENS.get(month) or _simple(month, _MONTH)
        current = "day-of-week"
        dow_days = _DOW_TOKENS.get(dow, 0)
        nth = EMPTY_NTH
        if not dow_days:
            dow_days, nth = _parse_dow("*" if dow == "?" else dow)
        current = "year"
        years = None if year == "*" else tuple(v + MIN_YEAR for v in bits(_years(year)))
    except _FieldError as exc:
        raise InvalidSchedule(
            f"invalid cron expression {expression!r}: {current} field: {exc}"
        ) from None
    return CalendarSpec(
        seconds,
        minutes,
        hours,
        months,
        years,
        dom_days,
        from_end,
        last_weekday,
        nearest,
        dow_days,
        nth,
        # Vixie cron and cronie: a '*'-led day field (or '?') means "both must match".
        dom[0] == "*" or dom == "?" or dow[0] == "*" or dow == "?",
        # cronie: a job whose minute or hour starts with '*' runs by the clock across DST;
        # any other is a time of day. Seconds only subdivide a minute, so they do not count.
        not (minute[0] == "*" or hour[0] == "*"),
    )


def _years(text: str) -> int:
    """Mask of the year field, bit ``y - MIN_YEAR`` for year ``y``."""
    return _simple(text, _YEAR) >> MIN_YEAR
