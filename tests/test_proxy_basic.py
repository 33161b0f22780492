"""The client side of the proxy: greeting, authentication, errors, real clients, the command line.

Expected answers come from the private server itself wherever it has one
(differential): the proxy must answer a client the way a direct connection would.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pymysql
import pytest
import yaml

import proxy as proxy_pkg
from conftest import APP_DB, APP_PASSWORD, APP_USER, REPO_ROOT, free_port, run_cli

NATIVE = "mysql_native_password"
SHA2 = "caching_sha2_password"

# Capability flags a minimal 4.1 client sends (PROTOCOL_41, SECURE_CONNECTION, PLUGIN_AUTH,
# PLUGIN_AUTH_LENENC_CLIENT_DATA, LONG_PASSWORD, TRANSACTIONS, CONNECT_WITH_DB when a schema is named).
CLIENT_LONG_PASSWORD = 1
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_TRANSACTIONS = 1 << 13
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_PLUGIN_AUTH_LENENC = 1 << 21
RAW_CLIENT_CAPS = (
    CLIENT_LONG_PASSWORD
    | CLIENT_PROTOCOL_41
    | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION
    | CLIENT_PLUGIN_AUTH
    | CLIENT_PLUGIN_AUTH_LENENC
)


# --------------------------------------------------------------------------- a raw protocol client
# Written from the protocol documentation, independent of the proxy's own codecs.


def native_scramble(password: str, salt: bytes) -> bytes:
    s1 = hashlib.sha1(password.encode()).digest()
    s2 = hashlib.sha1(s1).digest()
    s3 = hashlib.sha1(salt + s2).digest()
    return bytes(a ^ b for a, b in zip(s1, s3))


def sha2_scramble(password: str, salt: bytes) -> bytes:
    p1 = hashlib.sha256(password.encode()).digest()
    p2 = hashlib.sha256(p1).digest()
    p3 = hashlib.sha256(p2 + salt).digest()
    return bytes(a ^ b for a, b in zip(p1, p3))


class RawClient:
    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)

    def close(self) -> None:
        self.sock.close()

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"peer closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def recv(self) -> tuple[int, bytes]:
        head = self._recv_exact(4)
        length = int.from_bytes(head[:3], "little")
        return head[3], self._recv_exact(length)

    def send(self, payload: bytes, seq: int) -> None:
        self.sock.sendall(len(payload).to_bytes(3, "little") + bytes((seq,)) + payload)

    def greeting(self) -> dict:
        seq, p = self.recv()
        assert seq == 0, f"greeting has sequence id {seq}"
        assert p[0] == 10, f"not a protocol-10 greeting: {p[:40]!r}"
        end = p.index(b"\0", 1)
        version = p[1:end].decode()
        pos = end + 1
        conn_id = struct.unpack_from("<I", p, pos)[0]
        pos += 4
        salt1 = p[pos : pos + 8]
        pos += 9  # + filler
        caps = struct.unpack_from("<H", p, pos)[0]
        pos += 2
        pos += 1 + 2  # collation, status
        caps |= struct.unpack_from("<H", p, pos)[0] << 16
        pos += 2
        salt_len = p[pos]
        pos += 1 + 10
        n = max(13, salt_len - 8)
        salt2 = p[pos : pos + n].rstrip(b"\0")
        pos += n
        plugin = p[pos:].split(b"\0", 1)[0].decode()
        return {"version": version, "id": conn_id, "salt": salt1 + salt2, "caps": caps, "plugin": plugin}

    def handshake_response(self, user: str, auth: bytes, plugin: str, database: str | None = None) -> None:
        caps = RAW_CLIENT_CAPS | (CLIENT_CONNECT_WITH_DB if database else 0)
        body = struct.pack("<IIB", caps, 1 << 24, 45) + b"\0" * 23 + user.encode() + b"\0"
        body += bytes((len(auth),)) + auth
        if database:
            body += database.encode() + b"\0"
        body += plugin.encode() + b"\0"
        self.send(body, 1)

    def query(self, sql: str) -> list[list[bytes | None]]:
        """COM_QUERY; returns the text rows, raises on ERR."""
        self.send(b"\x03" + sql.encode(), 0)
        seq, p = self.recv()
        check_not_err(p)
        if p[0] == 0:
            return []
        ncols = p[0]
        for _ in range(ncols):
            self.recv()
        _, eof = self.recv()
        assert eof[0] == 0xFE
        rows = []
        while True:
            _, p = self.recv()
            if p[0] == 0xFE and len(p) < 9:
                return rows
            check_not_err(p)
            row, pos = [], 0
            for _ in range(ncols):
                if p[pos] == 0xFB:
                    row.append(None)
                    pos += 1
                else:
                    n = p[pos]
                    pos += 1
                    row.append(p[pos : pos + n])
                    pos += n
            rows.append(row)


def parse_err(p: bytes) -> tuple[int, str, str]:
    assert p[0] == 0xFF, f"expected an ERR packet, got {p[:60]!r}"
    code = struct.unpack_from("<H", p, 1)[0]
    assert p[3:4] == b"#", f"ERR packet without SQLSTATE marker: {p!r}"
    return code, p[4:9].decode(), p[9:].decode()


def check_not_err(p: bytes) -> None:
    if p and p[0] == 0xFF:
        raise AssertionError(f"server error {parse_err(p)}")


# --------------------------------------------------------------------------- greeting and ids


def test_greeting_carries_a_proxy_side_connection_id(proxy) -> None:
    raws = [RawClient(proxy.host, proxy.port) for _ in range(3)]
    try:
        greetings = [r.greeting() for r in raws]
    finally:
        for r in raws:
            r.close()
    ids = [g["id"] for g in greetings]
    assert len(set(ids)) == 3, f"greetings gave non-unique ids {ids}"
    assert all(i > 0 for i in ids)
    # The default plugin is the one MySQL 8.4/9 clients need (they have no mysql_native_password).
    assert all(g["plugin"] == SHA2 for g in greetings)
    assert all(len(g["salt"]) == 20 for g in greetings)

    conn = proxy.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID(), @@pseudo_thread_id")
        proxy_id, backend_thread = cur.fetchone()
        assert proxy_id == conn.thread_id(), "CONNECTION_ID() must be the id the greeting gave"
        assert proxy_id != backend_thread, "the greeting id must be the proxy's, not the server thread's"
        assert proxy_id not in ids  # a new client, a new id
        cur.execute("SELECT CONNECTION_ID() + 0 AS x, 1")
        assert cur.fetchone() == (proxy_id, 1)
    other = proxy.connect()
    assert other.thread_id() != conn.thread_id()


def test_kill_query_with_the_proxy_id_interrupts_that_client(proxy) -> None:
    victim = proxy.connect()
    killer = proxy.connect()
    result: dict = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            with victim.cursor() as cur:
                cur.execute("SELECT SLEEP(20)")
                result["rows"] = cur.fetchall()
        except pymysql.MySQLError as e:
            result["error"] = e.args
        result["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=run)
    t.start()
    try:
        # Poll until the victim's statement runs on the server.
        deadline = time.monotonic() + 10
        with killer.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(20)'")
                if cur.fetchone()[0]:
                    break
                time.sleep(0.02)
            else:
                pytest.fail("the victim's SLEEP never showed up in the server's PROCESSLIST")
            cur.execute(f"KILL QUERY {victim.thread_id()}")
    finally:
        t.join(30)
    assert result.get("elapsed", 99) < 10, result
    # A killed SLEEP returns 1 (MariaDB) or the client gets 1317: both mean it was interrupted.
    assert result.get("rows") == ((1,),) or result.get("error", (0,))[0] == 1317, result
    with victim.cursor() as cur:
        cur.execute("SELECT 7")
        assert cur.fetchone() == (7,)


# --------------------------------------------------------------------------- authentication


@pytest.mark.parametrize("plugin", [NATIVE, SHA2])
def test_pymysql_logs_in_with_each_plugin(proxy_factory, plugin: str) -> None:
    p = proxy_factory({"listen": {"auth_plugin": plugin}})
    raw = RawClient(p.host, p.port)
    try:
        assert raw.greeting()["plugin"] == plugin
    finally:
        raw.close()
    conn = p.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER(), DATABASE()")
        assert cur.fetchone() == (f"{APP_USER}@%", APP_DB)
    with pytest.raises(pymysql.err.OperationalError) as ei:
        p.connect(password="wrong")
    assert ei.value.args[0] == 1045


@pytest.mark.parametrize("plugin", [NATIVE, SHA2])
def test_raw_login_with_each_plugin(proxy_factory, plugin: str) -> None:
    """A client that answers the greeting with the greeting's plugin; caching_sha2 takes the fast path."""
    p = proxy_factory({"listen": {"auth_plugin": plugin}})
    raw = RawClient(p.host, p.port)
    try:
        g = raw.greeting()
        scramble = native_scramble if plugin == NATIVE else sha2_scramble
        raw.handshake_response(APP_USER, scramble(APP_PASSWORD, g["salt"]), plugin, APP_DB)
        seq, pkt = raw.recv()
        if plugin == SHA2:
            assert (seq, pkt) == (2, b"\x01\x03"), f"expected fast-auth success, got {seq} {pkt!r}"
            seq, pkt = raw.recv()
        assert pkt[0] == 0x00, f"expected OK, got {pkt!r}"
        assert seq == (3 if plugin == SHA2 else 2)
        assert raw.query("SELECT CURRENT_USER(), DATABASE()") == [[b"app@%", APP_DB.encode()]]
    finally:
        raw.close()


