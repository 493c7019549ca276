"""What the reliability tests share: a seeded database, `coupon serve` as a real subprocess in
its own process group, signed POS clients that remember every request they sent and what (if
anything) came back, the resend that resolves the unanswered ones, and the checks that nothing
acknowledged was lost and nothing was applied twice."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiohttp.test_utils import TestServer

from coupon import answers, auth, demo, national_id
from coupon.app import create_app
from coupon.config import Settings
from coupon.keyring import Keyring
from coupon.provinces import iran_provinces
from tests.integration.terminal import invariants

ROOT = Path(__file__).resolve().parent.parent.parent
ARTIFACTS = ROOT / "test-artifacts"
# how long a client waits for one answer before it counts the request as unanswered; far above
# the service's own bound (3 x db_timeout), so a hang shows up as a hang, never as noise
CLIENT_TIMEOUT = 30.0


def soak() -> bool:
    """True under `make soak`: the long variants."""
    return os.environ.get("COUPON_SOAK", "") not in ("", "0")


def record(name: str, figures: dict[str, Any]) -> None:
    """Keep a test's figures (BENCHMARKS.md quotes them) and print them for `pytest -s`."""
    ARTIFACTS.mkdir(exist_ok=True)
    line = {"test": name, "soak": soak(), "at": dt.datetime.now(dt.UTC).isoformat(), **figures}
    with (ARTIFACTS / "reliability.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")
    print(f"\n{name}: {json.dumps(figures)}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the world ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pos:
    terminal_id: int
    secret: str


@dataclass
class World:
    ids: list[str]
    terminals: list[Pos]


async def seed(dsn: str, n_households: int = 300, n_terminals: int = 8) -> World:
    """Households over the 31 provinces with 5,000,000 rials a member, an open tranche,
    stores with a terminal each."""
    rng = random.Random(7)
    codes = [p.code for p in iran_provinces()]
    step = 10**9 // n_households
    ids = [national_id.with_check_digit(f"{i * step + 17:09d}") for i in range(n_households)]
    rows = [(nid, rng.choice(codes), rng.randint(1, 4), rng.randint(1, 3)) for nid in ids]
    conn = await asyncpg.connect(dsn)
    try:
        made = await demo.seed_programme(
            conn,
            rows,
            [codes[i % 31] for i in range(n_terminals)],
            # the key file of the servers the tests start (same directory, same settings)
            keyring=Keyring.from_settings(Settings()),
            name="reliability",
            up_to_decile=3,
            started=dt.timedelta(minutes=5),
        )
    finally:
        await conn.close()
    terminals = [Pos(c.terminal_id, c.secret) for _, c in made]
    return World(ids, terminals)


# -- the service as a subprocess ------------------------------------------------------------


@dataclass
class Server:
    """`coupon serve --workers N` in its own process group (so kill -9 reaches every worker)."""

    dsn: str
    workers: int = 2
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, patience: float = 60.0) -> float:
        """Start and wait until /healthz answers 200; returns the seconds that took."""
        env = {
            **os.environ,
            "DATABASE_URL": self.dsn,
            "COUPON_LOG_LEVEL": "warning",
            "COUPON_POOL_MIN_SIZE": "1",
            "COUPON_POOL_MAX_SIZE": "8",
            **self.env,
        }
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"serve-{self.port}.log"
        started = time.perf_counter()
        argv = [sys.executable, "-m", "coupon", "serve", "--port", str(self.port)]
        with self.log_path.open("ab") as log:
            # a new session: the process group that kill9() reaches entirely
            self.proc = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
                [*argv, "--workers", str(self.workers)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
            )
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"coupon serve exited with {self.proc.returncode}")
                if time.perf_counter() - started > patience:
                    raise AssertionError("coupon serve did not come up")
                try:
                    async with session.get(
                        self.base + "/healthz", timeout=aiohttp.ClientTimeout(total=2)
                    ) as resp:
                        if resp.status == 200:
                            return time.perf_counter() - started
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.02)

    def kill9(self) -> None:
        """SIGKILL to the whole process group: parent and workers, no chance to clean up."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._wait_group_gone()

    async def sigterm(self, patience: float = 60.0) -> int:
        """SIGTERM to the parent alone (it must forward it); returns its exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.proc.wait, patience)
        self._wait_group_gone()
        return code

    def _wait_group_gone(self, timeout: float = 30.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise AssertionError("a process of the server's group outlived it")

    async def stop(self) -> None:
        """Whatever state it is in: gone afterwards (test teardown). Waits off the event
        loop, which may be running the fault proxy the server talks through."""
        await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@contextlib.asynccontextmanager
async def in_process(settings: Settings, dsn: str) -> AsyncIterator[str]:
    """The service in this process (a real socket); yields its base URL."""
    server = TestServer(create_app(settings, dsn), host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


def via(dsn: str, port: int) -> str:
    """The same DSN through another port on the same host (a fault proxy's)."""
    head, _, tail = dsn.rpartition("@")
    hostport, _, rest = tail.partition("/")
    host = hostport.rsplit(":", 1)[0]
    return f"{head}@{host}:{port}/{rest}"


def upstream(dsn: str) -> tuple[str, int]:
    hostport = dsn.rpartition("@")[2].partition("/")[0]
    host, _, port = hostport.rpartition(":")
    return host, int(port)


# -- signed clients that remember everything ------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no answer (connection refused or cut, or the client gave up)
    body: Any
    replayed: bool
    sent_at: float  # time.monotonic()
    latency: float

    @property
    def definitive(self) -> bool:
        """An answer that settles the request (5xx and silence do not)."""
        return self.status is not None and self.status < 500


@dataclass
class Sent:
    """One redemption: what was sent, and each answer it got."""

    pos: Pos
    request_id: str
    body: bytes
    answers: list[Answer] = field(default_factory=list)

    @property
    def final(self) -> Answer | None:
        return self.answers[-1] if self.answers else None

    @property
    def definitive(self) -> bool:
        return self.final is not None and self.final.definitive


async def send(
    session: aiohttp.ClientSession, base: str, sent: Sent, path: str = "/v1/redemptions"
) -> Answer:
    """Send (or resend: a new nonce and timestamp, the same body) and record the answer."""
    headers = auth.signed_headers(
        sent.pos.terminal_id, sent.pos.secret, "POST", path, sent.body, uuid.uuid4().hex
    )
    headers["Content-Type"] = "application/json"
    started = time.monotonic()
    status: int | None = None
    body: Any = None
    replayed = False
    try:
        async with session.post(
            base + path,
            data=sent.body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT),
        ) as resp:
            text = await resp.read()
            status, replayed = resp.status, resp.headers.get("Idempotent-Replayed") == "true"
            body = orjson.loads(text) if text else None
            if resp.status == 503:
                assert body["error"]["code"] == "service_unavailable", body
                assert resp.headers.get("Retry-After"), dict(resp.headers)
    except (aiohttp.ClientError, TimeoutError, OSError):
        status = None
    answer = Answer(status, body, replayed, started, time.monotonic() - started)
    sent.answers.append(answer)
    return answer


def redemption(world: World, rng: random.Random, tag: str) -> Sent:
    """A new redemption; one in twenty asks for more than any household has (a decline)."""
    pos = rng.choice(world.terminals)
    amount = rng.randint(1, 40) * 1000 if rng.random() > 0.05 else 10**11
    request_id = f"{tag}-{uuid.uuid4().hex[:16]}"
    payload = {"request_id": request_id, "national_id": rng.choice(world.ids), "amount": amount}
    return Sent(pos, request_id, orjson.dumps(payload))


@dataclass
class Load:
    """Closed-loop POS clients: each sends a redemption, waits for its answer, sends the next,
    until stop(), or until it gets no answer at all (the service is gone: the POS waits for
    it; a 503 means the service is there, so the next customer is tried)."""

    world: World
    base: str
    clients: int = 8
    tag: str = "r"
    sent: list[Sent] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.clients))
        self._tasks = [asyncio.create_task(self._client(k)) for k in range(self.clients)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
        await asyncio.gather(*self._tasks)
        await self._session.close()

    def stop(self) -> None:
        self._stop.set()

    async def _client(self, k: int) -> None:
        rng = random.Random(f"{self.tag}-{k}")
        while not self._stop.is_set():
            sent = redemption(self.world, rng, self.tag)
            self.sent.append(sent)
            answer = await send(self._session, self.base, sent)
            self.statuses[str(answer.status or "no answer")] += 1
            if answer.status is None:
                return
            if not answer.definitive:
                await asyncio.sleep(0.05)


async def resolve(
    base: str, pending: list[Sent], attempts: int = 200, parallel: int = 16
) -> Counter[str]:
    """Resend each request that got no definitive answer until it gets one (as a POS does);
    count how each was resolved: its stored answer replayed, or applied now for the first
    time."""
    how: Counter[str] = Counter()
    gate = asyncio.Semaphore(parallel)

    async def one(session: aiohttp.ClientSession, sent: Sent) -> None:
        async with gate:
            for _ in range(attempts):
                if (await send(session, base, sent)).definitive:
                    break
                await asyncio.sleep(0.1)
        final = sent.final
        assert final is not None and final.definitive, (sent.request_id, sent.answers)
        assert final.status in (201, 402), (sent.request_id, final)
        how["replayed" if final.replayed else "fresh"] += 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, sent) for sent in pending))
    return how


