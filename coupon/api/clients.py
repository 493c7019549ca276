"""Who is asking: the client's address (a trusted proxy's X-Forwarded-For only when that proxy
is configured), whether it may read /metrics, and how many live-counter streams it holds."""

from __future__ import annotations

import hmac
import ipaddress
from collections import Counter
from collections.abc import Iterable

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(spec: str) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDR networks ('' is none)."""
    parts = (part.strip() for part in spec.split(","))
    return tuple(ipaddress.ip_network(part, strict=False) for part in parts if part)


def _within(address: str, nets: Iterable[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in nets)


class Clients:
    def __init__(
        self, trusted_proxies: str, metrics_networks: str, metrics_token: str | None
    ) -> None:
        self._proxies = networks(trusted_proxies)
        self._metrics = networks(metrics_networks)
        self._metrics_token = metrics_token.encode() if metrics_token else None

    def address(self, request: web.Request) -> str:
        """The client's address: the peer's, or when the peer is a trusted proxy, the nearest
        address its X-Forwarded-For names that is not itself a trusted proxy."""
        peer = request.remote or ""
        if not self._proxies or not _within(peer, self._proxies):
            return peer
        for hop in reversed(request.headers.get("X-Forwarded-For", "").split(",")):
            try:
                ip = ipaddress.ip_address(hop.strip())
            except ValueError:
                return peer  # a hop no proxy of ours wrote: trust nothing before it
            if not any(ip in net for net in self._proxies):
                return str(ip)
        return peer

    def is_trusted_proxy(self, address: str) -> bool:
        return bool(self._proxies) and _within(address, self._proxies)

    def may_scrape(self, request: web.Request, address: str) -> bool:
        """/metrics: from a configured network, or with the metrics token."""
        if _within(address, self._metrics):
            return True
        if self._metrics_token is None:
            return False
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        presented = token.strip().encode("utf-8", "surrogateescape")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented, self._metrics_token)


class StreamSlots:
    """Live-counter streams open in this process: at most `total`, and `per_token` per bearer
    token (one leaked or greedy token cannot hold every slot)."""

    def __init__(self, total: int, per_token: int) -> None:
        self._total, self._per_token = total, per_token
        self._open: Counter[str] = Counter()

    def take(self, token: str) -> bool:
        if self._open.total() >= self._total or self._open[token] >= self._per_token:
            return False
        self._open[token] += 1
        return True

    def give_back(self, token: str) -> None:
        self._open[token] -= 1
        if self._open[token] <= 0:
            del self._open[token]
