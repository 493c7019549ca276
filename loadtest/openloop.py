"""Open-loop sender: pre-signed requests at a fixed rate, latency from the intended send time.

Request i is due at start + i / rate whether or not earlier answers came back (no coordinated
omission): it goes out on an idle keep-alive connection, on a new one (up to max_conns), or
waits in a backlog, and its latency runs from when it was due, so a stall shows up in every
request it delays. The sender is asyncio with raw protocols: requests are pre-rendered bytes
and answers are parsed only for status, Content-Length and, on errors, the code, so it costs a
few per cent of a core at ~1,000 requests/s (no HMAC or JSON work at send time, unlike the
aiohttp client of loadtest/redeem.py). Percentiles come from an HDR histogram.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

CODE = re.compile(rb'"(?:code|reason)":"([^"]+)"')
CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *([0-9]+)")


def render(path: Path, host: str) -> list[bytes]:
    """The file's lines (loadtest/traffic.py) as raw HTTP/1.1 requests."""
    out = []
    with path.open("rb") as f:
        for line in f:
            method, target, term, ts, nonce, sig, body = line.rstrip(b"\n").split(b"\t", 6)
            head = (
                method + b" " + target + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
                b"X-Terminal-Id: " + term + b"\r\nX-Timestamp: " + ts + b"\r\n"
                b"X-Nonce: " + nonce + b"\r\nX-Signature: " + sig + b"\r\n"
            )
            if method == b"POST":
                head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
                out.append(head + b"\r\n" + body)
            else:
                out.append(head + b"\r\n")
    return out


@dataclass
class Stats:
    start: float
    warmup: float = 0.0
    hist: HdrHistogram = field(default_factory=lambda: HdrHistogram(10, 60_000_000, 3))
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    # per second of the run: answers, and their latencies (µs) for percentiles over time
    seconds: dict[int, list[int]] = field(default_factory=lambda: collections.defaultdict(list))

    def record(self, due: float, status: int, body: bytes) -> None:
        now = time.perf_counter()
        us = max(10, int((now - due) * 1e6))
        self.seconds[int(now - self.start)].append(us)
        if due < self.start + self.warmup:
            return  # the server's pools and caches fill up: shown in the timeline only
        self.hist.record_value(us)
        self.statuses[status] += 1
        if status >= 400:
            m = CODE.search(body)
            self.errors[f"{status}:{m.group(1).decode() if m else '?'}"] += 1


class Connection(asyncio.Protocol):
    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.due = 0.0
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, request: bytes, due: float) -> None:
        assert self.transport is not None
        self.due = due
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        m = CONTENT_LENGTH.search(self.buf, 0, end + 2)
        length = int(m.group(1)) if m else 0
        if len(self.buf) < end + 4 + length:
            return
        status = int(self.buf[9:12])
        body = self.buf[end + 4 : end + 4 + length]
        self.buf = self.buf[end + 4 + length :]
        self.sender.answered(self, status, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.sender.dropped(self)


class Sender:
    def __init__(self, host: str, port: int, max_conns: int, stats: Stats) -> None:
        self.host, self.port, self.max_conns, self.stats = host, port, max_conns, stats
        self.idle: collections.deque[Connection] = collections.deque()
        self.backlog: collections.deque[tuple[bytes, float]] = collections.deque()
        self.opening = 0
        self.conns = 0
        self.outstanding = 0
        self.socket_errors = 0

    async def open(self) -> None:
        self.opening += 1
        try:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(lambda: Connection(self), self.host, self.port)
        except OSError:
            self.socket_errors += 1
            return
        finally:
            self.opening -= 1
        self.conns += 1
        self.idle.append(conn)
        self.drain()

    def submit(self, request: bytes, due: float) -> None:
        self.outstanding += 1
        self.backlog.append((request, due))
        self.drain()
        if self.backlog and self.conns + self.opening < self.max_conns:
            asyncio.ensure_future(self.open())  # noqa: RUF006 -- a connection registers itself

    def drain(self) -> None:
        while self.backlog and self.idle:
            conn = self.idle.popleft()
            if conn.lost:
                continue
            request, due = self.backlog.popleft()
            conn.send(request, due)

    def answered(self, conn: Connection, status: int, body: bytes) -> None:
        self.outstanding -= 1
        self.stats.record(conn.due, status, body)
        self.idle.append(conn)
        self.drain()

    def dropped(self, conn: Connection) -> None:
        self.conns -= 1
        if conn.due and conn not in self.idle:
            self.outstanding -= 1
            self.socket_errors += 1


def schedule(rate: float, warmup: float, seconds: float) -> list[float]:
    """When each request is due, in seconds from the start: a linear ramp over the warm-up,
    then a steady `rate`."""
    dues: list[float] = []
    t = 0.0
    while t < warmup + seconds:
        dues.append(t)
        t += 1.0 / (rate * (0.1 + 0.9 * min(1.0, t / warmup)) if warmup else rate)
    return dues


async def run(
    requests: list[bytes],
    host: str,
    port: int,
    rate: float,
    seconds: float,
    warmup: float = 3.0,
    max_conns: int = 256,
) -> dict[str, Any]:
    """Send requests on a fixed schedule -- rising from a tenth of `rate` to `rate` over the
    first `warmup` seconds (connections and pools fill without a backlog forming), then `rate`/s
    for `seconds` -- and wait for the answers; the histogram holds those due after the warm-up.
    """
    dues = schedule(rate, warmup, seconds)
    n = min(len(requests), len(dues))
    stats = Stats(start=time.perf_counter(), warmup=warmup)
    sender = Sender(host, port, max_conns, stats)
    await asyncio.gather(*(sender.open() for _ in range(min(64, max_conns))))
    start = time.perf_counter()
    cpu0 = time.process_time()
    stats.start = start
    i = 0
    while i < n:
        now = time.perf_counter()
        while i < n and start + dues[i] <= now:
            sender.submit(requests[i], start + dues[i])
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, start + dues[i] - time.perf_counter()))
    sent_for = time.perf_counter() - start
    for _ in range(3000):  # up to 30 s for the last answers
        if sender.outstanding <= 0:
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    h = stats.hist
    timeline = []
    for sec in sorted(stats.seconds):
        lat = sorted(stats.seconds[sec])
        timeline.append(
            {
                "second": sec,
                "answers": len(lat),
                "p50_ms": lat[len(lat) // 2] / 1000,
                "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000,
            }
        )
    return {
        "started": start,
        "rate": rate,
        "warmup_s": warmup,
        "sent": n,
        "measured": int(h.get_total_count()),
        "unanswered": sender.outstanding,
        "sending_s": round(sent_for, 3),
        "per_s": round(sum(len(v) for v in stats.seconds.values()) / elapsed, 1),
        "connections": sender.conns,
        "client_cores": round(cpu / elapsed, 2),
        "socket_errors": sender.socket_errors,
        "latency_ms": {
            str(p): round(h.get_value_at_percentile(p) / 1000, 3) for p in (50, 90, 99, 99.9)
        }
        | {"max": round(h.get_max_value() / 1000, 3), "mean": round(h.get_mean_value() / 1000, 3)},
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "errors": dict(stats.errors.most_common()),
        "timeline": timeline,
    }
