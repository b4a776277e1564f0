"""Table tests for cron expressions, grouped by concern."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from sidecars.exceptions import InvalidSchedule
from sidecars.schedule import Schedule

UTC = timezone.utc


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def _fires(expression: str, start: datetime, n: int, zone: str = "UTC") -> list[str]:
    fires = Schedule.cron(expression, timezone=zone).preview(n, start)
    return [f.strftime("%Y-%m-%d %H:%M:%S %a") for f in fires]


class TestParse:
    """Each syntax element, shown by the fires it produces."""

    START = _utc(2023, 12, 31, 12)  # the day before Monday 2024-01-01

    @pytest.mark.parametrize(
        ("expression", "expected"),
        [
            ("*/15 * * * *", ["00:15", "00:30", "00:45", "01:00"]),
            ("5-50/15 * * * *", ["00:05", "00:20", "00:35", "00:50"]),
            ("50/5 * * * *", ["00:50", "00:55", "01:50", "01:55"]),
            ("1,2,59 * * * *", ["00:01", "00:02", "00:59", "01:01"]),
            ("0 9-11 * * *", ["09:00", "10:00", "11:00", "09:00"]),
            ("0 */8 * * *", ["08:00", "16:00", "00:00", "08:00"]),
        ],
    )
    def test_minute_and_hour_forms(self, expression: str, expected: list[str]) -> None:
        """Lists, ranges, steps and 'n/step' select the right minutes and hours."""
        got = [f[11:16] for f in _fires(expression, _utc(2024, 1, 1), 4)]
        assert got == expected

    @pytest.mark.parametrize(
        ("expression", "expected"),
        [
            ("*/20 * * * * *", ["00:00:20", "00:00:40", "00:01:00"]),
            ("30 0 12 * * *", ["12:00:30", "12:00:30", "12:00:30"]),
            ("0 0 0 1 1 * 2030", ["2030-01-01"]),
            ("0 0 0 1 1 * 2030-2031", ["2030-01-01", "2031-01-01"]),
        ],
    )
    def test_six_and_seven_fields(self, expression: str, expected: list[str]) -> None:
        """A leading seconds field and a trailing year field are honoured."""
        fires = _fires(expression, _utc(2024, 1, 1), 3)
        got = [f[:10] if "2030" in expression.split()[-1] else f[11:19] for f in fires]
        assert got == expected

    @pytest.mark.parametrize(
        ("expression", "equivalent"),
        [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
            ("@DAILY", "0 0 * * *"),
            ("0 0 * JAN-mar SUN", "0 0 * 1-3 0"),
            ("0 0 * * sun,Sat", "0 0 * * 0,6"),
            ("0 0 * * 7", "0 0 * * 0"),
            ("0 0 * * 5-7", "0 0 * * 0,5,6"),
            ("0 0 ? * MON", "0 0 * * 1"),
            ("0 0 1 * ?", "0 0 1 * *"),
            ("  0 0  1 * *  ", "0 0 1 * *"),
        ],
    )
    def test_equivalent_spellings(self, expression: str, equivalent: str) -> None:
        """Macros, names in any case, 7 for Sunday and '?' mean what they stand for."""
        assert Schedule.cron(expression) == Schedule.cron(equivalent)
        assert _fires(expression, self.START, 5) == _fires(equivalent, self.START, 5)

    @pytest.mark.parametrize(
        ("expression", "expected"),
        [
            ("0 0 L * *", ["2024-01-31", "2024-02-29", "2024-03-31"]),
            ("0 0 L-3 * *", ["2024-01-28", "2024-02-26", "2024-03-28"]),
            ("0 0 LW * *", ["2024-01-31", "2024-02-29", "2024-03-29"]),
            ("0 0 15W * *", ["2024-01-15", "2024-02-15", "2024-03-15"]),
            ("0 0 16W * *", ["2024-01-16", "2024-02-16", "2024-03-15"]),  # Sat 16 Mar -> Fri
            ("0 0 1W * *", ["2024-01-01", "2024-02-01", "2024-03-01"]),
            ("0 0 1W 6 *", ["2024-06-03", "2025-06-02", "2026-06-01"]),  # Sat 1st -> Mon 3rd
            ("0 0 30W 6 *", ["2024-06-28", "2025-06-30", "2026-06-30"]),  # Sun 30th -> Fri
            ("0 0 31W * *", ["2024-01-31", "2024-03-29", "2024-05-31"]),  # never in 30-day months
            ("0 0 * * 5L", ["2024-01-26", "2024-02-23", "2024-03-29"]),
            ("0 0 * * FRIL", ["2024-01-26", "2024-02-23", "2024-03-29"]),
            ("0 0 * * 5#3", ["2024-01-19", "2024-02-16", "2024-03-15"]),
            ("0 0 * * FRI#3", ["2024-01-19", "2024-02-16", "2024-03-15"]),
            ("0 0 * * 0#5", ["2024-03-31", "2024-06-30", "2024-09-29"]),
            ("0 0 ? 2 FRI#5", ["2036-02-29", "2064-02-29", "2092-02-29"]),
        ],
    )
    def test_special_day_forms(self, expression: str, expected: list[str]) -> None:
        """L, L-n, LW, nW, nL and n#k pick the documented days."""
        got = [f[:10] for f in _fires(expression, self.START, 3)]
        assert got == expected

    @pytest.mark.parametrize(
        ("expression", "expected"),
        [
            # A '*'-led field: both must match (odd days that are Saturdays).
            ("0 16 */2 * SAT", ["2024-01-13", "2024-01-27", "2024-02-03"]),
            # Both restricted: either matches (the 1st, and every first Monday).
            ("0 0 1 * MON#1", ["2024-01-01", "2024-02-01", "2024-02-05"]),
            ("0 0 13 * 5", ["2024-01-05", "2024-01-12", "2024-01-13"]),
            ("0 0 * * MON", ["2024-01-01", "2024-01-08", "2024-01-15"]),
            ("0 0 1-31 * MON", ["2024-01-01", "2024-01-02", "2024-01-03"]),
            ("0 0 L * 0#1", ["2024-01-07", "2024-01-31", "2024-02-04"]),
        ],
    )
    def test_day_matching_rule(self, expression: str, expected: list[str]) -> None:
        """Day-of-month and day-of-week combine as in Vixie cron and cronie."""
        got = [f[:10] for f in _fires(expression, self.START, 3)]
        assert got == expected


