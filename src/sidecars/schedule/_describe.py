"""Plain-English descriptions of schedules, for logs, the CLI and previews."""

from __future__ import annotations

from ._eval import CadenceEvaluator
from ._spec import CalendarSpec

__all__ = ("describe_cadence", "describe_calendar")

_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_ORDINALS = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", -1: "last"}


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _runs(values: tuple[int, ...] | list[int], name: object = str) -> str:
    """``1, 2, 3, 5`` -> ``"1-3 and 5"`` (with an en dash), names applied to each end."""
    label = name if callable(name) else str
    out: list[str] = []
    vals = sorted(values)
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        if j - i >= 2:
            out.append(f"{label(vals[i])}\u2013{label(vals[j])}")
        else:
            out.extend(label(v) for v in vals[i : j + 1])
        i = j + 1
    return _join(out)


def _step(values: tuple[int, ...], size: int) -> int | None:
    """The step of ``0, s, 2s, ...`` covering a field of ``size`` values, if it is one."""
    if len(values) < 2 or values[0] != 0:
        return None
    s = values[1]
    return s if values == tuple(range(0, size, s)) else None


def _clock(tod: int) -> str:
    h, rest = divmod(tod, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}" if s else f"{h:02d}:{m:02d}"


def _times(spec: CalendarSpec) -> str:
    if spec.times is not None or len(spec.hours) * len(spec.minutes) * len(spec.seconds) <= 4:
        tods = spec.times or tuple(
            h * 3600 + m * 60 + s for h in spec.hours for m in spec.minutes for s in spec.seconds
        )
        return "At " + _join([_clock(t) for t in tods])
    parts: list[str] = []
    if spec.seconds != (0,):
        sec_step = _step(spec.seconds, 60)
        if len(spec.seconds) == 60:
            parts.append("every second")
        elif sec_step:
            parts.append(f"every {sec_step} seconds")
        else:
            parts.append(f"at second {_runs(spec.seconds)}")
    step = _step(spec.minutes, 60)
    if len(spec.minutes) == 60:
        parts.append("of every minute" if parts else "every minute")
    elif step:
        parts.append(f"every {step} minutes")
    else:
        parts.append(f"at minute {_runs(spec.minutes)}")
    if len(spec.hours) == 24:
        if parts[-1].startswith("at minute"):
            parts.append("of every hour")
    else:
        parts.append(f"during hour {_runs(spec.hours, lambda h: f'{h:02d}')}")
    text = " ".join(parts)
    return text[0].upper() + text[1:]


def _dom(spec: CalendarSpec) -> str | None:
    items: list[str] = []
    if spec.dom_days and spec.dom_days != frozenset(range(1, 32)):
        items.append(f"day {_runs(sorted(spec.dom_days))}")
    items.extend(
        "the last day" if n == 0 else f"{n} days before the last day"
        for n in sorted(spec.dom_from_end)
    )
    if spec.dom_last_weekday:
        items.append("the last weekday")
    items.extend(f"the weekday nearest day {n}" for n in sorted(spec.dom_nearest))
    if spec.dom_days == frozenset(range(1, 32)) and not spec.day_and:
        items.insert(0, "every day")
    return _join(items) or None


def _dow(spec: CalendarSpec) -> str | None:
    items: list[str] = []
    if spec.dow_days and spec.dow_days != frozenset(range(7)):
        # Sunday last reads better in ranges ("Monday-Sunday" is rarer than "Saturday, Sunday").
        items.append(_runs(sorted(spec.dow_days), lambda d: _DAYS[d]))
    items.extend(f"the {_ORDINALS[n]} {_DAYS[wd]}" for wd, n in sorted(spec.dow_nth))
    if spec.dow_days == frozenset(range(7)) and not spec.day_and:
        items.insert(0, "every day")
    return _join(items) or None


def describe_calendar(spec: CalendarSpec, zone: str) -> str:
    """Describe a calendar schedule."""
    text = _times(spec)
    dom, dow = _dom(spec), _dow(spec)
    all_months = spec.months == tuple(range(1, 13))
    months = "" if all_months else " in " + _runs(spec.months, lambda m: _MONTHS[m - 1])
    if dom and dow:
        joiner = "if it is" if spec.day_and else "or"
        text += f" on {dom} {joiner} {dow}"
        text += months
    elif dom:
        text += f" on {dom} of every month" if all_months else f" on {dom}{months}"
    elif dow:
        text += f" on {dow}{months}"
    else:
        text += months
    if spec.years is not None:
        text += " in " + _runs(spec.years)
    return f"{text} ({zone})"


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"{unit}" if n == 1 else f"{n} {unit}s"
    return "second" if seconds == 1 else f"{seconds} seconds"


def describe_cadence(ev: CadenceEvaluator, zone: str) -> str:
    """Describe an ``every=`` cadence."""
    text = f"Every {_duration(ev.every)}"
    if ev.anchor % ev.every:
        text += f" (offset {_duration(ev.anchor % ev.every)} from the epoch)"
    if ev.window is not None:
        text += f" between {_clock(ev.window[0])} and {_clock(ev.window[1])}"
    if ev.weekdays is not None:
        text += " on " + _runs(sorted(ev.weekdays), lambda d: _DAYS[d])
    if ev.window is None and ev.weekdays is None:
        return text
    return f"{text} ({zone})"