@pytest.mark.parametrize("plugin", [NATIVE, SHA2])
def test_auth_switch_for_an_unknown_client_plugin(proxy_factory, plugin: str) -> None:
    """A client that names a plugin the proxy does not speak is asked to switch (0xFE) to the proxy's."""
    p = proxy_factory({"listen": {"auth_plugin": plugin}})
    raw = RawClient(p.host, p.port)
    try:
        g = raw.greeting()
        raw.handshake_response(APP_USER, b"\x01" * 32, "client_ed25519", APP_DB)
        seq, pkt = raw.recv()
        assert seq == 2
        assert pkt[0] == 0xFE, f"expected an AuthSwitchRequest, got {pkt!r}"
        name, _, data = pkt[1:].partition(b"\0")
        assert name.decode() == plugin
        salt = data.rstrip(b"\0")
        assert len(salt) == 20, f"auth switch carries a {len(salt)}-byte scramble"
        scramble = native_scramble if plugin == NATIVE else sha2_scramble
        raw.send(scramble(APP_PASSWORD, salt), 3)
        seq, pkt = raw.recv()
        if plugin == SHA2:
            assert (seq, pkt) == (4, b"\x01\x03")
            seq, pkt = raw.recv()
        assert pkt[0] == 0x00, f"expected OK after the switch, got {pkt!r}"
        assert raw.query("SELECT CURRENT_USER()") == [[b"app@%"]]
    finally:
        raw.close()
    assert g["id"] > 0


