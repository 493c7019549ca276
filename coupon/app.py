"""create_app(settings, dsn): wiring only. Every AppKey is set here."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import orjson
import structlog
from aiohttp import web

from coupon import audit, db, live, logs, merchants, reads
from coupon.api import keys, openapi, protocol
from coupon.api.clients import Clients, StreamSlots
from coupon.api.guard import guard
from coupon.api.metrics import Metrics
from coupon.api.middleware import serve
from coupon.api.routes import ROUTES
from coupon.auth import TerminalSecrets
from coupon.config import Settings
from coupon.keyring import Keyring
from coupon.redemption import RedemptionBatcher
from coupon.signing import SealKeys

log = structlog.get_logger(__name__)

# JSON bodies of terminals and operators are small; the CSV import streams past this limit.
MAX_JSON_BODY = 64 * 1024


async def every(period: float, name: str, work: Callable[[], Awaitable[object]]) -> None:
    """Run work every `period` seconds, forever: a database outage or a bug costs one round,
    never the loop (a background task that dies stays dead)."""
    while True:
        await asyncio.sleep(period)
        try:
            await work()
        except db.UNAVAILABLE as exc:
            log.warning(f"{name}_failed", error=type(exc).__name__)
        except Exception:
            log.exception(f"{name}_crashed")


def background(
    start: Callable[[web.Application], Coroutine[Any, Any, object]],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that runs start(app) as a task while the app lives."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(start(app))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = protocol.SERVER
    # answers carry national ids and balances: no cache keeps them unless a handler says so
    response.headers.setdefault("Cache-Control", "no-store")


def create_app(settings: Settings, dsn: str) -> web.Application:
    """The service: routes, middleware, and a connection pool opened on start-up."""
    clients = Clients(settings.trusted_proxies, settings.metrics_networks, settings.metrics_token)
    limits = protocol.Limits(
        settings.header_timeout,
        settings.max_connections,
        settings.max_connections_per_client,
        exempt=clients.is_trusted_proxy,
    )
    app = web.Application(
        middlewares=[serve],
        client_max_size=MAX_JSON_BODY,
        # every server of this app (AppRunner's, gunicorn's worker's, the tests') gets these
        handler_args={"keepalive_timeout": settings.idle_timeout, "limits": limits},
    )
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = Metrics()

    keyring = Keyring.from_settings(settings)
    app[keys.KEYRING] = keyring
    app[keys.SECRETS] = TerminalSecrets(keyring)
    app[keys.CLIENTS] = clients
    app[keys.STREAMS] = StreamSlots(settings.max_streams, settings.max_streams_per_token)
    app[keys.SEAL_KEYS] = SealKeys.from_settings(settings)
    app[keys.OPENAPI] = orjson.dumps(openapi.document())
    protocol.install()
    app.on_response_prepare.append(_headers)

    async def pool(app: web.Application) -> AsyncIterator[None]:
        app[keys.POOL] = await db.create_pool(dsn, settings)
        read_url = settings.database_read_url
        standby = None if read_url is None else await db.create_read_pool(read_url, settings)
        app[keys.READS] = reads.Reads(
            app[keys.POOL], standby, settings.read_max_lag, on_read=app[keys.METRICS].read
        )
        async with app[keys.POOL].acquire() as conn:
            app[keys.SHARDS] = await db.counter_shards(conn)
            # secrets older versions stored in plain text: encrypted before the first request
            await merchants.encrypt_plain_secrets(conn, keyring)
            await app[keys.SECRETS].forget_if_changed(conn)
        app[keys.BATCHER] = RedemptionBatcher(
            app[keys.POOL],
            app[keys.SHARDS],
            max_size=settings.batch_max_size,
            connections=settings.batch_connections,
            on_batch=app[keys.METRICS].batch_size.observe,
        )
        yield
        # runs after in-flight requests have finished (aiohttp's shutdown order)
        await app[keys.BATCHER].close()
        if standby is not None:
            await db.close_pool(standby, settings.db_timeout)
        await db.close_pool(app[keys.POOL], settings.db_timeout)

    async def prune_nonces() -> None:
        # forget nonces the clock window already refuses
        async with app[keys.POOL].acquire() as conn:
            await conn.execute(db.q("prune_nonces"), 2 * settings.clock_skew)

    async def seal_ledger() -> None:
        # seal new ledger rows behind the writers (one process at a time does the work)
        async with app[keys.POOL].acquire() as conn:
            await audit.seal(conn, app[keys.SEAL_KEYS])

    async def watch_terminal_keys() -> None:
        async with app[keys.POOL].acquire() as conn:
            await app[keys.SECRETS].forget_if_changed(conn)

    # a secret made or rotated in another process holds here within a second
    key_watch = background(lambda app: every(0.5, "terminal_keys", watch_terminal_keys))
    nonce_pruner = background(lambda app: every(60.0, "nonce_prune", prune_nonces))
    sealer = background(lambda app: every(settings.seal_interval, "ledger_seal", seal_ledger))

    async def live_counters(app: web.Application) -> AsyncIterator[None]:
        metrics = app[keys.METRICS]
        hub = live.Hub(
            app[keys.POOL],
            dsn,
            poll_interval=settings.stats_poll_interval,
            min_interval=settings.stats_min_interval,
            on_snapshot=metrics.stats_snapshots.inc,
        )
        app[keys.LIVE] = hub
        hub.start()
        yield
        await hub.stop()

    async def log_flusher(app: web.Application) -> AsyncIterator[None]:
        # request lines may wait in stdout's buffer (COUPON_LOG_FLUSH_INTERVAL): none is lost
        flushing = background(
            lambda app: logs.flush_periodically(sys.stdout.buffer, settings.log_flush_interval)
        )
        async for _ in flushing(app):
            yield
        sys.stdout.buffer.flush()

    async def close_streams(app: web.Application) -> None:
        # SSE streams never end by themselves: end them so that shutdown does not wait on them
        if keys.LIVE in app:
            app[keys.LIVE].close_streams()

    if settings.log_flush_interval > 0:
        app.cleanup_ctx.append(log_flusher)
    app.cleanup_ctx.extend([pool, key_watch, nonce_pruner, sealer])
    if settings.database_read_url is not None:
        # the primary's WAL position, which standbys' freshness is measured against
        app.cleanup_ctx.append(
            background(lambda app: every(reads.MARK_INTERVAL, "read_mark", app[keys.READS].mark))
        )
    if settings.live_counters:
        app.cleanup_ctx.append(live_counters)
    app.on_shutdown.append(close_streams)
    for route in ROUTES:
        app.router.add_route(
            route.method, route.match or route.path, guard(route), name=route.handler.__name__
        )
    return app
