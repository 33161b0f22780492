"""A private MariaDB server and a proxy subprocess for the benchmarks.

The server is the one the test suite uses (tests/mariadb_server.py: throwaway datadir,
``--no-defaults``, a free port, never 3306), without pytest: failures raise ``BenchError`` with
the log tail. Everything listens on 127.0.0.1 only. ``private_mariadb`` and ``Proxy`` always
stop what they started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
# tests/ is not a package: put it on the path to share its server code instead of keeping a copy.
sys.path.insert(0, str(REPO_ROOT / "tests"))

# find_binary is re-exported for run.py.
from mariadb_server import MariaDB, ServerError, die_with_parent, find_binary, free_port, stop_process  # noqa: E402,F401

HOST = "127.0.0.1"

# One error type: a server that fails to start and a benchmark that fails are reported alike.
BenchError = ServerError


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` (all threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz


def proc_status_kb(pid: int, key: str = "VmRSS") -> int:
    """A ``kB`` value from /proc/PID/status (VmRSS, VmHWM, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


# --------------------------------------------------------------------------- CPU share


def autogroup_enabled() -> bool:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


def set_cpu_share(pid: int, nice: int, own_session: bool) -> str:
    """Give a service process the CPU share a raised systemd ``CPUWeight=`` gives it; returns what was done.

    With ``kernel.sched_autogroup_enabled`` the kernel shares the CPU between sessions first, so
    a process in a session of its own gets its weight from the session's autogroup nice value
    (``/proc/PID/autogroup``): nice -5 weighs 3121 against 1024 for nice 0, about 3 times, as
    ``CPUWeight=300`` against the default 100. Otherwise the process's own nice value decides.
    Raising a share needs root (CAP_SYS_NICE); without it the process keeps the default share
    and the returned text says so.
    """
    if nice == 0:
        return "default CPU share"
    try:
        if own_session and autogroup_enabled():
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))
            return f"its session's autogroup at nice {nice}"
        os.setpriority(os.PRIO_PROCESS, pid, nice)
        return f"nice {nice}"
    except OSError as e:
        return f"default CPU share (could not set nice {nice}: {e.strerror}; run as root)"


# --------------------------------------------------------------------------- MariaDB


@contextmanager
def private_mariadb(max_connections: int = 500, own_session: bool = True,
                    tls_files: tuple[str, str, str] | None = None) -> Iterator[MariaDB]:
    """A throwaway MariaDB in a temp dir under /tmp on a free port, removed on exit.

    ``own_session``: see ``Proxy``; the server runs as a service would. ``tls_files``: (CA,
    certificate, key) to offer TLS with.
    """
    # A bigger buffer pool than the tests': the sysbench tables should stay in memory.
    db = MariaDB.launch(prefix="mpp-bench-", parent="/tmp", max_connections=max_connections,
                        innodb_buffer_pool_size="128M", own_session=own_session, tls_files=tls_files)
    try:
        yield db
    finally:
        db.remove()


# --------------------------------------------------------------------------- proxy


def export_revision(rev: str) -> Path:
    """``proxy/`` as of git revision ``rev``, unpacked into a temp dir; returns the dir to import from.

    Lets a benchmark run a committed proxy while the working tree is being edited, or compare revisions.
    """
    dest = Path(tempfile.mkdtemp(prefix="mpp-bench-src-", dir="/tmp"))
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", rev, "proxy"], capture_output=True)
    if archive.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        raise BenchError(f"git archive {rev} failed: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


@contextmanager
def proxy_source(rev: str | None) -> Iterator[Path]:
    """Where to import ``proxy/`` from: the repo, or ``rev`` exported to a temp dir removed on exit."""
    if not rev:
        yield REPO_ROOT
        return
    src = export_revision(rev)
    try:
        yield src
    finally:
        shutil.rmtree(src, ignore_errors=True)


def describe_source(rev: str | None) -> str:
    """What proxy code a run used: a commit, or the working tree (marked when it has edits)."""
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", rev or "HEAD"],
                          capture_output=True, text=True)
    if rev:
        return f"proxy/ at revision {rev} ({head.stdout.strip() or '?'})"
    dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "proxy"],
                           capture_output=True, text=True)
    rev = head.stdout.strip() or "?"
    return f"proxy/ from the working tree at {rev}" + (" with uncommitted changes" if dirty.stdout.strip() else "")


