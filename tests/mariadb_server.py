"""A private, throwaway MariaDB server: install, start, stop, wait until ready.

One implementation for the test suite (tests/conftest.py) and the benchmarks (bench/_server.py),
so a fix to how the server is started reaches both. It has no pytest dependency: failures raise
``ServerError`` (``BinaryNotFound`` when the server binaries are missing) with the log tail, and
conftest turns them into ``pytest.fail``.

The server gets a temp datadir, ``--no-defaults``, a free port (never 3306) bound to 127.0.0.1 and
its own unix socket, so a system server and its my.cnf never come into it.
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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pymysql

# Where distributions put the server binaries; mariadbd lives in /usr/sbin on Debian,
# which is not on a non-root PATH.
_SEARCH_DIRS = (
    "/usr/sbin",
    "/usr/bin",
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/local/mysql/bin",
    "/usr/local/mariadb/bin",
    "/opt/mariadb/bin",
)
INSTALL_HINT = "install them with: apt-get install -y mariadb-server mariadb-client"
_READY_TIMEOUT = 60.0


class ServerError(RuntimeError):
    """The private server could not be installed or started (the message says why)."""


class BinaryNotFound(ServerError):
    """None of the wanted binaries is installed; the message says what to install."""


def find_binary(*names: str) -> str | None:
    """First of ``names`` found on PATH or in the usual server directories."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        for d in _SEARCH_DIRS:
            p = Path(d, name)
            if p.is_file() and os.access(p, os.X_OK):
                return str(p)
    return None


def require_binary(*names: str, hint: str = INSTALL_HINT) -> str:
    found = find_binary(*names)
    if not found:
        raise BinaryNotFound(f"none of {', '.join(names)} found; {hint}")
    return found


