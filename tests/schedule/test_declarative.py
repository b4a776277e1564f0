"""The declarative form, cadences, value semantics and describe()."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from sidecars._trigger import Trigger
from sidecars.exceptions import InvalidSchedule
from sidecars.schedule import At, Schedule, Weekday

UTC = timezone.utc
START = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday


def _days(s: Schedule, n: int = 3, start: datetime = START) -> list[str]:
    return [f.strftime("%Y-%m-%d %H:%M") for f in s.preview(n, start)]


class TestDeclarative:
    """Keyword schedules compile to the same form as cron expressions."""

    @pytest.mark.parametrize(
        ("schedule", "cron"),
        [
            (Schedule(on_day_of_month=1, at=[At(3)]), "0 3 1 * *"),
            (Schedule(at=At(9)), "0 9 * * *"),
            (Schedule(on_weekdays=[Weekday.MONDAY, "fri"]), "0 0 * * MON,FRI"),
            (Schedule(on_weekdays=range(1, 6), at=[At(9, 30)]), "30 9 * * 1-5"),
            (Schedule(on_weekdays=[7]), "0 0 * * 0"),
            (Schedule(on_day_of_month=-1), "0 0 L * *"),
            (Schedule(on_day_of_month=[-4]), "0 0 L-3 * *"),
            (Schedule(on_nth_weekday=(3, "FRIDAY")), "0 0 * * 5#3"),
            (Schedule(on_nth_weekday=[(-1, 5)]), "0 0 * * 5L"),
            (Schedule(in_months=["jan", "July"], on_day_of_month=15), "0 0 15 1,7 *"),
            (Schedule(at=[At(0, 0, 30)]), "30 0 0 * * *"),
        ],
    )
    def test_same_as_cron(self, schedule: Schedule, cron: str) -> None:
        """Each keyword fires exactly like the equivalent cron expression."""
        assert _days(schedule, 6) == _days(Schedule.cron(cron), 6)

    def test_design_example(self) -> None:
        """The design's pamphlet schedule fires at 03:00 Denver time on the 1st."""
        s = Schedule(on_day_of_month=1, timezone="America/Denver", at=[At(3, 0)])
        assert [f.isoformat() for f in s.preview(2, START)] == [
            "2024-01-01T03:00:00-07:00",
            "2024-02-01T03:00:00-07:00",
        ]

    def test_several_times_are_not_a_product(self) -> None:
        """at=[At(9), At(17, 30)] fires at 09:00 and 17:30, not 09:30 or 17:00."""
        s = Schedule(at=[At(9), At(17, 30)])
        assert _days(s, 4) == [
            "2024-01-01 09:00",
            "2024-01-01 17:30",
            "2024-01-02 09:00",
            "2024-01-02 17:30",
        ]

    def test_day_keywords_all_hold(self) -> None:
        """on_day_of_month with on_weekdays means both: Friday the 13th."""
        s = Schedule(on_day_of_month=13, on_weekdays=[Weekday.FRIDAY])
        assert _days(s, 2) == ["2024-09-13 00:00", "2024-12-13 00:00"]

    @pytest.mark.parametrize(
        ("kwargs", "fragment"),
        [
            ({}, "give every= for a cadence"),
            ({"every": timedelta(minutes=5), "at": [At(1)]}, "cannot be combined with at="),
            ({"every": timedelta(minutes=5), "in_months": [1]}, "cannot be combined"),
            ({"every": timedelta(milliseconds=1500)}, "whole seconds"),
            ({"every": timedelta(0)}, "at least 1 s"),
            ({"every": 5}, "takes a timedelta"),
            ({"at": [At(1)], "anchor": START}, "only applies to a cadence"),
            ({"at": [At(1)], "between": (At(1), At(2))}, "only applies to a cadence"),
            ({"every": timedelta(hours=2), "between": (At(9), At(10))}, "longer than the"),
            ({"every": timedelta(hours=1), "between": (At(9), At(9))}, "is empty"),
            ({"every": timedelta(days=2), "on_weekdays": [1]}, "longer than a day"),
            ({"every": timedelta(minutes=1), "anchor": datetime(2024, 1, 1)}, "aware"),
            ({"on_day_of_month": 0}, "on_day_of_month="),
            ({"on_day_of_month": 32}, "on_day_of_month="),
            ({"on_day_of_month": [30], "in_months": [2]}, "can never fire"),
            ({"on_weekdays": ["Funday"]}, "unknown weekday"),
            ({"on_weekdays": [8]}, "unknown weekday"),
            ({"on_weekdays": []}, "is empty"),
            ({"on_nth_weekday": (6, 1)}, "1-5 or -1"),
            ({"in_months": ["Smarch"]}, "unknown month"),
            ({"at": [(9, 0)]}, "At(...)"),
            ({"at": [At(1)], "timezone": "Mars/Olympus"}, "unknown timezone"),
        ],
    )
    def test_rejected(self, kwargs: dict[str, object], fragment: str) -> None:
        """Contradictory or out-of-range keywords raise InvalidSchedule saying why."""
        with pytest.raises(InvalidSchedule, match=None) as info:
            Schedule(**kwargs)  # type: ignore[arg-type]
        assert fragment in str(info.value)

    @pytest.mark.parametrize(("args"), [(24,), (0, 60), (0, 0, 60), (-1,), (1.5,)])
    def test_at_validates(self, args: tuple[int, ...]) -> None:
        """At() rejects out-of-range parts."""
        with pytest.raises(InvalidSchedule, match="invalid At"):
            At(*args)


