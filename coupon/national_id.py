"""The national id (کد ملی) of a household's head: 10 ASCII digits, not all the same, whose last
digit is the check digit of the first nine (SPEC). A leaf: nothing of the package is imported.
The database's one copy of the rule is national_id_checksum_ok() in schema.sql; a test keeps the
two in agreement."""

from __future__ import annotations

LENGTH = 10
_DIGITS = frozenset("0123456789")


def check_digit(first9: str) -> int:
    """s = sum(d[i] * (10 - i), i = 0..8) % 11; the check digit is s when s < 2, else 11 - s."""
    s = sum(int(first9[i]) * (10 - i) for i in range(9)) % 11
    return s if s < 2 else 11 - s


def is_valid(value: str) -> bool:
    """10 ASCII digits, not all the same, with a valid check digit."""
    if len(value) != LENGTH or not _DIGITS.issuperset(value):
        return False
    if value.count(value[0]) == LENGTH:
        return False
    return int(value[9]) == check_digit(value)


def with_check_digit(first9: str) -> str:
    """Complete 9 digits into a valid national id (for demo and test data)."""
    return first9 + str(check_digit(first9))


def mask(value: str) -> str:
    """What logs may show of a national id: its last three digits."""
    return "*******" + value[-3:] if len(value) >= 3 else "***"