# -- nothing lost, nothing twice ------------------------------------------------------------


async def check_outcomes(conn: asyncpg.Connection, sents: list[Sent]) -> dict[str, int]:
    """Every answer the clients saw is what the database holds: each 201 has its ledger row
    (same redemption_id, request_id and amount), each 402 has none, each stored answer equals
    the one sent; no request was applied twice; the ledger holds nothing nobody sent; and the
    counters agree with the ledger and the balances."""
    ledger = {
        (r["terminal_id"], r["request_id"]): r
        for r in await conn.fetch(
            "SELECT seq, terminal_id, request_id, amount FROM ledger WHERE kind = 'redemption'"
        )
    }
    doubles = await conn.fetchval(
        "SELECT count(*) FROM (SELECT FROM ledger WHERE kind = 'redemption' "
        "GROUP BY terminal_id, request_id HAVING count(*) > 1) d"
    )
    stored = {
        (r["terminal_id"], r["request_id"]): r
        for r in await conn.fetch(
            "SELECT terminal_id, request_id, outcome, reason, entry_id, amount, remaining "
            "FROM terminal_requests"
        )
    }
    acknowledged = lost = mismatched = 0
    for sent in sents:
        key = (sent.pos.terminal_id, sent.request_id)
        for answer in sent.answers:
            if not answer.definitive:
                continue
            status, body = answer.status, answer.body
            acknowledged += status == 201
            row = ledger.get(key)
            if status == 201:
                if row is None:
                    lost += 1
                elif (row["seq"], row["amount"]) != (body["redemption_id"], body["amount"]):
                    mismatched += 1
            else:
                assert row is None, (key, answer)
            kept = stored.get(key)
            assert kept is not None and answers.ANSWERS[kept["outcome"]][0] == status, (
                key,
                answer,
                kept,
            )
            if status == 201:  # what was answered is what is stored for replays
                assert (kept["entry_id"], kept["amount"], kept["remaining"]) == (
                    body["redemption_id"],
                    body["amount"],
                    body["remaining"],
                ), (key, body, kept)
            else:
                assert kept["reason"] == body["reason"], (key, body, kept)
    sent_keys = {(s.pos.terminal_id, s.request_id) for s in sents}
    unknown = len(set(ledger) - sent_keys)
    figures = {
        "acknowledged": acknowledged,
        "lost": lost,
        "mismatched": mismatched,
        "applied_twice": doubles,
        "unknown_rows": unknown,
    }
    assert (lost, mismatched, doubles, unknown) == (0, 0, 0, 0), figures
    await invariants(conn)
    return figures
