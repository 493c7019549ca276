"""Terminal request signatures (SPEC "Authentication"): HMAC-SHA256 over method, path with
query, timestamp, nonce and the body's SHA-256, checked in constant time. Nonces are recorded
in PostgreSQL by the same call that does the work, so a replay is refused across processes."""

from __future__ import annotations

import hashlib
import hmac
import os
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
    change). An unknown id is remembered as unknown for a few seconds, so that guessing ids
    costs no query each; a terminal created in this process is known at once (forget())."""

    UNKNOWN_TTL = 5.0
    UNKNOWN_MAX = 10_000  # remembered unknown ids at most (a flood of guesses stays small)

    def __init__(self) -> None:
        self._secrets: dict[int, str] = {}
        self._unknown: dict[int, float] = {}  # id -> until when it is taken as unknown

    async def get(self, pool: db.Pool, terminal_id: int) -> str | None:
        secret = self._secrets.get(terminal_id)
        if secret is not None:
            return secret
        now = time.monotonic()
        if self._unknown.get(terminal_id, 0.0) > now:
            return None
        async with pool.acquire() as conn:
            found: str | None = await conn.fetchval(db.q("terminal_secret"), terminal_id)
        if found is not None:
            self._secrets[terminal_id] = found
            self._unknown.pop(terminal_id, None)
            return found
        if len(self._unknown) >= self.UNKNOWN_MAX:
            self._unknown = {k: v for k, v in self._unknown.items() if v > now}
            if len(self._unknown) >= self.UNKNOWN_MAX:
                self._unknown.clear()
        self._unknown[terminal_id] = now + self.UNKNOWN_TTL
        return None

    def forget(self, terminal_id: int) -> None:
        """A terminal was created under this id: no longer unknown."""
        self._unknown.pop(terminal_id, None)


# signs for unknown terminals, so that they take the time a known one takes
_NO_SECRET = os.urandom(32).hex()


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
    # an unknown terminal and a wrong signature answer alike: ids cannot be enumerated
    expected = sign(
        secret or _NO_SECRET, method, path_qs, str(signed.timestamp), signed.nonce, body
    )
    if not hmac.compare_digest(expected, signed.signature) or secret is None:
        raise errors.BadSignature()
