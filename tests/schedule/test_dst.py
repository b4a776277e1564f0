"""The DST policy: gaps, repeated hours, 30- and 45-minute zones, skipped days."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from sidecars.schedule import At, Schedule
from sidecars.schedule._parse import parse_cron
from sidecars.schedule._zone import _year_table

from . import reference
from .reference import Expr

UTC = timezone.utc


def _local(fires: list[datetime]) -> list[str]:
    return [f.strftime("%m-%d %H:%M %z") for f in fires]


def _between(s: Schedule, start: datetime, end: datetime) -> list[datetime]:
    out = []
    for f in s.fires(start):
        if f >= end:
            break
        out.append(f)
    return out


class TestRequiredCases:
    """The reference cases every cron implementation gets asked about."""

    def test_fixed_time_in_a_gap_fires_after_it(self) -> None:
        """0 2 * * * in New York fires at 03:00 EDT on 2013-03-10, never at 02:00."""
        zone = ZoneInfo("America/New_York")
        s = Schedule.cron("0 2 * * *", timezone="America/New_York")
        fires = s.preview(3, datetime(2013, 3, 9, 12, tzinfo=zone))
        assert _local(fires) == ["03-10 03:00 -0400", "03-11 02:00 -0400", "03-12 02:00 -0400"]

    def test_wildcard_in_the_second_pass_moves_forward(self) -> None:
        """30 * * * * in Helsinki from 03:45 (fold=1) on 2017-10-29 is 04:30 +02:00."""
        zone = ZoneInfo("Europe/Helsinki")
        s = Schedule.cron("30 * * * *", timezone="Europe/Helsinki")
        start = datetime(2017, 10, 29, 3, 45, fold=1, tzinfo=zone)
        got = s.next_after(start)
        assert got is not None
        assert got.isoformat() == "2017-10-29T04:30:00+02:00"
        t = datetime(2017, 10, 29, 2, 0, tzinfo=zone)
        seen = []
        for _ in range(6):
            nxt = s.next_after(t)
            assert nxt is not None
            assert nxt.timestamp() > t.timestamp()
            seen.append(nxt.strftime("%H:%M%z"))
            t = nxt
        assert seen == ["02:30+0300", "03:30+0300", "03:30+0200", "04:30+0200", "05:30+0200",
                        "06:30+0200"]  # fmt: skip

    def test_fixed_time_repeated_fires_once(self) -> None:
        """30 1 * * * in Denver fires at 01:30 MDT on 2024-11-03 and not at 01:30 MST."""
        zone = ZoneInfo("America/Denver")
        s = Schedule.cron("30 1 * * *", timezone="America/Denver")
        fires = s.preview(2, datetime(2024, 11, 2, 12, tzinfo=zone))
        assert _local(fires) == ["11-03 01:30 -0600", "11-04 01:30 -0700"]
        got = s.next_after(datetime(2024, 11, 3, 1, 10, fold=1, tzinfo=zone))
        assert got is not None
        assert got.isoformat() == "2024-11-04T01:30:00-07:00"

    @pytest.mark.parametrize("day", ["2024-04-07", "2024-10-06"])
    def test_lord_howe_every_matching_instant_fires(self, day: str) -> None:
        """*/20 * * * * in Lord Howe fires at every real :00/:20/:40 across 30-minute shifts."""
        zone = ZoneInfo("Australia/Lord_Howe")
        s = Schedule.cron("*/20 * * * *", timezone="Australia/Lord_Howe")
        start = datetime.fromisoformat(day).replace(tzinfo=zone) - timedelta(hours=2)
        end_ts = int(start.timestamp()) + 8 * 3600
        expected = [
            t
            for t in range(int(start.timestamp()) + 1, end_ts, 1)
            if (w := datetime.fromtimestamp(t, zone)).second == 0 and w.minute % 20 == 0
        ][::1]
        got = [int(f.timestamp()) for f in _between(s, start, datetime.fromtimestamp(end_ts, UTC))]
        assert got == expected
        assert len(got) != 8 * 3  # the shift added or removed real matching instants

    def test_times_swallowed_by_one_gap_fire_once(self) -> None:
        """0 1-3 * * * fires at 01:00 and once at 03:00 on a spring-forward day."""
        zone = ZoneInfo("America/Denver")
        s = Schedule.cron("0 1-3 * * *", timezone="America/Denver")
        fires = _between(s, datetime(2024, 3, 10, tzinfo=zone), datetime(2024, 3, 11, tzinfo=zone))
        assert _local(fires) == ["03-10 01:00 -0700", "03-10 03:00 -0600"]
        s2 = Schedule.cron("0,30 2 * * *", timezone="America/Denver")
        fires = _between(s2, datetime(2024, 3, 10, tzinfo=zone), datetime(2024, 3, 11, tzinfo=zone))
        assert _local(fires) == ["03-10 03:00 -0600"]


class TestZones:
    """Explicit cases in zones with unusual offsets or midnight transitions."""

    @pytest.mark.parametrize(
        ("zone", "expression", "start", "expected"),
        [
            # Santiago springs forward at midnight: 00:00 does not exist on 2024-09-08.
            ("America/Santiago", "0 0 * * *", "2024-09-07T12:00",
             ["09-08 01:00 -0300", "09-09 00:00 -0300"]),
            # ... and falls back at midnight: 23:00-23:59 on 2024-04-06 happen twice.
            ("America/Santiago", "0 23 * * *", "2024-04-06T12:00",
             ["04-06 23:00 -0300", "04-07 23:00 -0400"]),
            ("America/Santiago", "0 * * * *", "2024-04-06T22:30",
             ["04-06 23:00 -0300", "04-06 23:00 -0400", "04-07 00:00 -0400"]),
            # Kathmandu moved from +05:30 to +05:45 at 1986-01-01 00:00: a 15-minute gap.
            ("Asia/Kathmandu", "0 0 * * *", "1985-12-31T12:00",
             ["01-01 00:15 +0545", "01-02 00:00 +0545"]),
            ("Asia/Kathmandu", "*/5 * * * *", "2024-01-01T05:41",
             ["01-01 05:45 +0545", "01-01 05:50 +0545"]),
            # Chatham: +12:45, DST +13:45; the gap is 02:45-03:45 on 2024-09-29.
            ("Pacific/Chatham", "0 3 * * *", "2024-09-28T12:00",
             ["09-29 03:45 +1345", "09-30 03:00 +1345"]),
            ("Pacific/Chatham", "15 3 * * *", "2024-04-06T12:00",
             ["04-07 03:15 +1345", "04-08 03:15 +1245"]),
            ("Pacific/Chatham", "15 * * * *", "2024-04-07T02:00",
             ["04-07 02:15 +1345", "04-07 03:15 +1345", "04-07 03:15 +1245"]),
            # Apia skipped 2011-12-30 entirely: a fixed time that day fires at the gap's end.
            ("Pacific/Apia", "0 12 * * *", "2011-12-29T13:00",
             ["12-31 00:00 +1400", "12-31 12:00 +1400"]),
            ("Pacific/Apia", "0 12 30 * *", "2011-12-01T00:00",
             ["12-31 00:00 +1400", "01-30 12:00 +1400"]),
            ("Pacific/Apia", "0 */6 * * *", "2011-12-29T13:00",
             ["12-29 18:00 -1000", "12-31 00:00 +1400", "12-31 06:00 +1400"]),
            # Lord Howe falls back 30 minutes at 02:00: 01:30-01:59 repeat.
            ("Australia/Lord_Howe", "45 1 * * *", "2024-04-06T12:00",
             ["04-07 01:45 +1100", "04-08 01:45 +1030"]),
            ("Australia/Lord_Howe", "15 2 * * *", "2024-10-05T12:00",
             ["10-06 02:30 +1100", "10-07 02:15 +1100"]),
            # London, both directions, hour steps (fixed) and every-two-hours (wildcard).
            ("Europe/London", "30 1 * * *", "2024-03-30T12:00",
             ["03-31 02:00 +0100", "04-01 01:30 +0100"]),
            ("Europe/London", "0 1-5/2 * * *", "2024-10-27T00:00",
             ["10-27 01:00 +0100", "10-27 03:00 +0000", "10-27 05:00 +0000"]),
            ("Europe/London", "30 */1 * * *", "2024-10-27T00:00",
             ["10-27 00:30 +0100", "10-27 01:30 +0100", "10-27 01:30 +0000"]),
            ("America/Denver", "0 1-3/2 * * *", "2024-03-10T00:00",
             ["03-10 01:00 -0700", "03-10 03:00 -0600", "03-11 01:00 -0600"]),
            ("America/Denver", "0 */1 * * *", "2024-03-10T00:30",
             ["03-10 01:00 -0700", "03-10 03:00 -0600", "03-10 04:00 -0600"]),
        ],
    )  # fmt: skip
    def test_fires(self, zone: str, expression: str, start: str, expected: list[str]) -> None:
        """Fires around a transition follow the DST policy in the zone's own offsets."""
        s = Schedule.cron(expression, timezone=zone)
        begin = datetime.fromisoformat(start).replace(tzinfo=ZoneInfo(zone))
        assert _local(s.preview(len(expected), begin)) == expected

    def test_declarative_times_are_fixed(self) -> None:
        """at= times are fixed: a gap fires once after it, a repeat fires once."""
        zone = ZoneInfo("America/Denver")
        s = Schedule(at=[At(2, 30), At(1, 30)], timezone="America/Denver")
        assert _local(s.preview(2, datetime(2024, 3, 10, 1, 45, tzinfo=zone))) == [
            "03-10 03:00 -0600",
            "03-11 01:30 -0600",
        ]
        assert _local(s.preview(3, datetime(2024, 11, 3, tzinfo=zone))) == [
            "11-03 01:30 -0600",
            "11-03 02:30 -0700",
            "11-04 01:30 -0700",
        ]


