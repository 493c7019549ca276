"""What aiohttp answers by itself, before any route or middleware: requests its HTTP parser
refuses (a header too long, Content-Length twice, too many headers, CL with TE) and failures
outside the middleware. aiohttp answers those in plain text that quotes the offending bytes
and names its version; it offers no hook for them, so its connection handler is replaced by one
that answers the SPEC error body and quotes nothing."""

from __future__ import annotations

from http import HTTPStatus

import orjson
import structlog
from aiohttp import web, web_protocol, web_request, web_server

log = structlog.get_logger("coupon.http")

SERVER = "coupon"  # the Server header: no product version to look vulnerabilities up by

# a parser error's status -> the SPEC error code
_CODES = {400: "bad_request", 413: "payload_too_large", 431: "headers_too_large"}


class Protocol(web_protocol.RequestHandler):
    def handle_error(
        self,
        request: web_request.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("a response is already under way: drop the connection")
        # the exception's text quotes the client's bytes (an Authorization value): only its type
        log.warning(
            "request_refused",
            status=status,
            error=type(exc).__name__ if exc else None,
            client=request.remote,
        )
        code = _CODES.get(status, "internal_error" if status >= 500 else "bad_request")
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        body = {"error": {"code": code, "message": phrase.lower() or code, "details": None}}
        response = web.Response(
            status=status,
            body=orjson.dumps(body),
            content_type="application/json",
            headers={"Server": SERVER, "Cache-Control": "no-store"},
        )
        response.force_close()
        return response


def install() -> None:
    """Every aiohttp server of this process (AppRunner's, gunicorn's worker's, the tests')
    makes its connections with Protocol."""
    web_server.RequestHandler = Protocol  # type: ignore[attr-defined]
