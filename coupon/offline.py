"""Offline store-and-forward and end-of-day reconciliation: a terminal forwards the purchases
it approved while it could not reach the processor (each posted once, by post_offline_batch()
in schema.sql), and reconciles its day's totals with what the processor booked."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

from coupon import audit, db, errors
from coupon.models import (
    OfflineBatch,
    OfflineBatchAnswer,
    OfflinePurchase,
    Reconciliation,
    ReconciliationRequest,
)

MAX_GAPS = 100
TOTALS = ("online_redemptions", "offline_redemptions", "reversals")


def purchase_hash(purchase: OfflinePurchase) -> bytes:
    """Identity of one forwarded purchase: its validated fields, canonically (the capture time
    as UTC, so the same moment written in another offset is the same purchase)."""
    fields = purchase.model_dump(mode="json")
    fields["captured_at"] = purchase.captured_at.astimezone(dt.UTC).isoformat()
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).digest()


def _categories(purchase: OfflinePurchase) -> str:
    return ",".join(sorted({i.category for i in purchase.items})) if purchase.items else ""


async def post_batch(
    conn: db.Connection,
    terminal_id: int,
    nonce: str,
    batch: OfflineBatch,
    max_delay: dt.timedelta,
    skew: dt.timedelta,
    shards: int,
) -> OfflineBatchAnswer:
    """Post a batch in offline_seq order; every purchase gets its own outcome (a purchase
    posted before gets the same one again, and nothing is applied twice)."""
    purchases = sorted(batch.purchases, key=lambda p: p.offline_seq)
    async with conn.transaction():
        rows = await conn.fetch(
            db.q("post_offline_batch"),
            terminal_id,
            nonce,
            [p.offline_seq for p in purchases],
            [p.request_id for p in purchases],
            [purchase_hash(p) for p in purchases],
            [p.national_id for p in purchases],
            [p.amount for p in purchases],
            [_categories(p) for p in purchases],
            [p.captured_at for p in purchases],
            max_delay,
            skew,
            shards,
        )
        if rows and rows[0]["outcome"] == "nonce_reused":
            raise errors.NonceReused()
        gaps = await conn.fetchrow(db.q("offline_gaps"), terminal_id, MAX_GAPS)
    assert gaps is not None
    by_seq = {p.offline_seq: p for p in purchases}
    results: list[dict[str, Any]] = []
    for row in rows:
        purchase = by_seq[row["offline_seq"]]
        outcome = row["outcome"]
        status = outcome if outcome in ("approved", "declined") else "rejected"
        results.append(
            {
                "offline_seq": purchase.offline_seq,
                "request_id": purchase.request_id,
                "status": status,
                "reason": row["reason"] if status != "rejected" else outcome,
                "amount": row["amount"] if status == "approved" else purchase.amount,
                "redemption_id": row["entry_id"],
                "remaining": row["remaining"],
                "tranche_id": row["tranche_id"],
                "captured_at": purchase.captured_at,
                "posted_at": row["posted_at"],
                "replayed": row["replayed"],
            }
        )
    counts = {k: sum(r["status"] == k for r in results) for k in ("approved", "declined")}
    return OfflineBatchAnswer.model_validate(
        {
            "terminal_id": terminal_id,
            **counts,
            "rejected": len(results) - sum(counts.values()),
            "results": results,
            "last_offline_seq": gaps["last_seq"],
            "gaps": [
                {"first": a, "last": b} for a, b in zip(gaps["firsts"], gaps["lasts"], strict=True)
            ],
        }
    )


async def terminals_with_gaps(
    conn: db.Connection, scope: str | None = None
) -> list[dict[str, Any]]:
    """Terminals whose forwarded offline_seq numbers have holes, by terminal (of the stores of
    province `scope`, when given)."""
    return [dict(r) for r in await conn.fetch(db.q("terminals_with_gaps"), scope)]


def _zero() -> dict[str, dict[str, int]]:
    return {name: {"count": 0, "amount": 0} for name in TOTALS}


async def reconcile(
    conn: db.Connection,
    terminal_id: int,
    nonce: str,
    request: ReconciliationRequest,
    day: dt.date,
    max_delay: dt.timedelta,
) -> Reconciliation:
    """Compare a terminal's totals of a day with what the processor booked for it; keep the
    result for the auditors (a later reconciliation of the same day replaces it)."""
    async with conn.transaction():
        merchant_id = await conn.fetchval(db.q("terminal_merchant"), terminal_id, nonce)
        if merchant_id is None:
            raise errors.NonceReused()
        entries = await conn.fetch(
            db.q("reconciliation_entries"), terminal_id, merchant_id, day, max_delay
        )
        processor = _zero()
        booked: list[str] = []
        for e in entries:
            processor[e["total"]]["count"] += 1
            processor[e["total"]]["amount"] += e["amount"]
            booked.append(e["request_id"])
        reported = request.totals.model_dump()
        differences = {
            name: {
                "count": processor[name]["count"] - reported[name]["count"],
                "amount": processor[name]["amount"] - reported[name]["amount"],
            }
            for name in TOTALS
            if processor[name] != reported[name]
        }
        processor_only, terminal_only = _unmatched(booked, request.request_ids)
        balanced = not differences and not processor_only and not terminal_only
        if not balanced and request.request_ids is None:
            processor_only = booked  # the terminal can find what it did not count
        status = "balanced" if balanced else "out_of_balance"
        await conn.execute(
            db.q("save_reconciliation"),
            terminal_id,
            day,
            status,
            orjson.dumps(reported).decode(),
            orjson.dumps(processor).decode(),
            orjson.dumps(differences).decode(),
            len(processor_only),
            len(terminal_only),
        )
    return Reconciliation.model_validate(
        {
            "terminal_id": terminal_id,
            "date": day,
            "status": status,
            "terminal": reported,
            "processor": processor,
            "differences": differences,
            "processor_only": processor_only,
            "terminal_only": terminal_only,
        }
    )


def _unmatched(booked: Sequence[str], counted: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Request ids only the processor booked, and only the terminal counted (none known
    without the terminal's list)."""
    if counted is None:
        return [], []
    theirs = set(counted)
    ours = set(booked)
    return [r for r in booked if r not in theirs], [r for r in counted if r not in ours]


async def list_reconciliations(
    conn: db.Connection, day: dt.date, status: str | None, scope: str | None = None
) -> list[dict[str, Any]]:
    """The terminals' reconciliations of a day (of one status when given), by terminal; of the
    stores of province `scope`, when given."""
    async with conn.transaction(readonly=True):
        await audit.read_only(conn)
        rows = await conn.fetch(db.q("list_reconciliations"), day, status, scope)
    return [
        {
            **dict(r),
            "terminal": orjson.loads(r["reported"]),
            "processor": orjson.loads(r["processor"]),
            "differences": orjson.loads(r["differences"]),
        }
        for r in rows
    ]


async def declines(
    conn: db.Connection, day: dt.date, merchant_id: int | None, scope: str | None = None
) -> list[dict[str, Any]]:
    """The offline purchases declined when posted on a day: each one the store's loss (of the
    stores of province `scope`, when given)."""
    async with conn.transaction(readonly=True):
        await audit.read_only(conn)
        rows = await conn.fetch(db.q("offline_declines"), day, merchant_id, scope)
    return [dict(r) for r in rows]
