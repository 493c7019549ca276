"""Households: the bulk CSV import (upsert, bad lines reported by number, never blocking the good
ones) and status changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from coupon import db, errors

IMPORT_COLUMNS = ("national_id", "province", "members", "decile")
MAX_LINE_BYTES = 64 * 1024
# where the import stages its lines: a schema of its own, so the service's role needs no
# CREATE on the public schema (see schema.sql)
STAGING_SCHEMA = "coupon_staging"


@dataclass(slots=True)
class ImportResult:
    imported: int = 0
    updated: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def as_response(self) -> dict[str, Any]:
        return {"imported": self.imported, "updated": self.updated, "rejected": self.rejected}


class CsvFormatError(errors.InvalidRequest):
    """The CSV cannot be imported at all (no usable header, not UTF-8 text)."""


@dataclass(frozen=True, slots=True)
class Header:
    """Where each column is: 1-based positions, as SQL arrays count."""

    width: int
    national_id: int
    province: int
    members: int
    decile: int
    status: int | None


def parse_header(line: bytes) -> Header:
    """The header line: national_id,province,members,decile[,status], in any order."""
    try:
        text = line.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise CsvFormatError("the CSV is not UTF-8 text") from None
    names = [name.strip().strip('"').strip().lower() for name in text.split(",")]
    missing = [c for c in IMPORT_COLUMNS if c not in names]
    if not text or missing:
        raise CsvFormatError(
            "the first line must be the header national_id,province,members,decile[,status]"
            + (f"; missing: {', '.join(missing)}" if text else "")
        )
    if len(set(names)) != len(names):
        raise CsvFormatError("the header repeats a column")
    position = {name: i + 1 for i, name in enumerate(names)}
    return Header(
        len(names),
        position["national_id"],
        position["province"],
        position["members"],
        position["decile"],
        position.get("status"),
    )


class CopyStream:
    """CSV body blocks -> the header, then lines in COPY text format (one column per line).

    Backslashes are escaped so the text format keeps them, \\x01 (our column delimiter) is
    written as an octal escape, and CR LF becomes LF. Memory stays flat: blocks pass through."""

    def __init__(self, blocks: AsyncIterator[bytes]) -> None:
        self._blocks = blocks
        self.header: Header | None = None
        self.bytes_read = 0
        self._pending = b""

    async def read_header(self) -> Header:
        buffer = b""
        async for block in self._blocks:
            self.bytes_read += len(block)
            buffer += block
            if b"\n" in buffer:
                break
        line, _, rest = buffer.partition(b"\n")
        self.header = parse_header(line)
        self._pending = rest
        return self.header

    async def lines(self) -> AsyncIterator[bytes]:
        carry, self._pending = self._pending, b""
        async for block in self._blocks:
            self.bytes_read += len(block)
            data = carry + block
            # pass whole lines only: a block may end inside a line, a CR LF or a UTF-8 character
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            if len(carry) > MAX_LINE_BYTES:
                raise CsvFormatError(f"a line is longer than {MAX_LINE_BYTES} bytes")
            if cut:
                yield _copy_text(data[:cut])
        tail = carry.rstrip(b"\r")
        if tail:
            yield _copy_text(tail)


def _copy_text(data: bytes) -> bytes:
    if b"\x00" in data:
        raise CsvFormatError("the CSV contains NUL bytes; it is not a text file")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CsvFormatError(f"the CSV is not UTF-8 text (near byte {exc.start})") from None
    return (
        data.replace(b"\\", b"\\\\")
        .replace(b"\x01", b"\\001")
        .replace(b"\r\n", b"\n")
        .replace(b"\r", b"\\r")
    )


async def import_csv(conn: db.Connection, blocks: AsyncIterator[bytes]) -> ImportResult:
    """Import households from CSV bytes in one transaction: every good row, or nothing.

    PostgreSQL does the per-row work (split, validate, upsert) set-based; Python only moves
    bytes, so millions of rows import at the speed of the database."""
    stream = CopyStream(blocks)
    header = await stream.read_header()
    async with conn.transaction():
        await conn.execute("SET LOCAL work_mem = '256MB'")
        await conn.execute(db.q("lock_household_import"))
        await conn.execute(db.q("create_import_lines"))
        await conn.copy_to_table(
            "import_lines",
            schema_name=STAGING_SCHEMA,
            source=stream.lines(),
            columns=["line"],
            format="text",
            delimiter="\x01",
            timeout=db.BULK_TIMEOUT,
        )
        status = await conn.execute(
            db.q("classify_import_lines"),
            header.width,
            header.national_id,
            header.province,
            header.members,
            header.decile,
            header.status,
            timeout=db.BULK_TIMEOUT,
        )
        lines = _row_count(status)
        empty = await conn.fetchval(db.q("households_empty"))
        present = 0
        if not empty:
            counts = await conn.fetchrow(
                db.q("update_imported_households"), timeout=db.BULK_TIMEOUT
            )
            assert counts is not None
            present = counts["present"]
        rejected = await conn.fetch(db.q("import_rejections"), timeout=db.BULK_TIMEOUT)
        good = lines - len(rejected)
        inserted = 0
        if good > present:
            insert = "insert_first_households" if empty else "insert_new_households"
            inserted = _row_count(await conn.execute(db.q(insert), timeout=db.BULK_TIMEOUT))
        # Both statements let the first good line of a repeated id win; only when the counts
        # show a repeat are the later lines looked for, to report them (a hash over every row).
        if inserted + present < good:
            await conn.execute(db.q("reject_import_duplicates"), timeout=db.BULK_TIMEOUT)
            rejected = await conn.fetch(db.q("import_rejections"), timeout=db.BULK_TIMEOUT)
        await conn.execute(db.q("drop_import_tables"))
    return ImportResult(inserted, present, [dict(r) for r in rejected])


def _row_count(status: str) -> int:
    """The row count of a command tag such as 'INSERT 0 42' or 'SELECT 42'."""
    return int(status.rsplit(" ", 1)[1])


async def blocks_of(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """An in-memory CSV as blocks (tests, demo)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def set_status(conn: db.Connection, national_id: str, status: str) -> dict[str, Any]:
    """Suspend or reactivate a household."""
    row = await conn.fetchrow(db.q("set_household_status"), national_id, status)
    if row is None:
        raise errors.HouseholdNotFound()
    return dict(row)
