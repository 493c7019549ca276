"""Auditor API: the ledger (JSON pages and CSV), its verification, and settlement."""

from __future__ import annotations

import datetime as dt
import re

from aiohttp import web
from pydantic import ValidationError

from coupon import audit, errors
from coupon.api import keys
from coupon.api.common import invalid, json_response, require_role
from coupon.models import LedgerPage, LedgerQuery, Settlement

auditor = require_role("auditor")
HEAD = re.compile(r"^[0-9a-fA-F]{64}\Z")
DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


def _ledger_query(request: web.Request, *, paged: bool) -> LedgerQuery:
    params = dict(request.query)
    params.pop("access_token", None)
    if not paged and ("limit" in params or "after" in params):
        raise errors.InvalidRequest("the CSV export has no pages: drop limit and after")
    try:
        return LedgerQuery.model_validate(params)
    except ValidationError as exc:
        raise invalid(exc) from None


def _filter(query: LedgerQuery) -> audit.LedgerFilter:
    return audit.LedgerFilter(
        national_id=query.national_id,
        merchant_id=query.merchant_id,
        terminal_id=query.terminal_id,
        province=query.province,
        tranche_id=query.tranche_id,
        kind=query.kind,
        since=query.from_,
        until=query.to,
    )


@auditor
async def get_ledger(request: web.Request) -> web.Response:
    query = _ledger_query(request, paged=True)
    async with request.app[keys.POOL].acquire() as conn:
        entries, cursor = await audit.ledger_page(conn, _filter(query), query.after, query.limit)
    page = LedgerPage.model_validate(
        {"entries": entries, "next": None if cursor is None else str(cursor)}
    )
    return json_response(page)


@auditor
async def get_ledger_csv(request: web.Request) -> web.StreamResponse:
    query = _ledger_query(request, paged=False)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="ledger.csv"',
        }
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    async with request.app[keys.POOL].acquire() as conn:
        await audit.export_csv(conn, _filter(query), response.write)
    await response.write_eof()
    return response


@auditor
async def verify_ledger(request: web.Request) -> web.Response:
    expected = request.query.get("head")
    head: bytes | None = None
    if expected is not None:
        if not HEAD.match(expected):
            raise errors.InvalidRequest(
                "head must be the hex hash /v1/ledger/verify published",
                [{"field": "head", "message": "not 64 hex digits"}],
            )
        head = bytes.fromhex(expected)
    async with request.app[keys.POOL].acquire() as conn:
        result = await audit.verify(conn, head)
    return json_response(result)


def parse_day(raw: str | None) -> dt.date:
    try:
        # YYYY-MM-DD only (fromisoformat alone also takes 20260321 and 2026-W12-6)
        if not DAY.match(raw or ""):
            raise ValueError(raw)
        return dt.date.fromisoformat(raw or "")
    except ValueError:
        raise errors.InvalidRequest(
            "date must be YYYY-MM-DD (an Asia/Tehran calendar day)",
            [{"field": "date", "message": "not a date"}],
        ) from None


@require_role("auditor", "operator")
async def get_settlement(request: web.Request) -> web.Response:
    day = parse_day(request.query.get("date"))
    async with request.app[keys.POOL].acquire() as conn:
        merchants = await audit.settlement(conn, day)
    return json_response(Settlement.model_validate({"date": day, "merchants": merchants}))
