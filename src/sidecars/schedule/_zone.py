"""UTC-offset timelines of time zones, as integer seconds.

The evaluator reasons about stretches of constant UTC offset ("segments") so that it can do
plain integer arithmetic between wall clock and instant. ``zoneinfo`` does not expose its
transitions, so they are found once per (zone, year) by sampling the offset every two days
and bisecting each change to the second. Since 1970 no zone in the tz database has changed
its offset twice within a week (the closest pair is 7 days apart, Brazil in 2000), and the
POSIX rules used after 2037 are months apart, so no change hides between two samples.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from ._spec import ordinal

__all__ = ("EPOCH_ORDINAL", "FAR_FUTURE", "FAR_PAST", "fixed_offset", "segment")

EPOCH_ORDINAL = 719163  # date(1970, 1, 1).toordinal()
FAR_PAST = -(2**62)
FAR_FUTURE = 2**62
_SAMPLE = 2 * 86400


def _offset(zone: ZoneInfo, t: int) -> int:
    off = datetime.fromtimestamp(t, zone).utcoffset()
    assert off is not None
    return int(off.total_seconds())


@lru_cache(maxsize=256)
def fixed_offset(zone: ZoneInfo) -> int | None:
    """The zone's only UTC offset, for zones that never change (the evaluator's fast path)."""
    key = zone.key or ""
    if key in ("UTC", "GMT", "UCT", "Zulu", "Universal", "Greenwich") or key.startswith("Etc/"):
        return _offset(zone, 0)
    return None


def _year_start(year: int) -> int:
    return (ordinal(year, 1, 1) - EPOCH_ORDINAL) * 86400


@lru_cache(maxsize=4096)
def _year_table(
    zone: ZoneInfo, year: int
) -> tuple[int, int, int, tuple[int, ...], tuple[tuple[int, int], ...]]:
    """(start, end, offset before start, transition instants, (before, after) offsets)."""
    start, end = _year_start(year), _year_start(year + 1)
    initial = prev_off = _offset(zone, start - 1)
    instants: list[int] = []
    changes: list[tuple[int, int]] = []
    prev_t = start - 1
    t = start
    while True:
        off = _offset(zone, t)
        if off != prev_off:
            lo, hi = prev_t, t  # offset(lo) == prev_off, offset(hi) == off
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(zone, mid) == prev_off:
                    lo = mid
                else:
                    hi = mid
            instants.append(hi)
            changes.append((prev_off, off))
            prev_off = off
        if t == end - 1:
            break
        prev_t, t = t, min(t + _SAMPLE, end - 1)
    return start, end, initial, tuple(instants), tuple(changes)


# The stretch each zone answered last: successive calls mostly fall in the same one.
_LAST: dict[ZoneInfo, tuple[int, int, int, int]] = {}


def segment(zone: ZoneInfo, t: int) -> tuple[int, int, int, int]:
    """The stretch of constant offset holding instant ``t``: ``(start, prev, offset, end)``.

    ``start <= t < end``; ``prev`` is the offset just before ``start`` (equal to ``offset``
    when ``start`` is only a year boundary, not a real transition).
    """
    last = _LAST.get(zone)
    if last is not None and last[0] <= t < last[3]:
        return last
    year = _utc_year(t)
    start, end, initial, instants, changes = _year_table(zone, year)
    i = bisect_right(instants, t)
    if i:
        seg_start = instants[i - 1]
        prev, off = changes[i - 1]
    else:
        seg_start = start
        prev = off = initial
    seg_end = instants[i] if i < len(instants) else end
    if len(_LAST) >= 256:
        _LAST.clear()
    found = _LAST[zone] = (seg_start, prev, off, seg_end)
    return found


def _utc_year(t: int) -> int:
    # Days since the epoch to a civil year (Howard Hinnant's algorithm, year part only).
    z = t // 86400 + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    return yoe + era * 400 + (1 if mp >= 10 else 0)
