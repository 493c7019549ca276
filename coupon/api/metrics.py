"""Prometheus metrics, one registry per application (tests build many apps)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        # label values -> child, per metric: prometheus' labels() checks, converts and locks on
        # every call; on the request path a dict lookup does
        self._children: dict[tuple[object, ...], Any] = {}
        self.outcomes = Counter(
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
        self.reads = Counter(
            "coupon_reads",
            "Reads that may lag (DATABASE_READ_URL), by the server that answered them",
            ["server"],
            registry=self.registry,
        )

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """metric.labels(*labels), looked up once per label set."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        self.child(self.requests, method, route, str(status)).inc()
        self.child(self.latency, route).observe(seconds)

    def read(self, server: str) -> None:
        """Count one read that may lag, by where it went (primary or standby)."""
        self.child(self.reads, server).inc()

    def outcome(self, kind: str, outcome: str) -> None:
        """Count one terminal request's outcome."""
        self.child(self.outcomes, kind, outcome).inc()