def test_auth_switch_with_a_wrong_password_is_refused(proxy) -> None:
    raw = RawClient(proxy.host, proxy.port)
    try:
        raw.greeting()
        raw.handshake_response(APP_USER, b"\x01" * 32, "dialog", None)
        seq, pkt = raw.recv()
        assert pkt[0] == 0xFE
        salt = pkt[1:].partition(b"\0")[2].rstrip(b"\0")
        raw.send(native_scramble("not-the-password", salt), 3)
        seq, pkt = raw.recv()
        assert seq == 4
        code, state, message = parse_err(pkt)
        assert (code, state) == (1045, "28000")
        assert message == f"Access denied for user '{APP_USER}'@'127.0.0.1' (using password: YES)"
    finally:
        raw.close()


def test_refused_logins_look_like_the_servers(mariadb, proxy) -> None:
    cases = [(APP_USER, "wrong-password"), (APP_USER, ""), ("nobody", "x"), ("nobody", "")]
    for user, password in cases:
        with pytest.raises(pymysql.err.OperationalError) as direct:
            mariadb.connect(user=user, password=password)
        with pytest.raises(pymysql.err.OperationalError) as proxied:
            proxy.connect(user=user, password=password)
        assert proxied.value.args == direct.value.args, f"user {user!r} password {password!r}"
        assert direct.value.args[0] == 1045


def test_wrong_password_raw_err_packet_has_sqlstate(proxy) -> None:
    raw = RawClient(proxy.host, proxy.port)
    try:
        g = raw.greeting()
        raw.handshake_response(APP_USER, native_scramble("bad", g["salt"]), NATIVE)
        seq, pkt = raw.recv()
        assert seq == 2
        assert parse_err(pkt)[:2] == (1045, "28000")
        # ... and the proxy closes the connection, as the server does.
        raw.sock.settimeout(5)
        assert raw.sock.recv(1) == b""
    finally:
        raw.close()


