"""Offline store-and-forward and reconciliation: terminals forward the purchases they approved
offline and reconcile their day; operators see gaps; auditors see the reconciliations and the
offline purchases declined at posting."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from coupon import offline
from coupon.api import keys
from coupon.api.audit import parse_day
from coupon.api.common import json_response
from coupon.api.guard import body_of, query_of, scope_of, terminal_of
from coupon.api.terminal import REPLAYED
from coupon.models import (
    OfflineBatch,
    OfflineDeclines,
    OfflineDeclinesQuery,
    OfflineGaps,
    ReconciliationList,
    ReconciliationQuery,
    ReconciliationRequest,
)


async def post_offline_batch(request: web.Request) -> web.Response:
    signed = terminal_of(request)
    batch = body_of(request, OfflineBatch)
    settings = request.app[keys.SETTINGS]
    async with request.app[keys.POOL].acquire() as conn:
        answer = await offline.post_batch(
            conn,
            signed.terminal_id,
            signed.nonce,
            batch,
            dt.timedelta(seconds=settings.offline_max_delay),
            dt.timedelta(seconds=settings.clock_skew),
            request.app[keys.SHARDS],
        )
    metrics = request.app[keys.METRICS]
    for result in answer.results:
        if not result.replayed:
            label = result.status if result.reason is None else f"{result.status}:{result.reason}"
            metrics.outcome("offline", label)
    replayed = all(r.replayed for r in answer.results)
    request[keys.LOG].update(
        purchases=len(answer.results),
        approved=answer.approved,
        declined=answer.declined,
        rejected=answer.rejected,
        replayed=replayed,
    )
    return json_response(answer, headers=REPLAYED if replayed else None)


async def reconcile(request: web.Request) -> web.Response:
    signed = terminal_of(request)
    payload = body_of(request, ReconciliationRequest)
    day = parse_day(payload.date)
    max_delay = dt.timedelta(seconds=request.app[keys.SETTINGS].offline_max_delay)
    async with request.app[keys.POOL].acquire() as conn:
        result = await offline.reconcile(
            conn, signed.terminal_id, signed.nonce, payload, day, max_delay
        )
    request[keys.LOG].update(outcome=result.status, date=payload.date)
    return json_response(result)


async def get_gaps(request: web.Request) -> web.Response:
    async with request.app[keys.READS].acquire() as conn:
        rows = await offline.terminals_with_gaps(conn, scope_of(request))
    return json_response(OfflineGaps.model_validate({"terminals": rows}))


async def list_reconciliations(request: web.Request) -> web.Response:
    query = query_of(request, ReconciliationQuery)
    day = parse_day(query.date)
    async with request.app[keys.READS].acquire() as conn:
        rows = await offline.list_reconciliations(conn, day, query.status, scope_of(request))
    return json_response(ReconciliationList.model_validate({"date": day, "terminals": rows}))


async def get_offline_declines(request: web.Request) -> web.Response:
    query = query_of(request, OfflineDeclinesQuery)
    day = parse_day(query.date)
    async with request.app[keys.READS].acquire() as conn:
        rows = await offline.declines(conn, day, query.merchant_id, scope_of(request))
    return json_response(OfflineDeclines.model_validate({"date": day, "declines": rows}))
