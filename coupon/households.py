"""Households: the bulk CSV import (upsert, bad lines reported by number, never blocking the good
ones) and status changes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from coupon import db, errors

IMPORT_COLUMNS = ("national_id", "province", "members", "decile")
MAX_LINE_BYTES = 64 * 1024
MAX_HEADER_BYTES = 4 * 1024  # the header names at most five columns
# rejected lines an answer lists (all of them are counted by reason, and can be streamed)
FIRST_REJECTIONS = 1000
# rejections per chunk when every one is streamed
_STREAM_CHUNK = 5000

# writes one chunk of the answer's body
Sink = Callable[[bytes], Awaitable[None]]
# where the import stages its lines: a schema of its own, so the service's role needs no
# CREATE on the public schema (see schema.sql)
STAGING_SCHEMA = "coupon_staging"


@dataclass(slots=True)
class ImportResult:
    imported: int = 0
    updated: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)  # the first ones only
    rejected_count: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)

    def as_response(self, with_rejected: bool = True) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "imported": self.imported,
            "updated": self.updated,
            "rejected_count": self.rejected_count,
            "rejected_by_reason": self.rejected_by_reason,
        }
        if with_rejected:
            answer["rejected"] = self.rejected
        return answer


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
        parts: list[bytes] = []
        size = 0
        async for block in self._blocks:
            self.bytes_read += len(block)
            parts.append(block)
            size += len(block)
            if b"\n" in block or size > MAX_HEADER_BYTES:
                break
        buffer = b"".join(parts)
        end = buffer.find(b"\n")
        if end > MAX_HEADER_BYTES or (end < 0 and size > MAX_HEADER_BYTES):
            raise CsvFormatError(f"the header line is longer than {MAX_HEADER_BYTES} bytes")
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


async def import_csv(
    conn: db.Connection,
    blocks: AsyncIterator[bytes],
    every_rejection: Sink | None = None,
    scope: str | None = None,
) -> ImportResult:
    """Import households from CSV bytes in one transaction: every good row, or nothing.

    PostgreSQL does the per-row work (split, validate, upsert) set-based; Python only moves
    bytes, so millions of rows import at the speed of the database. The result lists the first
    FIRST_REJECTIONS rejected lines and counts them all by reason; every_rejection, when given,
    gets every one of them as JSON array elements, a chunk at a time, before the commit."""
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
            scope,
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
        by_reason = await _rejection_counts(conn)
        good = lines - sum(by_reason.values())
        inserted = 0
        if good > present:
            insert = "insert_first_households" if empty else "insert_new_households"
            inserted = _row_count(await conn.execute(db.q(insert), timeout=db.BULK_TIMEOUT))
        # Both statements let the first good line of a repeated id win; only when the counts
        # show a repeat are the later lines looked for, to report them (a hash over every row).
        if inserted + present < good:
            await conn.execute(db.q("reject_import_duplicates"), timeout=db.BULK_TIMEOUT)
            by_reason = await _rejection_counts(conn)
        first = await conn.fetch(
            db.q("import_rejections"), FIRST_REJECTIONS, timeout=db.BULK_TIMEOUT
        )
        if every_rejection is not None and by_reason:
            await _stream_rejections(conn, every_rejection)
        await conn.execute(db.q("drop_import_tables"))
    return ImportResult(
        inserted, present, [dict(r) for r in first], sum(by_reason.values()), by_reason
    )


async def _rejection_counts(conn: db.Connection) -> dict[str, int]:
    rows = await conn.fetch(db.q("import_rejection_counts"), timeout=db.BULK_TIMEOUT)
    return {r["reason"]: r["lines"] for r in rows}


async def _stream_rejections(conn: db.Connection, sink: Sink) -> None:
    """Every rejected line as JSON array elements, comma-separated, a chunk at a time: no
    more than one chunk is ever in memory (the cursor closes once it is read through)."""
    chunk: list[bytes] = []
    separator = b""
    query = db.q("import_rejections")
    async for r in conn.cursor(query, None, prefetch=_STREAM_CHUNK, timeout=db.BULK_TIMEOUT):
        chunk.append(orjson.dumps({"line": r["line"], "error": r["error"]}))
        if len(chunk) == _STREAM_CHUNK:
            await sink(separator + b",".join(chunk))
            chunk, separator = [], b","
    if chunk:
        await sink(separator + b",".join(chunk))


def _row_count(status: str) -> int:
    """The row count of a command tag such as 'INSERT 0 42' or 'SELECT 42'."""
    return int(status.rsplit(" ", 1)[1])


async def blocks_of(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """An in-memory CSV as blocks (tests, demo)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def set_status(
    conn: db.Connection, national_id: str, status: str, scope: str | None = None
) -> dict[str, Any]:
    """Suspend or reactivate a household (of the token's province, when scoped)."""
    row = await conn.fetchrow(db.q("set_household_status"), national_id, status, scope)
    if row is None:
        raise errors.HouseholdNotFound()
    if row["national_id"] is None:
        raise errors.OutOfProvince()
    return dict(row)