def test_client_accounts_from_the_users_list(proxy_factory) -> None:
    p = proxy_factory({"users": [{"user": "webapp", "password": "web-pw"}]})
    conn = p.connect(user="webapp", password="web-pw")
    with conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone() == (f"{APP_USER}@%",)  # the backend account does the work
    with pytest.raises(pymysql.err.OperationalError) as ei:
        p.connect(user="webapp", password=APP_PASSWORD)
    assert ei.value.args[0] == 1045
    with pytest.raises(pymysql.err.OperationalError) as ei:
        p.connect(user=APP_USER, password=APP_PASSWORD)  # not a client account when users are listed
    assert ei.value.args[0] == 1045


def test_unknown_database_at_login_like_the_server(mariadb, proxy) -> None:
    with pytest.raises(pymysql.MySQLError) as direct:
        mariadb.connect(database="no_such_db")
    with pytest.raises(pymysql.MySQLError) as proxied:
        proxy.connect(database="no_such_db")
    assert proxied.value.args == direct.value.args


# --------------------------------------------------------------------------- commands and errors


@pytest.mark.parametrize("command", [0x40, 0x1D])
def test_unknown_command_gets_err_and_the_connection_goes_on(mariadb, proxy, command: int) -> None:
    def send_unknown(conn: pymysql.connections.Connection) -> tuple:
        conn._execute_command(command, b"")
        with pytest.raises(pymysql.MySQLError) as ei:
            conn._read_ok_packet()
        return ei.value.args

    direct = send_unknown(mariadb.connect())
    conn = proxy.connect()
    got = send_unknown(conn)
    assert got[0] == direct[0] == 1047
    assert got[1]
    with conn.cursor() as cur:
        cur.execute("SELECT 41 + 1")
        assert cur.fetchone() == (42,)
    conn.ping(reconnect=False)


def test_ping_and_init_db(proxy, mariadb) -> None:
    mariadb.sql("CREATE DATABASE IF NOT EXISTS basic_other")
    mariadb.sql("GRANT ALL ON basic_other.* TO 'app'@'%'")
    conn = proxy.connect()
    conn.ping(reconnect=False)
    conn.select_db("basic_other")
    with conn.cursor() as cur:
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone() == ("basic_other",)
    with pytest.raises(pymysql.MySQLError) as direct:
        mariadb.connect().select_db("no_such_db_either")
    with pytest.raises(pymysql.MySQLError) as proxied:
        conn.select_db("no_such_db_either")
    assert proxied.value.args == direct.value.args
    with conn.cursor() as cur:
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone() == ("basic_other",)


# --------------------------------------------------------------------------- the mariadb CLI


def test_cli_client_runs_queries(proxy, mariadb) -> None:
    mariadb.sql(f"DROP TABLE IF EXISTS {APP_DB}.cli_t")
    script = (
        "CREATE TABLE cli_t (id INT PRIMARY KEY, v VARCHAR(20));"
        "INSERT INTO cli_t VALUES (1, 'one'), (2, 'two');"
        "BEGIN; INSERT INTO cli_t VALUES (3, 'three'); ROLLBACK;"
        "BEGIN; INSERT INTO cli_t VALUES (4, 'four'); COMMIT;"
        "SELECT id, v FROM cli_t ORDER BY id;"
        "SELECT CURRENT_USER(), DATABASE();"
    )
    rc, out, err = run_cli(proxy.port, APP_USER, APP_PASSWORD, script, APP_DB)
    assert rc == 0, err
    assert out.splitlines() == ["1\tone", "2\ttwo", "4\tfour", f"{APP_USER}@%\t{APP_DB}"]
    assert mariadb.sql(f"SELECT COUNT(*) FROM {APP_DB}.cli_t") == ((3,),)


