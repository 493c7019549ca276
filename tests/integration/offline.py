"""Offline purchases for the tests: a world whose tranche has an offline allowance and whose
terminal may work offline, and batches to forward."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from tests.integration.helpers import households_csv, national_ids, now, tranche_body
from tests.integration.terminal import Client, Response, Terminal, World, make_terminal

CREDIT = 10_000_000  # 2 members x 5,000,000


def purchase(
    seq: int,
    national_id: str,
    amount: int,
    captured_at: dt.datetime | None = None,
    request_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "offline_seq": seq,
        "request_id": request_id or f"off-{seq}-{uuid.uuid4().hex[:8]}",
        "captured_at": (captured_at or now() - dt.timedelta(minutes=5)).isoformat(),
        "national_id": national_id,
        "amount": amount,
        **extra,
    }


async def forward(terminal: Terminal, purchases: list[dict[str, Any]]) -> Response:
    return await terminal.send("POST", "/v1/offline/batches", {"purchases": purchases})


async def enable_offline(
    client: Client, operator: dict[str, str], terminal: Terminal, on: bool = True
) -> None:
    resp = await client.patch(
        f"/v1/admin/terminals/{terminal.terminal_id}",
        json={"offline_enabled": on},
        headers=operator,
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["offline_enabled"] is on


async def offline_world(
    client: Client,
    operator: dict[str, str],
    n: int = 6,
    allowance: int = 3_000_000,
    max_amount: int | None = 2_000_000,
    start: dt.timedelta = dt.timedelta(days=-2),
    provinces: tuple[str, ...] = ("IR-15", "IR-23", "IR-01"),
) -> World:
    """n households of 2 members (10,000,000 rials each), a tranche that opened `start` ago with
    the offline allowance, a store with an offline-enabled terminal."""
    ids = national_ids(n, seed=23)
    rows = [(nid, provinces[i % len(provinces)], 2, 1 + i % 3) for i, nid in enumerate(ids)]
    resp = await client.post(
        "/v1/admin/households/import",
        data=households_csv(rows).encode(),
        headers={**operator, "Content-Type": "text/csv"},
    )
    assert resp.status == 200
    body = tranche_body(bands=[{"up_to_decile": 3, "per_member_credit": 5_000_000}], start=start)
    body["offline_allowance"] = allowance
    if max_amount is not None:
        body["offline_max_amount"] = max_amount
    resp = await client.post("/v1/admin/tranches", json=body, headers=operator)
    assert resp.status == 201, await resp.text()
    tranche_id = (await resp.json())["id"]
    terminal = await make_terminal(client, operator)
    await enable_offline(client, operator, terminal)
    return World(terminal, tranche_id, dict.fromkeys(ids, CREDIT), {r[0]: r[1] for r in rows})
