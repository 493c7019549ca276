"""Live counters for operators and auditors."""

from __future__ import annotations

from aiohttp import web

from coupon import counters, errors
from coupon.api import keys
from coupon.api.common import json_response, require_role


def tranche_param(request: web.Request) -> int | None:
    raw = request.query.get("tranche_id")
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise errors.InvalidRequest(
            "tranche_id must be a positive integer",
            [{"field": "tranche_id", "message": "not an integer"}],
        )
    return int(raw)


@require_role("operator", "auditor")
async def get_stats(request: web.Request) -> web.Response:
    tranche_id = tranche_param(request)
    async with request.app[keys.POOL].acquire() as conn:
        result = await counters.stats(conn, tranche_id)
    return json_response(result)
