"""A private, throwaway MariaDB or MySQL server: install, start, stop, wait until ready.

One implementation for the test suite (tests/conftest.py) and the benchmarks (bench/_server.py),
so a fix to how the server is started reaches both. It has no pytest dependency: failures raise
``ServerError`` (``BinaryNotFound`` when the server binaries are missing) with the log tail, and
conftest turns them into ``pytest.fail``.

The server gets a temp datadir, ``--no-defaults``, a free port (never 3306) bound to 127.0.0.1 and
its own unix socket, so a system server and its my.cnf never come into it.

Which server: ``MYSQL_TEST_SERVER`` (see ``FLAVOURS``), read once here for the tests and the
benchmarks. ``mariadb-10.11`` (the default) is the system's package; the others are fetched by
scripts/get_server.py into a private prefix (on first use, then cached) and run from there.
"""

from __future__ import annotations

import ctypes
import importlib.util
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
_REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Flavour:
    """One server the suite can run on; ``fetched``: by scripts/get_server.py, else the system's package."""

    name: str
    mysql: bool  # Oracle MySQL; False: MariaDB
    fetched: bool

    @property
    def mariadb(self) -> bool:
        return not self.mysql

    @property
    def hint(self) -> str:
        if self.fetched:
            return f"fetch it with: python3 scripts/get_server.py {self.name} (or run scripts/test.sh, which does it)"
        return INSTALL_HINT


FLAVOURS = {
    f.name: f
    for f in (
        Flavour("mariadb-10.11", mysql=False, fetched=False),
        Flavour("mariadb-11.8", mysql=False, fetched=True),
        Flavour("mysql-9.7", mysql=True, fetched=True),
    )
}
DEFAULT_FLAVOUR = "mariadb-10.11"


def current_flavour() -> Flavour:
    """The server ``MYSQL_TEST_SERVER`` names (default mariadb-10.11)."""
    name = os.environ.get("MYSQL_TEST_SERVER") or DEFAULT_FLAVOUR
    if name not in FLAVOURS:
        raise ServerError(f"MYSQL_TEST_SERVER={name!r} is not one of {', '.join(FLAVOURS)}")
    return FLAVOURS[name]


