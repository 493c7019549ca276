"""CSV cells a spreadsheet would not run: text starting with = + - @, a tab or a carriage
return is a formula to Excel and LibreOffice, so it gets a leading apostrophe (OWASP's rule).
Python's writers use cell(); ledger.csv, which PostgreSQL writes, uses sql_cell()."""

from __future__ import annotations

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: object) -> object:
    """A value as a CSV cell: text that starts a formula escaped, anything else as it is."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def sql_cell(column: str) -> str:
    """The same rule as an SQL expression over a text column."""
    return f"CASE WHEN {column} ~ '^[-=+@\\t\\r]' THEN '''' || {column} ELSE {column} END"
