"""Merchants (stores) and their POS terminals."""

from __future__ import annotations

import secrets
from typing import Any

from coupon import db, errors
from coupon.models import Merchant, MerchantCreate, Terminal, TerminalCreated

SECRET_BYTES = 32


async def create_merchant(conn: db.Connection, merchant: MerchantCreate) -> int:
    """Register a store; its province must exist."""
    merchant_id: int = await conn.fetchval(
        db.q("insert_merchant"), merchant.name, merchant.province
    )
    return merchant_id


async def set_merchant_status(conn: db.Connection, merchant_id: int, status: str) -> Merchant:
    row = await conn.fetchrow(db.q("set_merchant_status"), merchant_id, status)
    if row is None:
        raise errors.MerchantNotFound()
    return Merchant.model_validate(dict(row))


async def create_terminal(conn: db.Connection, merchant_id: int) -> TerminalCreated:
    """A new terminal with a fresh secret; this is the only time the secret is returned."""
    secret = secrets.token_hex(SECRET_BYTES)
    terminal_id = await conn.fetchval(db.q("insert_terminal"), merchant_id, secret)
    if terminal_id is None:
        raise errors.MerchantNotFound()
    return TerminalCreated(terminal_id=terminal_id, secret=secret)


async def set_terminal_status(conn: db.Connection, terminal_id: int, status: str) -> Terminal:
    row = await conn.fetchrow(db.q("set_terminal_status"), terminal_id, status)
    if row is None:
        raise errors.TerminalNotFound()
    return Terminal.model_validate(dict(row))


async def list_merchants(
    conn: db.Connection, province: str | None = None, status: str | None = None
) -> list[dict[str, Any]]:
    """Stores with their number of terminals, by id."""
    return [dict(r) for r in await conn.fetch(db.q("list_merchants"), province, status)]


async def list_terminals(
    conn: db.Connection, merchant_id: int | None = None
) -> list[dict[str, Any]]:
    """Terminals with their store, by id; never their secrets."""
    return [dict(r) for r in await conn.fetch(db.q("list_terminals"), merchant_id)]
