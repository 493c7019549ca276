"""Live counters for the SSE stream, identical in every server process.

Nothing is added to the redemption path: NOTIFY takes a database-wide lock held through the
committing transaction's WAL flush, so a NOTIFY per redemption would serialise every durable
commit. Instead one *publisher* per database (whichever process holds a session advisory lock
on its own connection; the others retry and take over when it goes) polls a cheap change
detector every 100 ms and, when the counters changed, sends one
`NOTIFY coupon_stats, '<version>'` (at most one per 250 ms under steady load). Every
process keeps one dedicated LISTEN connection (a pooled one would be UNLISTENed on release); on
a notification it recomputes the stats once per tranche being watched and hands the encoded
snapshot to all of its SSE clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import structlog

from coupon import counters, db
from coupon.models import Stats

log = structlog.get_logger(__name__)

CHANNEL = "coupon_stats"
# How long a ledger seq that was drawn but not visible is awaited. A redemption commits right
# after it draws its seq (one statement, cancelled by the client after db_timeout), so a seq
# still missing after this long was rolled back or lost in a crash and will never appear.
AWAIT_SEQ_FOR = 300.0
# At most this many missing seqs are awaited below one new seq: transactions in flight at once
# are bounded by the connection pools; a larger jump is a sequence reset, not a gap.
MAX_AWAITED = 1000
# A publisher that takes over looks this far back for transactions still committing.
LOOKBACK = 10_000
# Ledger rows read per poll; a longer backlog is read over the next polls.
BATCH = 10_000

# Each stream/listener error is worth a log line, never a crash of the loop.
_RETRYABLE: tuple[type[BaseException], ...] = (*db.UNAVAILABLE, asyncpg.PostgresError)


class LedgerWatch:
    """The publisher's change detector over the append-only ledger and the tranche list.

    `max(seq)` alone misses a change: transactions draw seqs in one order and commit in
    another, so a row with a lower seq can become visible after a higher one was seen. The
    watch therefore also awaits every seq it skipped until it is committed (or given up).
    """

    def __init__(self, head: int) -> None:
        self.head = head
        self.awaited: dict[int, float] = {}
        self.tranches: int | None = None

    def observe(self, new_seqs: list[int], committed: list[int], tranches: int, now: float) -> bool:
        """Take one poll's answer; True when what the counters say may have changed."""
        changed = bool(new_seqs) or bool(committed) or tranches != self.tranches
        for seq in committed:
            self.awaited.pop(seq, None)
        expected = self.head + 1
        for seq in new_seqs:  # ascending
            for missing in range(max(expected, seq - MAX_AWAITED), seq):
                self.awaited[missing] = now
            expected = seq + 1
        if new_seqs:
            self.head = max(self.head, new_seqs[-1])
        self.awaited = {s: t for s, t in self.awaited.items() if now - t < AWAIT_SEQ_FOR}
        self.tranches = tranches
        return changed


def sse_frame(version: int, data: bytes) -> bytes:
    """One `event: stats` message of the stream (the JSON has no line breaks)."""
    return b"id: %d\r\nevent: stats\r\ndata: %s\r\n\r\n" % (version, data)


@dataclass(frozen=True)
class Snapshot:
    """The stats for one tranche (or all), encoded once for every client that watches them."""

    serial: int  # process-local, in the order the computations started: newer is larger
    version: int  # the last version announced when it was computed: the event id
    stats: Stats
    frame: bytes
    numbers: bytes  # the JSON without as_of: equal bytes, nothing to tell the client


