"""create_app(settings, dsn): wiring only. Every AppKey is set here."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from coupon import db
from coupon.api import keys
from coupon.api.metrics import Metrics
from coupon.api.middleware import access_log, handle_errors
from coupon.api.routes import ROUTES
from coupon.config import Settings

# JSON bodies of terminals and operators are small; the CSV import streams past this limit.
MAX_JSON_BODY = 64 * 1024


def create_app(settings: Settings, dsn: str) -> web.Application:
    """The service: routes, middleware, and a connection pool opened on start-up."""
    app = web.Application(middlewares=[access_log, handle_errors], client_max_size=MAX_JSON_BODY)
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = Metrics()

    async def pool(app: web.Application) -> AsyncIterator[None]:
        app[keys.POOL] = await db.create_pool(dsn, settings)
        yield
        await app[keys.POOL].close()

    app.cleanup_ctx.append(pool)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler, name=route.handler.__name__)
    return app
