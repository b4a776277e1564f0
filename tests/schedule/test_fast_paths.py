"""The evaluator's shortcuts agree with the plain definitions they stand in for."""

from __future__ import annotations

import pytest

from sidecars.schedule import _parse
from sidecars.schedule._parse import parse_cron
from sidecars.schedule._spec import CalendarSpec, can_fire, is_leap, weekday_of_first


def _fires_in_400_years(spec: CalendarSpec) -> bool:
    """The definition: some allowed month of one whole Gregorian cycle has a matching day."""
    years = spec.years if spec.years is not None else range(2000, 2400)
    return any(spec.month_days(y, m) for y in years for m in spec.months)


@pytest.mark.parametrize(
    "expression",
    [
        "0 0 29 2 *",
        "0 0 30 2 *",
        "0 0 31 4,6,9,11 *",
        "0 0 31 4,6,9,12 *",
        "0 0 ? 2 FRI#5",
        "0 0 29 2 1",
        "0 0 29 2 */7",
        "0 0 30W 2 *",
        "0 0 L-28 2 *",
        "0 0 L-29 2 *",
        "0 0 30 2 MON#5",
        "0 0 * 2 SUN#5",
        "0 0 31 * *",
        "0 0 0 31 2 * 2030",
        "0 0 0 29 2 * 2028",
        "0 0 0 29 2 * 2100",
        "0 0 0 ? 2 FRI#5 2036",
        "0 0 0 ? 2 FRI#5 2037-2063",
    ],
)
def test_can_fire_is_exact(expression: str) -> None:
    spec = parse_cron(expression)
    assert can_fire(spec) == _fires_in_400_years(spec)


@pytest.mark.parametrize(
    "fld", [_parse._SECOND, _parse._MINUTE, _parse._HOUR, _parse._DOM, _parse._MONTH]
)
def test_token_tables_match_the_general_parser(fld: tuple[str, int, int, object]) -> None:
    table = _parse._tokens(fld)  # type: ignore[arg-type]
    for text, mask in table.items():
        assert _parse._values(text, fld) == mask, text  # type: ignore[arg-type]


def test_day_masks_follow_weekdays() -> None:
    """Month shapes built with shifted weekday patterns match a day-by-day check."""
    spec = parse_cron("0 0 1,15,L-2 * MON,FRI,SUN#2,TUEL")
    for year in (2023, 2024, 2100):
        for month in range(1, 13):
            wd1 = weekday_of_first(year, month)
            ndays = (31, 29 if is_leap(year) else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[
                month - 1
            ]
            expected = set()
            for day in range(1, ndays + 1):
                wd = (wd1 + day - 1) % 7
                nth = (day - 1) // 7 + 1
                if (
                    day in (1, 15, ndays - 2)
                    or wd in (1, 5)
                    or (wd == 0 and nth == 2)
                    or (wd == 2 and day + 7 > ndays)
                ):
                    expected.add(day)
            assert set(spec.month_days(year, month)) == expected, (year, month)
