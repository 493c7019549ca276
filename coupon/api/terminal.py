"""Terminal API: signed balance inquiries, redemptions and reversals."""

from __future__ import annotations

from aiohttp import web

from coupon import errors, national_id, redemption
from coupon.api import keys
from coupon.api.common import json_response
from coupon.api.guard import body_of, terminal_of
from coupon.models import RedemptionRequest, ReversalRequest
from coupon.redemption import Outcome

REPLAYED = {"Idempotent-Replayed": "true"}


def _answer(request: web.Request, kind: str, outcome: Outcome) -> web.Response:
    body = outcome.body
    result = body.get("status", "ok") if isinstance(body, dict) else "ok"
    if result == "declined":
        result = f"declined:{body['reason']}"
    request[keys.LOG].update(outcome=result, replayed=outcome.replayed)
    request.app[keys.METRICS].outcome(kind, result)
    return json_response(
        body, status=outcome.status, headers=REPLAYED if outcome.replayed else None
    )


async def create_redemption(request: web.Request) -> web.Response:
    signed = terminal_of(request)
    payload = body_of(request, RedemptionRequest)
    request[keys.LOG]["request_id"] = payload.request_id
    batcher = request.app[keys.BATCHER]
    outcome = await batcher.redeem(signed.terminal_id, signed.nonce, payload)
    return _answer(request, "redemption", outcome)


async def create_reversal(request: web.Request) -> web.Response:
    signed = terminal_of(request)
    payload = body_of(request, ReversalRequest)
    request[keys.LOG]["request_id"] = payload.request_id
    async with request.app[keys.POOL].acquire() as conn:
        outcome = await redemption.reverse(
            conn, signed.terminal_id, signed.nonce, payload, request.app[keys.SHARDS]
        )
    return _answer(request, "reversal", outcome)


async def get_balance(request: web.Request) -> web.Response:
    signed = terminal_of(request)
    nid = request.match_info["national_id"]
    if not national_id.is_valid(nid):
        raise errors.InvalidNationalId()
    async with request.app[keys.POOL].acquire() as conn:
        outcome = await redemption.balance(conn, signed.terminal_id, signed.nonce, nid)
    return _answer(request, "balance", outcome)
