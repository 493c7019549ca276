"""Operator and auditor bearer tokens: random, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from typing import Any

from coupon import db

TOKEN_PREFIX = "cpn_"  # noqa: S105 (a prefix, not a secret)


def token_hash(token: str) -> bytes:
    # tokens carry 256 random bits, so a fast hash is enough (no password stretching)
    return hashlib.sha256(token.encode()).digest()


# a token lives this long unless told otherwise: none lives forever
DEFAULT_LIFETIME_DAYS = 90


async def create_token(
    conn: db.Connection,
    role: str,
    name: str = "",
    days: float = DEFAULT_LIFETIME_DAYS,
    province: str | None = None,
) -> str:
    """A new token of one role, valid for `days`, national or of one province; the caller
    shows it once."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await conn.execute(
        db.q("create_token"), token_hash(token), role, name, days * 86400.0, province
    )
    return token


@dataclasses.dataclass(frozen=True)
class Grant:
    """What a presented token may do: its role, and its province (None: national)."""

    role: str
    province: str | None


async def list_tokens(conn: db.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(db.q("list_tokens"))]


async def revoke(conn: db.Connection, token_id: int) -> bool:
    """Revoke a token: refused by every process from its next request on."""
    return await conn.fetchval(db.q("revoke_token"), token_id) is not None


async def grant_of(conn: db.Connection, token: str) -> Grant | None:
    """The role and province of a presented token, or None when it is unknown."""
    row = await conn.fetchrow(db.q("find_token_role"), token_hash(token))
    return None if row is None else Grant(row["role"], row["province"])


async def role_of(conn: db.Connection, token: str) -> str | None:
    """The role of a presented token, or None when it is unknown."""
    grant = await grant_of(conn, token)
    return None if grant is None else grant.role