class TestCadence:
    """every= counts elapsed time, aligned to the epoch or an anchor."""

    def test_aligned_to_the_epoch(self) -> None:
        """Five-minute cadences land on :00, :05, ... UTC whatever the start."""
        s = Schedule(every=timedelta(minutes=5))
        start = datetime(2024, 1, 1, 0, 1, 2, 3, tzinfo=UTC)
        assert _days(s, 2, start) == ["2024-01-01 00:05", "2024-01-01 00:10"]
        assert s.previous_before(start) == datetime(2024, 1, 1, tzinfo=UTC)
        assert s.is_cadence
        assert s.every == timedelta(minutes=5)
        assert s.expression is None

    def test_anchor(self) -> None:
        """An anchor shifts the grid; fires before the anchor are on the same grid."""
        anchor = datetime(2024, 1, 1, 0, 2, 30, tzinfo=UTC)
        s = Schedule(every=timedelta(minutes=5), anchor=anchor)
        assert s.next_after(START) == datetime(2024, 1, 1, 0, 2, 30, tzinfo=UTC)
        assert s.previous_before(START) == datetime(2023, 12, 31, 23, 57, 30, tzinfo=UTC)

    def test_elapsed_time_across_dst(self) -> None:
        """An hourly cadence keeps 3600 s between fires across a DST change."""
        zone = ZoneInfo("America/Denver")
        s = Schedule(every=timedelta(hours=1), timezone="America/Denver")
        fires = s.preview(4, datetime(2024, 3, 10, 0, 30, tzinfo=zone))
        gaps = {b.timestamp() - a.timestamp() for a, b in itertools.pairwise(fires)}
        assert gaps == {3600}

    def test_window_and_weekdays(self) -> None:
        """between= and on_weekdays= keep only fires inside the local window."""
        s = Schedule(
            every=timedelta(minutes=30),
            between=(At(9), At(17)),
            on_weekdays=range(1, 6),
            timezone="America/Denver",
        )
        friday_late = datetime(2024, 1, 5, 16, 45, tzinfo=ZoneInfo("America/Denver"))
        got = s.next_after(friday_late)
        assert got is not None
        assert got.isoformat() == "2024-01-08T09:00:00-07:00"
        back = s.previous_before(datetime(2024, 1, 8, 9, tzinfo=ZoneInfo("America/Denver")))
        assert back is not None
        assert back.isoformat() == "2024-01-05T16:30:00-07:00"

    def test_window_past_midnight(self) -> None:
        """A window with start > end runs overnight."""
        s = Schedule(every=timedelta(hours=1), between=(At(22), At(2)))
        hours = [f.hour for f in s.preview(6, datetime(2024, 1, 1, 12, tzinfo=UTC))]
        assert hours == [22, 23, 0, 1, 22, 23]


