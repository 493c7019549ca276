"""The connection itself, before any route or middleware. aiohttp answers requests its HTTP
parser refuses (a header too long, Content-Length twice, too many headers, CL with TE) in plain
text that quotes the offending bytes and names its version, and bounds neither how many
connections it holds nor how long a client may take to send a request's head; it offers no hook
for either, so its connection handler is replaced by one that answers the SPEC error body,
quotes nothing, refuses connections past the caps and drops a head that is late."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
import structlog
from aiohttp import web, web_protocol, web_request, web_server

log = structlog.get_logger("coupon.http")

SERVER = "coupon"  # the Server header: no product version to look vulnerabilities up by

# a parser error's status -> the SPEC error code
_CODES = {400: "bad_request", 413: "payload_too_large", 431: "headers_too_large"}


@dataclass
class Limits:
    """Connection caps of one server process, shared by its connections."""

    header_timeout: float  # seconds from connecting to a complete request head
    max_connections: int
    max_per_client: int
    exempt: Callable[[str], bool] = lambda address: False  # a trusted proxy: no per-client cap
    open: int = 0
    per_client: Counter[str] = field(default_factory=Counter)

    def admit(self, client: str) -> str | None:
        """Count the connection in, or say why it is refused."""
        if self.open >= self.max_connections:
            return "the server holds as many connections as it may"
        if not self.exempt(client) and self.per_client[client] >= self.max_per_client:
            return "too many connections from this address"
        self.open += 1
        self.per_client[client] += 1
        return None

    def release(self, client: str) -> None:
        self.open -= 1
        self.per_client[client] -= 1
        if self.per_client[client] <= 0:
            del self.per_client[client]


def _refusal(reason: str) -> bytes:
    body = orjson.dumps(
        {"error": {"code": "service_unavailable", "message": reason, "details": None}}
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n"
        f"Server: {SERVER}\r\nCache-Control: no-store\r\n\r\n"
    )
    return head.encode() + body


class Protocol(web_protocol.RequestHandler):
    def __init__(self, manager: Any, *, limits: Limits | None = None, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._client: str | None = None  # counted in limits while connected
        self._refused = False
        self._head_due: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._limits is not None:
            peer = transport.get_extra_info("peername")
            client = str(peer[0]) if peer else ""
            reason = self._limits.admit(client)
            if reason is not None:
                # refused politely, before any byte is read: an answer, then the close
                self._refused = True
                log.warning("connection_refused", client=client, reason=reason)
                assert isinstance(transport, asyncio.Transport)
                transport.write(_refusal(reason))
                transport.close()
                return
            self._client = client
            self._head_due = asyncio.get_running_loop().call_later(
                self._limits.header_timeout, self._head_overdue
            )
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._head_due is not None and self._request_count:
            self._head_due.cancel()
            self._head_due = None

    def _head_overdue(self) -> None:
        self._head_due = None
        if self._request_count == 0:
            log.warning("request_head_overdue", client=self._client)
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        if self._head_due is not None:
            self._head_due.cancel()
            self._head_due = None
        if self._limits is not None and self._client is not None:
            self._limits.release(self._client)
            self._client = None
        super().connection_lost(exc)

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
