"""The terminal path: redemptions, reversals and balance inquiries. Each is one call of a SQL
function (schema.sql), so a request costs one round trip and one transaction."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from coupon import db, errors
from coupon.models import RedemptionRequest, ReversalRequest


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the database answered: HTTP status, the JSON body (as text), and whether it is a
    stored answer replayed for a repeated request_id."""

    status: int
    body: Any
    replayed: bool = False


def body_hash(model: RedemptionRequest | ReversalRequest) -> bytes:
    """Identity of a request body for idempotency: the validated fields, canonically."""
    canonical = orjson.dumps(model.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).digest()


def _outcome(row: Any) -> Outcome:
    if row["error"] is not None:
        raise errors.by_code(row["error"])()
    return Outcome(row["http_status"], row["body"], bool(row.get("replayed", False)))


async def redeem(
    conn: db.Connection, terminal_id: int, nonce: str, request: RedemptionRequest, shards: int
) -> Outcome:
    categories = sorted({i.category for i in request.items}) if request.items else []
    row = await conn.fetchrow(
        db.q("redeem"),
        terminal_id,
        nonce,
        request.request_id,
        body_hash(request),
        request.national_id,
        request.amount,
        categories,
        request.allow_partial,
        shards,
    )
    return _outcome(row)


async def reverse(
    conn: db.Connection, terminal_id: int, nonce: str, request: ReversalRequest, shards: int
) -> Outcome:
    row = await conn.fetchrow(
        db.q("reverse"),
        terminal_id,
        nonce,
        request.request_id,
        body_hash(request),
        request.original_request_id,
        shards,
    )
    return _outcome(row)


async def balance(conn: db.Connection, terminal_id: int, nonce: str, national_id: str) -> Outcome:
    row = await conn.fetchrow(db.q("balance_inquiry"), terminal_id, nonce, national_id)
    return _outcome(row)
