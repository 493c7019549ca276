"""/openapi.json, generated from the route table and the pydantic models."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from coupon.api.routes import ROUTES, Route
from coupon.models import MAX_ID, NATIONAL_ID_PATTERN, ErrorBody

_REF = "#/components/schemas/{model}"
_TERMINAL_HEADERS = {
    "terminalId": "X-Terminal-Id",
    "terminalTimestamp": "X-Timestamp",
    "terminalNonce": "X-Nonce",
    "terminalSignature": "X-Signature",
}
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    # the four headers together: one requirement
    "terminal": [{name: [] for name in _TERMINAL_HEADERS}],
    "operator": [{"bearer": []}],
    "auditor": [{"bearer": []}],
    "operator,auditor": [{"bearer": []}],
}
# what every route of an authentication kind may answer besides its own responses
_ERRORS = {
    "terminal": (401, 422),
    "operator": (401, 403, 422),
    "auditor": (401, 403, 422),
    "operator,auditor": (401, 403, 422),
}
_PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "national_id": {"type": "string", "pattern": NATIONAL_ID_PATTERN},
    "id": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before sending the same request again",
        "schema": {"type": "string"},
        "required": True,
    }
}
_REPLAYED = {
    "Idempotent-Replayed": {
        "description": "present (true) when this is the stored answer of a repeated request_id",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


def _models() -> list[type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {"ErrorBody": ErrorBody}
    for route in ROUTES:
        if isinstance(route.body, type):
            found[route.body.__name__] = route.body
        for model in route.responses.values():
            if model is not None:
                found[model.__name__] = model
    return list(found.values())


def _content(model: type[BaseModel] | None, media: str | None = None) -> dict[str, Any]:
    if model is None:
        return {}
    ref = {"$ref": _REF.format(model=model.__name__)}
    if media == "text/event-stream":
        # each event: `event`, `id`, maybe `retry`, and `data` holding the model as JSON
        event = {
            "type": "object",
            "properties": {
                "event": {"type": "string"},
                "id": {"type": "string"},
                "retry": {"type": "integer"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": ref,
                },
            },
        }
        return {"content": {media: {"schema": event}}}
    return {"content": {media or "application/json": {"schema": ref}}}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field's schema without its `null` branch (a query parameter is absent
    rather than null) and without pydantic's titles and defaults."""
    branches = schema.get("anyOf")
    if branches is not None:
        kept = [b for b in branches if b != {"type": "null"}]
        if len(kept) == 1:
            schema = {**{k: v for k, v in schema.items() if k != "anyOf"}, **kept[0]}
    return {k: v for k, v in schema.items() if k not in ("title", "default")}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(mode="validation")
    required = set(schema.get("required", ()))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": _without_null(field),
            **({"description": field["description"]} if "description" in field else {}),
        }
        for name, field in schema["properties"].items()
    ]


def _parameters(route: Route) -> list[dict[str, Any]]:
    params = [
        {
            "name": part[1:-1],
            "in": "path",
            "required": True,
            "schema": _PATH_PARAMETERS.get(part[1:-1], {"type": "string"}),
        }
        for part in route.path.split("/")
        if part.startswith("{")
    ]
    if route.query is not None:
        params += _query_parameters(route.query)
    return params


def _responses(route: Route) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, model in route.responses.items():
        if model is None and status < 400:
            media = route.media or "application/json"
            schema: dict[str, Any] = {"type": "object"} if "json" in media else {"type": "string"}
            responses[str(status)] = {
                "description": str(status),
                "content": {media: {"schema": schema}},
            }
            continue
        shown = model if model is not None else ErrorBody
        responses[str(status)] = {
            "description": str(status),
            **_content(shown, route.media if status < 400 else None),
        }
        if route.auth == "terminal" and status in (201, 202, 402):
            responses[str(status)]["headers"] = _REPLAYED
    for status in _ERRORS.get(route.auth, ()):
        responses.setdefault(str(status), {"description": "error", **_content(ErrorBody)})
    if route.body is not None:  # a body that stops arriving
        responses.setdefault("408", {"description": "error", **_content(ErrorBody)})
    if route.database:
        responses.setdefault(
            "503",
            {
                "description": "the database is unavailable: send the same request again later",
                "headers": _RETRY_AFTER,
                **_content(ErrorBody),
            },
        )
    if not responses:
        responses["200"] = {"description": "OK"}
    return responses


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route."""
    models = _models()
    _, schemas = models_json_schema(
        [(m, "validation" if _is_request(m) else "serialization") for m in models],
        ref_template=_REF,
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        op: dict[str, Any] = {
            "operationId": route.handler.__name__,
            "summary": route.summary,
            "tags": [route.tag],
            "responses": _responses(route),
        }
        params = _parameters(route)
        if params:
            op["parameters"] = params
        if route.auth in _SECURITY:
            op["security"] = _SECURITY[route.auth]
        if isinstance(route.body, str):
            op["requestBody"] = {
                "required": True,
                "content": {route.body: {"schema": {"type": "string"}}},
            }
        elif route.body is not None:
            op["requestBody"] = {"required": True, **_content(route.body)}
        paths.setdefault(route.path, {})[route.method.lower()] = op
    signature = (
        "HMAC-SHA256 with the terminal's secret, lowercase hex, over METHOD, the path with its "
        "query, X-Timestamp, X-Nonce and the hex SHA-256 of the body, joined by newlines"
    )
    terminal_schemes = {
        name: {
            "type": "apiKey",
            "in": "header",
            "name": header,
            **({"description": signature} if header == "X-Signature" else {}),
        }
        for name, header in _TERMINAL_HEADERS.items()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Coupon",
            "version": "1.0.0",
            "description": "Transaction processor of an electronic goods-coupon programme",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                **terminal_schemes,
            },
        },
    }


def _is_request(model: type[BaseModel]) -> bool:
    return any(route.body is model for route in ROUTES)
