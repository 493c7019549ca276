"""/openapi.json, generated from the route table and the pydantic models."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from coupon.api.routes import ROUTES
from coupon.models import ErrorBody

_REF = "#/components/schemas/{model}"
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "terminal": [{"terminalSignature": []}],
    "operator": [{"bearer": []}],
    "auditor": [{"bearer": []}],
    "operator,auditor": [{"bearer": []}],
}
_ERRORS = {
    "terminal": (401, 422),
    "operator": (401, 403, 422),
    "auditor": (401, 403, 422),
    "operator,auditor": (401, 403, 422),
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


def _content(model: type[BaseModel] | None) -> dict[str, Any]:
    if model is None:
        return {}
    return {
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}}
    }


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
            "responses": {},
        }
        params = [
            {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for part in route.path.split("/")
            if part.startswith("{")
        ]
        params += [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            | {"description": text}
            for name, text in route.query
        ]
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
        for status, model in route.responses.items():
            shown = model if model is not None or status < 400 else ErrorBody
            op["responses"][str(status)] = {"description": str(status), **_content(shown)}
            if model is None and status < 400 and route.media != "application/json":
                op["responses"][str(status)]["content"] = {
                    route.media: {"schema": {"type": "string"}}
                }
        for status in _ERRORS.get(route.auth, ()):
            op["responses"].setdefault(str(status), {"description": "error", **_content(ErrorBody)})
        if not op["responses"]:
            op["responses"]["200"] = {"description": "OK"}
        paths.setdefault(route.path, {})[route.method.lower()] = op
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
                "terminalSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Signature",
                    "description": "HMAC-SHA256 over METHOD, path with query, X-Timestamp, "
                    "X-Nonce and sha256(body), with X-Terminal-Id",
                },
            },
        },
    }


def _is_request(model: type[BaseModel]) -> bool:
    return any(route.body is model for route in ROUTES)