@pytest.mark.parametrize(
    "sql",
    [
        "SELEC 1",
        "SELECT * FROM no_such_table_cli",
        "DROP TABLE IF EXISTS cli_dup; CREATE TABLE cli_dup (id INT PRIMARY KEY); "
        "INSERT INTO cli_dup VALUES (1); INSERT INTO cli_dup VALUES (1)",
    ],
    ids=["syntax", "no-table", "duplicate"],
)
def test_cli_errors_are_the_servers(mariadb, proxy, sql: str) -> None:
    d_rc, d_out, d_err = run_cli(mariadb.port, APP_USER, APP_PASSWORD, sql, APP_DB)
    p_rc, p_out, p_err = run_cli(proxy.port, APP_USER, APP_PASSWORD, sql, APP_DB)
    assert d_rc != 0 and "ERROR" in d_err  # the script does fail against the server
    assert (p_rc, p_out, p_err) == (d_rc, d_out, d_err)


def test_cli_wrong_password_like_the_server(mariadb, proxy) -> None:
    d = run_cli(mariadb.port, APP_USER, "bad-password", "SELECT 1")
    p = run_cli(proxy.port, APP_USER, "bad-password", "SELECT 1")
    assert d[0] != 0 and "1045" in d[2]
    assert p == d


@pytest.mark.parametrize("plugin", [NATIVE, SHA2])
def test_cli_logs_in_with_each_plugin(proxy_factory, plugin: str) -> None:
    p = proxy_factory({"listen": {"auth_plugin": plugin}})
    rc, out, err = run_cli(p.port, APP_USER, APP_PASSWORD, "SELECT CURRENT_USER(), 6 * 7", APP_DB)
    assert (rc, out, err) == (0, f"{APP_USER}@%\t42\n", "")


# --------------------------------------------------------------------------- chained proxies


def test_chained_proxies_backend_caching_sha2(mariadb, proxy_factory) -> None:
    """Proxy A's backend is proxy B, which greets with caching_sha2_password: A's backend auth path."""
    mariadb.sql(f"DROP TABLE IF EXISTS {APP_DB}.chain_t")
    mariadb.sql(f"CREATE TABLE {APP_DB}.chain_t (id INT PRIMARY KEY)")
    b = proxy_factory({"listen": {"auth_plugin": SHA2}, "pool": {"max_connections": 4}})
    raw = RawClient(b.host, b.port)
    try:
        assert raw.greeting()["plugin"] == SHA2
    finally:
        raw.close()
    a = proxy_factory({"backend": {"host": b.host, "port": b.port}, "pool": {"max_connections": 2}})
    conn = a.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER(), DATABASE(), VERSION()")
        user, db, version = cur.fetchone()
        assert (user, db) == (f"{APP_USER}@%", APP_DB)
        assert version == mariadb.version  # the server's own, through both proxies
        cur.execute("BEGIN")
        cur.execute("INSERT INTO chain_t VALUES (1)")
        cur.execute("ROLLBACK")
        cur.execute("INSERT INTO chain_t VALUES (2)")
        with pytest.raises(pymysql.err.IntegrityError) as ei:
            cur.execute("INSERT INTO chain_t VALUES (2)")
        assert ei.value.args[0] == 1062
    assert mariadb.sql(f"SELECT id FROM {APP_DB}.chain_t") == ((2,),)
    rc, out, err = run_cli(a.port, APP_USER, APP_PASSWORD, "SELECT COUNT(*) FROM chain_t", APP_DB)
    assert (rc, out) == (0, "1\n"), err
    # A first: B would otherwise wait its shutdown_timeout for A's links (pinned: they set the trackers).
    a.close_clients()
    assert a.stop() in (0, -15)


def test_chained_proxies_clear_a_schema_with_caching_sha2(proxy_factory) -> None:
    """A session with no database on a link that has one: A unselects it with COM_CHANGE_USER,
    answering B's caching_sha2_password scramble (the MySQL 8 path of backend.clear_schema)."""
    b = proxy_factory({"listen": {"auth_plugin": SHA2}, "pool": {"max_connections": 2}})
    a = proxy_factory({"backend": {"host": b.host, "port": b.port}, "pool": {"max_connections": 1}})
    with_db, nodb = a.connect(), a.connect(database=None)
    for _ in range(2):
        with with_db.cursor() as cur:
            cur.execute("SELECT DATABASE(), CURRENT_USER()")
            assert cur.fetchone() == (APP_DB, f"{APP_USER}@%")
        with nodb.cursor() as cur:
            cur.execute("SELECT DATABASE(), CURRENT_USER()")
            assert cur.fetchone() == (None, f"{APP_USER}@%")
    a.close_clients()
    assert a.stop() in (0, -15)


