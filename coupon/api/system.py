"""Health, metrics and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coupon import db, errors
from coupon.api import keys
from coupon.api.common import json_response


async def healthz(request: web.Request) -> web.Response:
    try:
        async with request.app[keys.POOL].acquire(within=2) as conn:
            await conn.fetchval("SELECT 1", timeout=2)
    except db.UNAVAILABLE:
        return json_response({"status": "unavailable", "database": False}, status=503)
    return json_response({"status": "ok", "database": True})


async def metrics(request: web.Request) -> web.Response:
    clients = request.app[keys.CLIENTS]
    if not clients.may_scrape(request, clients.address(request)):
        raise errors.Forbidden("metrics are served to COUPON_METRICS_NETWORKS or with its token")
    body = generate_latest(request.app[keys.METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    # drawn from the route table by create_app: no handler module imports the table
    return web.Response(body=request.app[keys.OPENAPI], content_type="application/json")
