"""Auditor API: the ledger (JSON pages and CSV), its verification, and settlement."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from coupon import audit, errors, signing
from coupon.api import keys
from coupon.api.common import json_response
from coupon.api.guard import query_of
from coupon.models import (
    LedgerFilters,
    LedgerKeys,
    LedgerPage,
    LedgerQuery,
    Settlement,
    SettlementQuery,
    VerifyQuery,
)


async def get_ledger(request: web.Request) -> web.Response:
    query = query_of(request, LedgerQuery)
    async with request.app[keys.READS].acquire() as conn:
        entries, cursor = await audit.ledger_page(conn, query, query.after, query.limit)
    page = LedgerPage.model_validate(
        {"entries": entries, "next": None if cursor is None else str(cursor)}
    )
    return json_response(page)


async def get_ledger_csv(request: web.Request) -> web.StreamResponse:
    query = query_of(request, LedgerFilters)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="ledger.csv"',
        }
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    async with request.app[keys.READS].acquire() as conn:
        await audit.export_csv(conn, query, response.write)
    await response.write_eof()
    return response


async def verify_ledger(request: web.Request) -> web.Response:
    expected = query_of(request, VerifyQuery).head
    head = bytes.fromhex(expected) if expected is not None else None
    async with request.app[keys.READS].acquire() as conn:
        result = await audit.verify(conn, request.app[keys.SEAL_KEYS], head)
    return json_response(result)


def parse_day(raw: str) -> dt.date:
    """A YYYY-MM-DD the query model admitted, as a date (2026-13-01 has the shape, not the
    meaning)."""
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise errors.InvalidRequest(
            "date must be YYYY-MM-DD (an Asia/Tehran calendar day)",
            [{"field": "date", "message": "not a date"}],
        ) from None


async def get_settlement(request: web.Request) -> web.Response:
    day = parse_day(query_of(request, SettlementQuery).date)
    async with request.app[keys.READS].acquire() as conn:
        merchants = await audit.settlement(conn, day)
    return json_response(Settlement.model_validate({"date": day, "merchants": merchants}))


async def get_ledger_keys(request: web.Request) -> web.Response:
    seal_keys = request.app[keys.SEAL_KEYS]
    published = [
        {"public_key": raw.hex(), "pem": signing.public_pem(raw), "signs": raw == seal_keys.signer}
        for raw in seal_keys.trusted
    ]
    return json_response(LedgerKeys.model_validate({"keys": published}))
