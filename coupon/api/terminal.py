"""Terminal API: signed balance inquiries, redemptions and reversals."""

from __future__ import annotations

from aiohttp import web

from coupon import auth, errors, households, redemption
from coupon.api import keys
from coupon.api.common import json_response, parse_json
from coupon.models import RedemptionRequest, ReversalRequest
from coupon.redemption import Outcome

REPLAYED = {"Idempotent-Replayed": "true"}


async def _authenticate(request: web.Request) -> tuple[auth.SignedRequest, bytes]:
    """The verified signature and the raw body it covers, or 401."""
    signed = auth.parse_headers(request.headers)
    request[keys.LOG]["terminal_id"] = signed.terminal_id
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise errors.PayloadTooLarge() from None
    await auth.verify(
        request.app[keys.SECRETS],
        request.app[keys.POOL],
        signed,
        request.method,
        request.raw_path,
        body,
        request.app[keys.SETTINGS].clock_skew,
    )
    return signed, body


def _json_body(request: web.Request) -> None:
    if request.content_type != "application/json":
        raise errors.UnsupportedMediaType("send the body as application/json")


def _answer(request: web.Request, kind: str, outcome: Outcome) -> web.Response:
    body = outcome.body
    result = body.get("status", "ok") if isinstance(body, dict) else "ok"
    if result == "declined":
        result = f"declined:{body['reason']}"
    request[keys.LOG].update(outcome=result, replayed=outcome.replayed)
    request.app[keys.METRICS].outcomes.labels(kind, result).inc()
    return json_response(
        body, status=outcome.status, headers=REPLAYED if outcome.replayed else None
    )


async def create_redemption(request: web.Request) -> web.Response:
    signed, body = await _authenticate(request)
    _json_body(request)
    payload = parse_json(body, RedemptionRequest)
    request[keys.LOG]["request_id"] = payload.request_id
    batcher = request.app[keys.BATCHER]
    outcome = await batcher.redeem(signed.terminal_id, signed.nonce, payload)
    return _answer(request, "redemption", outcome)


async def create_reversal(request: web.Request) -> web.Response:
    signed, body = await _authenticate(request)
    _json_body(request)
    payload = parse_json(body, ReversalRequest)
    request[keys.LOG]["request_id"] = payload.request_id
    async with request.app[keys.POOL].acquire() as conn:
        outcome = await redemption.reverse(
            conn, signed.terminal_id, signed.nonce, payload, request.app[keys.SHARDS]
        )
    return _answer(request, "reversal", outcome)


async def get_balance(request: web.Request) -> web.Response:
    signed, _ = await _authenticate(request)
    national_id = request.match_info["national_id"]
    if not households.is_valid_national_id(national_id):
        raise errors.InvalidNationalId()
    async with request.app[keys.POOL].acquire() as conn:
        outcome = await redemption.balance(conn, signed.terminal_id, signed.nonce, national_id)
    return _answer(request, "balance", outcome)