def free_port() -> int:
    """A TCP port nobody listens on right now (never the MySQL/proxy defaults)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in (3306, 3307):
            return port


_LIBC: Any = None


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """preexec_fn: the child gets ``sig`` when we die, so a killed run leaves no servers behind.

    Only from the main thread: PR_SET_PDEATHSIG fires when the forking *thread* exits, and a
    restart done in a worker thread (asyncio.to_thread) must not kill the new server with it.
    """
    global _LIBC
    if threading.current_thread() is not threading.main_thread() or not sys.platform.startswith("linux"):
        return None
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)  # loaded in the parent: no dlopen after fork
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
    """SIGTERM, wait up to ``timeout``, then SIGKILL. True when it exited on its own."""
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


@dataclass
class MariaDB:
    """A private MariaDB server in a temp dir; ``launch`` makes one, ``remove`` deletes it."""

    host: str
    port: int
    socket: str
    datadir: str
    mariadbd: str
    admin: str | None
    log_path: Path
    max_connections: int = 500
    innodb_buffer_pool_size: str = "64M"
    # Start mariadbd in a session of its own, as a service would run (the benchmarks want this:
    # with kernel.sched_autogroup_enabled the CPU is shared fairly between sessions, not threads).
    own_session: bool = False
    # TLS: (CA file, certificate file, key file) the server offers TLS with; None: no TLS.
    tls_files: tuple[str, str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    # -- creation -------------------------------------------------------------------

    @classmethod
    def launch(
        cls, *, prefix: str = "mpp-mariadb-", parent: str | None = None, hint: str = INSTALL_HINT, **options: Any
    ) -> Self:
        """Install a fresh datadir, start the server and drop the anonymous accounts.

        ``parent``: where the temp dir goes (default TMPDIR); ``options``: further fields
        (max_connections, innodb_buffer_pool_size, tls_files). The caller owns the result and calls ``remove``.
        """
        install = require_binary("mariadb-install-db", "mysql_install_db", hint=hint)
        server = require_binary("mariadbd", "mysqld", hint=hint)
        version = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
        if "mariadb" not in version.lower():
            raise BinaryNotFound(f"{server} is not MariaDB ({version.strip()}); {hint}")
        admin = find_binary("mariadb-admin", "mysqladmin")

        base = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        if len(str(base / "sock")) > 100:  # sun_path holds 108 bytes; a long TMPDIR would break the socket
            shutil.rmtree(base)
            base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        db = cls(
            host="127.0.0.1",
            port=free_port(),
            socket=str(base / "sock"),
            datadir=str(base / "data"),
            mariadbd=server,
            admin=admin,
            log_path=base / "err.log",
            **options,
        )
        try:
            db._install(install)
            db.start()
            # Anonymous accounts would shadow 'user'@'%' for local logins (the most specific host wins).
            for user, host in db.sql("SELECT User, Host FROM mysql.user WHERE User = ''"):
                db.sql("DROP USER %s@%s", (user, host))
        except BaseException:
            db.remove()
            raise
        return db

    def _install(self, install: str) -> None:
        # Options after the known ones are handed to the bootstrap server: a small redo log
        # from the start saves writing and later resizing 96 MiB.
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
                f"--tmpdir={self._tmpdir()}",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode != 0:
            raise ServerError(f"mariadb-install-db failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")

    def remove(self) -> None:
        """Stop the server and delete its temp dir (datadir, socket, logs)."""
        self.stop(timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)

    @property
    def base(self) -> Path:
        return Path(self.datadir).parent

    # -- lifecycle ------------------------------------------------------------------

    def _server_args(self) -> list[str]:
        tls = []
        if self.tls_files:
            ca, cert, key = self.tls_files
            tls = [f"--ssl-ca={ca}", f"--ssl-cert={cert}", f"--ssl-key={key}"]
        return [
            self.mariadbd,
            "--no-defaults",  # keep the system my.cnf (and its port/socket) out
            "--user=root",  # runs as root in containers; mariadbd refuses root without this
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--socket={self.socket}",
            f"--pid-file={self.datadir}/mariadbd.pid",
            # Our own temp dir: information_schema queries (PROCESSLIST has a LONGTEXT column) make
            # on-disk temp tables, and a shared /tmp that other processes clean breaks them.
            f"--tmpdir={self._tmpdir()}",
            f"--log-error={self.log_path}",
            f"--max-connections={self.max_connections}",
            "--skip-name-resolve",  # no DNS on connect: hosts are matched by IP ('%' and '127.0.0.1')
            "--skip-log-bin",
            f"--innodb-buffer-pool-size={self.innodb_buffer_pool_size}",
            "--innodb-log-file-size=16M",
            # Native AIO (io_uring/libaio) is blocked in some container sandboxes; simulated AIO always works.
            "--innodb-use-native-aio=0",
            # Speed: a mariadbd crash still loses nothing with these; only an OS crash would.
            "--innodb-flush-log-at-trx-commit=2",
            "--innodb-doublewrite=0",
            # Without my.cnf the server default is latin1; real deployments run utf8mb4.
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            *tls,
        ]

    def _tmpdir(self) -> Path:
        d = self.base / "tmp"
        d.mkdir(exist_ok=True)
        return d

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        """Start the server on the same port and datadir and wait until it answers."""
        if self.running:
            return
        out = open(self.log_path.with_suffix(".out"), "ab")
        try:
            self.proc = subprocess.Popen(
                self._server_args(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(signal.SIGTERM),
                start_new_session=self.own_session,
            )
        finally:
            out.close()
        self._wait_ready()

    def stop(self, timeout: float = 60.0) -> None:
        """Clean shutdown (SIGTERM); SIGKILL if it hangs."""
        if self.proc is None:
            return
        stop_process(self.proc, timeout)
        self.proc = None

    def kill(self) -> None:
        """Hard crash (SIGKILL), for tests of a server that vanishes without a goodbye."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _ping(self) -> bool:
        if self.admin:
            r = subprocess.run(
                [self.admin, "--no-defaults", "-S", self.socket, "-uroot", "--connect-timeout=2", "ping"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )
            return r.returncode == 0
        try:
            self.root_conn(connect_timeout=2).close()
            return True
        except pymysql.MySQLError:
            return False

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise ServerError(
                    f"mariadbd exited with code {code} during startup; tail of {self.log_path}:\n" + tail(self.log_path)
                )
            if self._ping():
                return
            time.sleep(0.1)
        self.stop(timeout=5)
        raise ServerError(
            f"mariadbd did not answer a ping within {_READY_TIMEOUT:.0f} s; tail of {self.log_path}:\n"
            + tail(self.log_path)
        )

    # -- SQL helpers ----------------------------------------------------------------

    def root_conn(self, **kw: Any) -> pymysql.connections.Connection:
        """A root connection: over the unix socket, or over TCP when host or port is given."""
        args: dict[str, Any] = {"user": "root", "password": "", "autocommit": True, "connect_timeout": 10}
        if "host" in kw or "port" in kw:
            args.update(host=self.host, port=self.port)
        else:
            args["unix_socket"] = self.socket
        args.update(kw)
        return pymysql.connect(**args)

    def sql(self, stmt: str, args: Any = None) -> tuple[tuple[Any, ...], ...]:
        """Run one statement as root and return its rows (empty for statements without a result)."""
        conn = self.root_conn()
        try:
            with conn.cursor() as cur:
                cur.execute(stmt, args)
                return tuple(cur.fetchall())
        finally:
            conn.close()

    @property
    def version(self) -> str:
        return str(self.sql("SELECT VERSION()")[0][0])

    def create_user(self, name: str, password: str, database: str, max_user_connections: int | None = None) -> str:
        """(Re)create ``name``@'%' with all rights on ``database``; returns the name."""
        self.sql("DROP USER IF EXISTS %s@'%%'", (name,))
        limit = ""
        if max_user_connections is not None:
            limit = f" WITH MAX_USER_CONNECTIONS {int(max_user_connections)}"
        self.sql(f"CREATE USER %s@'%%' IDENTIFIED BY %s{limit}", (name, password))
        self.sql(f"GRANT ALL ON `{database}`.* TO %s@'%%'", (name,))
        return name

    def make_account(self, user: str, password: str, database: str) -> None:
        """Database ``database`` and ``user``@'%' with all rights on it.

        With --skip-name-resolve, a TCP login from 127.0.0.1 is matched against '127.0.0.1' and '%',
        never 'localhost'; '%' alone covers both TCP and the unix socket.
        """
        self.sql(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        self.create_user(user, password, database)