@dataclass(eq=False)
class Subscription:
    """One SSE client's mailbox: only the newest snapshot is kept, so a slow client skips
    the ones it had no time for instead of queueing them, and one with the same numbers as
    the last it was given is dropped (another tranche changed, or nothing did)."""

    tranche_id: int | None
    _latest: Snapshot | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    def start(self, snapshot: Snapshot) -> None:
        """The snapshot the client is sent on connect."""
        if self._latest is None or snapshot.serial > self._latest.serial:
            self._latest = snapshot

    def offer(self, snapshot: Snapshot) -> None:
        latest = self._latest
        if latest is not None and (
            snapshot.serial <= latest.serial or snapshot.numbers == latest.numbers
        ):
            return
        self._latest = snapshot
        self._changed.set()

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    async def next(self) -> Snapshot | None:
        """The newest snapshot not yet taken, or None once the subscription is closed."""
        await self._changed.wait()
        self._changed.clear()
        if self.closed:
            return None
        return self._latest


@dataclass
class Hub:
    """This process's side of the live counters: the publisher (when it wins the lock), the
    listener, and the fan-out to SSE clients."""

    pool: db.Pool
    dsn: str
    poll_interval: float = 0.1
    min_interval: float = 0.25
    takeover_interval: float = 1.0
    probe_interval: float = 5.0
    max_backoff: float = 5.0
    on_snapshot: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self._subscribers: dict[int | None, set[Subscription]] = {}
        self._cache: dict[int | None, Snapshot] = {}
        self._computing: dict[int | None, asyncio.Lock] = {}
        self._serials = itertools.count(1)
        self._version = 0
        self._listening = False
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.publishing = False

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._publish_forever(), name="stats-publisher"),
            asyncio.create_task(self._listen_forever(), name="stats-listener"),
            asyncio.create_task(self._refresh_forever(), name="stats-refresher"),
        ]

    def close_streams(self) -> None:
        """End every SSE stream (server shutdown: handlers return, the server stops promptly)."""
        for subscribers in self._subscribers.values():
            for subscription in subscribers:
                subscription.close()

    async def stop(self) -> None:
        self.close_streams()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # -- subscribers -----------------------------------------------------------------------

    @property
    def clients(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    async def subscribe(self, tranche_id: int | None) -> tuple[Subscription, Snapshot]:
        """Register a client and give it the current snapshot (TrancheNotFound for an unknown
        tranche). Registered first, so no change between the two is missed."""
        subscription = Subscription(tranche_id)
        self._subscribers.setdefault(tranche_id, set()).add(subscription)
        try:
            snapshot = await self.current(tranche_id)
        except BaseException:
            self.unsubscribe(subscription)
            raise
        subscription.start(snapshot)
        return subscription, snapshot

    def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.tranche_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.tranche_id]
                self._cache.pop(subscription.tranche_id, None)
                # unknown tranche ids come and go with their 404s: keep no lock for them
                self._computing.pop(subscription.tranche_id, None)

    async def current(self, tranche_id: int | None) -> Snapshot:
        """The newest snapshot: cached while the listener would hear of any change, otherwise
        computed (once, however many clients ask at the same moment)."""
        lock = self._computing.setdefault(tranche_id, asyncio.Lock())
        async with lock:
            cached = self._cache.get(tranche_id)
            if cached is not None and self._listening and not self._dirty.is_set():
                return cached
            snapshot = await self._compute(tranche_id)
            self._remember(snapshot)
            return snapshot

    async def _compute(self, tranche_id: int | None) -> Snapshot:
        serial = next(self._serials)
        version = self._version
        async with self.pool.acquire() as conn:
            stats = await counters.stats(conn, tranche_id)
        payload = stats.model_dump(mode="json")
        data = orjson.dumps(payload)
        numbers = orjson.dumps({k: v for k, v in payload.items() if k != "as_of"})
        if self.on_snapshot is not None:
            self.on_snapshot()
        return Snapshot(serial, version, stats, sse_frame(version, data), numbers)

    def _remember(self, snapshot: Snapshot) -> None:
        key = snapshot.stats.tranche_id
        cached = self._cache.get(key)
        if key in self._subscribers and (cached is None or snapshot.serial > cached.serial):
            self._cache[key] = snapshot

    # -- fan-out ---------------------------------------------------------------------------

    def _on_notification(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        try:
            version = int(str(payload))
        except ValueError:
            log.warning("stats_notification_ignored", payload=str(payload)[:64])
            return
        self._version = max(self._version, version)
        self._dirty.set()

    async def _refresh_forever(self) -> None:
        """On each change: recompute once per watched tranche, offer it to its clients."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._refresh(list(self._subscribers))
            except _RETRYABLE as exc:
                log.warning("stats_refresh_failed", error=type(exc).__name__)
                await asyncio.sleep(self.poll_interval)
                self._dirty.set()
            except Exception:
                # a bug must not silence every stream of the process for good
                log.exception("stats_refresh_crashed")
                await asyncio.sleep(1.0)

    async def _refresh(self, keys: Iterable[int | None]) -> None:
        for key in keys:
            if key not in self._subscribers:
                continue
            lock = self._computing.setdefault(key, asyncio.Lock())
            async with lock:
                snapshot = await self._compute(key)
            self._remember(snapshot)
            for subscription in self._subscribers.get(key, ()):
                subscription.offer(snapshot)

    # -- the listener ----------------------------------------------------------------------

    async def _listen_forever(self) -> None:
        backoff = 0.1
        while True:
            conn: asyncpg.Connection[asyncpg.Record] | None = None
            try:
                conn = await self._connect("coupon-stats-listener")
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._on_notification)
                self._version = max(self._version, await conn.fetchval(db.q("stats_version")))
                self._listening = True
                # anything may have changed while nobody listened
                self._dirty.set()
                backoff = 0.1
                log.info("stats_listener_connected", pid=conn.get_server_pid())
                while not lost.is_set():
                    # a half-open TCP connection never says it closed: ask it now and then
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), timeout=self.probe_interval)
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=self.probe_interval)
                log.warning("stats_listener_lost")
            except _RETRYABLE as exc:
                log.warning("stats_listener_failed", error=type(exc).__name__)
            except Exception:
                log.exception("stats_listener_crashed")
            finally:
                self._listening = False
                self._cache.clear()
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    # -- the publisher ---------------------------------------------------------------------

    async def _publish_forever(self) -> None:
        backoff = 0.1
        while True:
            conn: asyncpg.Connection[asyncpg.Record] | None = None
            try:
                conn = await self._connect("coupon-stats-publisher")
                while not await conn.fetchval(db.q("try_stats_publisher_lock")):
                    backoff = 0.1
                    await asyncio.sleep(self.takeover_interval)
                self.publishing = True
                log.info("stats_publisher_elected", pid=conn.get_server_pid())
                await self._publish(conn)
            except _RETRYABLE as exc:
                log.warning("stats_publisher_failed", error=type(exc).__name__)
            except Exception:
                log.exception("stats_publisher_crashed")
            finally:
                self.publishing = False
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _publish(self, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        head = await conn.fetchval(db.q("ledger_head"))
        watch = LedgerWatch(max(head - LOOKBACK, 0))
        while True:
            row = await conn.fetchrow(
                db.q("ledger_changes"),
                watch.head,
                list(watch.awaited),
                BATCH,
                timeout=self.probe_interval,
            )
            assert row is not None
            if watch.observe(row["new_seqs"], row["committed"], row["tranches"], time.monotonic()):
                await conn.fetchval(db.q("publish_stats_version"), CHANNEL)
                # each announcement costs every process a computation and every client an
                # event: under steady load, announce at most every min_interval
                await asyncio.sleep(max(self.poll_interval, self.min_interval))
            else:
                await asyncio.sleep(self.poll_interval)

    async def _connect(self, name: str) -> asyncpg.Connection[asyncpg.Record]:
        conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(
            self.dsn,
            timeout=self.probe_interval,
            server_settings={"application_name": name, "timezone": "UTC"},
        )
        return conn
