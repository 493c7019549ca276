"""The one translation point for driver errors, and the log scrubber, without a database."""

from __future__ import annotations

import asyncpg
import pytest

from coupon import db, errors, logs


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "refused"),
        ConnectionResetError(104, "reset"),
        TimeoutError(),
        OSError(113, "no route to host"),
        asyncpg.ConnectionDoesNotExistError("closed in the middle of operation"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CrashShutdownError("terminating connection because of crash"),
        asyncpg.TooManyConnectionsError("too many clients"),
        asyncpg.DiskFullError("no space left"),
        asyncpg.ReadOnlySQLTransactionError("read-only transaction"),
        asyncpg.SerializationError("could not serialize"),
        asyncpg.DeadlockDetectedError("deadlock detected"),
        asyncpg.InterfaceError("pool is closing"),
        asyncpg.exceptions._base.InternalClientError("cannot switch to state 15"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_infrastructure_failures_are_503(exc: BaseException) -> None:
    translated = db.translate(exc)
    assert isinstance(translated, errors.ServiceUnavailable)
    assert (translated.status, translated.code) == (503, "service_unavailable")


def test_a_statement_timeout_is_503_and_says_so() -> None:
    translated = db.translate(asyncpg.QueryCanceledError("canceling statement"))
    assert isinstance(translated, errors.ServiceUnavailable)
    assert "in time" in translated.message


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions._base.DataError("value out of int64 range"),
        asyncpg.NumericValueOutOfRangeError("bigint out of range"),
        asyncpg.DatetimeFieldOverflowError("date/time field value out of range"),
        asyncpg.CheckViolationError("violates check constraint"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_values_the_database_cannot_hold_are_422(exc: BaseException) -> None:
    translated = db.translate(exc)
    assert isinstance(translated, errors.InvalidRequest)


@pytest.mark.parametrize(
    "exc",
    [RuntimeError("bug"), KeyError("x"), asyncpg.UndefinedColumnError("no such column")],
    ids=lambda e: type(e).__name__,
)
def test_bugs_stay_bugs(exc: BaseException) -> None:
    assert db.translate(exc) is None


def test_logs_never_show_a_full_national_id_a_token_a_secret_or_a_password() -> None:
    secret = "a1" * 32
    line = (
        "Key (national_id)=(0084575948) token cpn_Se9tJjyciQ-tTT_1 secret "
        f"{secret} dsn postgresql://coupon:s3cr3t@127.0.0.1:5432/coupon ts 1795807622"
    )
    event = logs.redact(None, "info", {"event": "x", "error": line})
    text = str(event)
    for leaked in ("0084575948", "cpn_Se9", secret, "s3cr3t"):
        assert leaked not in text
    assert "*******948" in text and "1795807622" in text  # not an id: its check digit fails
