"""Terminal API: signed balance inquiries, redemptions and reversals."""

from __future__ import annotations

from aiohttp import web

from coupon import answers, errors, national_id, redemption
from coupon.api import keys
from coupon.api.guard import body_of, terminal_of
from coupon.models import RedemptionRequest, ReversalRequest

REPLAYED = {"Idempotent-Replayed": "true"}


def _answer(request: web.Request, kind: str, answer: answers.Answer) -> web.Response:
    request[keys.LOG].update(outcome=answer.label, replayed=answer.replayed)
    request.app[keys.METRICS].outcome(kind, answer.label)
    return web.Response(
        body=answer.body,
        status=answer.status,
        content_type="application/json",
        headers=REPLAYED if answer.replayed else None,
    )


async def create_redemption(request: web.Request) -> web.Response:
    signed = terminal_of(request)
    payload = body_of(request, RedemptionRequest)
    request[keys.LOG]["request_id"] = payload.request_id
    batcher = request.app[keys.BATCHER]
    answer = await batcher.redeem(signed.terminal_id, signed.nonce, payload)
    return _answer(request, "redemption", answer)


async def create_reversal(request: web.Request) -> web.Response:
    signed = terminal_of(request)
    payload = body_of(request, ReversalRequest)
    request[keys.LOG]["request_id"] = payload.request_id
    async with request.app[keys.POOL].acquire() as conn:
        answer = await redemption.reverse(
            conn, signed.terminal_id, signed.nonce, payload, request.app[keys.SHARDS]
        )
    return _answer(request, "reversal", answer)


async def get_balance(request: web.Request) -> web.Response:
    signed = terminal_of(request)
    nid = request.match_info["national_id"]
    if not national_id.is_valid(nid):
        raise errors.InvalidNationalId()
    async with request.app[keys.POOL].acquire() as conn:
        answer = await redemption.balance(conn, signed.terminal_id, signed.nonce, nid)
    return _answer(request, "balance", answer)
