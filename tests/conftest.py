"""Shared test infrastructure: a private MariaDB server and proxy subprocesses.

The suite needs a server it fully controls (account limits, wait_timeout, KILL,
restarts), so it installs a throwaway MariaDB into a temp dir on a random port
once per session instead of using whatever runs on 3306. When the server
binaries are missing the suite fails with what to install: a silent skip would
make a green run that tested nothing.

The proxy always runs as a real subprocess (``python -m proxy run``), the way
systemd runs it, so signal handling, startup and crashes are tested too. Any
``Traceback`` in a proxy's log fails the test that started it.

Helpers that are not fixtures (``count_backend_connections``, ``run_cli``,
``free_port``) can be imported in tests with ``from conftest import ...``.
"""

from __future__ import annotations

import copy
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent

APP_USER = "app"
APP_PASSWORD = "app-secret"
APP_DB = "appdb"

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
_INSTALL_HINT = (
    "the test suite starts its own private MariaDB server and needs the MariaDB binaries; "
    "install them with: apt-get install -y mariadb-server mariadb-client "
    "(or run scripts/test.sh, which does it)"
)
_READY_TIMEOUT = 60.0


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


def require_binary(*names: str) -> str:
    found = find_binary(*names)
    if not found:
        pytest.fail(f"none of {', '.join(names)} found; {_INSTALL_HINT}", pytrace=False)
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


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """preexec_fn: the child gets ``sig`` when pytest dies, so a killed run leaves no servers behind.

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


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(cannot read {path}: {e.strerror})"


def _stop_process(proc: subprocess.Popen[bytes], timeout: float) -> bool:
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


# --------------------------------------------------------------------------- MariaDB


@dataclass
class MariaDB:
    """A private MariaDB server owned by the test session."""

    host: str
    port: int
    socket: str
    datadir: str
    mariadbd: str
    admin: str | None
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    # Globals changed through set_global, with their value before the first change,
    # so the per-test guard can put them back.
    _saved_globals: dict[str, Any] = field(default_factory=dict)

    # -- lifecycle ------------------------------------------------------------------

    def _server_args(self) -> list[str]:
        return [
            self.mariadbd,
            "--no-defaults",  # keep the system my.cnf (and its port/socket) out
            "--user=root",  # the suite runs as root; mariadbd refuses root without this
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={self.datadir}/mariadbd.pid",
            # Our own temp dir: information_schema queries (PROCESSLIST has a LONGTEXT column) make
            # on-disk temp tables, and a shared /tmp that other processes clean breaks them.
            f"--tmpdir={self._tmpdir()}",
            f"--log-error={self.log_path}",
            "--max-connections=500",
            "--skip-name-resolve",  # no DNS on connect: hosts are matched by IP ('%' and '127.0.0.1')
            "--skip-log-bin",
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=16M",
            # Native AIO (io_uring/libaio) is blocked in some container sandboxes; simulated AIO always works.
            "--innodb-use-native-aio=0",
            # Speed: a mariadbd crash still loses nothing with these; only an OS crash would.
            "--innodb-flush-log-at-trx-commit=2",
            "--innodb-doublewrite=0",
            # Without my.cnf the server default is latin1; real deployments run utf8mb4.
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
        ]

    def _tmpdir(self) -> Path:
        d = Path(self.datadir).parent / "tmp"
        d.mkdir(exist_ok=True)
        return d

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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
                preexec_fn=_die_with_parent(signal.SIGTERM),
            )
        finally:
            out.close()
        self._wait_ready()

    def stop(self, timeout: float = 60.0) -> None:
        """Clean shutdown (SIGTERM); SIGKILL if it hangs."""
        if self.proc is None:
            return
        _stop_process(self.proc, timeout)
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
                pytest.fail(
                    f"mariadbd exited with code {code} during startup; tail of {self.log_path}:\n"
                    + _tail(self.log_path),
                    pytrace=False,
                )
            if self._ping():
                return
            time.sleep(0.1)
        self.stop(timeout=5)
        pytest.fail(
            f"mariadbd did not answer a ping within {_READY_TIMEOUT:.0f} s; tail of {self.log_path}:\n"
            + _tail(self.log_path),
            pytrace=False,
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

    def connect(
        self, user: str = APP_USER, password: str = APP_PASSWORD, database: str | None = APP_DB, **kw: Any
    ) -> pymysql.connections.Connection:
        """A direct TCP connection to the server, bypassing the proxy (for differential tests)."""
        args: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": user,
            "password": password,
            "database": database,
            "autocommit": True,
            "connect_timeout": 10,
            "read_timeout": 60,
        }
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

    def set_global(self, name: str, value: Any) -> None:
        """SET GLOBAL; the value from before the test is restored after it."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"not a variable name: {name!r}")
        if name not in self._saved_globals:
            self._saved_globals[name] = self.sql(f"SELECT @@GLOBAL.{name}")[0][0]
        self.sql(f"SET GLOBAL {name} = %s", (value,))

    def restore_globals(self) -> None:
        for name, value in self._saved_globals.items():
            self.sql(f"SET GLOBAL {name} = %s", (value,))
        self._saved_globals.clear()

    def make_user(self, name: str, password: str, max_user_connections: int | None = None) -> str:
        """(Re)create ``name``@'%' with all rights on appdb; returns the name."""
        self.sql("DROP USER IF EXISTS %s@'%%'", (name,))
        limit = ""
        if max_user_connections is not None:
            limit = f" WITH MAX_USER_CONNECTIONS {int(max_user_connections)}"
        self.sql(f"CREATE USER %s@'%%' IDENTIFIED BY %s{limit}", (name, password))
        self.sql(f"GRANT ALL ON `{APP_DB}`.* TO %s@'%%'", (name,))
        return name

    def kill_user_connections(self, user: str) -> int:
        """KILL every server thread of ``user``; returns how many."""
        ids = self.sql("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (user,))
        n = 0
        for (tid,) in ids:
            try:
                self.sql(f"KILL {int(tid)}")
                n += 1
            except pymysql.MySQLError as e:
                if e.args[0] != 1094:  # unknown thread: it ended meanwhile
                    raise
        return n


def _setup_accounts(db: MariaDB) -> None:
    # Anonymous accounts would shadow 'app'@'%' for local logins (the most specific host wins).
    for user, host in db.sql("SELECT User, Host FROM mysql.user WHERE User = ''"):
        db.sql("DROP USER %s@%s", (user, host))
    db.sql(f"CREATE DATABASE IF NOT EXISTS `{APP_DB}`")
    # With --skip-name-resolve, a TCP login from 127.0.0.1 is matched against '127.0.0.1' and '%',
    # never 'localhost'; '%' alone covers both TCP and the unix socket.
    db.make_user(APP_USER, APP_PASSWORD)


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    """A private MariaDB server with database ``appdb`` and account app / app-secret."""
    install = require_binary("mariadb-install-db", "mysql_install_db")
    server = require_binary("mariadbd", "mysqld")
    version = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    if "mariadb" not in version.lower():
        pytest.fail(f"{server} is not MariaDB ({version.strip()}); {_INSTALL_HINT}", pytrace=False)
    admin = find_binary("mariadb-admin", "mysqladmin")

    base = Path(tempfile.mkdtemp(prefix="mpp-mariadb-"))
    datadir = base / "data"
    sock = base / "sock"
    if len(str(sock)) > 100:  # sun_path holds 108 bytes; a long TMPDIR would break the socket
        shutil.rmtree(base)
        base = Path(tempfile.mkdtemp(prefix="mpp-mariadb-", dir="/tmp"))
        datadir, sock = base / "data", base / "sock"

    tmpdir = base / "tmp"  # see MariaDB._tmpdir
    tmpdir.mkdir()
    # Options after the known ones are handed to the bootstrap server: a small redo log
    # from the start saves writing and later resizing 96 MiB.
    r = subprocess.run(
        [
            install,
            "--no-defaults",
            "--user=root",
            f"--datadir={datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--innodb-log-file-size=16M",
            "--innodb-use-native-aio=0",
            f"--tmpdir={tmpdir}",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if r.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(
            f"mariadb-install-db failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}", pytrace=False
        )

    db = MariaDB(
        host="127.0.0.1",
        port=free_port(),
        socket=str(sock),
        datadir=str(datadir),
        mariadbd=server,
        admin=admin,
        log_path=base / "err.log",
    )
    try:
        db.start()
        _setup_accounts(db)
        yield db
    finally:
        db.stop(timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def _mariadb_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the server: bring it back up and undo set_global.

    A test that stops the server and then fails must not take every later test down with it.
    """
    if "mariadb" not in request.fixturenames:
        yield
        return
    db: MariaDB = request.getfixturevalue("mariadb")
    yield
    if not db.running:
        db.start()
    db.restore_globals()


def count_backend_connections(mariadb: MariaDB, user: str) -> int:
    """Server threads currently logged in as ``user`` (what the cap is about)."""
    rows = mariadb.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (user,))
    return int(rows[0][0])


def run_cli(
    port: int,
    user: str,
    password: str,
    sql: str,
    database: str | None = None,
    *,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    timeout: float = 60.0,
) -> tuple[int, str, str]:
    """Run the ``mariadb`` command-line client (-N -B) and return (returncode, stdout, stderr)."""
    client = require_binary("mariadb", "mysql")
    # --password=VALUE, never a bare -p: an empty password would make the client prompt.
    cmd = [
        client,
        "--no-defaults",
        f"-h{host}",
        f"-P{port}",
        "--protocol=TCP",
        f"-u{user}",
        f"--password={password}",
        "--connect-timeout=10",
        "-N",
        "-B",
        *extra_args,
        "-e",
        sql,
    ]
    if database:
        cmd.append(database)
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


# --------------------------------------------------------------------------- proxy


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: nested dicts merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@dataclass
class ProxyProcess:
    """One ``python -m proxy run`` subprocess."""

    host: str
    port: int
    config_path: Path
    log_path: Path
    config: dict[str, Any]
    proc: subprocess.Popen[bytes]
    clients: list[pymysql.connections.Connection] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str | re.Pattern[str], timeout: float = 10.0) -> str:
        """Wait until the log contains ``needle`` (text or regex); returns the log."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if (needle.search(text) if isinstance(needle, re.Pattern) else needle in text):
                return text
            if time.monotonic() > deadline:
                pytest.fail(f"proxy log has no {needle!r} after {timeout} s:\n{text[-6000:]}", pytrace=False)
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait until the listen port accepts TCP; fail with the log on timeout or early exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"proxy exited with code {self.proc.returncode} before listening; log:\n{self.log()[-8000:]}",
                    pytrace=False,
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        pytest.fail(
            f"proxy not listening on {self.host}:{self.port} after {timeout} s; log:\n{self.log()[-8000:]}",
            pytrace=False,
        )

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def connect(self, **kw: Any) -> pymysql.connections.Connection:
        """A PyMySQL client connection through the proxy (app / app-secret / appdb, autocommit)."""
        args: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": APP_USER,
            "password": APP_PASSWORD,
            "database": APP_DB,
            "autocommit": True,
            "connect_timeout": 10,
            # A hang in the proxy must become a test failure, not a stuck suite.
            "read_timeout": 60,
            "write_timeout": 60,
        }
        args.update(kw)
        conn = pymysql.connect(**args)
        self.clients.append(conn)
        return conn

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def reload(self) -> None:
        self.send_signal(signal.SIGHUP)

    def rewrite_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Merge ``changes`` onto the current config and rewrite the file (send SIGHUP to apply)."""
        self.config = _merge(self.config, changes)
        _write_yaml(self.config_path, self.config)
        return self.config

    def close_clients(self) -> None:
        for c in self.clients:
            try:
                c.close()
            except Exception:
                pass
        self.clients.clear()

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit code."""
        if timeout is None:
            timeout = float(self.config.get("shutdown_timeout", 30)) + 10
        _stop_process(self.proc, timeout)
        return self.proc.returncode


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    tmp.chmod(0o600)  # the proxy warns about world-readable files holding passwords
    os.replace(tmp, path)  # atomic: a SIGHUP never reads half a file


def proxy_defaults(mariadb: MariaDB) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "backend": {"host": mariadb.host, "port": mariadb.port, "user": APP_USER, "password": APP_PASSWORD},
        "pool": {"max_connections": 5, "queue_timeout": 10, "connect_timeout": 5},
        # Short drain so fixture teardown is quick; drain tests set their own.
        "shutdown_timeout": 5,
    }


ProxyFactory = Callable[..., ProxyProcess]


@pytest.fixture
def proxy_factory(mariadb: MariaDB, tmp_path: Path) -> Iterator[ProxyFactory]:
    """Start proxies: ``proxy_factory(config_overrides=None, *, wait=True, args=(), log_level="debug")``."""
    started: list[ProxyProcess] = []

    def start(
        config: dict[str, Any] | None = None,
        *,
        wait: bool = True,
        args: Sequence[str] = (),
        log_level: str | None = "debug",
    ) -> ProxyProcess:
        n = len(started)
        cfg = _merge(proxy_defaults(mariadb), config or {})
        config_path = tmp_path / f"proxy{n}.yaml"
        log_path = tmp_path / f"proxy{n}.log"
        _write_yaml(config_path, cfg)
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        # Inherited systemd variables would make the proxy notify (or take sockets from) our runner.
        for var in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(var, None)
        cmd = [sys.executable, "-m", "proxy", "run", "-c", str(config_path)]
        if log_level:
            cmd += ["--log-level", log_level]
        cmd += list(args)
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env=env,
                preexec_fn=_die_with_parent(signal.SIGKILL),
            )
        p = ProxyProcess(
            host=str(cfg["listen"]["host"]),
            port=int(cfg["listen"]["port"]),
            config_path=config_path,
            log_path=log_path,
            config=cfg,
            proc=proc,
        )
        started.append(p)
        if wait:
            p.wait_ready()
        return p

    yield start

    problems: list[str] = []
    for p in started:
        p.close_clients()
        was_running = p.proc.poll() is None
        timeout = float(p.config.get("shutdown_timeout", 30)) + 10
        exited = _stop_process(p.proc, timeout)
        text = p.log()
        mine: list[str] = []
        if not exited:
            mine.append(f"proxy pid {p.pid} ignored SIGTERM for {timeout:.0f} s and was killed")
        elif was_running and p.proc.returncode not in (0, -signal.SIGTERM):
            mine.append(f"proxy pid {p.pid} exited with code {p.proc.returncode} on SIGTERM")
        if "Traceback" in text:
            mine.append(f"proxy pid {p.pid} logged a Traceback")
        if mine:
            problems += mine
            problems.append(f"--- log of pid {p.pid} ({p.log_path}) ---\n{text[-12000:]}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def proxy(proxy_factory: ProxyFactory) -> ProxyProcess:
    """A proxy with the default test config (pool of 5 to the private server)."""
    return proxy_factory()
