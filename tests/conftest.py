"""Shared test infrastructure: a private MariaDB server and proxy subprocesses.

The suite needs a server it fully controls (account limits, wait_timeout, KILL,
restarts), so it installs a throwaway MariaDB into a temp dir on a random port
once per session instead of using whatever runs on 3306 (tests/mariadb_server.py,
shared with the benchmarks). When the server
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
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
from pymysql.constants import SERVER_STATUS
import pytest
import yaml

import mariadb_server
# find_binary and free_port are re-exported: tests import them with ``from conftest import ...``.
from mariadb_server import ServerError, die_with_parent, find_binary, free_port, stop_process  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parent.parent

APP_USER = "app"
APP_PASSWORD = "app-secret"
APP_DB = "appdb"

_INSTALL_HINT = (
    "the test suite starts its own private MariaDB server and needs the MariaDB binaries; "
    "install them with: apt-get install -y mariadb-server mariadb-client "
    "(or run scripts/test.sh, which does it)"
)

# The server the whole run uses (MYSQL_TEST_SERVER, tests/mariadb_server.py). Tests that only make
# sense on one flavour skip with a reason that names it: ``pytest.mark.skipif(SERVER.mysql, reason=...)``.
try:
    SERVER = mariadb_server.current_flavour()
except ServerError as e:
    raise pytest.UsageError(str(e)) from None


def pytest_report_header(config: pytest.Config) -> str:
    how = "fetched by scripts/get_server.py" if SERVER.fetched else "the system's package"
    return f"test server: {SERVER.name} ({how}; MYSQL_TEST_SERVER selects it)"


def require_binary(*names: str) -> str:
    # A missing server is a failure with what to install, never a skip (see the module docstring).
    try:
        return mariadb_server.require_binary(*names, hint=_INSTALL_HINT)
    except ServerError as e:
        pytest.fail(str(e), pytrace=False)


# --------------------------------------------------------------------------- MariaDB

# The seq_1_to_N tables the tests read (MariaDB's sequence engine; views on MySQL, see add_sequence_views).
SEQUENCE_SIZES = (3, 5, 57, 3000, 5000, 50000, 100000, 150000)


@dataclass
class MariaDB(mariadb_server.MariaDB):
    """The session's private MariaDB server (tests/mariadb_server.py) plus test helpers."""

    # Globals changed through set_global, with their value before the first change,
    # so the per-test guard can put them back.
    _saved_globals: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        """Start the server on the same port and datadir and wait until it answers."""
        try:
            super().start()
        except ServerError as e:
            pytest.fail(str(e), pytrace=False)
        self.warm_login_cache()

    def warm_login_cache(self) -> None:
        """On MySQL: one login as the app account, so the server caches its caching_sha2_password.

        A cold cache makes the next login take the full path, which without TLS needs the
        server's RSA key; the MariaDB 10.11 command-line client (run_cli) cannot fetch that key
        and is refused. PyMySQL can, and after it the server answers every client on the fast path.
        (The proxy's own full login is tested in test_auth.py with a cold cache.)
        """
        if not self.is_mysql:
            return
        try:
            self.connect().close()
        except pymysql.MySQLError:
            pass  # before make_account there is no app account yet

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
        return self.create_user(name, password, APP_DB, max_user_connections)

    def add_sequence_views(self, database: str) -> None:
        """``seq_1_to_N`` in ``database`` on MySQL, as MariaDB's sequence engine has it built in.

        Tests read rows of known numbers with ``SELECT seq FROM seq_1_to_N``; on MySQL the same
        statement reads a view over one table of numbers (the sizes the tests use).
        """
        top = max(SEQUENCE_SIZES)
        self.sql(f"CREATE TABLE IF NOT EXISTS `{database}`.mpp_numbers (seq BIGINT UNSIGNED PRIMARY KEY)")
        conn = self.root_conn()
        try:
            with conn.cursor() as cur:
                cur.execute(f"SET SESSION cte_max_recursion_depth = {top}")
                cur.execute(
                    f"INSERT IGNORE INTO `{database}`.mpp_numbers WITH RECURSIVE s (n) AS "
                    f"(SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {top}) SELECT n FROM s"
                )
        finally:
            conn.close()
        for n in SEQUENCE_SIZES:
            self.sql(f"CREATE OR REPLACE VIEW `{database}`.seq_1_to_{n} AS "
                     f"SELECT seq FROM `{database}`.mpp_numbers WHERE seq <= {n}")

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


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    """A private MariaDB server with database ``appdb`` and account app / app-secret."""
    try:
        db = MariaDB.launch(prefix="mpp-mariadb-", hint=_INSTALL_HINT)
    except ServerError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        db.make_account(APP_USER, APP_PASSWORD, APP_DB)
        if db.is_mysql:
            db.add_sequence_views(APP_DB)
            db.warm_login_cache()
        yield db
    finally:
        db.remove()


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


