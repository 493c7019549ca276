"""The domain's errors: each class has an HTTP status and a stable code; its docstring is its
default message. Nothing here knows aiohttp."""

from __future__ import annotations

import functools
from typing import Any, ClassVar


class CouponError(Exception):
    """Something went wrong."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str | None = None, details: Any = None) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.details = details
        super().__init__(self.message)


class InvalidRequest(CouponError):
    """The request is not valid."""

    status = 422
    code = "invalid_request"


class InvalidNationalId(CouponError):
    """The national id is not a valid 10-digit code."""

    status = 422
    code = "invalid_national_id"


class Unauthorized(CouponError):
    """Authentication is missing or invalid."""

    status = 401
    code = "unauthorized"


class BadSignature(Unauthorized):
    """The request signature does not match."""

    code = "bad_signature"


class MissingSignature(Unauthorized):
    """Sign the request: X-Terminal-Id, X-Timestamp, X-Nonce and X-Signature are required."""

    code = "missing_signature"


class StaleTimestamp(Unauthorized):
    """X-Timestamp is more than 300 seconds away from the server's clock."""

    code = "timestamp_out_of_window"


class NonceReused(Unauthorized):
    """This nonce was already used by this terminal."""

    code = "nonce_reused"


class Forbidden(CouponError):
    """This credential may not use this endpoint."""

    status = 403
    code = "forbidden"


class OutOfProvince(Forbidden):
    """This token acts only on its own province's stores, terminals and households."""

    code = "province_out_of_scope"


class NationalOnly(Forbidden):
    """Only a national token may do this (the token is scoped to one province)."""

    code = "national_scope_required"


class NotFound(CouponError):
    """No such resource."""

    status = 404
    code = "not_found"


class HouseholdNotFound(NotFound):
    """No household has this national id."""

    code = "household_not_found"


class MerchantNotFound(NotFound):
    """No merchant has this id."""

    code = "merchant_not_found"


class TerminalNotFound(NotFound):
    """No terminal has this id."""

    code = "terminal_not_found"


class Conflict(CouponError):
    """The request conflicts with the current state."""

    status = 409
    code = "conflict"


class TrancheOverlap(Conflict):
    """The tranche's window overlaps another tranche's window."""

    code = "tranche_overlap"


class PreviousTrancheActive(Conflict):
    """A carry-over tranche can be opened only after the previous tranche has ended."""

    code = "previous_tranche_active"


class IdempotencyConflict(Conflict):
    """This request_id was already used by this terminal with a different body."""

    code = "idempotency_conflict"


class AlreadyReversed(Conflict):
    """The original redemption was already reversed by another request."""

    code = "already_reversed"


class NotYourTransaction(CouponError):
    """The original redemption belongs to another terminal."""

    status = 403
    code = "not_your_transaction"


class ReversalWindowClosed(CouponError):
    """The original redemption is older than 24 hours and can no longer be reversed."""

    status = 422
    code = "reversal_window_closed"


class PayloadTooLarge(CouponError):
    """The request body is too large."""

    status = 413
    code = "payload_too_large"


class RequestTimeout(CouponError):
    """The request body did not arrive in time."""

    status = 408
    code = "request_timeout"


class TooManyStreams(CouponError):
    """Too many live-counter streams are open (for this token, or in all); close one first."""

    status = 429
    code = "too_many_streams"


class UnsupportedMediaType(CouponError):
    """The request body has the wrong content type."""

    status = 415
    code = "unsupported_media_type"


class ServiceUnavailable(CouponError):
    """The database is unavailable; retry the same request later."""

    status = 503
    code = "service_unavailable"


class DatabaseNotReady(ServiceUnavailable):
    """The database cannot be served as it is."""

    code = "database_not_ready"


class SchemaMismatch(DatabaseNotReady):
    """The database's schema is not the one this code was built for."""

    code = "schema_mismatch"


class UnsafeLogin(DatabaseNotReady):
    """The service must not log in to the database as a superuser."""

    code = "unsafe_login"


class OriginalDeclined(CouponError):
    """The original redemption was declined: there is nothing to reverse."""

    status = 422
    code = "original_declined"


class NotARedemption(CouponError):
    """original_request_id names a reversal, not a redemption."""

    status = 422
    code = "not_a_redemption"


class TerminalSuspended(Forbidden):
    """This terminal is suspended."""

    code = "terminal_suspended"


class MerchantSuspended(Forbidden):
    """This terminal's store is suspended."""

    code = "merchant_suspended"


class TrancheNotFound(NotFound):
    """No tranche has this id."""

    code = "tranche_not_found"


def by_code(code: str) -> CouponError:
    """The error a stable code names (codes the database functions answer); an unknown code is
    a bug, answered as an internal error."""
    cls = _classes().get(code)
    return cls() if cls is not None else CouponError(f"unknown outcome {code!r}")


@functools.cache
def _classes() -> dict[str, type[CouponError]]:
    found: dict[str, type[CouponError]] = {}
    stack: list[type[CouponError]] = [CouponError]
    while stack:
        cls = stack.pop()
        found.setdefault(cls.code, cls)
        stack.extend(cls.__subclasses__())
    return found
