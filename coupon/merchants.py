"""Merchants (stores) and their POS terminals."""

from __future__ import annotations

import secrets
from typing import Any

from coupon import db, errors
from coupon.keyring import Keyring
from coupon.models import Merchant, MerchantCreate, SecretRotated, Terminal, TerminalCreated

SECRET_BYTES = 32


# Province scopes: every statement below that acts on a store, terminal or household takes the
# acting token's province (None: national) and acts only inside it. A row of nulls back means
# the target exists in another province.


def _in_scope(row: Any, missing: errors.CouponError) -> Any:
    """The statement's row; raise `missing` when there was no target, 403 when it was another
    province's."""
    if row is None:
        raise missing
    if all(v is None for v in row.values()):
        raise errors.OutOfProvince()
    return row


async def create_merchant(
    conn: db.Connection, merchant: MerchantCreate, scope: str | None = None
) -> int:
    """Register a store; its province must exist (and be the token's, when scoped)."""
    merchant_id: int | None = await conn.fetchval(
        db.q("insert_merchant"), merchant.name, merchant.province, merchant.category, scope
    )
    if merchant_id is None:
        raise errors.OutOfProvince()
    return merchant_id


async def set_merchant_status(
    conn: db.Connection, merchant_id: int, status: str, scope: str | None = None
) -> Merchant:
    row = await conn.fetchrow(db.q("set_merchant_status"), merchant_id, status, scope)
    return Merchant.model_validate(dict(_in_scope(row, errors.MerchantNotFound())))


async def create_terminal(
    conn: db.Connection, merchant_id: int, keyring: Keyring, scope: str | None = None
) -> TerminalCreated:
    """A new terminal with a fresh secret, stored encrypted; this is the only time the secret
    is returned."""
    secret = secrets.token_hex(SECRET_BYTES)
    async with conn.transaction():
        terminal_id = await conn.fetchval(db.q("next_terminal_id"))
        box = keyring.seal(terminal_id, secret)
        row = await conn.fetchrow(db.q("insert_terminal"), merchant_id, box, terminal_id, scope)
        _in_scope(row, errors.MerchantNotFound())
        await conn.fetchval(db.q("terminal_keys_changed"))
    return TerminalCreated(terminal_id=terminal_id, secret=secret)


async def rotate_secret(
    conn: db.Connection,
    terminal_id: int,
    keyring: Keyring,
    overlap: float,
    scope: str | None = None,
) -> SecretRotated:
    """A terminal's new secret; the old one still verifies for `overlap` seconds."""
    secret = secrets.token_hex(SECRET_BYTES)
    async with conn.transaction():
        row = await conn.fetchrow(
            db.q("rotate_terminal_secret"),
            terminal_id,
            keyring.seal(terminal_id, secret),
            overlap,
            scope,
        )
        row = _in_scope(row, errors.TerminalNotFound())
        await conn.fetchval(db.q("terminal_keys_changed"))
    return SecretRotated(
        terminal_id=terminal_id, secret=secret, previous_valid_until=row["previous_until"]
    )


async def encrypt_plain_secrets(conn: db.Connection, keyring: Keyring) -> int:
    """Encrypt the secrets older versions stored in plain text; returns how many."""
    rows = await conn.fetch(db.q("plain_terminal_secrets"))
    for r in rows:
        await conn.execute(
            db.q("encrypt_terminal_secret"), r["id"], keyring.seal(r["id"], r["secret"])
        )
    if rows:
        await conn.fetchval(db.q("terminal_keys_changed"))
    return len(rows)


async def rewrap_secrets(conn: db.Connection, keyring: Keyring) -> int:
    """Re-encrypt every secret not yet under the keyring's current key; returns how many."""
    done = 0
    for r in await conn.fetch(db.q("terminal_boxes")):
        boxes = [r["secret_box"], r["previous_box"]]
        if all(b is None or keyring.key_of(b) == keyring.current for b in boxes):
            continue
        current, previous = (
            None if b is None else keyring.seal(r["id"], keyring.open(r["id"], b)) for b in boxes
        )
        await conn.execute(
            db.q("rewrap_terminal_secret"), r["id"], r["secret_box"], current, previous
        )
        done += 1
    return done


async def set_terminal_status(
    conn: db.Connection,
    terminal_id: int,
    status: str | None,
    offline_enabled: bool | None = None,
    scope: str | None = None,
) -> Terminal:
    """Change a terminal's status, whether it may work offline, or both (None: unchanged), if
    its store is of the token's province (scope; None: national)."""
    row = await conn.fetchrow(
        db.q("set_terminal_status"), terminal_id, status, offline_enabled, scope
    )
    return Terminal.model_validate(dict(_in_scope(row, errors.TerminalNotFound())))


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