def recv_packet(sock: socket.socket) -> tuple[int, bytes]:
    """(sequence id, payload) of exactly one packet from a blocking socket, nothing more: after an
    SSLRequest the TLS handshake must stay in the socket. Raises ConnectionError on a close."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    head = exactly(4)
    return head[3], exactly(int.from_bytes(head[:3], "little"))


def count_backend_connections(mariadb: MariaDB, user: str) -> int:
    """Server threads currently logged in as ``user`` (what the cap is about)."""
    rows = mariadb.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (user,))
    return int(rows[0][0])


def in_transaction(conn: pymysql.connections.Connection) -> int:
    """1 when the server session that answers ``conn``'s next statement is inside a transaction, else 0.

    MariaDB answers ``SELECT @@in_transaction``. MySQL has no such variable; the answer to any
    statement carries the server's SERVER_STATUS_IN_TRANS flag (which drivers read for the same
    question), so on MySQL a ``DO 0`` is sent and its OK's flag read.
    """
    with conn.cursor() as cur:
        if not SERVER.mysql:
            cur.execute("SELECT @@in_transaction")
            return int(cur.fetchone()[0])
        cur.execute("DO 0")
    return int(bool(conn.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS))


def run_cli(
    port: int,
    user: str,
    password: str,
    sql: str,
    database: str | None = None,
    *,
    host: str = "127.0.0.1",
    unix_socket: str | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 60.0,
) -> tuple[int, str, str]:
    """Run the ``mariadb`` command-line client (-N -B) and return (returncode, stdout, stderr).

    Over TCP to host:port, or over ``unix_socket`` when given (port is then ignored).
    """
    client = require_binary("mariadb", "mysql")
    where = [f"-S{unix_socket}", "--protocol=SOCKET"] if unix_socket else [f"-h{host}", f"-P{port}", "--protocol=TCP"]
    # --password=VALUE, never a bare -p: an empty password would make the client prompt.
    cmd = [
        client,
        "--no-defaults",
        *where,
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
        stop_process(self.proc, timeout)
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
        # stall_timeout off: many tests exhaust a small pool on purpose (a pinned client holds the
        # only link, the next waits) to prove pins; the stall breaker, which would end such a wait
        # by closing the holder after a second, has tests of its own (tests/test_stall.py).
        "pool": {"max_connections": 5, "queue_timeout": 10, "connect_timeout": 5, "stall_timeout": 0},
        # Short drain so fixture teardown is quick; drain tests set their own.
        "shutdown_timeout": 5,
    }


ProxyFactory = Callable[..., ProxyProcess]


def _wait_for_links_gone(mariadb: MariaDB, timeout: float = 5.0) -> None:
    """After a test's proxies exit, wait until the server has ended their links' threads.

    The server ends a closed connection's thread in its own time, which on a loaded machine
    can outlast the proxy. The next test's counts of the app account's connections (the cap
    checks) must see only its own proxy's links. Gives up quietly: a server a test left
    stopped, or slow, is the next test's fixture's business.
    """
    deadline = time.monotonic() + timeout
    try:
        while count_backend_connections(mariadb, APP_USER) and time.monotonic() < deadline:
            time.sleep(0.05)
    except Exception:  # noqa: BLE001 - the server may be down after a fault test
        pass


# Puts the listening sockets named by argv's fds at 3, 4 ... and execs the rest of argv with
# LISTEN_FDS and LISTEN_PID set, as systemd does for a socket-activated service (exec keeps the pid).
_SOCKET_ACTIVATE = """
import fcntl, os, sys
cut = sys.argv.index("--")
fds, cmd = [int(a) for a in sys.argv[1:cut]], sys.argv[cut + 1:]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for n, fd in enumerate(high):
    os.dup2(fd, 3 + n)
os.environ.update(LISTEN_FDS=str(len(fds)), LISTEN_PID=str(os.getpid()))
os.execv(cmd[0], cmd)
"""


@pytest.fixture
def proxy_factory(mariadb: MariaDB, tmp_path: Path) -> Iterator[ProxyFactory]:
    """Start proxies: ``proxy_factory(config_overrides=None, *, wait=True, args=(), log_level="debug", inherit=())``.

    ``inherit``: listening sockets handed over as systemd's socket activation does.
    """
    started: list[ProxyProcess] = []

    def start(
        config: dict[str, Any] | None = None,
        *,
        wait: bool = True,
        args: Sequence[str] = (),
        log_level: str | None = "debug",
        inherit: Sequence[socket.socket] = (),
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
        if inherit:  # socket activation, as systemd does it: fds 3, 4 ..., LISTEN_FDS, LISTEN_PID
            cmd = [sys.executable, "-c", _SOCKET_ACTIVATE, *(str(s.fileno()) for s in inherit), "--", *cmd]
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                pass_fds=[s.fileno() for s in inherit],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env=env,
                preexec_fn=die_with_parent(signal.SIGKILL),
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
        exited = stop_process(p.proc, timeout)
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
    if started:
        _wait_for_links_gone(mariadb)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def proxy(proxy_factory: ProxyFactory) -> ProxyProcess:
    """A proxy with the default test config (pool of 5 to the private server)."""
    return proxy_factory()
