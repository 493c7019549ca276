"""Live counters for operators and auditors: one snapshot, or the Server-Sent Events stream."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from coupon import counters, errors, live
from coupon.api import keys
from coupon.api.common import json_response
from coupon.api.guard import query_of
from coupon.models import StatsQuery, StreamQuery

# the browser waits this long before reconnecting a dropped stream
RECONNECT_MS = 2000
# a comment line this often keeps proxies from closing a quiet stream
HEARTBEAT_S = 15.0
# a client that does not take an event within this long is cut off
SEND_TIMEOUT_S = 30.0


async def get_stats(request: web.Request) -> web.Response:
    tranche_id = query_of(request, StatsQuery).tranche_id
    async with request.app[keys.READS].acquire() as conn:
        result = await counters.stats(conn, tranche_id)
    return json_response(result)


class EventStream(EventSourceResponse):
    """An SSE response that writes events encoded once for all of its clients. A client that
    stops reading is cut off by the kernel (TCP_USER_TIMEOUT = send_timeout, set by
    aiohttp-sse), which spares a timer per write."""

    async def send_frame(self, frame: bytes) -> None:
        await self.write(frame)


async def stream_stats(request: web.Request) -> web.StreamResponse:
    tranche_id = query_of(request, StreamQuery).tranche_id
    if keys.LIVE not in request.app:
        raise errors.ServiceUnavailable("live counters are off in this process")
    hub = request.app[keys.LIVE]
    slots, token = request.app[keys.STREAMS], request[keys.TOKEN]
    if not slots.take(token):
        raise errors.TooManyStreams()
    try:
        return await _stream(request, hub, tranche_id)
    finally:
        slots.give_back(token)


async def _stream(
    request: web.Request, hub: live.Hub, tranche_id: int | None
) -> web.StreamResponse:
    # errors (unknown tranche, database down) answer as JSON: the stream has not started yet
    subscription, snapshot = await hub.subscribe(tranche_id)
    gauge = request.app[keys.METRICS].stream_clients
    gauge.inc()
    response = EventStream(ping_interval=HEARTBEAT_S, send_timeout=SEND_TIMEOUT_S)
    ended: asyncio.Task[None] | None = None
    try:
        await response.prepare(request)
        # without handler cancellation a hung-up client shows only as a failed write: the
        # heartbeat's failure ends the subscription
        ended = asyncio.create_task(response.wait())
        ended.add_done_callback(lambda _task: subscription.close())
        await response.send_frame(b"retry: %d\r\n" % RECONNECT_MS + snapshot.frame)
        sent = snapshot.serial
        while (latest := await subscription.next()) is not None:
            if latest.serial > sent:
                await response.send_frame(latest.frame)
                sent = latest.serial
    except ConnectionResetError:
        pass  # the client went away, or stopped reading for send_timeout
    finally:
        hub.unsubscribe(subscription)
        gauge.dec()
        if ended is not None:
            response.stop_streaming()
            with contextlib.suppress(asyncio.CancelledError):
                await ended
    return response
