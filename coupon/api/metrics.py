"""Prometheus metrics, one registry per application (tests build many apps)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class CachedCounter(Counter):
    """A Counter whose labels() is a dict lookup once a label set has been seen: prometheus'
    own labels() checks, converts and locks on every call (issue 6: per request)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._children: dict[tuple[object, ...], Self] = {}

    def labels(self, *labelvalues: object, **labelkwargs: object) -> Self:
        if labelkwargs:
            return super().labels(*labelvalues, **labelkwargs)
        child = self._children.get(labelvalues)
        if child is None:
            child = self._children[labelvalues] = super().labels(*labelvalues)
        return child

    def remove(self, *labelvalues: Any) -> None:
        self._children.clear()
        super().remove(*labelvalues)

    def clear(self) -> None:
        self._children.clear()
        super().clear()


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "coupon_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "coupon_http_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        # (method, route, status) -> the two children one answered request counts in
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.outcomes = CachedCounter(
            "coupon_terminal_outcomes",
            "Terminal request outcomes (approved, declined reason)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "coupon_redemption_batch_size",
            "Redemptions committed together in one transaction (group commit)",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.stream_clients = Gauge(
            "coupon_stats_stream_clients",
            "Open /v1/stats/stream connections of this process",
            registry=self.registry,
        )
        self.stats_snapshots = Counter(
            "coupon_stats_snapshots",
            "Stats snapshots computed for the stream (once per change and watched tranche)",
            registry=self.registry,
        )

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency; the label children are looked up once
        per (method, route, status), not with labels() per request (issue 6)."""
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(route),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