class Proxy:
    """``python -m proxy run -c FILE`` as a subprocess (``src_root``: where ``proxy/`` is imported from).

    ``own_session``: start it in a session of its own (setsid), as it runs in production: a
    systemd service or a container gets its own cgroup, and the kernel shares the CPU fairly
    between those groups. With ``kernel.sched_autogroup_enabled`` (the default on most
    distributions) a session is such a group. In one session with sysbench, the proxy's one
    thread would compete for the CPU as one of sysbench's 64 threads.
    """

    def __init__(self, backend: MariaDB, user: str, password: str, pool: int = 8, queue_timeout: float = 30,
                 log_level: str = "info", extra: dict[str, Any] | None = None,
                 src_root: Path = REPO_ROOT, own_session: bool = True, via_socket: bool = False,
                 client_socket: bool = False) -> None:
        self.src_root = src_root
        self.own_session = own_session
        self.host = HOST
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="mpp-bench-proxy-", dir="/tmp"))
        self.config_path = self.base / "proxy.yaml"
        self.log_path = self.base / "proxy.log"
        self.log_level = log_level
        self.config: dict[str, Any] = {
            "listen": {"host": HOST, "port": self.port},
            "backend": ({"unix_socket": backend.socket} if via_socket else {"host": backend.host, "port": backend.port})
            | {"user": user, "password": password},
            "pool": {"max_connections": pool, "queue_timeout": queue_timeout, "connect_timeout": 5},
            "shutdown_timeout": 5,
        }
        # client_socket: sysbench comes in over listen.unix_socket (client_address) instead of TCP.
        self.socket_path = str(self.base / "proxy.sock") if client_socket else None
        if self.socket_path:
            self.config["listen"]["unix_socket"] = self.socket_path
        for section, values in (extra or {}).items():
            if isinstance(values, dict):
                self.config.setdefault(section, {}).update(values)
            else:
                self.config[section] = values
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Proxy:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.config_path.chmod(0o600)
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.src_root), env.get("PYTHONPATH")]))
        for var in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(var, None)
        cmd = [sys.executable, "-m", "proxy", "run", "-c", str(self.config_path), "--log-level", self.log_level]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.base,
                env=env,
                preexec_fn=die_with_parent(signal.SIGKILL),
                start_new_session=self.own_session,
            )
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"proxy exited with code {self.proc.returncode} before listening:\n{self.log()[-6000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"proxy not listening after 15 s:\n{self.log()[-6000:]}") from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def client_address(self) -> int | str:
        """Where sysbench connects: the unix socket path with ``client_socket``, else the TCP port."""
        return self.socket_path or self.port

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM (SIGKILL after 15 s); returns the exit code."""
        if self.proc is None:
            return None
        stop_process(self.proc, 15)
        return self.proc.returncode

    def close(self, keep_files: bool = False) -> None:
        self.stop()
        if not keep_files:
            shutil.rmtree(self.base, ignore_errors=True)


# --------------------------------------------------------------------------- reference relay


class ByteRelay:
    """haproxy in TCP mode with one thread: a C byte relay between the same clients and server.

    It keeps one server connection per client (no pooling) and parses nothing: the cost of the
    extra hop itself, for comparison with the proxy in the same run. Started in a session of
    its own, like the proxy.
    """

    def __init__(self, backend: MariaDB, via_socket: bool = False, client_socket: bool = False) -> None:
        binary = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
        if binary is None:
            raise BenchError("--haproxy: haproxy not found (apt-get install haproxy)")
        self.binary = binary
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="mpp-bench-haproxy-", dir="/tmp"))
        self.config_path = self.base / "haproxy.cfg"
        self.socket_path = str(self.base / "haproxy.sock") if client_socket else None
        unix_bind = f"    bind {self.socket_path} mode 777\n" if self.socket_path else ""
        self.config_path.write_text(
            "global\n    maxconn 4096\n    nbthread 1\n"
            "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n"
            f"frontend clients\n    bind {HOST}:{self.port}\n{unix_bind}    default_backend server\n"
            f"backend server\n    server s1 {backend.socket if via_socket else f'{backend.host}:{backend.port}'}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ByteRelay:
        out = open(self.base / "haproxy.log", "wb")
        with out:
            self.proc = subprocess.Popen([self.binary, "-db", "-f", str(self.config_path)], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, cwd=self.base,
                                         preexec_fn=die_with_parent(signal.SIGKILL), start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"haproxy exited with code {self.proc.returncode}:\n"
                                 + (self.base / "haproxy.log").read_text(errors="replace")[-3000:])
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError("haproxy not listening after 10 s") from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def client_address(self) -> int | str:
        """Where sysbench connects: the unix socket path with ``client_socket``, else the TCP port."""
        return self.socket_path or self.port

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)
        shutil.rmtree(self.base, ignore_errors=True)
