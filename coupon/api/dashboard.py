"""The operators' live dashboard: a static page (coupon/web/) over the SSE stream."""

from __future__ import annotations

from functools import cache
from importlib import resources

import orjson
from aiohttp import web

from coupon import errors
from coupon.provinces import iran_provinces, province_locations, province_shapes

# everything comes from this origin; scripts and styles only from files (no inline code)
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
# the only files served: a fixed list, so no request names anything else (no path traversal)
_ASSETS = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "favicon.svg": "image/svg+xml",
    "vendor/uPlot.iife.min.js": "text/javascript",
    "vendor/uPlot.min.css": "text/css",
    "vendor/uPlot.LICENSE": "text/plain",
}
# the router's pattern for an asset: one name, or one under vendor/
ASSET_PATTERN = "/dashboard/{name:(?:vendor/)?[A-Za-z0-9_.-]+}"


@cache
def _file(name: str) -> bytes:
    return resources.files("coupon").joinpath("web", *name.split("/")).read_bytes()


@cache
def _provinces() -> bytes:
    """Codes, names and map positions of the provinces (iso3166-2)."""
    locations = province_locations()
    return orjson.dumps(
        [
            {
                "code": p.code,
                "name_en": p.name_en,
                "name_fa": p.name_fa,
                "lat": locations[p.code][0],
                "lng": locations[p.code][1],
            }
            for p in iran_provinces()
        ]
    )


@cache
def _map() -> bytes:
    """The provinces' outlines as SVG paths and where their labels go."""
    (width, height), shapes = province_shapes()
    return orjson.dumps(
        {
            "width": width,
            "height": height,
            "shapes": [
                {"code": s.code, "path": s.path, "x": s.label[0], "y": s.label[1]} for s in shapes
            ],
        }
    )


async def root(request: web.Request) -> web.Response:
    """The service's front door is the dashboard."""
    raise web.HTTPFound("/dashboard")


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(
        body=_file("dashboard.html"), content_type="text/html", charset="utf-8", headers=_HEADERS
    )


async def dashboard_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name == "provinces.json":
        body, content_type = _provinces(), "application/json"
    elif name == "map.json":
        body, content_type = _map(), "application/json"
    elif name in _ASSETS:
        body, content_type = _file(name), _ASSETS[name]
    else:
        raise errors.NotFound("no such file")
    charset = None if content_type.startswith("image/") else "utf-8"
    return web.Response(body=body, content_type=content_type, charset=charset, headers=_HEADERS)
