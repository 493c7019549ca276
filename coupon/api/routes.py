"""The route table: every endpoint once, with what /openapi.json says about it."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from coupon.api import (
    admin,
    audit,
    dashboard,
    insights,
    inspection,
    offline,
    stats,
    system,
    terminal,
)
from coupon.api.keys import Handler
from coupon.models import (
    Approved,
    Balance,
    Declined,
    Health,
    Household,
    ImportQuery,
    ImportResponse,
    LedgerFilters,
    LedgerKeys,
    LedgerPage,
    LedgerQuery,
    Merchant,
    MerchantCreate,
    MerchantCreated,
    OfflineBatch,
    OfflineBatchAnswer,
    OfflineDeclines,
    OfflineDeclinesQuery,
    OfflineGaps,
    PendingOriginal,
    Reconciliation,
    ReconciliationList,
    ReconciliationQuery,
    ReconciliationRequest,
    RedemptionRequest,
    ReversalRequest,
    Reversed,
    SecretRotated,
    SecretRotation,
    Settlement,
    SettlementQuery,
    Stats,
    StatsQuery,
    StatusChange,
    StreamQuery,
    Terminal,
    TerminalChange,
    TerminalCreated,
    TrancheCreate,
    TrancheCreated,
    TrancheList,
    Verification,
    VerifyQuery,
)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    auth: str  # "none" | "terminal" | "operator" | "auditor" | "operator,auditor"
    body: type[BaseModel] | str | None = None  # a model, or a media type for raw bodies
    # status -> body model; None is the error body for >= 400, or a non-JSON body (`media`)
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    tag: str = "system"
    query: type[BaseModel] | None = None  # the query parameters, as a model
    media: str | None = None  # the 200 answer's media type when it is not JSON
    database: bool = True  # needs the database (so it may answer 503)
    match: str | None = None  # the router's pattern, when it must be stricter than `path`
    query_token: bool = False  # the bearer token may come as ?access_token= (EventSource)
    max_body: int | None = None  # bytes of body admitted, when more than the app's default

    @property
    def roles(self) -> tuple[str, ...]:
        """The bearer-token roles admitted (none: terminals, or anyone)."""
        return () if self.auth in ("none", "terminal") else tuple(self.auth.split(","))


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
        responses={201: Approved, 402: Declined, 409: None, 413: None, 415: None},
        tag="terminal",
    ),
    Route(
        "POST",
        "/v1/reversals",
        terminal.create_reversal,
        "Void this terminal's earlier redemption",
        "terminal",
        body=ReversalRequest,
        responses={
            201: Reversed,
            202: PendingOriginal,
            403: None,
            409: None,
            413: None,
            415: None,
        },
        tag="terminal",
    ),
    Route(
        "POST",
        "/v1/offline/batches",
        offline.post_offline_batch,
        "Forward up to 500 purchases approved offline (idempotent per terminal and "
        "offline_seq): each is posted once, in offline_seq order, approved or declined with a "
        "reason; the answer also names the gaps in the terminal's offline_seq",
        "terminal",
        body=OfflineBatch,
        responses={200: OfflineBatchAnswer, 413: None, 415: None},
        tag="terminal",
        max_body=1024 * 1024,
    ),
    Route(
        "POST",
        "/v1/terminals/reconciliation",
        offline.reconcile,
        "End of day: the terminal's totals of an Asia/Tehran day against the processor's; "
        "balanced, or out_of_balance with the differences and the request ids either side "
        "lacks",
        "terminal",
        body=ReconciliationRequest,
        responses={200: Reconciliation, 413: None, 415: None},
        tag="terminal",
        max_body=1024 * 1024,
    ),
    Route(
        "GET",
        "/v1/reconciliation",
        offline.list_reconciliations,
        "The terminals' reconciliations of one Asia/Tehran day (?date=YYYY-MM-DD), "
        "?status=out_of_balance for those that did not balance",
        "operator,auditor",
        responses={200: ReconciliationList},
        tag="audit",
        query=ReconciliationQuery,
    ),
    Route(
        "GET",
        "/v1/reports/offline-declines",
        offline.get_offline_declines,
        "Offline purchases declined when they were posted on one Asia/Tehran day "
        "(?date=YYYY-MM-DD[&merchant_id=]): each one the store's loss, with its reason",
        "auditor",
        responses={200: OfflineDeclines},
        tag="audit",
        query=OfflineDeclinesQuery,
    ),
    Route(
        "GET",
        "/v1/admin/offline/gaps",
        offline.get_gaps,
        "Terminals whose forwarded offline purchases have offline_seq numbers missing below "
        "the highest one: how many are missing",
        "operator",
        responses={200: OfflineGaps},
        tag="operator",
    ),
    Route(
        "GET",
        "/v1/ledger",
        audit.get_ledger,
        "Ledger entries in seq order (filters, keyset pagination with after/next)",
        "auditor",
        responses={200: LedgerPage},
        tag="audit",
        query=LedgerQuery,
    ),
    Route(
        "GET",
        "/v1/ledger.csv",
        audit.get_ledger_csv,
        "The same entries as CSV, streamed",
        "auditor",
        responses={200: None},
        tag="audit",
        query=LedgerFilters,
        media="text/csv",
    ),
    Route(
        "GET",
        "/v1/ledger/verify",
        audit.verify_ledger,
        "Recompute the hash chain; ok false names the first bad seq",
        "auditor",
        responses={200: Verification},
        tag="audit",
        query=VerifyQuery,
    ),
    Route(
        "GET",
        "/v1/ledger/keys",
        audit.get_ledger_keys,
        "The public keys whose signatures of the sealed heads verification trusts (Ed25519)",
        "none",
        responses={200: LedgerKeys},
        tag="audit",
        database=False,
    ),
    Route(
        "GET",
        "/v1/reports/settlement",
        audit.get_settlement,
        "Per-store settlement of one Asia/Tehran day (?date=YYYY-MM-DD)",
        "operator,auditor",
        responses={200: Settlement},
        tag="audit",
        query=SettlementQuery,
    ),
    Route(
        "GET",
        "/v1/stats",
        stats.get_stats,
        "Live counters per province",
        "operator,auditor",
        responses={200: Stats, 404: None},
        tag="counters",
        query=StatsQuery,
    ),
    Route(
        "GET",
        "/v1/stats/stream",
        stats.stream_stats,
        "Live counters as Server-Sent Events: `event: stats` with the /v1/stats JSON on "
        "connect and within a second of every change; a heartbeat comment every 15 s. "
        "Also accepts ?access_token= (EventSource cannot send headers)",
        "operator,auditor",
        responses={200: Stats, 404: None, 429: None},
        media="text/event-stream",
        query=StreamQuery,
        tag="counters",
        query_token=True,
    ),
    Route(
        "GET",
        "/v1/stats/tranches",
        insights.get_tranches,
        "Every tranche's name and redemption window, newest first (labels for any reader)",
        "operator,auditor",
        responses={200: insights.TrancheLabels},
        tag="counters",
    ),
    Route(
        "GET",
        "/v1/stats/history",
        insights.get_history,
        "Net transactions, rials and newly served households per minute (the last two "
        "hours), hour or day (Asia/Tehran) of a tranche (default: the current one), beside "
        "the previous tranche's",
        "operator,auditor",
        responses={200: insights.History, 404: None},
        tag="counters",
        query=insights.HistoryQuery,
    ),
    Route(
        "GET",
        "/v1/stats/activity",
        insights.get_activity,
        "Per province: declined redemptions by reason (store's province), reversals and "
        "their rials, and today's net transactions and rials (Asia/Tehran)",
        "operator,auditor",
        responses={200: insights.Activity, 404: None},
        tag="counters",
        query=StatsQuery,
    ),
    Route(
        "GET",
        "/v1/inspection/stores",
        inspection.get_ranking,
        "Stores ranked by their fraud-signal score for one Asia/Tehran day (default today), "
        "each with the signals that fired, the numbers behind them and a GET /v1/ledger link to "
        "its rows; a province-scoped token sees its own province",
        "operator,auditor",
        responses={200: inspection.Ranking, 403: None},
        tag="inspection",
        query=inspection.RankingQuery,
    ),
    Route(
        "GET",
        "/v1/inspection/stores/{merchant_id}",
        inspection.get_store_history,
        "One store's signals per Asia/Tehran day, from..to (default the last 7 days, at most 31)",
        "operator,auditor",
        responses={200: inspection.StoreHistory, 403: None, 404: None},
        tag="inspection",
        query=inspection.StoreHistoryQuery,
    ),
    Route(
        "GET",
        "/v1/inspection/rules",
        inspection.get_rules,
        "The inspection rules in force (thresholds, weights, opening hours), or ?version=",
        "operator,auditor",
        responses={200: inspection.RuleSet, 404: None},
        tag="inspection",
        query=inspection.RulesQuery,
    ),
    Route(
        "PUT",
        "/v1/inspection/rules",
        inspection.put_rules,
        "Save a new version of the inspection rules, in force from now on (national operators)",
        "operator",
        body=inspection.RulesChange,
        responses={201: inspection.RuleSet, 403: None, 409: None, 413: None, 415: None},
        tag="inspection",
    ),
    Route(
        "GET",
        "/",
        dashboard.root,
        "Redirects to the dashboard",
        "none",
        responses={302: None},
        media="text/plain",
        database=False,
        tag="dashboard",
    ),
    Route(
        "GET",
        "/dashboard",
        dashboard.dashboard,
        "The operators' live dashboard (Persian and English; asks for a token)",
        "none",
        responses={200: None},
        media="text/html",
        database=False,
        tag="dashboard",
    ),
    Route(
        "GET",
        "/dashboard/{name}",
        dashboard.dashboard_asset,
        "The dashboard's files: script, style sheets, icon, the provinces' map and the "
        "vendored chart library (vendor/...)",
        "none",
        responses={200: None, 404: None},
        media="application/octet-stream",
        database=False,
        tag="dashboard",
        match=dashboard.ASSET_PATTERN,
    ),
    Route(
        "GET",
        "/healthz",
        system.healthz,
        "Liveness and database reachability",
        "none",
        responses={200: Health, 503: Health},
    ),
    Route(
        "GET",
        "/metrics",
        system.metrics,
        "Prometheus metrics (to COUPON_METRICS_NETWORKS, or with COUPON_METRICS_TOKEN)",
        "none",
        responses={200: None, 403: None},
        media="text/plain",
        database=False,
    ),
    Route(
        "GET",
        "/openapi.json",
        system.openapi,
        "This document",
        "none",
        responses={200: None},
        media="application/json",
        database=False,
    ),
    Route(
        "POST",
        "/v1/admin/households/import",
        admin.import_households,
        "Upsert households from CSV (national_id,province,members,decile[,status]); the "
        "answer lists the first 1,000 rejected lines and counts them all by reason; "
        "?rejections=all streams every one",
        "operator",
        body="text/csv",
        responses={200: ImportResponse, 413: None, 415: None},
        tag="operator",
        query=ImportQuery,
    ),
    Route(
        "PATCH",
        "/v1/admin/households/{national_id}",
        admin.patch_household,
        "Suspend or reactivate a household",
        "operator",
        body=StatusChange,
        responses={200: Household, 404: None, 413: None, 415: None},
        tag="operator",
        # so that PATCH .../households/import is 405, not a national id "import"
        match="/v1/admin/households/{national_id:[0-9]{10}}",
    ),
    Route(
        "POST",
        "/v1/admin/tranches",
        admin.create_tranche,
        "Open a tranche and credit every eligible household",
        "operator",
        body=TrancheCreate,
        responses={201: TrancheCreated, 409: None, 413: None, 415: None},
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
        responses={201: MerchantCreated, 413: None, 415: None},
        tag="operator",
    ),
    Route(
        "PATCH",
        "/v1/admin/merchants/{id}",
        admin.patch_merchant,
        "Suspend or reactivate a store",
        "operator",
        body=StatusChange,
        responses={200: Merchant, 404: None, 413: None, 415: None},
        tag="operator",
    ),
    Route(
        "POST",
        "/v1/admin/merchants/{id}/terminals",
        admin.create_terminal,
        "Register a POS terminal; its secret is shown only in this response",
        "operator",
        responses={201: TerminalCreated, 404: None},
        tag="operator",
    ),
    Route(
        "POST",
        "/v1/admin/terminals/{id}/secret",
        admin.rotate_terminal_secret,
        "Give a POS terminal a new secret (shown only in this response); the previous one "
        "keeps verifying for overlap_seconds (default 3600) while the terminal switches over",
        "operator",
        body=SecretRotation,
        responses={201: SecretRotated, 404: None, 413: None, 415: None},
        tag="operator",
    ),
    Route(
        "PATCH",
        "/v1/admin/terminals/{id}",
        admin.patch_terminal,
        "Suspend or reactivate a POS terminal, and/or let it approve purchases offline "
        "(offline_enabled)",
        "operator",
        body=TerminalChange,
        responses={200: Terminal, 404: None, 413: None, 415: None},
        tag="operator",
    ),
)
