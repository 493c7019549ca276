"""Calendar days as people type them: Gregorian ISO (`2026-11-30`) or Solar Hijri
(`1405-09-09`, `۱۴۰۵/۰۹/۰۹`), told apart by the year."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import jdatetime

# below this year a date is Solar Hijri: the Solar Hijri year 1700 is 2321 CE, and no
# Gregorian date of the programme is before 1700
SOLAR_HIJRI_BEFORE = 1700

# Persian (U+06F0..) and Arabic-Indic (U+0660..) digits, as Iranian keyboards type them
_DIGITS = str.maketrans("۰۱۲۳۴۵۶۷۸۹٠١٢٣٤٥٦٧٨٩", "01234567890123456789")
_DAY = re.compile(r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})")
_MONTHS_FA = (
    "Farvardin",
    "Ordibehesht",
    "Khordad",
    "Tir",
    "Mordad",
    "Shahrivar",
    "Mehr",
    "Aban",
    "Azar",
    "Dey",
    "Bahman",
    "Esfand",
)


@dataclass(frozen=True)
class Day:
    """A day, and how the text that named it was read."""

    date: dt.date  # Gregorian
    solar_hijri: bool
    text: str

    def interpretation(self) -> str:
        j = jdatetime.date.fromgregorian(date=self.date)
        hijri = (
            f"{j.year:04d}-{j.month:02d}-{j.day:02d} ({j.day} {_MONTHS_FA[j.month - 1]} {j.year})"
        )
        if self.solar_hijri:
            return f"{self.text} read as Solar Hijri {hijri} = Gregorian {self.date.isoformat()}"
        return f"{self.text} read as Gregorian {self.date.isoformat()} = Solar Hijri {hijri}"


def parse_day(text: str) -> Day:
    """The day `text` names; ValueError with a message fit for a person otherwise."""
    cleaned = text.strip().translate(_DIGITS)
    match = _DAY.fullmatch(cleaned)
    if match is None:
        raise ValueError(
            f"{text!r} is not a date: write YYYY-MM-DD, Gregorian (2026-11-30) or "
            "Solar Hijri (1405-09-09)"
        )
    year, month, day = (int(g) for g in match.groups())
    solar_hijri = year < SOLAR_HIJRI_BEFORE
    calendar = "Solar Hijri" if solar_hijri else "Gregorian"
    if not 1 <= month <= 12:
        raise ValueError(f"{text!r}: there is no month {month} ({calendar} months are 1..12)")
    try:
        if solar_hijri:
            gregorian = jdatetime.date(year, month, day).togregorian()
        else:
            gregorian = dt.date(year, month, day)
    except ValueError:
        raise ValueError(
            f"{text!r}: month {month} of the {calendar} year {year} has no day {day}"
        ) from None
    return Day(gregorian, solar_hijri, text)