class TestValidation:
    """Invalid input raises InvalidSchedule naming the expression, field and value."""

    @pytest.mark.parametrize(
        ("expression", "fragment"),
        [
            ("60 * * * *", "minute field: value 60 is out of range 0-59"),
            ("* 24 * * *", "hour field: value 24 is out of range 0-23"),
            ("* * 0 * *", "day-of-month field: value 0 is out of range 1-31"),
            ("* * 32 * *", "day-of-month field: value 32"),
            ("* * * 13 *", "month field: value 13 is out of range 1-12"),
            ("* * * * 8", "day-of-week field: value 8 is out of range 0-7"),
            ("60 * * * * *", "second field: value 60"),
            ("0 0 0 * * * 1969", "year field: value 1969 is out of range 1970-2199"),
            ("5-1 * * * *", "minute field: range '5-1' is reversed"),
            ("*/0 * * * *", "minute field: step must be at least 1"),
            ("*/x * * * *", "minute field: invalid step 'x'"),
            ("* * * FOO *", "month field: unknown value 'FOO'"),
            ("* * * * FUN", "day-of-week field: unknown value 'FUN'"),
            ("* * * MON *", "month field: unknown value 'MON'"),
            ("* * * * MON#6", "day-of-week field: occurrence #6 in 'MON#6' is out of range 1-5"),
            ("* * * * MON#0", "occurrence #0"),
            ("* * * * L", "day-of-week field: 'L' alone is ambiguous"),
            ("* * L-31 * *", "day-of-month field: offset 31"),
            ("* * 32W * *", "day-of-month field: value 32"),
            ("1,,2 * * * *", "minute field: empty list member"),
            ("? * * * *", "minute field: '?' is only allowed"),
            ("H * * * *", "minute field: unknown value 'H'"),
            ("* * * *", "expected 5, 6 or 7 fields, got 4"),
            ("* * * * * * * *", "expected 5, 6 or 7 fields, got 8"),
            ("", "expected 5, 6 or 7 fields, got 0"),
            ("@reboot", "unknown macro"),
            ("0 0 30 2 *", "it can never fire"),
            ("0 0 31 4,6,9,11 *", "it can never fire"),
            ("0 0 0 31 2 * 2030", "it can never fire"),
            ("0 0 0 * * * 2199", ""),
        ],
    )
    def test_rejected(self, expression: str, fragment: str) -> None:
        """The message quotes the expression and says what is wrong and where."""
        if not fragment:
            Schedule.cron(expression)  # a valid far-future year is accepted
            return
        with pytest.raises(InvalidSchedule) as info:
            Schedule.cron(expression)
        assert fragment in str(info.value)
        assert repr(expression) in str(info.value)
        assert isinstance(info.value, ValueError)

    @pytest.mark.parametrize("zone", ["UTC+3", "Mars/Olympus", "", "../etc/passwd"])
    def test_unknown_zone(self, zone: str) -> None:
        """An unknown or malformed zone name is rejected with the name."""
        with pytest.raises(InvalidSchedule, match="unknown timezone"):
            Schedule.cron("0 0 * * *", timezone=zone)

    @pytest.mark.parametrize(
        "expression", ["0 0 ? 2 FRI#5", "0 0 29 2 *", "0 0 31 * *", "0 0 30 1,2 *", "0 0 * 2 SUN#5"]
    )
    def test_rare_but_real(self, expression: str) -> None:
        """Schedules that fire rarely are accepted: the check covers the 400-year cycle."""
        assert Schedule.cron(expression).next_after(_utc(2024, 3, 1)) is not None

    def test_naive_datetime(self) -> None:
        """A naive datetime raises ValueError instead of guessing a zone."""
        s = Schedule.cron("0 0 * * *")
        with pytest.raises(ValueError, match="naive datetime"):
            s.next_after(datetime(2024, 1, 1))
        with pytest.raises(ValueError, match="naive datetime"):
            s.previous_before(datetime(2024, 1, 1))

    def test_not_a_string(self) -> None:
        """A non-string expression is rejected."""
        with pytest.raises(InvalidSchedule):
            Schedule.cron(5)  # type: ignore[arg-type]


