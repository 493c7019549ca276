"""The middleware: domain errors -> the SPEC error body, and one log line per request."""

from __future__ import annotations

import asyncio
import secrets
import time

import structlog
from aiohttp import web

from coupon import db, errors
from coupon.api import keys
from coupon.api.common import json_response

log = structlog.get_logger("coupon.http")


def error_response(exc: errors.CouponError, request_id: str | None = None) -> web.Response:
    """The SPEC error body for a domain error."""
    headers = {"Retry-After": "1"} if isinstance(exc, errors.ServiceUnavailable) else None
    return _error(exc.status, exc.code, exc.message, exc.details, request_id, headers)


def _error(
    status: int,
    code: str,
    message: str,
    details: object = None,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, object] = {"code": code, "message": message, "details": details}
    if request_id is not None:
        body["request_id"] = request_id
    return json_response({"error": body}, status=status, headers=headers)


_HTTP_CODES = {
    404: ("not_found", "no such endpoint"),
    405: ("method_not_allowed", "method not allowed on this endpoint"),
    413: ("payload_too_large", "the request body is too large"),
}


@web.middleware
async def serve(request: web.Request, handler: keys.Handler) -> web.StreamResponse:
    """The one middleware (two cost a coroutine more a request): every failure leaves
    as {"error": {code, message, details}}, bugs as a 500 with an incident id; and one JSON
    line per request: route, status, latency, who; never a secret or a full id."""
    started = time.perf_counter()
    fields: dict[str, object] = {"client": request.app[keys.CLIENTS].address(request)}
    request[keys.LOG] = fields
    status = 500
    try:
        try:
            response = await handler(request)
        except errors.CouponError as exc:
            fields["error"] = exc.code
            response = error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _http_error(exc, fields)
        except Exception as exc:  # not CancelledError: a BaseException
            response = _failure(request, exc, fields)
        status = response.status
        return response
    except asyncio.CancelledError:
        status = 499  # the client went away (or the server is stopping): nginx's code
        raise
    finally:
        elapsed = time.perf_counter() - started
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        request.app[keys.METRICS].request(request.method, route, status, elapsed)
        log.info(
            "request",
            method=request.method,
            route=route,
            status=status,
            latency_ms=round(elapsed * 1000, 2),
            **fields,
        )


def _http_error(exc: web.HTTPException, fields: dict[str, object]) -> web.Response:
    code, message = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
    fields["error"] = code
    # a 405 must say which methods the resource has
    allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return _error(exc.status, code, message, headers=allow)


def _failure(request: web.Request, exc: Exception, fields: dict[str, object]) -> web.Response:
    """A driver error as its domain error (503, ...), anything else as a 500 with an id."""
    translated = db.translate(exc)
    if translated is not None:
        fields["error"] = translated.code
        if isinstance(translated, errors.ServiceUnavailable):
            log.warning("database_unavailable", error=type(exc).__name__)
        return error_response(translated)
    incident = secrets.token_hex(8)
    info = request.match_info.route.resource
    route = info.canonical if info is not None else "unmatched"
    log.exception("unhandled_error", incident=incident, route=route)
    fields["error"] = "internal_error"
    return error_response(errors.CouponError("internal error"), request_id=incident)
