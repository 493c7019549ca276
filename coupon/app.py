"""create_app(settings, dsn): wiring only. Every AppKey is set here."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from coupon import audit, db, live, logs
from coupon.api import keys
from coupon.api.metrics import Metrics
from coupon.api.middleware import access_log, handle_errors
from coupon.api.routes import ROUTES
from coupon.auth import TerminalSecrets
from coupon.config import Settings

log = structlog.get_logger(__name__)

# JSON bodies of terminals and operators are small; the CSV import streams past this limit.
MAX_JSON_BODY = 64 * 1024


async def prune_nonces(pool: db.Pool, clock_skew: int, every: float = 60.0) -> None:
    """Forget nonces the clock window already refuses; keep going through database outages."""
    while True:
        await asyncio.sleep(every)
        try:
            async with pool.acquire() as conn:
                await conn.execute(db.q("prune_nonces"), 2 * clock_skew)
        except db.UNAVAILABLE as exc:
            log.warning("nonce_prune_failed", error=type(exc).__name__)
        except Exception:
            # a background task that dies stays dead: log the bug, try again next round
            log.exception("nonce_prune_crashed")


async def seal_ledger(pool: db.Pool, every: float) -> None:
    """Seal new ledger rows behind the writers, forever (one process at a time does the work)."""
    while True:
        await asyncio.sleep(every)
        try:
            async with pool.acquire() as conn:
                sealed = await audit.seal(conn)
            if sealed:
                log.debug("ledger_sealed", rows=sealed)
        except db.UNAVAILABLE as exc:
            log.warning("ledger_seal_failed", error=type(exc).__name__)
        except Exception:
            log.exception("ledger_seal_crashed")


def create_app(settings: Settings, dsn: str) -> web.Application:
    """The service: routes, middleware, and a connection pool opened on start-up."""
    app = web.Application(middlewares=[access_log, handle_errors], client_max_size=MAX_JSON_BODY)
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = Metrics()

    app[keys.SECRETS] = TerminalSecrets()

    async def pool(app: web.Application) -> AsyncIterator[None]:
        app[keys.POOL] = await db.create_pool(dsn, settings)
        async with app[keys.POOL].acquire() as conn:
            app[keys.SHARDS] = await db.counter_shards(conn)
        yield
        # runs after in-flight requests have finished (aiohttp's shutdown order)
        await db.close_pool(app[keys.POOL], settings.db_timeout)

    async def nonce_pruner(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(prune_nonces(app[keys.POOL], settings.clock_skew))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def sealer(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(seal_ledger(app[keys.POOL], settings.seal_interval))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

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
        if settings.log_flush_interval <= 0:
            yield
            return
        task = asyncio.create_task(
            logs.flush_periodically(sys.stdout.buffer, settings.log_flush_interval)
        )
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sys.stdout.buffer.flush()  # also when the task was cancelled before it ever ran

    async def close_streams(app: web.Application) -> None:
        # SSE streams never end by themselves: end them so that shutdown does not wait on them
        if keys.LIVE in app:
            app[keys.LIVE].close_streams()

    app.cleanup_ctx.extend([log_flusher, pool, nonce_pruner, sealer])
    if settings.live_counters:
        app.cleanup_ctx.append(live_counters)
    app.on_shutdown.append(close_streams)
    for route in ROUTES:
        app.router.add_route(
            route.method, route.match or route.path, route.handler, name=route.handler.__name__
        )
    return app
