"""Days as an auditor types them: Gregorian ISO or Solar Hijri, Persian digits too."""

from __future__ import annotations

import datetime as dt

import pytest

from coupon.dates import parse_day


@pytest.mark.parametrize(
    ("text", "gregorian", "solar_hijri"),
    [
        ("1405-09-09", dt.date(2026, 11, 30), True),
        ("۱۴۰۵/۰۹/۰۹", dt.date(2026, 11, 30), True),
        ("١٤٠٥-٠٩-٠٩", dt.date(2026, 11, 30), True),
        ("1405-1-1", dt.date(2026, 3, 21), True),  # Nowruz
        ("1403-12-30", dt.date(2025, 3, 20), True),  # a leap Esfand
        ("1699-01-01", dt.date(2320, 3, 21), True),
        ("1700-01-01", dt.date(1700, 1, 1), False),
        ("2026-11-30", dt.date(2026, 11, 30), False),
        (" 2024-02-29 ", dt.date(2024, 2, 29), False),
    ],
)
def test_days_and_their_calendar(text: str, gregorian: dt.date, solar_hijri: bool) -> None:
    day = parse_day(text)
    assert (day.date, day.solar_hijri) == (gregorian, solar_hijri)


def test_the_interpretation_names_both_calendars() -> None:
    assert parse_day("1405-09-09").interpretation() == (
        "1405-09-09 read as Solar Hijri 1405-09-09 (9 Azar 1405) = Gregorian 2026-11-30"
    )
    assert parse_day("2026-03-21").interpretation() == (
        "2026-03-21 read as Gregorian 2026-03-21 = Solar Hijri 1405-01-01 (1 Farvardin 1405)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-13-01", "there is no month 13 (Gregorian months are 1..12)"),
        ("1405-00-01", "there is no month 0 (Solar Hijri months are 1..12)"),
        ("1405-12-30", "month 12 of the Solar Hijri year 1405 has no day 30"),
        ("2026-02-29", "month 2 of the Gregorian year 2026 has no day 29"),
        ("30/11/2026", "is not a date"),
        ("", "is not a date"),
        ("2026-11-30T00:00", "is not a date"),
    ],
)
def test_what_is_not_a_day(text: str, message: str) -> None:
    with pytest.raises(ValueError) as failure:
        parse_day(text)
    assert message in str(failure.value)
