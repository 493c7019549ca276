"""Health, metrics and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coupon import db, errors
from coupon.api import keys
from coupon.api.common import json_response
from coupon.models import Health


async def healthz(request: web.Request) -> web.Response:
    try:
        async with request.app[keys.POOL].acquire(within=2) as conn:
            role = await conn.fetchval(db.q("server_role"), timeout=2)
    except db.UNAVAILABLE:
        return _health(Health(status="unavailable", database=False))
    writable = role == "primary"
    health = Health(status="ok" if writable else "unavailable", database=writable, role=role)
    reads = request.app[keys.READS]
    if writable and reads.has_standby:
        async with reads.acquire():
            served = reads.last
        if served is not None:
            health.reads, health.read_lag = served.server, served.lag
    return _health(health)


def _health(health: Health) -> web.Response:
    return json_response(
        health.model_dump(mode="json", exclude_none=True),
        status=200 if health.status == "ok" else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    clients = request.app[keys.CLIENTS]
    if not clients.may_scrape(request, clients.address(request)):
        raise errors.Forbidden("metrics are served to COUPON_METRICS_NETWORKS or with its token")
    body = generate_latest(request.app[keys.METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    # drawn from the route table by create_app: no handler module imports the table
    return web.Response(body=request.app[keys.OPENAPI], content_type="application/json")