class TestIterator:
    """next_after, fires and preview, and the required reference cases."""

    def test_weekdays_over_a_weekend(self) -> None:
        """0 0 * * 1-5 in Chicago from Friday just after midnight fires Monday 00:00 CDT."""
        zone = ZoneInfo("America/Chicago")
        s = Schedule.cron("0 0 * * 1-5", timezone="America/Chicago")
        got = s.next_after(datetime(2021, 3, 12, 0, 0, 0, 1, tzinfo=zone))
        assert got == datetime(2021, 3, 15, tzinfo=zone)
        assert got is not None
        assert got.utcoffset() == timedelta(hours=-5)

    def test_midnight_across_spring_forward(self) -> None:
        """0 0 * * * in Los Angeles after the 2022-03-13 fire is 2022-03-14 00:00 PDT."""
        zone = ZoneInfo("America/Los_Angeles")
        s = Schedule.cron("0 0 * * *", timezone="America/Los_Angeles")
        got = s.next_after(datetime(2022, 3, 13, tzinfo=zone))
        assert got is not None
        assert (got.isoformat(), got.tzname()) == ("2022-03-14T00:00:00-07:00", "PDT")

    def test_strictly_after_and_whole_seconds(self) -> None:
        """A fire equal to the argument is skipped; sub-second inputs round correctly."""
        s = Schedule.cron("* * * * * *")
        assert s.next_after(_utc(2024, 1, 1)) == _utc(2024, 1, 1, 0, 0, 1)
        assert s.next_after(_utc(2024, 1, 1, 0, 0, 0, 999999)) == _utc(2024, 1, 1, 0, 0, 1)
        assert s.previous_before(_utc(2024, 1, 1, 0, 0, 1)) == _utc(2024, 1, 1)
        assert s.previous_before(_utc(2024, 1, 1, 0, 0, 0, 1)) == _utc(2024, 1, 1)

    def test_result_is_in_the_schedule_zone(self) -> None:
        """The argument may be in any zone; the result is in the schedule's zone."""
        s = Schedule.cron("0 3 1 * *", timezone="America/Denver")
        got = s.next_after(datetime(2024, 1, 1, tzinfo=ZoneInfo("Asia/Tokyo")))
        assert got is not None
        assert got.tzinfo == ZoneInfo("America/Denver")
        assert got.isoformat() == "2024-01-01T03:00:00-07:00"

    def test_year_field_in_the_past(self) -> None:
        """A schedule whose years are over returns None, and still has a past."""
        s = Schedule.cron("0 0 0 1 1 * 2020")
        assert s.next_after(_utc(2024, 1, 1)) is None
        assert s.previous_before(_utc(2024, 1, 1)) == _utc(2020, 1, 1)
        assert s.previous_before(_utc(2019, 1, 1)) is None
        assert list(s.fires(_utc(2019, 6, 1))) == [_utc(2020, 1, 1)]

    def test_fires_and_preview(self) -> None:
        """fires() iterates in order; preview(n) lists the first n."""
        s = Schedule.cron("0 0 29 2 *")
        it = s.fires(_utc(2024, 1, 1))
        assert [next(it).year for _ in range(3)] == [2024, 2028, 2032]
        assert [f.year for f in s.preview(4, _utc(2096, 1, 1))] == [2096, 2104, 2108, 2112]
        assert s.preview(0, _utc(2024, 1, 1)) == []

    def test_end_of_year_rollover(self) -> None:
        """Rolling over a minute, hour, day, month and year at once works."""
        s = Schedule.cron("*/7 * * * *")
        assert s.next_after(_utc(2024, 12, 31, 23, 58)) == _utc(2025, 1, 1)


