"""Typed application keys: every piece of app-wide state lives on the Application."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from coupon import db, live
from coupon.api.clients import Clients, StreamSlots
from coupon.api.metrics import Metrics
from coupon.auth import TerminalSecrets
from coupon.config import Settings
from coupon.keyring import Keyring
from coupon.reads import Reads
from coupon.redemption import RedemptionBatcher
from coupon.signing import SealKeys

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", db.Pool)
# reads that may lag: a fresh standby's, else the primary's
READS = web.AppKey("reads", Reads)
METRICS = web.AppKey("metrics", Metrics)
SECRETS = web.AppKey("terminal_secrets", TerminalSecrets)
# the keys that encrypt terminal secrets in the database (a file outside it)
KEYRING = web.AppKey("keyring", Keyring)
CLIENTS = web.AppKey("clients", Clients)
# live-counter streams open in this process, in all and per token
STREAMS = web.AppKey("streams", StreamSlots)
# the ledger's signing key (outside the database) and the public keys verification trusts
SEAL_KEYS = web.AppKey("seal_keys", SealKeys)
# the live counters: stats publisher, listener and SSE fan-out of this process
LIVE = web.AppKey("live", live.Hub)
# group commit of this process's redemptions
BATCHER = web.AppKey("redemption_batcher", RedemptionBatcher)
# counter shards per province, as the database was initialised
SHARDS = web.AppKey("counter_shards", int)
# per request: the bearer token's hash (hex), once the guard has admitted it
TOKEN = web.RequestKey("token", str)
# /openapi.json, encoded once
OPENAPI = web.AppKey("openapi", bytes)
# per request: fields the handler adds to the request's log line
LOG = web.RequestKey("log", dict[str, object])
