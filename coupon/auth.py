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

import structlog
from cryptography.exceptions import InvalidTag
from multidict import CIMultiDictProxy

from coupon import db, errors
from coupon.keyring import Keyring, UnknownKey

log = structlog.get_logger(__name__)

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


@dataclass(frozen=True, slots=True)
class Keys:
    """A terminal's secrets: the current one, and the one a rotation replaced, until when."""

    current: str
    previous: str | None = None
    previous_until: float = 0.0  # time.time()


class TerminalSecrets:
    """Terminal id -> its secrets, decrypted once and cached per process. Every process polls
    how often secrets were made or changed (forget_if_changed, twice a second) and forgets its
    cache when that moves: a rotation or a new terminal holds everywhere within a second. An
    unknown id is remembered as unknown meanwhile, so that guessing ids costs no query each."""

    UNKNOWN_MAX = 10_000  # remembered unknown ids at most (a flood of guesses stays small)

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._keys: dict[int, Keys] = {}
        self._unknown: set[int] = set()
        self._version: int | None = None

    async def get(self, pool: db.Pool, terminal_id: int) -> Keys | None:
        keys = self._keys.get(terminal_id)
        if keys is not None or terminal_id in self._unknown:
            return keys
        async with pool.acquire() as conn:
            row = await conn.fetchrow(db.q("terminal_secret"), terminal_id)
        if row is None or row["secret_box"] is None:
            if len(self._unknown) >= self.UNKNOWN_MAX:
                self._unknown.clear()
            self._unknown.add(terminal_id)
            return None
        previous = row["previous_box"]
        try:
            keys = Keys(
                self._keyring.open(terminal_id, row["secret_box"]),
                self._keyring.open(terminal_id, previous) if previous is not None else None,
                row["previous_until"].timestamp() if previous is not None else 0.0,
            )
        except (InvalidTag, UnknownKey) as exc:
            # tampered, moved from another terminal, or under a key this file lacks: no
            # signature can match it (an operator must look: logged, never answered as a 500)
            log.error("terminal_secret_unreadable", terminal_id=terminal_id, error=repr(exc))
            self._unknown.add(terminal_id)
            return None
        self._keys[terminal_id] = keys
        return keys

    def forget(self) -> None:
        """Secrets were made or changed in this process: read them again."""
        self._keys.clear()
        self._unknown.clear()

    async def forget_if_changed(self, conn: db.Connection) -> None:
        version: int = await conn.fetchval(db.q("terminal_keys_version"))
        if version != self._version:
            self._version = version
            self.forget()


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
    keys = await secrets.get(pool, signed.terminal_id)
    stamp = str(signed.timestamp)
    # an unknown terminal and a wrong signature answer alike: ids cannot be enumerated
    secret = keys.current if keys is not None else _NO_SECRET
    expected = sign(secret, method, path_qs, stamp, signed.nonce, body)
    if keys is not None and hmac.compare_digest(expected, signed.signature):
        return
    if keys is not None and keys.previous is not None and current < keys.previous_until:
        expected = sign(keys.previous, method, path_qs, stamp, signed.nonce, body)
        if hmac.compare_digest(expected, signed.signature):
            return
    raise errors.BadSignature()
