"""The route table: every endpoint once, with what /openapi.json says about it."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from coupon.api import admin, audit, dashboard, stats, system, terminal
from coupon.api.keys import Handler
from coupon.models import (
    Approved,
    Balance,
    Declined,
    Health,
    Household,
    ImportResponse,
    LedgerPage,
    Merchant,
    MerchantCreate,
    MerchantCreated,
    PendingOriginal,
    RedemptionRequest,
    ReversalRequest,
    Reversed,
    Settlement,
    Stats,
    StatusChange,
    Terminal,
    TerminalCreated,
    TrancheCreate,
    TrancheCreated,
    TrancheList,
    Verification,
)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    auth: str  # "none" | "terminal" | "operator" | "auditor" | "operator,auditor"
    body: type[BaseModel] | str | None = None  # a model, or a media type for raw bodies
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    tag: str = "system"
    media: str = "application/json"  # of the 2xx answer
    query: tuple[tuple[str, str], ...] = ()  # optional query parameters: (name, description)


_TRANCHE = ("tranche_id", "one tranche's counters; all tranches when absent")

ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/v1/households/{national_id}/balance",
        terminal.get_balance,
        "Eligibility and remaining credit of a household",
        "terminal",
        responses={200: Balance, 404: None},
        tag="terminal",
    ),
    Route(
        "POST",
        "/v1/redemptions",
        terminal.create_redemption,
        "Spend a household's credit (idempotent per terminal and request_id)",
        "terminal",
        body=RedemptionRequest,
        responses={201: Approved, 402: Declined, 409: None},
        tag="terminal",
    ),
    Route(
        "POST",
        "/v1/reversals",
        terminal.create_reversal,
        "Void this terminal's earlier redemption",
        "terminal",
        body=ReversalRequest,
        responses={201: Reversed, 202: PendingOriginal, 403: None, 409: None},
        tag="terminal",
    ),
    Route(
        "GET",
        "/v1/ledger",
        audit.get_ledger,
        "Ledger entries in seq order (filters, keyset pagination with after/next)",
        "auditor",
        responses={200: LedgerPage},
        tag="audit",
    ),
    Route(
        "GET",
        "/v1/ledger.csv",
        audit.get_ledger_csv,
        "The same entries as CSV, streamed",
        "auditor",
        tag="audit",
    ),
    Route(
        "GET",
        "/v1/ledger/verify",
        audit.verify_ledger,
        "Recompute the hash chain; ok false names the first bad seq",
        "auditor",
        responses={200: Verification},
        tag="audit",
    ),
    Route(
        "GET",
        "/v1/reports/settlement",
        audit.get_settlement,
        "Per-store settlement of one Asia/Tehran day (?date=YYYY-MM-DD)",
        "operator,auditor",
        responses={200: Settlement},
        tag="audit",
    ),
    Route(
        "GET",
        "/v1/stats",
        stats.get_stats,
        "Live counters per province",
        "operator,auditor",
        responses={200: Stats, 404: None},
        query=(_TRANCHE,),
        tag="counters",
    ),
    Route(
        "GET",
        "/v1/stats/stream",
        stats.stream_stats,
        "Live counters as Server-Sent Events: `event: stats` with the /v1/stats JSON on "
        "connect and within a second of every change; a heartbeat comment every 15 s. "
        "Also accepts ?access_token= (EventSource cannot send headers)",
        "operator,auditor",
        responses={200: None, 404: None},
        media="text/event-stream",
        query=(
            _TRANCHE,
            ("access_token", "the bearer token, for clients that cannot send headers"),
        ),
        tag="counters",
    ),
    Route(
        "GET",
        "/dashboard",
        dashboard.dashboard,
        "The operators' live dashboard (Persian and English; asks for a token)",
        "none",
        responses={200: None},
        media="text/html",
        tag="dashboard",
    ),
    Route(
        "GET",
        "/dashboard/{name}",
        dashboard.dashboard_asset,
        "The dashboard's script, style sheet and province map positions",
        "none",
        responses={200: None, 404: None},
        media="application/octet-stream",
        tag="dashboard",
    ),
    Route(
        "GET",
        "/healthz",
        system.healthz,
        "Liveness and database reachability",
        "none",
        responses={200: Health, 503: Health},
    ),
    Route("GET", "/metrics", system.metrics, "Prometheus metrics", "none"),
    Route("GET", "/openapi.json", system.openapi, "This document", "none"),
    Route(
        "POST",
        "/v1/admin/households/import",
        admin.import_households,
        "Upsert households from CSV (national_id,province,members,decile[,status])",
        "operator",
        body="text/csv",
        responses={200: ImportResponse},
        tag="operator",
    ),
    Route(
        "PATCH",
        "/v1/admin/households/{national_id}",
        admin.patch_household,
        "Suspend or reactivate a household",
        "operator",
        body=StatusChange,
        responses={200: Household},
        tag="operator",
    ),
    Route(
        "POST",
        "/v1/admin/tranches",
        admin.create_tranche,
        "Open a tranche and credit every eligible household",
        "operator",
        body=TrancheCreate,
        responses={201: TrancheCreated},
        tag="operator",
    ),
    Route(
        "GET",
        "/v1/admin/tranches",
        admin.list_tranches,
        "All tranches",
        "operator",
        responses={200: TrancheList},
        tag="operator",
    ),
    Route(
        "POST",
        "/v1/admin/merchants",
        admin.create_merchant,
        "Register a store",
        "operator",
        body=MerchantCreate,
        responses={201: MerchantCreated},
        tag="operator",
    ),
    Route(
        "PATCH",
        "/v1/admin/merchants/{id}",
        admin.patch_merchant,
        "Suspend or reactivate a store",
        "operator",
        body=StatusChange,
        responses={200: Merchant},
        tag="operator",
    ),
    Route(
        "POST",
        "/v1/admin/merchants/{id}/terminals",
        admin.create_terminal,
        "Register a POS terminal; its secret is shown only in this response",
        "operator",
        responses={201: TerminalCreated},
        tag="operator",
    ),
    Route(
        "PATCH",
        "/v1/admin/terminals/{id}",
        admin.patch_terminal,
        "Suspend or reactivate a POS terminal",
        "operator",
        body=StatusChange,
        responses={200: Terminal},
        tag="operator",
    ),
)