class TestReverse:
    """previous_before mirrors next_after."""

    @pytest.mark.parametrize(
        "expression",
        ["*/5 * * * *", "0 3 1 * *", "0 0 29 2 *", "0 9 * * 1-5", "0 0 L * *", "0 0 ? 2 FRI#5",
         "*/10 30 2 * * *", "0 0 1 * MON#1", "0 0 15W * *", "0 0 LW * *"],
    )  # fmt: skip
    @pytest.mark.parametrize("zone", ["UTC", "America/Denver", "Australia/Lord_Howe"])
    def test_previous_inverts_next(self, expression: str, zone: str) -> None:
        """Walking back from each fire finds the previous fire, in order."""
        s = Schedule.cron(expression, timezone=zone)
        fires = s.preview(12, _utc(2024, 1, 1))
        for earlier, later in itertools.pairwise(fires):
            assert s.previous_before(later) == earlier
            assert s.next_after(earlier) == later

    def test_previous_at_a_gap_fire(self) -> None:
        """Just after a gap fire, previous_before returns that fire."""
        zone = ZoneInfo("America/New_York")
        s = Schedule.cron("0 2 * * *", timezone="America/New_York")
        gap_fire = datetime(2013, 3, 10, 3, tzinfo=zone)
        assert s.previous_before(gap_fire + timedelta(seconds=1)) == gap_fire
        assert s.previous_before(gap_fire) == datetime(2013, 3, 9, 2, tzinfo=zone)


class TestEdges:
    """Inputs at the edges of what a datetime or cron can say."""

    def test_non_ascii_digits_are_refused(self) -> None:
        """Digits of other scripts are not cron digits."""
        for expression in ("\u0663 * * * *", "\uff15 * * * *"):  # Arabic-Indic 3, full-width 5
            with pytest.raises(InvalidSchedule, match="ASCII"):
                Schedule.cron(expression)

    def test_fires_beyond_datetime_range_are_none(self) -> None:
        """A next fire past year 9999, or a previous one before year 1, is None."""
        utc = timezone.utc
        assert Schedule.cron("* * * * *").next_after(datetime.max.replace(tzinfo=utc)) is None
        assert Schedule.cron("* * * * *").previous_before(datetime(1, 1, 1, tzinfo=utc)) is None
        huge = Schedule(every=timedelta(days=999_999_999))
        assert huge.next_after(datetime(2030, 1, 1, tzinfo=utc)) is None
