"""What every route gets from its line in the route table before its handler runs: the
credential its `auth` names (a terminal's signature, or a bearer token of one of its roles), its
query string as its `query` model and its JSON body as its `body` model. Handlers read the
validated inputs with query_of/body_of/terminal_of."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from coupon import auth, errors, tokens
from coupon.api import keys
from coupon.api.common import invalid, parse_json

if TYPE_CHECKING:
    from coupon.api.routes import Route

M = TypeVar("M", bound=BaseModel)

QUERY = web.RequestKey("query", BaseModel)
BODY = web.RequestKey("body", BaseModel)
TERMINAL = web.RequestKey("terminal", auth.SignedRequest)


def guard(route: Route) -> keys.Handler:
    """The route's handler behind its authentication and input validation."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        raw = None
        if route.auth == "terminal":
            raw = await _verify_terminal(request, route.max_body)
        elif route.roles:
            await _check_role(request, route.roles, route.query_token)
        if isinstance(route.body, type):
            if request.content_type != "application/json":
                raise errors.UnsupportedMediaType("send the body as application/json")
            request[BODY] = parse_json(
                raw if raw is not None else await read_body(request, route.max_body), route.body
            )
        if route.query is not None:
            params = dict(request.query)
            params.pop("access_token", None)  # a credential, never a filter
            try:
                request[QUERY] = route.query.model_validate(params)
            except ValidationError as exc:
                raise invalid(exc) from None
        return await route.handler(request)

    return guarded


def query_of(request: web.Request, model: type[M]) -> M:
    """The query string, as the route table's model validated it."""
    value = request[QUERY]
    assert isinstance(value, model)
    return value


def body_of(request: web.Request, model: type[M]) -> M:
    """The JSON body, as the route table's model validated it."""
    value = request[BODY]
    assert isinstance(value, model)
    return value


def scope_of(request: web.Request) -> str | None:
    """The province the bearer token is scoped to; None for a national token."""
    value = request.get(keys.SCOPE)
    assert value is None or isinstance(value, str)
    return value


def national_only(request: web.Request) -> None:
    """Refuse a province-scoped token (403 national_scope_required)."""
    if scope_of(request) is not None:
        raise errors.NationalOnly()


def terminal_of(request: web.Request) -> auth.SignedRequest:
    """The terminal whose signature the request carries (verified)."""
    return request[TERMINAL]


async def read_body(request: web.Request, max_size: int | None = None) -> bytes:
    """The whole body, within the app's client_max_size or the route's max_size (413 past
    it) and the body timeout (408 past it)."""
    source = request if max_size is None else request.clone(client_max_size=max_size)
    try:
        async with asyncio.timeout(request.app[keys.SETTINGS].body_timeout):
            return await source.read()
    except web.HTTPRequestEntityTooLarge:
        raise errors.PayloadTooLarge() from None
    except TimeoutError:
        raise errors.RequestTimeout() from None


async def _verify_terminal(request: web.Request, max_size: int | None) -> bytes:
    """Check the request's signature; return the raw body it covers."""
    signed = auth.parse_headers(request.headers)
    request[keys.LOG]["terminal_id"] = signed.terminal_id
    body = await read_body(request, max_size)
    await auth.verify(
        request.app[keys.SECRETS],
        request.app[keys.POOL],
        signed,
        request.method,
        request.raw_path,
        body,
        request.app[keys.SETTINGS].clock_skew,
    )
    request[TERMINAL] = signed
    return body


def _bearer_token(request: web.Request, query_token: bool) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    if not token and query_token:
        token = request.query.get("access_token", "")
    # tokens are printable ASCII; other bytes (undecodable ones too) name no token
    if token and not (token.isascii() and token.isprintable()):
        raise errors.Unauthorized("unknown token")
    return token or None


async def _check_role(request: web.Request, roles: tuple[str, ...], query_token: bool) -> None:
    """A bearer token of one of roles: 401 without a known one, 403 with another role."""
    token = _bearer_token(request, query_token)
    if not token:
        raise errors.Unauthorized("send Authorization: Bearer <token>")
    async with request.app[keys.POOL].acquire() as conn:
        grant = await tokens.grant_of(conn, token)
    if grant is None:
        raise errors.Unauthorized("unknown token")
    role = grant.role
    request[keys.LOG]["role"] = role
    if grant.province is not None:
        request[keys.LOG]["scope"] = grant.province
    request[keys.TOKEN] = tokens.token_hash(token).hex()
    request[keys.SCOPE] = grant.province
    if role not in roles:
        raise errors.Forbidden(f"this endpoint needs the role {' or '.join(roles)}")