class TestValueSemantics:
    """Schedules are immutable, hashable and implement the Trigger protocol."""

    def test_equal_hashable_immutable(self) -> None:
        """Equal schedules hash alike; attributes cannot be set."""
        a = Schedule.cron("0 0 * * *")
        assert a == Schedule.cron("@daily")
        assert hash(a) == hash(Schedule.cron("@daily"))
        assert a != Schedule.cron("0 0 * * *", timezone="Europe/Paris")
        assert len({a, Schedule.cron("@daily"), Schedule(every=timedelta(seconds=1))}) == 2
        with pytest.raises(AttributeError):
            a._zone = ZoneInfo("UTC")  # type: ignore[misc]
        assert isinstance(a, Trigger)

    def test_properties_and_repr(self) -> None:
        """The runner's properties and a repr that rebuilds the schedule."""
        s = Schedule.cron("0 3 1 * *", timezone="America/Denver")
        assert s.timezone == ZoneInfo("America/Denver")
        assert not s.is_cadence
        assert s.every is None
        assert s.expression == "0 3 1 * *"
        assert repr(s) == "Schedule.cron('0 3 1 * *', timezone='America/Denver')"
        assert "every=datetime.timedelta(seconds=300)" in repr(Schedule(every=timedelta(minutes=5)))


class TestDescribe:
    """describe() in plain English."""

    @pytest.mark.parametrize(
        ("schedule", "text"),
        [
            (
                Schedule(on_day_of_month=1, timezone="America/Denver", at=[At(3, 0)]),
                "At 03:00 on day 1 of every month (America/Denver)",
            ),
            (Schedule.cron("0 3 1 * *"), "At 03:00 on day 1 of every month (UTC)"),
            (Schedule.cron("*/5 * * * *"), "Every 5 minutes (UTC)"),
            (Schedule.cron("* * * * *"), "Every minute (UTC)"),
            (Schedule.cron("30 * * * *"), "At minute 30 of every hour (UTC)"),
            (Schedule.cron("0 9 * * 1-5"), "At 09:00 on Monday\u2013Friday (UTC)"),
            (Schedule.cron("0 0 L * *"), "At 00:00 on the last day of every month (UTC)"),
            (Schedule.cron("0 0 * * 5#3"), "At 00:00 on the third Friday (UTC)"),
            (Schedule.cron("0 0 1 * MON#1"), "At 00:00 on day 1 or the first Monday (UTC)"),
            (Schedule.cron("0 16 */2 * SAT"), "At 16:00 on day 1, 3, 5, 7, 9, 11, 13, 15, 17, "
             "19, 21, 23, 25, 27, 29 and 31 if it is Saturday (UTC)"),
            (Schedule.cron("0 0 29 2 *"), "At 00:00 on day 29 in February (UTC)"),
            (Schedule.cron("0 9,17 * * *"), "At 09:00 and 17:00 (UTC)"),
            (Schedule.cron("0 0 0 1 1 * 2030"), "At 00:00 on day 1 in January in 2030 (UTC)"),
            (Schedule(at=[At(9), At(17, 30)]), "At 09:00 and 17:30 (UTC)"),
            (Schedule(every=timedelta(minutes=5)), "Every 5 minutes"),
            (Schedule(every=timedelta(seconds=90)), "Every 90 seconds"),
            (
                Schedule(every=timedelta(hours=1), between=(At(9), At(17)), on_weekdays=[1, 2]),
                "Every hour between 09:00 and 17:00 on Monday and Tuesday (UTC)",
            ),
        ],
    )  # fmt: skip
    def test_text(self, schedule: Schedule, text: str) -> None:
        """The description reads like the schedule."""
        assert schedule.describe() == text
