"""Reads that may lag the primary a little -- auditors' ledger pages and exports, verification,
settlement, dashboard snapshots -- go to a standby (DATABASE_READ_URL) while it is fresh enough,
and to the primary otherwise.

Fresh enough is measured, not assumed: every MARK_INTERVAL the primary's WAL position is noted
with the time. A standby connection that has replayed past a mark holds every transaction the
primary had committed at that mark's time, so its staleness is at most the time since the newest
mark it has passed. A read takes the standby only when that is within COUPON_READ_MAX_LAG;
a standby that lags, stops replaying or cannot be reached costs nothing but the primary's
time, and a primary that cannot be marked (failing over) ages the marks until reads follow it."""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

import structlog

from coupon import db

log = structlog.get_logger(__name__)

# seconds between two marks of the primary's WAL position (each a one-row query)
MARK_INTERVAL = 0.2
# seconds a read waits for a standby connection before it asks the primary instead
STANDBY_PATIENCE = 1.0

Server = Literal["primary", "standby"]


@dataclass(frozen=True, slots=True)
class Served:
    """Where the last read went, and how far behind the primary it was (seconds, at most)."""

    server: Server
    lag: float | None


class Reads:
    """The read router of one process. Without a standby pool every read is the primary's."""

    def __init__(
        self,
        primary: db.Pool,
        standby: db.Pool | None,
        max_lag: float,
        on_read: Callable[[Server], object] | None = None,
    ) -> None:
        self._primary = primary
        self._standby = standby
        self.max_lag = max_lag
        self._on_read = on_read
        # (monotonic time, WAL position) of the primary, oldest first
        self._marks: deque[tuple[float, int]] = deque()
        self.last: Served | None = None

    @property
    def has_standby(self) -> bool:
        return self._standby is not None

    async def mark(self) -> None:
        """Note the primary's WAL position now (run every MARK_INTERVAL)."""
        async with self._primary.acquire() as conn:
            position = await conn.fetchval(db.q("wal_position"))
        now = time.monotonic()
        self._marks.append((now, int(position)))
        horizon = now - self.max_lag - 1.0
        while len(self._marks) > 1 and self._marks[1][0] < horizon:
            self._marks.popleft()

    def lag_of(self, replayed: int, now: float) -> float | None:
        """Seconds a standby that replayed up to `replayed` may be behind; None: unknown."""
        fresh_as_of = None
        for at, position in self._marks:
            if position > replayed:
                break
            fresh_as_of = at
        return None if fresh_as_of is None else now - fresh_as_of

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[db.Connection]:
        async with contextlib.AsyncExitStack() as stack:
            found = await self._fresh_standby(stack)
            if found is None:
                conn = await stack.enter_async_context(self._primary.acquire())
                served = Served("primary", 0.0)
            else:
                conn, served = found
            self.last = served
            if self._on_read is not None:
                self._on_read(served.server)
            yield conn

    async def _fresh_standby(
        self, stack: contextlib.AsyncExitStack
    ) -> tuple[db.Connection, Served] | None:
        """A standby connection within max_lag of the primary (held by stack), or None."""
        if self._standby is None:
            return None
        held = contextlib.AsyncExitStack()
        try:
            conn = await held.enter_async_context(self._standby.acquire(within=STANDBY_PATIENCE))
            row = await conn.fetchrow(db.q("replay_position"), timeout=STANDBY_PATIENCE)
        except db.UNAVAILABLE as exc:
            await _quietly(held)
            log.warning("standby_unavailable", error=type(exc).__name__)
            return None
        assert row is not None
        # a promoted standby (or a primary the DSN allowed) is as fresh as it gets
        lag = 0.0 if not row["standby"] else self.lag_of(row["replayed"], time.monotonic())
        if lag is None or lag > self.max_lag:
            await _quietly(held)
            return None
        stack.push_async_exit(held)
        return conn, Served("standby", lag)


async def _quietly(stack: contextlib.AsyncExitStack) -> None:
    with contextlib.suppress(*db.UNAVAILABLE):
        await stack.aclose()
