"""Audit: ledger pages and CSV export, settlement per store, and the tamper-evident chain
(sealing behind the writers, verification)."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import struct
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

import orjson

from coupon import csvsafe, db
from coupon.models import LedgerFilters, Verification
from coupon.signing import SealKeys

GENESIS = bytes(32)
HEAD_NOT_FOUND = "head not found"
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
    "captured_at",
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
    conn: db.Connection,
    where: LedgerFilters,
    after: int,
    limit: int,
    scope: str | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """Up to limit entries after the cursor, and the next cursor (None at the end); only those
    of the stores of province `scope`, when given."""
    horizon = await commit_horizon(conn)
    async with conn.transaction(readonly=True):
        await read_only(conn)
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        query = (
            "ledger_page" if where.from_ is None and where.to is None else "ledger_page_in_window"
        )
        rows = await conn.fetch(
            db.q(query), *_filter_args(where), after, limit + 1, horizon, where.channel, scope
        )
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
    conn: db.Connection,
    where: LedgerFilters,
    write: Callable[[bytes], Coroutine[Any, Any, None]],
    scope: str | None = None,
) -> None:
    """Stream every matching entry as CSV (PostgreSQL formats it; memory stays flat); only
    those of the stores of province `scope`, when given."""
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
            where.channel,
            scope,
            output=write,
            format="csv",
            header=True,
            timeout=db.BULK_TIMEOUT,
        )


async def settlement(
    conn: db.Connection, day: dt.date, scope: str | None = None
) -> list[dict[str, Any]]:
    """What each store redeemed, had reversed and is owed for one Asia/Tehran day (the stores
    of province `scope` only, when given)."""
    async with conn.transaction(readonly=True):
        await read_only(conn)
        rows = await conn.fetch(db.q("settlement"), day, scope, timeout=db.BULK_TIMEOUT)
        return [dict(r) for r in rows]


async def commit_horizon(conn: db.Connection) -> int:
    """The highest seq below which every ledger row is committed or never will be (waits for
    the writers in flight, for an instant; new ones wait only as long)."""
    async with conn.transaction():
        horizon: int = (await conn.fetchrow(db.q("ledger_horizon")))["horizon"]  # type: ignore[index]
    return horizon


async def seal(conn: db.Connection, keys: SealKeys, max_rows: int = MAX_BLOCK_ROWS) -> int:
    """Seal every committed, unsealed ledger row into new blocks, each head signed with keys;
    returns how many rows.

    Safe with several processes (one sealer at a time) and never blocks writers for longer
    than it takes the transactions already in flight to commit."""
    sealed = 0
    horizon = await commit_horizon(conn)
    while True:
        async with conn.transaction():
            await conn.execute(db.q("lock_sealer"))
            last = await conn.fetchrow(db.q("last_block"))
            if last is not None and not last["signed"]:
                # blocks sealed before heads were signed: signed as they stand now
                for old in await conn.fetch(db.q("unsigned_blocks"), timeout=db.BULK_TIMEOUT):
                    await _sign(conn, keys, old)
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
            block = await conn.fetchrow(
                db.q("close_block"), block_no + 1, prev, last_seq, timeout=db.BULK_TIMEOUT
            )
            assert block is not None
            await _sign(conn, keys, block)
            sealed += rows


async def _sign(conn: db.Connection, keys: SealKeys, block: Any) -> None:
    signer, signature = keys.sign(block["block_no"], block["last_seq"], block["hash"])
    await conn.execute(db.q("sign_block"), block["block_no"], signer, signature)


async def verify(
    conn: db.Connection, keys: SealKeys, expected_head: bytes | None = None
) -> Verification:
    """Recompute the chain from the ledger rows, check every head's signature against keys,
    reconcile the ledger with the rest of the books; name the first seq that does not hold."""
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
        mismatch = None
        if bad_block is None:
            heads = await conn.fetch(db.q("block_heads"), timeout=db.BULK_TIMEOUT)
            mismatch = _unsigned(heads, keys) or await _reconcile(conn)
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
        # an intact chain without the head: a head copied wrong or from another database looks
        # exactly like a chain rebuilt from scratch, so claim no tampering and name no row
        reason = (
            f"{HEAD_NOT_FOUND}: {expected_head.hex()} is not a block of this ledger's chain, "
            "which is otherwise intact; check that it was copied whole and from this database "
            "-- if it was, the chain was rebuilt after it was recorded"
        )
    return Verification(
        ok=reason is None,
        entries=entries,
        head=last["hash"].hex() if last else None,
        head_seq=last["last_seq"] if last else 0,
        first_bad_seq=first_bad,
        reason=reason,
    )


def _unsigned(heads: Iterable[Any], keys: SealKeys) -> tuple[int | None, str] | None:
    """The first block whose head no trusted key signed."""
    for b in heads:
        if not keys.check(b["block_no"], b["last_seq"], b["hash"], b["signer"], b["signature"]):
            return b["first_seq"], (
                f"block {b['block_no']} is not signed by a trusted ledger key: the chain was "
                "rewritten, or the key that signed it is not among the trusted ones"
            )
    return None


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


# -- the export, and its verification with no database ----------------------------------------

EXPORT_FORMAT = "coupon-ledger-export/1"
_EPOCH_2000 = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def row_digest(row: Mapping[str, Any]) -> bytes:
    """ledger_digest() of schema.sql, in Python: the same bytes from the same row."""
    since_2000 = _micros(row["created_at"])
    fixed = struct.pack(
        ">qqqqqqq",
        row["seq"],
        row["terminal_id"],
        row["merchant_id"],
        row["tranche_id"],
        row["amount"],
        row["reverses"] or 0,
        since_2000,
    )
    text = "|".join((row["kind"], row["request_id"], row["national_id"], row["province"]))
    captured = row.get("captured_at")
    tail = b"" if captured is None else b"\x00" + struct.pack(">q", _micros(captured))
    return hashlib.sha256(fixed + text.encode() + tail).digest()


def _micros(at: dt.datetime) -> int:
    """A timestamp as PostgreSQL sends it: microseconds since 2000-01-01 UTC."""
    return (at - _EPOCH_2000) // dt.timedelta(microseconds=1)


async def export(conn: db.Connection, write: Callable[[bytes], None]) -> int:
    """Every sealed row and every block with its signature, as JSON lines, from one snapshot;
    returns the rows written. `coupon audit verify --offline` checks it without a database."""
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        await read_only(conn)
        heads = await conn.fetch(db.q("block_heads"), timeout=db.BULK_TIMEOUT)
        head_seq = heads[-1]["last_seq"] if heads else 0
        write(orjson.dumps({"format": EXPORT_FORMAT, "head_seq": head_seq}) + b"\n")
        for b in heads:
            block = {k: v.hex() if isinstance(v, bytes) else v for k, v in b.items()}
            write(orjson.dumps({"block": block}) + b"\n")
        rows = 0
        async for r in conn.cursor(db.q("export_rows"), head_seq, prefetch=5000):
            write(orjson.dumps({"row": dict(r)}) + b"\n")
            rows += 1
    return rows


def verify_export(lines: Iterable[bytes], keys: SealKeys) -> Verification:
    """Check an export with no database: every row's digest, every block's hash, link, count
    and signature; the first seq that does not hold is named. Rows are read one at a time."""
    stream = iter(lines)
    header = orjson.loads(next(stream, b"{}"))
    if header.get("format") != EXPORT_FORMAT:
        raise ValueError(f"not a ledger export ({EXPORT_FORMAT})")
    blocks: list[dict[str, Any]] = []
    entries, first_row = 0, None
    for line in stream:
        item = orjson.loads(line)
        if "block" in item:
            blocks.append(item["block"])
        else:
            first_row = item["row"]
            break
    rows = itertools.chain(
        [first_row] if first_row else [], (orjson.loads(x)["row"] for x in stream)
    )
    prev_hash, prev_end = GENESIS, 0
    pending: dict[str, Any] | None = next(rows, None)

    def result(bad: int | None, reason: str | None) -> Verification:
        head = blocks[-1] if blocks else None
        return Verification(
            ok=reason is None,
            entries=entries,
            head=head["hash"] if head else None,
            head_seq=head["last_seq"] if head else 0,
            first_bad_seq=bad,
            reason=reason,
        )

    for b in blocks:
        digests = hashlib.sha256(prev_hash)
        count, first_seq = 0, None
        while pending is not None and pending["seq"] <= b["last_seq"]:
            pending["created_at"] = dt.datetime.fromisoformat(pending["created_at"])
            if pending.get("captured_at") is not None:
                pending["captured_at"] = dt.datetime.fromisoformat(pending["captured_at"])
            if pending["seq"] <= prev_end:
                return result(pending["seq"], f"row {pending['seq']} is out of seq order")
            digests.update(row_digest(pending))
            first_seq = pending["seq"] if first_seq is None else first_seq
            count += 1
            entries += 1
            pending = next(rows, None)
        block_hash = bytes.fromhex(b["hash"])
        if (
            bytes.fromhex(b["prev_hash"]) != prev_hash
            or count != b["entries"]
            or digests.digest() != block_hash
        ):
            return result(
                first_seq or b["first_seq"],
                f"block {b['block_no']} does not match its rows: a row was changed, deleted, "
                "inserted or reordered",
            )
        signer = bytes.fromhex(b["signer"]) if b["signer"] else None
        signature = bytes.fromhex(b["signature"]) if b["signature"] else None
        if not keys.check(b["block_no"], b["last_seq"], block_hash, signer, signature):
            return result(b["first_seq"], f"block {b['block_no']} is not signed by a trusted key")
        prev_hash, prev_end = block_hash, b["last_seq"]
    if pending is not None:
        return result(pending["seq"], f"row {pending['seq']} is in no sealed block")
    return result(None, None)


def head_not_found(result: Verification) -> bool:
    """The chain holds, but not the head it was asked about."""
    return not result.ok and (result.reason or "").startswith(HEAD_NOT_FOUND)
