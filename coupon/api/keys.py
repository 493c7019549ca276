"""Typed application keys: every piece of app-wide state lives on the Application."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from coupon import db
from coupon.api.metrics import Metrics
from coupon.config import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", db.Pool)
METRICS = web.AppKey("metrics", Metrics)
# per request: fields the handler adds to the request's log line
LOG = web.RequestKey("log", dict[str, object])