def _get_server_module() -> Any:
    """scripts/get_server.py (scripts/ is not a package)."""
    if "get_server" not in sys.modules:
        spec = importlib.util.spec_from_file_location("get_server", _REPO / "scripts" / "get_server.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules["get_server"] = mod  # dataclasses look their module up while the file runs
        spec.loader.exec_module(mod)
    return sys.modules["get_server"]


def server_prefix(flavour: Flavour) -> Path | None:
    """The fetched server's prefix (fetching it now when it is not cached); None for the system's."""
    if not flavour.fetched:
        return None
    get_server = _get_server_module()
    try:
        return Path(get_server.fetch(flavour.name))
    except get_server.FetchError as e:
        raise BinaryNotFound(f"cannot fetch {flavour.name}: {e}") from None


@dataclass(frozen=True, slots=True)
class Binaries:
    """Where one flavour's programs are."""

    flavour: Flavour
    prefix: Path | None
    server: str
    install: str
    admin: str | None
    client: str | None

    @classmethod
    def find(cls, flavour: Flavour, hint: str) -> Self:
        prefix = server_prefix(flavour)
        if prefix is not None:
            def need(*names: str) -> str:
                for sub in ("sbin", "bin"):
                    for n in names:
                        if (prefix / sub / n).exists():
                            return str(prefix / sub / n)
                raise BinaryNotFound(f"none of {', '.join(names)} in {prefix}; delete it and {flavour.hint}")

            server = need("mysqld") if flavour.mysql else need("mariadbd")
            install = server if flavour.mysql else need("mariadb-install-db")
            return cls(flavour, prefix, server, install, need("mysqladmin", "mariadb-admin"), need("mysql", "mariadb"))
        install = require_binary("mariadb-install-db", "mysql_install_db", hint=hint)
        server = require_binary("mariadbd", "mysqld", hint=hint)
        version = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
        if "mariadb" not in version.lower():
            raise BinaryNotFound(f"{server} is not MariaDB ({version.strip()}); {hint}")
        return cls(
            flavour, None, server, install, find_binary("mariadb-admin", "mysqladmin"), find_binary("mariadb", "mysql")
        )

    def prefixed_args(self) -> list[str]:
        """Where a fetched server finds its messages and plugins (never the system's /usr/share)."""
        if self.prefix is None:
            return []
        share = "mysql" if self.flavour.mysql else "mariadb"
        return [
            f"--basedir={self.prefix}",
            f"--lc-messages-dir={self.prefix / 'share' / share}",
            f"--plugin-dir={self.prefix / 'lib' / 'mysql' / 'plugin'}",
            f"--character-sets-dir={self.prefix / 'share' / share / 'charsets'}",
        ]


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
    # The flavour's programs; None: the system's MariaDB (found when launched).
    bins: Binaries | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def flavour(self) -> Flavour:
        return self.bins.flavour if self.bins else FLAVOURS[DEFAULT_FLAVOUR]

    @property
    def is_mysql(self) -> bool:
        return self.flavour.mysql

    # -- creation -------------------------------------------------------------------

    @classmethod
    def launch(
        cls, *, prefix: str = "mpp-mariadb-", parent: str | None = None, hint: str = INSTALL_HINT, **options: Any
    ) -> Self:
        """Install a fresh datadir, start the server and drop the anonymous accounts.

        ``parent``: where the temp dir goes (default TMPDIR); ``options``: further fields
        (max_connections, innodb_buffer_pool_size, tls_files). The caller owns the result and calls ``remove``.
        """
        flavour = current_flavour()
        bins = Binaries.find(flavour, hint if not flavour.fetched else flavour.hint)

        base = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        if len(str(base / "sock")) > 100:  # sun_path holds 108 bytes; a long TMPDIR would break the socket
            shutil.rmtree(base)
            base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        db = cls(
            host="127.0.0.1",
            port=free_port(),
            socket=str(base / "sock"),
            datadir=str(base / "data"),
            mariadbd=bins.server,
            admin=bins.admin,
            log_path=base / "err.log",
            bins=bins,
            **options,
        )
        try:
            db._install()
            db.start()
            # Anonymous accounts would shadow 'user'@'%' for local logins (the most specific host wins).
            for user, host in db.sql("SELECT User, Host FROM mysql.user WHERE User = ''"):
                db.sql("DROP USER %s@%s", (user, host))
            if db.is_mysql:  # mariadb-install-db makes root@127.0.0.1 too; mysqld --initialize only root@localhost
                db.sql("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''")
                db.sql("GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")
        except BaseException:
            db.remove()
            raise
        return db

    def _install(self) -> None:
        assert self.bins is not None
        if self.is_mysql:
            cmd = [
                self.bins.server,
                "--no-defaults",
                "--initialize-insecure",  # root@localhost with an empty password, as mariadb-install-db makes it
                "--user=root",
                f"--datadir={self.datadir}",
                *self.bins.prefixed_args(),
                f"--log-error={self.log_path}",
                "--innodb-redo-log-capacity=16M",
                "--innodb-use-native-aio=0",
                f"--tmpdir={self._tmpdir()}",
                *self._mysql_only_args(),
            ]
        else:
            cmd = self._mariadb_install_cmd(self.bins.install)
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise ServerError(
                f"{Path(cmd[0]).name} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}\n"
                + tail(self.log_path)
            )

    def _mysql_only_args(self) -> list[str]:
        return [
            "--secure-file-priv=",  # its default, /var/lib/mysql-files, does not exist here
            "--mysqlx=OFF",  # no X protocol port next to ours
            "--local-infile=ON",  # MariaDB's default; MySQL's is OFF (LOAD DATA LOCAL is tested through the proxy)
        ]

    def _mariadb_install_cmd(self, install: str) -> list[str]:
        assert self.bins is not None
        basedir = [f"--basedir={self.bins.prefix}"] if self.bins.prefix else []
        # Options after the known ones are handed to the bootstrap server: a small redo log
        # from the start saves writing and later resizing 96 MiB.
        return [
                install,
                *basedir,
                "--no-defaults",
                "--user=root",
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--innodb-log-file-size=16M",
                "--innodb-use-native-aio=0",
                f"--tmpdir={self._tmpdir()}",
        ]

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
            *self._flavour_args(),
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

    def _flavour_args(self) -> list[str]:
        if self.bins is None:
            return ["--innodb-log-file-size=16M"]
        # MySQL and MariaDB 11.4+ offer TLS with certificates they make themselves; like MariaDB
        # 10.11 the servers here offer none unless tls_files are given, so every flavour starts alike.
        if not self.is_mysql:
            no_tls = [] if self.tls_files else ["--skip-ssl"]
            return [*self.bins.prefixed_args(), "--innodb-log-file-size=16M", *no_tls]
        no_tls = [] if self.tls_files else ["--tls-version="]  # an empty tls_version turns TLS off
        return [*self.bins.prefixed_args(), "--innodb-redo-log-capacity=16M", *self._mysql_only_args(), *no_tls]

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
                [self.admin, "--no-defaults", *self._admin_tls(), "-S", self.socket, "-uroot", "--connect-timeout=2", "ping"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )
            return r.returncode == 0
        try:
            self.root_conn(connect_timeout=2).close()
            return True
        except pymysql.MySQLError:
            return False

    def _admin_tls(self) -> list[str]:
        # MariaDB 11.4+ clients insist on TLS by default; a socket needs none (MySQL's never uses it there).
        return ["--skip-ssl"] if not self.is_mysql and self.bins and self.bins.prefix else []

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
