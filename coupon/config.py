"""Settings, read once from the environment by the CLI and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the service can be told through its environment."""

    model_config = SettingsConfigDict(env_prefix="COUPON_", extra="ignore")

    # DATABASE_URL has no prefix: the SPEC fixes its name.
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    # a standby (or several: a multi-host DSN) for reads that may lag: auditors' ledger pages
    # and exports, verification, settlement and dashboard snapshots (coupon/reads.py)
    database_read_url: str | None = Field(default=None, validation_alias="DATABASE_READ_URL")
    # seconds a read served by a standby may be behind the primary at most; a standby further
    # behind (or unreachable) leaves the read to the primary
    read_max_lag: float = 2.0
    data_dir: Path = Path(".coupon")
    host: str = "127.0.0.1"
    port: int = 8080
    # connections per process. The pool is opened whole before the first request (min = max
    # unless set): a connection opened under load makes its first requests slow (log-in,
    # codecs, PL/pgSQL compiling), just when requests are already waiting
    pool_min_size: int | None = None
    pool_max_size: int = 16
    # seconds a request waits for a pool connection, a new connection, or one statement before
    # it answers 503 (a POS retries the same request; replays are idempotent)
    db_timeout: float = 5.0
    # group commit: redemptions per transaction at most, and how many such
    # transactions one process keeps at the database at once (1 = no batching at all)
    batch_max_size: int = 64
    batch_connections: int = 1
    # seconds the requests in flight get to finish once a stop is asked for
    shutdown_timeout: float = 30.0
    # seconds a terminal's clock may be off (SPEC: 300)
    clock_skew: int = 300
    # seconds after its capture that a purchase approved offline may still be forwarded and
    # posted (later: declined `late`, the store's loss)
    offline_max_delay: int = Field(default=72 * 3600, gt=0)
    # counter shards per province; more shards, less lock contention between writers
    counter_shards: int = 16
    # seconds between sealing runs (SPEC: rows sealed within 2 s of commit)
    seal_interval: float = 1.0
    # the live-counters publisher and LISTEN connection (two extra connections per process);
    # off, /v1/stats/stream answers 503 in this process
    live_counters: bool = True
    log_level: str = "info"
    # where JSON log lines go instead of stdout ("-": stdout); unset, `coupon demo` and a
    # `coupon serve` on a terminal write <data_dir>/serve.log, so that the terminal stays readable
    log_file: Path | None = None
    # seconds request log lines may wait in the stdout buffer (0: write and flush each line)
    log_flush_interval: float = 0.0
    # `coupon serve` on uvloop (less CPU a request, BENCHMARKS.md); false: asyncio's own
    # event loop
    uvloop: bool = True
    # live counters: how often the publisher looks for changes, and the least time between two
    # announcements (under load, events come at most this often; a dashboard needs no more)
    stats_poll_interval: float = 0.1
    stats_min_interval: float = 0.25
    # connections, per server process: seconds from connecting to a complete request head;
    # seconds a kept-alive connection may stay idle; seconds a request body may pause; how many
    # connections in all and from one address (a trusted proxy is not capped: cap at the proxy)
    header_timeout: float = 10.0
    idle_timeout: float = 15.0
    body_timeout: float = 30.0
    max_connections: int = 900
    max_connections_per_client: int = 256
    # live-counter streams (SSE), per server process: in all, and per bearer token
    max_streams: int = 1000
    max_streams_per_token: int = 32
    # the proxies whose X-Forwarded-For names the client (comma-separated addresses or CIDR
    # networks); empty: the peer is the client and the header is ignored
    trusted_proxies: str = ""
    # who may read /metrics: these networks, or anyone presenting this bearer token
    metrics_networks: str = "127.0.0.0/8,::1"
    metrics_token: str | None = None
    # the Ed25519 key that signs the ledger's sealed heads (PEM; made on first start when
    # missing), default <data_dir>/ledger-seal.key; and the public keys of retired signing keys
    # verification still trusts (comma-separated: 64 hex digits or PEM file paths)
    seal_key_file: Path | None = None
    seal_trusted_keys: str = ""
    # the keys that encrypt the terminals' HMAC secrets in the database (coupon/keyring.py;
    # made on first start when missing), default <data_dir>/terminal-secrets.keys
    kek_file: Path | None = None
    # test clusters only: the embedded PostgreSQL without fsync
    embedded_durable: bool = True

    @property
    def seal_key_path(self) -> Path:
        return self.seal_key_file or self.data_dir / "ledger-seal.key"

    @property
    def kek_path(self) -> Path:
        return self.kek_file or self.data_dir / "terminal-secrets.keys"