def test_backend_over_the_servers_unix_socket(mariadb, proxy_factory) -> None:
    """``backend.unix_socket`` wins over host/port: here host/port lead nowhere, so only the socket can work."""
    p = proxy_factory({"backend": {"unix_socket": mariadb.socket, "host": "127.0.0.1", "port": free_port()}})
    conn = p.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER(), DATABASE()")
        assert cur.fetchone() == (f"{APP_USER}@%", APP_DB)
        # The server thread running this very statement (the only one whose text has the marker):
        # a socket connection shows as 'localhost', a TCP one as 'host:port'.
        cur.execute("SELECT HOST FROM information_schema.PROCESSLIST WHERE INFO LIKE '%socket-probe-7%'")
        assert cur.fetchall() == (("localhost",),)
    rc, out, err = run_cli(p.port, APP_USER, APP_PASSWORD, "SELECT 40 + 2", APP_DB)
    assert (rc, out) == (0, "42\n"), err
    check = _run(["check", "-c", str(p.config_path)])
    assert check.returncode == 0 and mariadb.socket in check.stdout, (check.stdout, check.stderr)


def test_chained_proxies_wrong_backend_password_is_refused(mariadb, proxy_factory) -> None:
    """Proxy B really checks the caching_sha2 scramble proxy A sends: a wrong one is refused with 1045."""
    b = proxy_factory({"listen": {"auth_plugin": SHA2}, "pool": {"max_connections": 2}})
    a = proxy_factory(
        {
            "backend": {"host": b.host, "port": b.port, "password": "not-the-password"},
            "users": [{"user": "front", "password": "front-pw"}],
            "pool": {"max_connections": 1, "queue_timeout": 1.5},
        }
    )
    # The client's own login is A's business; its first statement (PyMySQL's SET NAMES) needs a link.
    with pytest.raises(pymysql.MySQLError) as ei:
        conn = a.connect(user="front", password="front-pw", database=None)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    assert "(1045)" in str(ei.value.args[1]), ei.value.args
    assert "Access denied" in str(ei.value.args[1])


# --------------------------------------------------------------------------- the command line


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("mysql-pool-proxy")
    if exe.exists():
        return [str(exe)]
    pytest.fail(f"the mysql-pool-proxy console script is not installed next to {sys.executable} "
                "(pip install -e .)", pytrace=False)


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("MPP_TEST_UNSET", None)
    return subprocess.run(_cli() + args, capture_output=True, text=True, timeout=30, cwd=REPO_ROOT, env=env)


