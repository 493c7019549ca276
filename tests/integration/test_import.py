"""The household import's SQL half: validation by line, duplicates, upserts, odd formatting."""

from __future__ import annotations

import random

import asyncpg

from coupon import households
from coupon.households import blocks_of
from coupon.national_id import is_valid, with_check_digit
from tests.integration.helpers import national_ids


async def run_import(conn: asyncpg.Connection, text: str | bytes) -> households.ImportResult:
    data = text.encode() if isinstance(text, str) else text
    return await households.import_csv(conn, blocks_of(data, size=7))  # tiny blocks on purpose


async def test_sql_checksum_agrees_with_python_on_a_million_ids(
    conn: asyncpg.Connection,
) -> None:
    """The rule lives twice, in coupon.national_id and in national_id_checksum_ok(): the two
    agree on a million candidates, half of them valid, and on every kind of look-alike."""
    rng = random.Random(3)
    candidates = [f"{rng.randrange(10**10):010d}" for _ in range(500_000)]
    candidates += [with_check_digit(f"{rng.randrange(10**9):09d}") for _ in range(500_000)]
    candidates += ["1111111111", "0000000000", "12345", "abcdefghij", "", "00845759480"]
    # look-alikes: int8 input accepts most of these; none is 10 ASCII digits
    candidates += [" 123456789", "123456789 ", "+123456789", "-123456789", "12345_6789"]
    candidates += ["0x12345678", "0o12345670", "0b10101010", "１２３４５６７８９０", "۰۰۸۴۵۷۵۹۴۸"]
    verdicts = await conn.fetchval(
        """SELECT array_agg(coalesce(national_id_checksum_ok(national_id_number(c)), false)
                            ORDER BY n)
           FROM unnest($1::text[]) WITH ORDINALITY AS u(c, n)""",
        candidates,
        timeout=120,
    )
    expected = [is_valid(c) for c in candidates]
    assert sum(expected) > 500_000
    mismatches = [c for c, sql, py in zip(candidates, verdicts, expected, strict=True) if sql != py]
    assert mismatches == []
    # a literal argument is folded at plan time: that must not try to cast it
    assert await conn.fetchval("SELECT national_id_number('abcdefghij')") is None
    assert await conn.fetchval("SELECT national_id_number('0084575948')") == 84575948


async def test_every_kind_of_bad_line_is_reported_and_good_lines_land(
    conn: asyncpg.Connection,
) -> None:
    good = national_ids(4)
    text = "\r\n".join(
        [
            "national_id,province,members,decile",
            f"{good[0]},IR-15,3,2",  # 2 good
            f"{good[1][:9]}{(int(good[1][9]) + 1) % 10},IR-15,3,2",  # 3 checksum
            "1111111111,IR-15,3,2",  # 4 all one digit
            f"{good[1]},IR-32,3,2",  # 5 unknown province
            f"{good[1]},IR-15,31,2",  # 6 members
            f"{good[1]},IR-15,-1,2",  # 7 members
            f"{good[1]},IR-15,3,11",  # 8 decile
            f"{good[1]},IR-15,3.0,2",  # 9 not an integer
            f"{good[1]},IR-15,3",  # 10 a field short
            f"{good[1]},IR-15,3,2,extra",  # 11 a field too many
            "",  # 12 blank: ignored
            f' "{good[1]}" , "ir-15" , "3" , "2" ',  # 13 good: quotes, spaces, lower case
            f"{good[0]},IR-23,1,1",  # 14 duplicate of line 2
            f"{good[2]}\\,IR-15,1,1",  # 15 a backslash: bad id, not a crash
            "۰۰۸۴۵۷۵۹۴۸,IR-15,1,1",  # 16 Persian digits
            f"{good[3]},IR-15,1,1",  # 17 good, no final newline
        ]
    )
    result = await run_import(conn, text)
    assert result.imported == 3 and result.updated == 0
    lines = {r["line"]: r["error"] for r in result.rejected}
    assert sorted(lines) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 14, 15, 16]
    assert "national_id" in lines[3] and "national_id" in lines[4]
    assert "province" in lines[5]
    assert "members" in lines[6] and "members" in lines[7] and "members" in lines[9]
    assert "decile" in lines[8]
    assert "fields" in lines[10] and "fields" in lines[11]
    assert lines[14] == "duplicate of line 2"
    rows = await conn.fetch("SELECT national_id, province, members FROM households")
    assert {r["national_id"]: r["province"] for r in rows} == {
        good[0]: "IR-15",
        good[1]: "IR-15",
        good[3]: "IR-15",
    }


async def test_reimport_counts_updates_and_rewrites_only_changed_rows(
    conn: asyncpg.Connection,
) -> None:
    ids = national_ids(3)
    text = "national_id,province,members,decile\n" + "".join(f"{i},IR-15,2,2\n" for i in ids)
    assert (await run_import(conn, text)).imported == 3
    before = await conn.fetchval("SELECT max(updated_at) FROM households")
    changed = text.replace(f"{ids[1]},IR-15,2,2", f"{ids[1]},IR-15,5,2")
    result = await run_import(conn, changed)
    assert (result.imported, result.updated, result.rejected) == (0, 3, [])
    rows = await conn.fetch("SELECT national_id, members, updated_at FROM households")
    touched = {r["national_id"] for r in rows if r["updated_at"] > before}
    assert touched == {ids[1]}


async def test_repeated_ids_first_good_line_wins_for_new_and_existing_households(
    conn: asyncpg.Connection,
) -> None:
    ids = national_ids(4)
    first = f"national_id,province,members,decile\n{ids[0]},IR-15,2,2\n{ids[1]},IR-15,2,2\n"
    assert (await run_import(conn, first)).imported == 2
    before = await conn.fetchval("SELECT max(updated_at) FROM households")
    text = "\n".join(
        [
            "national_id,province,members,decile",
            f"{ids[0]},IR-23,3,3",  # 2 existing, changed
            f"{ids[2]},IR-15,1,1",  # 3 new
            f"{ids[0]},IR-15,2,2",  # 4 duplicate of line 2
            f"{ids[2]},IR-23,4,4",  # 5 duplicate of line 3
            f"{ids[1]},IR-15,2,2",  # 6 existing, unchanged
            f"{ids[3]},IR-99,1,1",  # 7 unknown province
            f"{ids[3]},IR-15,5,5",  # 8 new: the first good line of its id
            f"{ids[1]},IR-15,7,7",  # 9 duplicate of line 6
        ]
    )
    result = await run_import(conn, text)
    assert (result.imported, result.updated) == (2, 2)
    lines = {r["line"]: r["error"] for r in result.rejected}
    assert sorted(lines) == [4, 5, 7, 9]
    assert lines[4] == "duplicate of line 2" and lines[5] == "duplicate of line 3"
    assert lines[9] == "duplicate of line 6" and "province" in lines[7]
    rows = await conn.fetch(
        "SELECT national_id, province, members, decile, updated_at FROM households"
    )
    got = {r["national_id"]: (r["province"], r["members"], r["decile"]) for r in rows}
    assert got == {
        ids[0]: ("IR-23", 3, 3),
        ids[1]: ("IR-15", 2, 2),
        ids[2]: ("IR-15", 1, 1),
        ids[3]: ("IR-15", 5, 5),
    }
    touched = {r["national_id"] for r in rows if r["updated_at"] > before}
    assert touched == {ids[0], ids[2], ids[3]}
