"""Operator and auditor bearer tokens: random, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets

from coupon import db

TOKEN_PREFIX = "cpn_"  # noqa: S105 (a prefix, not a secret)


def token_hash(token: str) -> bytes:
    # tokens carry 256 random bits, so a fast hash is enough (no password stretching)
    return hashlib.sha256(token.encode()).digest()


async def create_token(conn: db.Connection, role: str, name: str = "") -> str:
    """A new token of one role; the caller shows it once."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await conn.execute(db.q("create_token"), token_hash(token), role, name)
    return token


async def role_of(conn: db.Connection, token: str) -> str | None:
    """The role of a presented token, or None when it is unknown."""
    role: str | None = await conn.fetchval(db.q("find_token_role"), token_hash(token))
    return role
