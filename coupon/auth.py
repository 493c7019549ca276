"""Terminal request signatures (SPEC "Authentication"): HMAC-SHA256 over method, path with
query, timestamp, nonce and the body's SHA-256, checked in constant time. Nonces are recorded
in PostgreSQL by the same call that does the work, so a replay is refused across processes."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from coupon import db, errors

NONCE = re.compile(r"^[\x21-\x7e]{8,64}$")  # printable ASCII, no spaces
SIGNATURE = re.compile(r"^[0-9a-f]{64}$")
TERMINAL_ID = re.compile(r"^[0-9]{1,18}$")
TIMESTAMP = re.compile(r"^[0-9]{1,12}$")


@dataclass(frozen=True, slots=True)
class SignedRequest:
    terminal_id: int
    timestamp: int
    nonce: str
    signature: str


def string_to_sign(method: str, path_qs: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{method}\n{path_qs}\n{timestamp}\n{nonce}\n{digest}".encode()


def sign(secret: str, method: str, path_qs: str, timestamp: str, nonce: str, body: bytes) -> str:
    """The X-Signature a terminal sends (used by the demo, tests and load generator too)."""
    message = string_to_sign(method, path_qs, timestamp, nonce, body)
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(
    terminal_id: int,
    secret: str,
    method: str,
    path_qs: str,
    body: bytes,
    nonce: str,
    timestamp: int | None = None,
) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "X-Terminal-Id": str(terminal_id),
        "X-Timestamp": ts,
        "X-Nonce": nonce,
        "X-Signature": sign(secret, method, path_qs, ts, nonce, body),
    }


def parse_headers(headers: CIMultiDictProxy[str]) -> SignedRequest:
    """The signature headers, well-formed, or 401."""
    terminal = headers.get("X-Terminal-Id", "")
    timestamp = headers.get("X-Timestamp", "")
    nonce = headers.get("X-Nonce", "")
    signature = headers.get("X-Signature", "")
    if not (terminal and timestamp and nonce and signature):
        raise errors.MissingSignature()
    if not TERMINAL_ID.match(terminal) or not TIMESTAMP.match(timestamp):
        raise errors.BadSignature("X-Terminal-Id and X-Timestamp must be decimal integers")
    if not NONCE.match(nonce):
        raise errors.BadSignature("X-Nonce must be 8 to 64 printable ASCII characters")
    if not SIGNATURE.match(signature):
        raise errors.BadSignature("X-Signature must be 64 lowercase hex digits")
    return SignedRequest(int(terminal), int(timestamp), nonce, signature)


class TerminalSecrets:
    """Terminal id -> HMAC secret, read from the database once per process (secrets never
    change); unknown ids are not cached, so a terminal created a moment ago works at once."""

    def __init__(self) -> None:
        self._secrets: dict[int, str] = {}

    async def get(self, pool: db.Pool, terminal_id: int) -> str | None:
        secret = self._secrets.get(terminal_id)
        if secret is None:
            async with pool.acquire() as conn:
                secret = await conn.fetchval(db.q("terminal_secret"), terminal_id)
            if secret is not None:
                self._secrets[terminal_id] = secret
        return secret


async def verify(
    secrets: TerminalSecrets,
    pool: db.Pool,
    signed: SignedRequest,
    method: str,
    path_qs: str,
    body: bytes,
    clock_skew: int,
    now: float | None = None,
) -> None:
    """Check clock window, terminal and MAC; the nonce is checked by the database call."""
    current = time.time() if now is None else now
    if abs(current - signed.timestamp) > clock_skew:
        raise errors.StaleTimestamp()
    secret = await secrets.get(pool, signed.terminal_id)
    if secret is None:
        raise errors.UnknownTerminal()
    expected = sign(secret, method, path_qs, str(signed.timestamp), signed.nonce, body)
    if not hmac.compare_digest(expected, signed.signature):
        raise errors.BadSignature()
