"""Helpers every handler uses: JSON in and out, and the bearer-token role check."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from coupon import errors, tokens
from coupon.api import keys

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot serialise {type(value).__name__}")


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response encoded by orjson (datetimes as ISO 8601)."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    return web.Response(
        body=orjson.dumps(data, default=_default),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic's errors as [{field, message}], the field as a dotted path."""
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
        for e in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def invalid(exc: ValidationError) -> errors.InvalidRequest:
    details = validation_details(exc)
    fields = ", ".join(sorted({d["field"] for d in details}))
    return errors.InvalidRequest(f"invalid fields: {fields}", details)


def parse_json(body: bytes, model: type[M]) -> M:
    """Validate a raw JSON body against model; 422 invalid_request naming the fields."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise invalid(exc) from None


async def read_json(request: web.Request, model: type[M]) -> M:
    """Read and validate a JSON request body."""
    if request.content_type != "application/json":
        raise errors.UnsupportedMediaType("send the body as application/json")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise errors.PayloadTooLarge() from None
    return parse_json(body, model)


def int_param(request: web.Request, name: str) -> int:
    """A positive integer path parameter, or 404 (no such resource can exist)."""
    raw = request.match_info[name]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise errors.NotFound(f"no such {name}")
    return int(raw)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def require_role(*roles: str, query_token: bool = False) -> Callable[[Handler], Handler]:
    """Admit a request whose bearer token has one of roles: 401 without one, 403 otherwise."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def checked(request: web.Request) -> web.StreamResponse:
            token = bearer_token(request)
            if token is None and query_token:
                token = request.query.get("access_token")
            if not token:
                raise errors.Unauthorized("send Authorization: Bearer <token>")
            async with request.app[keys.POOL].acquire() as conn:
                role = await tokens.role_of(conn, token)
            if role is None:
                raise errors.Unauthorized("unknown token")
            request[keys.LOG]["role"] = role
            if role not in roles:
                raise errors.Forbidden(f"this endpoint needs the role {' or '.join(roles)}")
            return await handler(request)

        checked.roles = roles  # type: ignore[attr-defined]
        return checked

    return wrap