MATRIX_ZONES = (
    "America/Denver",
    "Europe/London",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Asia/Kathmandu",
    "Pacific/Chatham",
)
MATRIX_EXPRESSIONS = (
    "30 2 * * *",  # fixed, inside most spring gaps
    "0 0 * * *",  # fixed at midnight (Santiago's transitions)
    "45 1 * * *",  # fixed, inside most repeated hours
    "0 1-4/1 * * *",  # fixed hour range
    "0 */2 * * *",  # hour step: a wildcard pattern under the cronie rule
    "*/15 * * * *",  # minute wildcard
    "0,30 */1 * * *",
)


def _expr(text: str) -> Expr:
    spec = parse_cron(text)
    return Expr(
        text=text,
        seconds=frozenset(spec.seconds),
        minutes=frozenset(spec.minutes),
        hours=frozenset(spec.hours),
        months=frozenset(spec.months),
        years=None,
        dom_days=frozenset(range(1, 32)),
        dom_from_end=frozenset(),
        dom_lw=False,
        dom_nearest=frozenset(),
        dow_days=frozenset(range(7)),
        dow_nth=frozenset(),
        day_and=True,
        fixed=spec.fixed,
    )


@pytest.mark.parametrize("zone_name", MATRIX_ZONES)
@pytest.mark.parametrize("expression", MATRIX_EXPRESSIONS)
def test_transition_matrix(zone_name: str, expression: str) -> None:
    """Around each 2024 transition (1986 in Kathmandu), both directions match the reference."""
    zone = ZoneInfo(zone_name)
    year = 1985 if zone_name == "Asia/Kathmandu" else 2024  # 1986-01-01 local is 1985 UTC
    changes = _year_table(zone, year)[3]
    assert changes, zone_name
    s = Schedule.cron(expression, timezone=zone_name)
    e = _expr(expression)
    for change in changes:
        t = datetime.fromtimestamp(change - 6 * 3600, UTC)
        end = datetime.fromtimestamp(change + 6 * 3600, UTC)
        forward = _between(s, t, end)
        expected: list[datetime] = []
        cur = t
        while (nxt := reference.next_after(e, zone, cur, 5)) is not None and nxt < end:
            expected.append(nxt)
            cur = nxt
        assert [f.timestamp() for f in forward] == [f.timestamp() for f in expected]
        backward = []
        cur = end
        while (prv := s.previous_before(cur)) is not None and prv > t:
            backward.append(prv)
            cur = prv
        assert [f.timestamp() for f in reversed(backward)] == [f.timestamp() for f in forward]
