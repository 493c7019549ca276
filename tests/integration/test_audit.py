"""The auditor's ledger: filters, pagination, CSV, settlement, and tamper evidence."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import hashlib
import io
from typing import Any

import asyncpg
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coupon import audit, db, signing
from coupon.api.keys import SEAL_KEYS, SETTINGS
from tests.integration.terminal import Client, World, make_terminal, make_world


async def busy_world(client: Client, operator: dict[str, str]) -> tuple[World, Any]:
    """Two stores, several households over three provinces, redemptions and reversals."""
    world = await make_world(client, operator, n=9)
    other = await make_terminal(client, operator, province="IR-23")
    ids = list(world.credit)
    for i, nid in enumerate(ids):
        t = world.terminal if i % 2 == 0 else other
        await t.redeem(nid, 10_000 + i, request_id=f"a{i}")
        await t.redeem(nid, 20_000 + i, request_id=f"b{i}")
    await world.terminal.reverse("a0", request_id="void-a0")
    await other.reverse("b1", request_id="void-b1")
    return world, other


async def page(client: Client, auditor: dict[str, str], query: str = "") -> dict[str, Any]:
    resp = await client.get(f"/v1/ledger?{query}", headers=auditor)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_filters_match_the_ledger(
    client: Client, operator: dict[str, str], auditor: dict[str, str], conn: asyncpg.Connection
) -> None:
    world, other = await busy_world(client, operator)
    everything = (await page(client, auditor, "limit=1000"))["entries"]
    assert len(everything) == 20 and [e["seq"] for e in everything] == sorted(
        e["seq"] for e in everything
    )
    entry = everything[0]
    assert set(entry) == {
        "seq",
        "kind",
        "entry_id",
        "request_id",
        "terminal_id",
        "merchant_id",
        "national_id",
        "province",
        "tranche_id",
        "amount",
        "created_at",
        "captured_at",  # null: none was forwarded from offline
    }
    assert all(e["amount"] > 0 and e["captured_at"] is None for e in everything)
    nid = next(iter(world.credit))
    middle = everything[10]["created_at"]
    filters = {
        f"national_id={nid}": lambda e: e["national_id"] == nid,
        f"merchant_id={other.merchant_id}": lambda e: e["merchant_id"] == other.merchant_id,
        f"terminal_id={world.terminal.terminal_id}": lambda e: (
            e["terminal_id"] == world.terminal.terminal_id
        ),
        "province=IR-23": lambda e: e["province"] == "IR-23",
        f"tranche_id={world.tranche_id}": lambda e: e["tranche_id"] == world.tranche_id,
        "kind=reversal": lambda e: e["kind"] == "reversal",
        f"from={middle}": lambda e: e["created_at"] >= middle,
        f"to={middle}": lambda e: e["created_at"] < middle,
        f"province=IR-15&kind=redemption&terminal_id={world.terminal.terminal_id}": lambda e: (
            e["province"] == "IR-15"
            and e["kind"] == "redemption"
            and e["terminal_id"] == world.terminal.terminal_id
        ),
        f"merchant_id={other.merchant_id}&from={middle}&kind=redemption": lambda e: (
            e["merchant_id"] == other.merchant_id
            and e["created_at"] >= middle
            and e["kind"] == "redemption"
        ),
    }
    for query, keep in filters.items():
        got = (await page(client, auditor, query.replace("+", "%2B")))["entries"]
        expected = [e for e in everything if keep(e)]
        assert got == expected, query
        assert expected or "from" in query or "to" in query, query


async def test_bad_ledger_queries(
    client: Client, auditor: dict[str, str], operator: dict[str, str]
) -> None:
    for query in (
        "limit=1001",
        "limit=0",
        "after=-1",
        "kind=refund",
        "province=Tehran",
        "national_id=123",
        "from=yesterday",
        "from=2026-01-01T00:00:00",
        "channel=pos",
        "merchant_id=x",
        "color=red",
    ):
        resp = await client.get(f"/v1/ledger?{query}", headers=auditor)
        assert resp.status == 422, query
        assert (await resp.json())["error"]["code"] == "invalid_request"
    # operators do not read per-household rows; terminals and strangers neither
    assert (await client.get("/v1/ledger", headers=operator)).status == 403
    assert (await client.get("/v1/ledger.csv", headers=operator)).status == 403
    assert (await client.get("/v1/ledger")).status == 401


async def test_pagination_neither_skips_nor_repeats_while_redemptions_continue(
    client: Client, operator: dict[str, str], auditor: dict[str, str]
) -> None:
    world = await make_world(client, operator, n=20)
    ids = list(world.credit)
    for i in range(30):
        await world.terminal.redeem(ids[i % 20], 1000, request_id=f"p{i}")
    stop = asyncio.Event()

    async def keep_redeeming() -> int:
        n = 0
        while not stop.is_set():
            await world.terminal.redeem(ids[n % 20], 1000, request_id=f"q{n}")
            n += 1
        return n

    writer = asyncio.create_task(keep_redeeming())
    seen: list[int] = []
    cursor = "0"
    pages = 0
    while True:
        writer_done = writer.done()  # before the page is asked for
        body = await page(client, auditor, f"limit=7&after={cursor}")
        seen.extend(e["seq"] for e in body["entries"])
        pages += 1
        if pages == 8:  # the writer stops mid-way; paging then runs to the end
            stop.set()
            assert await writer > 0
        if body["next"] is None:
            if writer_done:
                break
            # caught up with the writer: ask again from the last row seen
            cursor = str(seen[-1]) if seen else cursor
        else:
            cursor = body["next"]
        await asyncio.sleep(0.01)
    stop.set()
    await writer
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    everything = [e["seq"] for e in (await page(client, auditor, "limit=1000"))["entries"]]
    assert seen == everything  # every row exactly once, none skipped


async def test_csv_equals_json(
    client: Client, operator: dict[str, str], auditor: dict[str, str]
) -> None:
    await busy_world(client, operator)
    for query in ("", "province=IR-23", "kind=reversal"):
        resp = await client.get(f"/v1/ledger.csv?{query}", headers=auditor)
        assert resp.status == 200 and resp.content_type == "text/csv"
        rows = list(csv.DictReader(io.StringIO(await resp.text())))
        entries = (await page(client, auditor, f"limit=1000&{query}"))["entries"]
        assert len(rows) == len(entries) > 0
        for row, entry in zip(rows, entries, strict=True):
            assert set(row) == set(entry)
            for key in ("seq", "entry_id", "terminal_id", "merchant_id", "tranche_id", "amount"):
                assert int(row[key]) == entry[key]
            for key in ("kind", "request_id", "national_id", "province"):
                assert row[key] == entry[key]
            assert dt.datetime.fromisoformat(row["created_at"]) == dt.datetime.fromisoformat(
                entry["created_at"]
            )
    resp = await client.get("/v1/ledger.csv?limit=5", headers=auditor)
    assert resp.status == 422


async def test_settlement_equals_the_ledger(
    client: Client, operator: dict[str, str], auditor: dict[str, str], conn: asyncpg.Connection
) -> None:
    world, other = await busy_world(client, operator)
    today = await conn.fetchval("SELECT (now() AT TIME ZONE 'Asia/Tehran')::date")
    resp = await client.get(f"/v1/reports/settlement?date={today}", headers=operator)
    assert resp.status == 200
    report = await resp.json()
    assert report["date"] == today.isoformat()
    entries = (await page(client, auditor, "limit=1000"))["entries"]
    for store in report["merchants"]:
        mine = [e for e in entries if e["merchant_id"] == store["merchant_id"]]
        assert store["redemptions"] == sum(e["kind"] == "redemption" for e in mine)
        assert store["reversals"] == sum(e["kind"] == "reversal" for e in mine)
        assert store["net_amount"] == sum(
            e["amount"] if e["kind"] == "redemption" else -e["amount"] for e in mine
        )
    assert {s["merchant_id"] for s in report["merchants"]} == {
        world.terminal.merchant_id,
        other.merchant_id,
    }
    # the day before has nothing; a bad date is 422
    yesterday = today - dt.timedelta(days=1)
    empty = await (
        await client.get(f"/v1/reports/settlement?date={yesterday}", headers=auditor)
    ).json()
    assert empty["merchants"] == []
    assert (
        await client.get("/v1/reports/settlement?date=13/01/2026", headers=auditor)
    ).status == 422


async def test_settlement_days_are_tehran_days(
    client: Client, operator: dict[str, str], auditor: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(client, operator, n=2)
    nid = next(iter(world.credit))
    await world.terminal.redeem(nid, 1000, request_id="late")
    # 21:00 UTC on 2026-03-20 is 00:30 on 2026-03-21 in Tehran (UTC+3:30)
    await conn.execute("ALTER TABLE ledger DISABLE TRIGGER USER")
    await conn.execute("UPDATE ledger SET created_at = '2026-03-20T21:00:00Z'")
    report = await (
        await client.get("/v1/reports/settlement?date=2026-03-21", headers=auditor)
    ).json()
    assert [s["redemptions"] for s in report["merchants"]] == [1]
    report = await (
        await client.get("/v1/reports/settlement?date=2026-03-20", headers=auditor)
    ).json()
    assert report["merchants"] == []


# -- tamper evidence --------------------------------------------------------------------------


async def sealed_world(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> list[int]:
    await busy_world(client, operator)
    await audit.seal(conn, client.app[SEAL_KEYS], max_rows=6)  # several blocks
    return [r["seq"] for r in await conn.fetch("SELECT seq FROM ledger ORDER BY seq")]


async def verify(client: Client, auditor: dict[str, str], query: str = "") -> dict[str, Any]:
    resp = await client.get(f"/v1/ledger/verify?{query}", headers=auditor)
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


async def test_a_clean_ledger_verifies(
    client: Client, operator: dict[str, str], auditor: dict[str, str], conn: asyncpg.Connection
) -> None:
    seqs = await sealed_world(client, operator, conn)
    result = await verify(client, auditor)
    assert result["ok"] is True and result["first_bad_seq"] is None
    assert result["entries"] == len(seqs) and result["head_seq"] == seqs[-1]
    assert len(result["head"]) == 64
    assert await conn.fetchval("SELECT count(*) FROM ledger_blocks") == 4  # 20 rows / 6
    # a head recorded now still verifies later, after more rows are sealed
    head = result["head"]
    nid = await conn.fetchval("SELECT national_id FROM entitlements WHERE balance > 5 LIMIT 1")
    assert (await (await make_terminal(client, operator)).redeem(nid, 5)).status == 201
    await audit.seal(conn, client.app[SEAL_KEYS])
    later = await verify(client, auditor, f"head={head}")
    assert later["ok"] is True and later["head"] != head and later["entries"] == len(seqs) + 1
    resp = await client.get("/v1/ledger/verify?head=zz", headers=auditor)
    assert resp.status == 422


TAMPERING = {
    "change an amount": ("UPDATE ledger SET amount = amount + 1 WHERE seq = $1", 7),
    "change a household": ("UPDATE ledger SET national_id = '0084575948' WHERE seq = $1", 3),
    "change the time": (
        "UPDATE ledger SET created_at = created_at - interval '1 hour' WHERE seq = $1",
        12,
    ),
    "delete a row": ("DELETE FROM ledger WHERE seq = $1", 5),
}

COLUMNS = (
    "kind, request_id, terminal_id, merchant_id, national_id, province, tranche_id, "
    "amount, reverses, created_at"
)


@pytest.mark.parametrize("case", list(TAMPERING))
async def test_each_kind_of_tampering_names_the_first_bad_seq(
    client: Client,
    operator: dict[str, str],
    auditor: dict[str, str],
    conn: asyncpg.Connection,
    case: str,
) -> None:
    seqs = await sealed_world(client, operator, conn)
    sql, index = TAMPERING[case]
    target = seqs[index]
    # as a superuser, triggers off: what the database itself cannot refuse
    await conn.execute("SET session_replication_role = replica")
    await conn.execute(sql, target)
    await conn.execute("SET session_replication_role = origin")
    result = await verify(client, auditor)
    assert result["ok"] is False, case
    assert result["first_bad_seq"] == target, (case, result)


async def test_inserting_a_row_into_sealed_history_is_detected(
    client: Client, operator: dict[str, str], auditor: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(client, operator, n=3)
    nid = next(iter(world.credit))
    await world.terminal.redeem(nid, 1000, request_id="before")
    gap = await conn.fetchval("SELECT nextval(pg_get_serial_sequence('ledger', 'seq'))")
    await world.terminal.redeem(nid, 1000, request_id="after")
    await audit.seal(conn, client.app[SEAL_KEYS])
    assert (await verify(client, auditor))["ok"] is True  # a gap is not an error
    await conn.execute(
        f"INSERT INTO ledger (seq, {COLUMNS}) OVERRIDING SYSTEM VALUE "
        f"SELECT $1, kind, 'forged', terminal_id, merchant_id, national_id, province, "
        f"tranche_id, amount, reverses, created_at FROM ledger WHERE request_id = 'before'",
        gap,
    )
    result = await verify(client, auditor)
    assert (result["ok"], result["first_bad_seq"]) == (False, gap)


async def test_swapping_two_rows_is_detected(
    client: Client, operator: dict[str, str], auditor: dict[str, str], conn: asyncpg.Connection
) -> None:
    seqs = await sealed_world(client, operator, conn)
    a, b = seqs[4], seqs[9]
    await conn.execute("SET session_replication_role = replica")
    swap = (
        f"UPDATE ledger SET ({COLUMNS}) = (SELECT {COLUMNS} FROM ledger WHERE seq = $2) "
        "WHERE seq = $1"
    )
    saved = await conn.fetchrow("SELECT * FROM ledger WHERE seq = $1", a)
    await conn.execute(swap, a, b)
    await conn.execute(
        "UPDATE ledger SET amount = $2, request_id = $3, national_id = $4 WHERE seq = $1",
        b,
        saved["amount"],
        saved["request_id"],
        saved["national_id"],
    )
    result = await verify(client, auditor)
    assert (result["ok"], result["first_bad_seq"]) == (False, a)


async def test_a_rewritten_seal_breaks_its_block(
    client: Client, operator: dict[str, str], auditor: dict[str, str], conn: asyncpg.Connection
) -> None:
    seqs = await sealed_world(client, operator, conn)
    target = seqs[8]  # in the second block (rows 7..12)
    await conn.execute("SET session_replication_role = replica")
    await conn.execute("UPDATE ledger SET amount = amount + 1 WHERE seq = $1", target)
    await conn.execute(
        """
        UPDATE ledger_seals s SET digest = ledger_digest(l.seq, l.kind, l.request_id,
            l.terminal_id, l.merchant_id, l.national_id, l.province, l.tranche_id, l.amount,
            l.reverses, l.created_at)
        FROM ledger l WHERE l.seq = s.seq AND s.seq = $1""",
        target,
    )
    result = await verify(client, auditor)
    assert result["ok"] is False and result["first_bad_seq"] == seqs[6]


async def test_a_rewritten_chain_no_longer_holds_the_recorded_head(
    client: Client, operator: dict[str, str], auditor: dict[str, str], conn: asyncpg.Connection
) -> None:
    await sealed_world(client, operator, conn)
    recorded = (await verify(client, auditor))["head"]
    await conn.execute("SET session_replication_role = replica")
    # a redemption moved to another day's settlement: nothing else in the books says when
    await conn.execute("UPDATE ledger SET created_at = created_at - interval '1 day' WHERE seq = 1")
    await conn.execute("TRUNCATE ledger_seals, ledger_blocks, ledger_block_signatures")
    await conn.execute("SET session_replication_role = origin")
    forger = signing.SealKeys(Ed25519PrivateKey.generate())
    await audit.seal(conn, forger)  # the forger re-seals everything, with a key of theirs
    result = await verify(client, auditor)
    assert result["ok"] is False and result["first_bad_seq"] == 1
    assert "not signed by a trusted ledger key" in result["reason"]
    result = await verify(client, auditor, f"head={recorded}")
    assert result["ok"] is False  # nor is it the history the auditor kept


async def test_rows_are_sealed_by_the_running_service(
    client: Client, operator: dict[str, str], auditor: dict[str, str]
) -> None:
    world = await make_world(client, operator, n=2)
    await world.terminal.redeem(next(iter(world.credit)), 1000)
    for _ in range(60):  # the app seals every second
        result = await verify(client, auditor)
        if result["head_seq"] >= 1:
            break
        await asyncio.sleep(0.1)
    assert result["head_seq"] >= 1 and result["ok"] is True


# -- the database's own guards ----------------------------------------------------------------


async def test_the_service_role_cannot_change_the_ledger(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(client, operator, n=1)
    await world.terminal.redeem(next(iter(world.credit)), 1000)
    async with conn.transaction():
        await conn.execute("SET LOCAL ROLE coupon_writer")
        for sql in (
            "UPDATE ledger SET amount = 1",
            "DELETE FROM ledger",
            "TRUNCATE ledger",
            "UPDATE ledger_seals SET digest = digest",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute(sql)
    # even the owner is stopped by the trigger
    for sql in ("UPDATE ledger SET amount = 1", "DELETE FROM ledger"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute(sql)
    assert await conn.fetchval("SELECT amount FROM ledger") == 1000


async def test_every_service_connection_logs_in_as_the_writer_with_no_way_up(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    """The pool, the live counters' listener and publisher: all log in as coupon_writer, none
    can become a superuser, run a program, switch off the ledger's guards or write it."""
    from coupon.api import keys

    world = await make_world(client, operator, n=1)
    await world.terminal.redeem(next(iter(world.credit)), 1000)
    deadline = asyncio.get_running_loop().time() + 10
    while True:  # the listener and the publisher connect in the background
        logins = await conn.fetch(
            "SELECT usename, application_name FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        names = {r["application_name"] for r in logins}
        if {"coupon", "coupon-stats-listener", "coupon-stats-publisher"} <= names:
            break
        assert asyncio.get_running_loop().time() < deadline, names
        await asyncio.sleep(0.1)
    assert {r["usename"] for r in logins} == {"coupon_writer"}

    async with client.app[keys.POOL].acquire() as pooled:
        await pooled.execute("SET ROLE NONE")
        assert await pooled.fetchval("SELECT current_user") == "coupon_writer"
        assert not await pooled.fetchval(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        )
        for sql in (
            "COPY (SELECT 1) TO PROGRAM 'true'",
            "ALTER TABLE ledger DISABLE TRIGGER ALL",
            "INSERT INTO ledger (kind, request_id, terminal_id, merchant_id, national_id, "
            "province, tranche_id, amount) VALUES ('redemption', 'forged1', "
            f"{world.terminal.terminal_id}, {world.terminal.merchant_id}, '0084575948', "
            "'IR-15', 1, 999999)",
            "SET session_replication_role = replica",
            "CREATE TABLE public.x (id int)",
            "ALTER ROLE coupon_writer SUPERUSER",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await pooled.execute(sql)
    assert await conn.fetchval("SELECT count(*) FROM ledger") == 1


async def test_auditor_reads_are_read_only(conn: asyncpg.Connection) -> None:
    async with conn.transaction(readonly=True):
        await audit.read_only(conn)
        assert await conn.fetchval("SELECT current_user") == "coupon_reader"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("INSERT INTO provinces VALUES ('IR-99', 'x', 'y')")
    async with conn.transaction():
        await audit.read_only(conn)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM terminal_nonces")


async def test_each_ledger_page_query_forces_the_plan_its_comment_names(
    conn: asyncpg.Connection,
) -> None:
    """ledger_page walks seqs in order (through an index of the filter, when there is one);
    ledger_page_in_window collects a time window's seqs from a time index instead of walking
    the whole ledger in seq order hoping to meet the window early."""
    await conn.execute("""
        INSERT INTO ledger (kind, request_id, terminal_id, merchant_id, national_id, province,
                            tranche_id, amount, created_at)
        SELECT 'redemption', 'p' || g, 1 + g % 50, 1 + g % 20, lpad((g % 5000)::text, 10, '0'),
               'IR-' || lpad((1 + g % 31)::text, 2, '0'), 1, 1000,
               now() - interval '1 second' * (60000 - g)
        FROM generate_series(1, 60000) AS g""")
    await conn.execute("ANALYZE ledger")

    async def plan(name: str, *filters: Any) -> str:
        args = [*filters, *[None] * (8 - len(filters)), 0, 101, 10**9, None, None]
        async with conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            rows = await conn.fetch("EXPLAIN " + db.q(name), *args)
        return "\n".join(r[0] for r in rows)

    recent = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    window = await plan(
        "ledger_page_in_window", None, None, None, "IR-15", None, None, recent, None
    )
    # the window's seqs come from a time index, then are sorted: no walk of the ledger by seq
    assert "ledger_created_at_idx" in window or "ledger_province_time_idx" in window, window
    assert "seq + 0" in window, window
    by_household = await plan("ledger_page", "0000000042")
    assert "ledger_national_id_idx" in by_household, by_household
    everything = await plan("ledger_page")
    assert "ledger_pkey" in everything and "Seq Scan" not in everything, everything


# -- reconciliation: the ledger against the rest of the books ----------------------------------


async def test_a_forged_row_sealed_by_the_service_is_caught(
    client: Client, operator: dict[str, str], auditor: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(client, operator, n=2)
    t = world.terminal
    assert (await t.redeem(next(iter(world.credit)), 1000)).status == 201
    forged = await conn.fetchval(
        "INSERT INTO ledger (kind, request_id, terminal_id, merchant_id, national_id, "
        "province, tranche_id, amount) VALUES ('redemption', 'forged1', $1, $2, '0084575948', "
        "'IR-15', $3, 999999) RETURNING seq",
        t.terminal_id,
        t.merchant_id,
        world.tranche_id,
    )
    await audit.seal(conn, client.app[SEAL_KEYS])  # what the running service does within a second
    result = await verify(client, auditor)
    assert (result["ok"], result["first_bad_seq"]) == (False, forged)
    assert result["head_seq"] == forged and "answers no terminal request" in result["reason"]


async def test_credit_that_moved_outside_the_ledger_is_caught(
    client: Client, operator: dict[str, str], auditor: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(client, operator, n=2)
    nid = next(iter(world.credit))
    assert (await world.terminal.redeem(nid, 1000)).status == 201
    await audit.seal(conn, client.app[SEAL_KEYS])
    assert (await verify(client, auditor))["ok"] is True
    await conn.execute(
        "UPDATE entitlements SET balance = balance - 500000 WHERE national_id = $1", nid
    )
    result = await verify(client, auditor)
    assert result["ok"] is False and result["first_bad_seq"] is None
    assert f"household {nid} in tranche {world.tranche_id}" in result["reason"]


async def test_a_row_moved_to_another_store_and_resealed_is_caught(
    client: Client, operator: dict[str, str], auditor: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(client, operator, n=2)
    thief = await make_terminal(client, operator)
    entry = (await world.terminal.redeem(next(iter(world.credit)), 1000)).body["redemption_id"]
    # a superuser with the signing key pays another store: the row, its stored answer, and the
    # whole chain resealed
    await conn.execute("SET session_replication_role = replica")
    await conn.execute(
        "UPDATE ledger SET merchant_id = $1 WHERE seq = $2", thief.merchant_id, entry
    )
    await conn.execute(
        "UPDATE terminal_requests SET merchant_id = $1 WHERE entry_id = $2",
        thief.merchant_id,
        entry,
    )
    await conn.execute("TRUNCATE ledger_seals, ledger_blocks, ledger_block_signatures")
    await conn.execute("SET session_replication_role = origin")
    await audit.seal(conn, client.app[SEAL_KEYS])  # even holding the signing key
    result = await verify(client, auditor)
    assert result["ok"] is False
    assert f"merchant {world.terminal.merchant_id}: settlement 0" in result["reason"]


async def test_an_answer_whose_row_is_gone_is_caught(
    client: Client, operator: dict[str, str], auditor: dict[str, str], conn: asyncpg.Connection
) -> None:
    world = await make_world(client, operator, n=2)
    entry = (await world.terminal.redeem(next(iter(world.credit)), 1000)).body["redemption_id"]
    await conn.execute("SET session_replication_role = replica")
    await conn.execute("DELETE FROM ledger WHERE seq = $1", entry)  # never sealed
    await conn.execute("SET session_replication_role = origin")
    result = await verify(client, auditor)
    assert result["ok"] is False and f"entry {entry}, which is missing" in result["reason"]


# -- signed heads -------------------------------------------------------------------------------


async def test_the_signing_key_is_published_and_lives_outside_the_database(
    client: Client, conn: asyncpg.Connection
) -> None:
    resp = await client.get("/v1/ledger/keys")
    published = (await resp.json())["keys"]
    seal_keys = client.app[SEAL_KEYS]
    assert seal_keys.signer is not None
    assert [k["public_key"] for k in published if k["signs"]] == [seal_keys.signer.hex()]
    key_file = client.app[SETTINGS].seal_key_path
    assert signing.load_public(str(key_file)) == seal_keys.signer
    assert key_file.stat().st_mode & 0o077 == 0  # its owner's only
    # no table or setting of the database holds the private key
    pem = key_file.read_bytes()
    dump = await conn.fetchval("SELECT string_agg(t::text, '') FROM pg_settings t")
    assert pem.split(b"\n")[1].decode() not in dump


async def test_deleting_signatures_is_detected(
    client: Client, operator: dict[str, str], auditor: dict[str, str], conn: asyncpg.Connection
) -> None:
    seqs = await sealed_world(client, operator, conn)
    assert (await verify(client, auditor))["ok"] is True
    await conn.execute("SET session_replication_role = replica")
    await conn.execute("DELETE FROM ledger_block_signatures WHERE block_no = 2")
    await conn.execute("SET session_replication_role = origin")
    result = await verify(client, auditor)
    assert (result["ok"], result["first_bad_seq"]) == (False, seqs[6])


async def export_lines(conn: asyncpg.Connection) -> list[bytes]:
    out = io.BytesIO()
    await audit.export(conn, out.write)
    return out.getvalue().splitlines()


async def test_an_export_verifies_offline_and_every_forgery_of_it_fails(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    seqs = await sealed_world(client, operator, conn)
    lines = await export_lines(conn)
    trusted = signing.SealKeys(None, [client.app[SEAL_KEYS].signer or b""])
    result = audit.verify_export(lines, trusted)
    assert result.ok and result.entries == len(seqs) and result.head_seq == seqs[-1]

    def edit(lines: list[bytes], seq: int, **change: Any) -> list[bytes]:
        out = []
        for line in lines:
            item = orjson.loads(line)
            if item.get("row", {}).get("seq") == seq:
                item["row"].update(change)
            out.append(orjson.dumps(item))
        return out

    # a row changed: its block's hash no longer holds
    changed = audit.verify_export(edit(lines, seqs[8], amount=999_999), trusted)
    assert (changed.ok, changed.first_bad_seq) == (False, seqs[6])
    # the same, every hash recomputed and signed again by a key the auditor does not trust
    forger = signing.SealKeys(Ed25519PrivateKey.generate())
    rewritten = reseal(edit(lines, seqs[8], amount=999_999), forger)
    both = signing.SealKeys(None, [*trusted.trusted, *forger.trusted])
    assert audit.verify_export(rewritten, both).ok  # self-consistent...
    forged = audit.verify_export(rewritten, trusted)
    assert (forged.ok, forged.first_bad_seq) == (False, seqs[6])  # ...but not signed by us
    # a row added past the last sealed head
    extra = orjson.loads(lines[-1])
    extra["row"]["seq"] += 1000
    tail = audit.verify_export([*lines, orjson.dumps(extra)], trusted)
    assert (tail.ok, tail.first_bad_seq) == (False, extra["row"]["seq"])


def reseal(lines: list[bytes], keys: signing.SealKeys) -> list[bytes]:
    """What a forger holding an export does: every block's hash recomputed and signed."""
    header, items = lines[0], [orjson.loads(x) for x in lines[1:]]
    blocks = [i["block"] for i in items if "block" in i]
    rows = [i["row"] for i in items if "row" in i]
    prev = audit.GENESIS
    for b in blocks:
        h = hashlib.sha256(prev)
        for r in rows:
            if b["first_seq"] <= r["seq"] <= b["last_seq"]:
                h.update(
                    audit.row_digest(
                        {**r, "created_at": dt.datetime.fromisoformat(r["created_at"])}
                    )
                )
        if b["hash"] != h.hexdigest():  # blocks before the change keep their real signatures
            b["prev_hash"], b["hash"] = prev.hex(), h.hexdigest()
            signer, signature = keys.sign(b["block_no"], b["last_seq"], h.digest())
            b["signer"], b["signature"] = signer.hex(), signature.hex()
        prev = h.digest()
    return [header, *(orjson.dumps(i) for i in items)]


async def test_audit_verify_offline_needs_no_database(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection, dsn: str, tmp_path: Any
) -> None:
    from tests.integration.test_cli import coupon

    await sealed_world(client, operator, conn)
    exported = tmp_path / "ledger.jsonl"
    code, out, err = await coupon(dsn, "audit", "export", str(exported))
    assert code == 0, err
    signer = (client.app[SEAL_KEYS].signer or b"").hex()
    nowhere = "postgresql://nobody@127.0.0.1:9/none"
    code, out, err = await coupon(
        nowhere, "audit", "verify", "--offline", str(exported), "--public-key", signer
    )
    assert code == 0 and '"ok": true' in out, err
    other = signing.raw_public(Ed25519PrivateKey.generate().public_key()).hex()
    code, out, _ = await coupon(
        nowhere, "audit", "verify", "--offline", str(exported), "--public-key", other
    )
    assert code == 1 and "not signed by a trusted key" in out
