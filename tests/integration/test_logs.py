"""One JSON log line per request, without secrets, tokens or full national ids."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from coupon import logs
from tests.integration.terminal import Client, make_terminal, make_world


@pytest.fixture
def json_logs() -> Iterator[io.BytesIO]:
    out = io.BytesIO()
    logs.configure("info", stream=out, cache=False)
    yield out
    structlog.reset_defaults()


async def test_request_logs_are_json_and_keep_secrets_out(
    json_logs: io.BytesIO, client: Client, operator: dict[str, str]
) -> None:
    world = await make_world(client, operator, n=2)
    extra = await make_terminal(client, operator)
    nid = next(iter(world.credit))
    await world.terminal.balance(nid)
    await world.terminal.redeem(nid, 1000, request_id="log-1")
    await world.terminal.redeem(nid, 10**11, request_id="log-2")
    await world.terminal.send("POST", "/v1/redemptions", raw=b"{broken")
    out = json_logs.getvalue().decode()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["event"] == "request"]
    assert len(requests) >= 8
    for line in requests:
        assert {"method", "route", "status", "latency_ms", "level", "timestamp"} <= set(line)
    redemption = next(r for r in requests if r.get("request_id") == "log-1")
    assert redemption["terminal_id"] == world.terminal.terminal_id
    assert redemption["outcome"] == "approved" and redemption["status"] == 201
    declined = next(r for r in requests if r.get("request_id") == "log-2")
    assert declined["outcome"] == "declined:insufficient_balance"
    assert any(r.get("role") == "operator" for r in requests)
    for secret in (
        world.terminal.secret,
        extra.secret,
        operator["Authorization"].split()[1],
        *world.credit,
    ):
        assert secret not in out
