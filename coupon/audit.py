"""Audit: ledger pages and CSV export, settlement per store, and the tamper-evident chain
(sealing behind the writers, verification)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Coroutine
from typing import Any

from coupon import csvsafe, db
from coupon.models import LedgerFilters, Verification

GENESIS = bytes(32)
MAX_BLOCK_ROWS = 50_000
CSV_COLUMNS = (
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
)


def _filter_args(where: LedgerFilters) -> tuple[Any, ...]:
    """The filters as ledger_page's first eight parameters (null: any)."""
    return (
        where.national_id,
        where.merchant_id,
        where.terminal_id,
        where.province,
        where.tranche_id,
        where.kind,
        where.from_,
        where.to,
    )


async def read_only(conn: db.Connection) -> None:
    """Inside a transaction: drop to the auditor's read-only role, when the database has it."""
    await conn.execute(
        "SELECT set_config('role', 'coupon_reader', true) "
        "WHERE pg_has_role(session_user, 'coupon_reader', 'MEMBER')"
    )


async def ledger_page(
    conn: db.Connection, where: LedgerFilters, after: int, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Up to limit entries after the cursor, and the next cursor (None at the end)."""
    horizon = await commit_horizon(conn)
    async with conn.transaction(readonly=True):
        await read_only(conn)
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        query = (
            "ledger_page" if where.from_ is None and where.to is None else "ledger_page_in_window"
        )
        rows = await conn.fetch(db.q(query), *_filter_args(where), after, limit + 1, horizon)
    entries = [dict(r) for r in rows[:limit]]
    return entries, (entries[-1]["seq"] if len(rows) > limit else None)


# ledger.csv's rows: a page's, with its only free text made inert (a request id may start
# with -)
_CSV_ROWS = (
    "SELECT "  # noqa: S608 (column names and a query of our own)
    + ", ".join(f"{csvsafe.sql_cell(c)} AS {c}" if c == "request_id" else c for c in CSV_COLUMNS)
    + " FROM ({page}) AS page"
)


async def export_csv(
    conn: db.Connection, where: LedgerFilters, write: Callable[[bytes], Coroutine[Any, Any, None]]
) -> None:
    """Stream every matching entry as CSV (PostgreSQL formats it; memory stays flat)."""
    query = _CSV_ROWS.format(page=db.q("ledger_page"))
    horizon = await commit_horizon(conn)
    async with conn.transaction(readonly=True):
        await read_only(conn)
        await conn.copy_from_query(
            query,
            *_filter_args(where),
            0,
            None,
            horizon,
            output=write,
            format="csv",
            header=True,
            timeout=db.BULK_TIMEOUT,
        )


async def settlement(conn: db.Connection, day: dt.date) -> list[dict[str, Any]]:
    """What each store redeemed, had reversed and is owed for one Asia/Tehran day."""
    async with conn.transaction(readonly=True):
        await read_only(conn)
        return [dict(r) for r in await conn.fetch(db.q("settlement"), day, timeout=db.BULK_TIMEOUT)]


async def commit_horizon(conn: db.Connection) -> int:
    """The highest seq below which every ledger row is committed or never will be (waits for
    the writers in flight, for an instant; new ones wait only as long)."""
    async with conn.transaction():
        horizon: int = (await conn.fetchrow(db.q("ledger_horizon")))["horizon"]  # type: ignore[index]
    return horizon


async def seal(conn: db.Connection, max_rows: int = MAX_BLOCK_ROWS) -> int:
    """Seal every committed, unsealed ledger row into new blocks; returns how many.

    Safe with several processes (one sealer at a time) and never blocks writers for longer
    than it takes the transactions already in flight to commit."""
    sealed = 0
    horizon = await commit_horizon(conn)
    while True:
        async with conn.transaction():
            await conn.execute(db.q("lock_sealer"))
            last = await conn.fetchrow(db.q("last_block"))
            block_no, last_seq, prev = (
                (last["block_no"], last["last_seq"], last["hash"]) if last else (0, 0, GENESIS)
            )
            if last_seq >= horizon:
                return sealed
            status = await conn.execute(
                db.q("seal_rows"),
                last_seq,
                horizon,
                block_no + 1,
                max_rows,
                timeout=db.BULK_TIMEOUT,
            )
            rows = int(status.split()[-1])
            if rows == 0:  # only gaps left (aborted writers): nothing to seal up to the horizon
                return sealed
            await conn.fetchrow(
                db.q("close_block"), block_no + 1, prev, last_seq, timeout=db.BULK_TIMEOUT
            )
            sealed += rows


async def verify(conn: db.Connection, expected_head: bytes | None = None) -> Verification:
    """Recompute the chain from the ledger rows; name the first seq that does not hold."""
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        await read_only(conn)
        bad_block = await conn.fetchrow(db.q("verify_chain"), timeout=db.BULK_TIMEOUT)
        first_bad = None
        if bad_block is not None:
            # the seals pinpoint the row; if they were forged along with it, name the block
            first_bad = (
                await conn.fetchval(
                    db.q("first_bad_row"), bad_block["prev_end"], bad_block["last_seq"]
                )
                or bad_block["first_seq"]
            )
        mismatch = None if bad_block is not None else await _reconcile(conn)
        entries = await conn.fetchval(db.q("count_ledger"), timeout=db.BULK_TIMEOUT)
        last = await conn.fetchrow(db.q("last_block"))
        known = (
            await conn.fetchrow(db.q("block_with_hash"), expected_head)
            if expected_head is not None
            else None
        )
    reason = None
    if bad_block is not None:
        reason = (
            f"block {bad_block['block_no']} does not match the ledger: a row was "
            "changed, deleted, inserted or reordered"
        )
    elif mismatch is not None:
        first_bad, reason = mismatch
    elif expected_head is not None and known is None:
        reason = "the recorded head is no longer in the chain: history was rewritten"
        first_bad = 1
    return Verification(
        ok=reason is None,
        entries=entries,
        head=last["hash"].hex() if last else None,
        head_seq=last["last_seq"] if last else 0,
        first_bad_seq=first_bad,
        reason=reason,
    )


async def _reconcile(conn: db.Connection) -> tuple[int | None, str] | None:
    """The ledger against the rest of the books: the stored terminal answers, every
    household's credit, every store's settlement. The first mismatch: (seq or None, why)."""
    row = await conn.fetchrow(db.q("unanswered_ledger_row"), timeout=db.BULK_TIMEOUT)
    if row is not None:
        if row["missing"]:
            return None, f"a terminal was answered ledger entry {row['seq']}, which is missing"
        return row["seq"], f"ledger entry {row['seq']} answers no terminal request"
    row = await conn.fetchrow(db.q("unbalanced_entitlement"), timeout=db.BULK_TIMEOUT)
    if row is not None:
        return None, (
            f"household {row['national_id']} in tranche {row['tranche_id']}: credit spent "
            f"{row['spent']} but the ledger says {row['net']}"
        )
    row = await conn.fetchrow(db.q("unbalanced_settlement"), timeout=db.BULK_TIMEOUT)
    if row is not None:
        return None, (
            f"merchant {row['merchant_id']}: settlement {row['settled']} but its terminals "
            f"were answered {row['answered']}"
        )
    return None