def test_version() -> None:
    r = _run(["--version"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"mysql-pool-proxy {proxy_pkg.__version__}"
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(proxy_pkg.__version__)}"', pyproject, re.M)


def _good_config() -> dict:
    return {
        "listen": {"host": "127.0.0.1", "port": 3310},
        "backend": {"host": "127.0.0.1", "port": 3306, "user": "app", "password": "s3cret-value"},
        "pool": {"max_connections": 3, "queue_timeout": 5},
    }


def _write(tmp_path: Path, data: object, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    path.chmod(0o600)
    return path


def test_check_accepts_a_good_config(tmp_path: Path) -> None:
    r = _run(["check", "-c", str(_write(tmp_path, _good_config()))])
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout
    assert "s3cret-value" not in r.stdout + r.stderr, "check must never print a password"


def test_check_accepts_the_shipped_example() -> None:
    examples = sorted((REPO_ROOT / "config").glob("*.y*ml"))
    assert examples, "the repo ships a documented example config in config/"
    env_defaults = {"MYSQL_PASSWORD": "x", "DB_PASSWORD": "x", "BACKEND_PASSWORD": "x"}
    for path in examples:
        env = {**os.environ, **env_defaults}
        r = subprocess.run(_cli() + ["check", "-c", str(path)], capture_output=True, text=True, timeout=30, env=env)
        assert r.returncode == 0, f"{path}: {r.stdout}{r.stderr}"


@pytest.mark.parametrize(
    ("change", "key_path"),
    [
        ({"pool": {"max_connections": 0}}, "pool.max_connections"),
        ({"pool": {"max_conections": 3}}, "pool.max_conections"),
        ({"pool": {"queue_timeout": "soon"}}, "pool.queue_timeout"),
        ({"listen": {"port": "not-a-port"}}, "listen.port"),
        ({"listen": {"port": 70000}}, "listen.port"),
        ({"listen": {"auth_plugin": "dialog"}}, "listen.auth_plugin"),
        ({"backend": {"user": ""}}, "backend.user"),
        ({"backend": {"password": "${MPP_TEST_UNSET}"}}, "backend.password"),
        ({"users": [{"user": "u", "passwrd": "x"}]}, "users[0].passwrd"),
        ({"frobnicate": 1}, "frobnicate"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_check_rejects_a_bad_config_naming_the_key(tmp_path: Path, change: dict, key_path: str) -> None:
    cfg = _good_config()
    for section, value in change.items():
        if isinstance(value, dict) and isinstance(cfg.get(section), dict):
            cfg[section].update(value)
        else:
            cfg[section] = value
    r = _run(["check", "-c", str(_write(tmp_path, cfg))])
    assert r.returncode != 0, f"accepted a bad config: {r.stdout}"
    assert key_path in r.stderr, f"error does not name {key_path}: {r.stderr!r}"
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("content", ["listen: [unclosed\n", "- just\n- a list\n"], ids=["bad-yaml", "not-a-mapping"])
def test_check_rejects_unparsable_files(tmp_path: Path, content: str) -> None:
    path = _write(tmp_path, content)
    r = _run(["check", "-c", str(path)])
    assert r.returncode != 0
    assert str(path) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_check_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    r = _run(["check", "-c", str(missing)])
    assert r.returncode != 0
    assert str(missing) in r.stderr
    assert "Traceback" not in r.stderr


def test_health_answers_for_the_proxy_its_config_names(mariadb, proxy_factory, tmp_path: Path) -> None:
    """``health -c FILE``: 0 while that proxy greets (a full one too), 1 with the reason once it is gone."""
    p = proxy_factory({"listen": {"max_client_connections": 1}})
    ok = _run(["health", "-c", str(p.config_path)])
    assert ok.returncode == 0, ok.stderr
    # The greeting's version is the server's (MariaDB's with its "5.5.5-" prefix for old clients).
    assert ok.stdout.startswith(f"127.0.0.1:{p.port}: ") and mariadb.version in ok.stdout, ok.stdout
    # It needs no password: one only the service's environment gives (an EnvironmentFile) is no error.
    env_only = dict(p.config, backend={**p.config["backend"], "password": "${MPP_TEST_UNSET}"})
    ok = _run(["health", "-c", str(_write(tmp_path, env_only, "env-only.yaml"))])
    assert ok.returncode == 0, ok.stderr

    # Full: it still greets (max_client_connections counts logged-in clients; a login past it gets
    # 1040). Busy, not broken: healthy.
    held = p.connect()
    full = _run(["health", "-c", str(p.config_path)])
    assert full.returncode == 0 and full.stdout.startswith(f"127.0.0.1:{p.port}: "), (full.stdout, full.stderr)
    with pytest.raises(pymysql.err.OperationalError) as refused:
        p.connect()
    assert refused.value.args[0] == 1040
    held.close()

    assert p.stop() in (0, -15)
    gone = _run(["health", "-c", str(p.config_path)])
    assert gone.returncode == 1 and f"127.0.0.1:{p.port} is not serving" in gone.stderr, gone.stderr
    assert "Traceback" not in gone.stderr


def test_health_probes_a_wildcard_listen_address_over_loopback(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    cfg = _good_config() | {"listen": {"host": "0.0.0.0", "port": port}}
    r = _run(["health", "-c", str(_write(tmp_path, cfg)), "--timeout", "1"])
    assert r.returncode == 1 and f"127.0.0.1:{port} is not serving" in r.stderr, r.stderr


def test_log_lines_carry_no_timestamp_when_stderr_is_the_journal(tmp_path: Path) -> None:
    """Under systemd, JOURNAL_STREAM names stderr's device:inode, and journald stamps each line itself."""
    code = "import logging; from proxy import cli; cli._setup_logging('info'); logging.getLogger('proxy').info('hello')"
    lines = {}
    for case in ("journal", "file", "another stream"):
        path = tmp_path / f"{case}.log"
        path.touch()
        st = path.stat()
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        if case == "journal":
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        elif case == "another stream":
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino + 1}"
        with open(path, "wb") as err:
            subprocess.run([sys.executable, "-c", code], stderr=err, cwd=REPO_ROOT, env=env, check=True, timeout=30)
        lines[case] = path.read_text().strip()
    assert lines["journal"] == "INFO proxy: hello"
    for case in ("file", "another stream"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO proxy: hello", lines[case]), lines


def test_clients_log_in_over_the_listen_unix_socket(proxy_factory) -> None:
    """listen.unix_socket: a second way in (mariadb -S, PyMySQL unix_socket=), replacing a stale file,
    refusing to take over a live one, and removed on stop."""
    base = Path(tempfile.mkdtemp(prefix="mpp-sock-", dir="/tmp"))  # short: sun_path holds 108 bytes
    path = str(base / "proxy.sock")
    try:
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)  # a proxy killed without cleaning up leaves such a file
        stale.close()
        p = proxy_factory({"listen": {"unix_socket": path}})
        p.wait_log(f"listening on 127.0.0.1:{p.port} and {path}")
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o777

        conn = pymysql.connect(unix_socket=path, user=APP_USER, password=APP_PASSWORD, database=APP_DB, autocommit=True)
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER(), DATABASE()")
            assert cur.fetchone() == (f"{APP_USER}@%", APP_DB)
        rc, out, err = run_cli(0, APP_USER, APP_PASSWORD, "SELECT 40 + 2", APP_DB, unix_socket=path)
        assert (rc, out) == (0, "42\n"), err
        rc, _out, err = run_cli(0, APP_USER, "wrong-password", "SELECT 1", APP_DB, unix_socket=path)
        assert rc != 0 and f"1045 (28000): Access denied for user '{APP_USER}'@'localhost'" in err, err

        # The path cannot move while running: a reload says so and keeps serving the old one.
        p.rewrite_config({"listen": {"unix_socket": str(base / "moved.sock")}})
        p.reload()
        p.wait_log(f"listen address changes need a restart; keeping 127.0.0.1:{p.port} and {path}")
        assert os.path.exists(path) and not os.path.exists(base / "moved.sock")

        # Another proxy configured with the same path must not steal it.
        q = proxy_factory({"listen": {"unix_socket": path}}, wait=False)
        assert q.proc.wait(timeout=20) == 1
        assert f"cannot start: {path}: another process is listening on it" in q.log(), q.log()
        with conn.cursor() as cur:
            cur.execute("SELECT 7")
            assert cur.fetchone() == (7,)
        conn.close()

        assert p.stop() in (0, -15)
        assert not os.path.exists(path)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_listen_unix_socket_must_be_a_usable_path(tmp_path: Path) -> None:
    for value, problem in (("relative.sock", "must be an absolute path"), ("/" + "x" * 120, "too long")):
        cfg = _good_config()
        cfg["listen"]["unix_socket"] = value
        r = _run(["check", "-c", str(_write(tmp_path, cfg))])
        assert r.returncode == 2 and "listen.unix_socket" in r.stderr and problem in r.stderr, r.stderr
    cfg = _good_config()
    cfg["listen"]["unix_socket"] = str(tmp_path / "mysql.sock")
    r = _run(["check", "-c", str(_write(tmp_path, cfg))])
    assert r.returncode == 0 and f"unix socket {tmp_path}/mysql.sock" in r.stdout and "warning" not in r.stdout, r.stdout
    # A directory that is not there yet is only a warning: systemd's RuntimeDirectory= appears at start.
    cfg["listen"]["unix_socket"] = str(tmp_path / "later" / "mysql.sock")
    r = _run(["check", "-c", str(_write(tmp_path, cfg))])
    assert r.returncode == 0 and f"directory {tmp_path}/later does not exist (yet)" in r.stdout, r.stdout


def test_listen_unix_socket_in_a_missing_directory_names_the_path(proxy_factory, tmp_path: Path) -> None:
    path = str(tmp_path / "missing" / "p.sock")
    p = proxy_factory({"listen": {"unix_socket": path}}, wait=False)
    assert p.proc.wait(timeout=20) == 1
    assert f"cannot start: listen.unix_socket {path}: No such file or directory" in p.log(), p.log()
