"""Helpers the handlers share: JSON in and out, validation errors, path parameters."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from coupon import errors

M = TypeVar("M", bound=BaseModel)


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


def int_param(request: web.Request, name: str) -> int:
    """A positive integer path parameter, or 404 (no such resource can exist)."""
    raw = request.match_info[name]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise errors.NotFound(f"no such {name}")
    return int(raw)
