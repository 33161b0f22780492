"""A private MariaDB server and a proxy subprocess for the benchmarks.

Same approach as tests/conftest.py (throwaway datadir, ``--no-defaults``, a free port, never
3306) without the pytest dependency: failures raise ``BenchError`` with the log tail.
Everything listens on 127.0.0.1 only. Both classes are context managers and always stop
what they started.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pymysql
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

_SEARCH_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/usr/local/mysql/bin")


class BenchError(RuntimeError):
    pass


def find_binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        for d in _SEARCH_DIRS:
            p = Path(d, name)
            if p.is_file() and os.access(p, os.X_OK):
                return str(p)
    return None


def require_binary(*names: str, hint: str) -> str:
    found = find_binary(*names)
    if not found:
        raise BenchError(f"none of {', '.join(names)} found; {hint}")
    return found


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in (3306, 3307):
            return port


_LIBC: Any = None


def _die_with_parent(sig: int) -> Any:
    """preexec_fn: the child gets ``sig`` if the benchmark dies, so nothing is left running."""
    global _LIBC
    if not sys.platform.startswith("linux"):
        return None
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    prctl = _LIBC.prctl

    def setup() -> None:
        prctl(1, sig)  # PR_SET_PDEATHSIG

    return setup


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(cannot read {path}: {e.strerror})"


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """SIGTERM, wait, then SIGKILL. True when it exited on its own."""
    if proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return False


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


# --------------------------------------------------------------------------- MariaDB


class MariaDB:
    """A throwaway MariaDB in a temp dir on a free port."""

    def __init__(self, max_connections: int = 500) -> None:
        self.host = HOST
        self.port = free_port()
        self.max_connections = max_connections
        self.base = Path(tempfile.mkdtemp(prefix="mpp-bench-", dir="/tmp"))
        self.datadir = self.base / "data"
        self.socket = str(self.base / "sock")
        self.log_path = self.base / "err.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.version = ""

    def __enter__(self) -> MariaDB:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        hint = "install with: apt-get install -y mariadb-server mariadb-client"
        install = require_binary("mariadb-install-db", "mysql_install_db", hint=hint)
        server = require_binary("mariadbd", "mysqld", hint=hint)
        r = subprocess.run(
            [
                install,
                "--no-defaults",
                "--user=root",
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--innodb-log-file-size=16M",
                "--innodb-use-native-aio=0",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode != 0:
            raise BenchError(f"mariadb-install-db failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        args = [
            server,
            "--no-defaults",
            "--user=root",
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            f"--bind-address={HOST}",
            f"--socket={self.socket}",
            f"--pid-file={self.datadir}/mariadbd.pid",
            f"--log-error={self.log_path}",
            f"--max-connections={self.max_connections}",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=128M",
            "--innodb-log-file-size=16M",
            "--innodb-use-native-aio=0",
            "--innodb-flush-log-at-trx-commit=2",
            "--innodb-doublewrite=0",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
        ]
        with open(self.base / "mariadbd.out", "ab") as out:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(signal.SIGTERM),
            )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"mariadbd exited with code {self.proc.returncode}:\n{tail(self.log_path)}")
            try:
                self.root_conn(connect_timeout=2).close()
                break
            except pymysql.MySQLError:
                if time.monotonic() > deadline:
                    raise BenchError(f"mariadbd did not answer within 60 s:\n{tail(self.log_path)}") from None
                time.sleep(0.1)
        self.version = str(self.sql("SELECT VERSION()")[0][0])
        for user, host in self.sql("SELECT User, Host FROM mysql.user WHERE User = ''"):
            self.sql("DROP USER %s@%s", (user, host))

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 60)
            self.proc = None
        shutil.rmtree(self.base, ignore_errors=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def root_conn(self, **kw: Any) -> pymysql.connections.Connection:
        args: dict[str, Any] = {"user": "root", "password": "", "unix_socket": self.socket, "autocommit": True}
        args.update(kw)
        return pymysql.connect(**args)

    def sql(self, stmt: str, args: Any = None) -> tuple[tuple[Any, ...], ...]:
        conn = self.root_conn()
        try:
            with conn.cursor() as cur:
                cur.execute(stmt, args)
                return tuple(cur.fetchall())
        finally:
            conn.close()

    def make_account(self, user: str, password: str, database: str) -> None:
        """Database ``database`` and ``user``@'%' with all rights on it."""
        self.sql(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        self.sql("DROP USER IF EXISTS %s@'%%'", (user,))
        self.sql("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
        self.sql(f"GRANT ALL ON `{database}`.* TO %s@'%%'", (user,))


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
    """``python -m proxy run -c FILE`` as a subprocess (``src_root``: where ``proxy/`` is imported from)."""

    def __init__(self, backend: MariaDB, user: str, password: str, pool: int = 8, queue_timeout: float = 30,
                 log_level: str = "info", extra: dict[str, Any] | None = None,
                 src_root: Path = REPO_ROOT) -> None:
        self.src_root = src_root
        self.host = HOST
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="mpp-bench-proxy-", dir="/tmp"))
        self.config_path = self.base / "proxy.yaml"
        self.log_path = self.base / "proxy.log"
        self.log_level = log_level
        self.config: dict[str, Any] = {
            "listen": {"host": HOST, "port": self.port},
            "backend": {"host": backend.host, "port": backend.port, "user": user, "password": password},
            "pool": {"max_connections": pool, "queue_timeout": queue_timeout, "connect_timeout": 5},
            "shutdown_timeout": 5,
        }
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
                preexec_fn=_die_with_parent(signal.SIGKILL),
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
