"""What client libraries' own test suites found through the proxy (scripts/upstream_suites.py), as tests.

Each test runs the same client script directly against the server and through a small pool and
compares what the client sees.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pymysql
from pymysql.constants import SERVER_STATUS
import pytest

import mariadb_server
from conftest import APP_DB, APP_PASSWORD, APP_USER, SERVER, MariaDB, ProxyProcess, recv_packet
from tls_certs import TlsFiles, make_tls_files

Connect = Callable[..., pymysql.connections.Connection]


def ask(conn: pymysql.connections.Connection, sql: str) -> Any:
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()
    except pymysql.MySQLError as e:
        return ("error", e.args[0])


def idle_autocommit_off_clients(connect: Connect, clients: int) -> list[Any]:
    """``clients`` connections with autocommit off (PyMySQL's, mysqlclient's and aiomysql's default)
    that each ran one statement opening no transaction, then sit idle, as a driver's own pool keeps
    them; then one more client's statement, and another of each idle one. Returns the answers."""
    out: list[Any] = []
    idle = []
    try:
        for _ in range(clients):
            conn = connect(autocommit=False)
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                out.append(cur.fetchone())
            idle.append(conn)
        late = connect(autocommit=True)
        out.append(ask(late, "SELECT 'served'"))
        late.close()
        # Nothing was taken from the idle ones to serve it: their sessions go on as they were.
        out += [ask(conn, "SELECT 2") for conn in idle]
    finally:
        for conn in idle:
            conn.close()
    return out


def test_idle_autocommit_off_clients_do_not_hold_the_links(mariadb: MariaDB,
                                                            proxy_factory: Callable[..., ProxyProcess]) -> None:
    direct = idle_autocommit_off_clients(mariadb.connect, 3)
    p = proxy_factory({"pool": {"max_connections": 2, "queue_timeout": 2}})
    via = idle_autocommit_off_clients(p.connect, 3)
    assert direct == [(1,), (1,), (1,), ("served",), (2,), (2,), (2,)]
    assert via == direct


def _raw_login(host: str, port: int, user: str, password: str) -> tuple[socket.socket, int]:
    """A socket logged in with PyMySQL's handshake, taken over for raw commands; and the greeting's id."""
    conn = pymysql.connect(host=host, port=port, user=user, password=password, autocommit=True)
    thread_id = conn.thread_id()
    sock = conn._sock  # noqa: SLF001 - the raw socket, to send a command PyMySQL no longer sends
    conn._sock = None  # noqa: SLF001 - PyMySQL must not close it
    return sock, thread_id


def process_kill_command(connect: Connect, raw_login: Callable[[], tuple[socket.socket, int]]) -> list[Any]:
    """COM_PROCESS_KILL (what mysql_kill(), PHP's mysqli::kill() and PyMySQL before 1.1 send) with
    the id the victim's greeting gave: the victim's connection ends, the killer's stays."""
    out: list[Any] = []
    victim = connect()
    killer, _ = raw_login()
    try:
        killer.sendall(struct.pack("<I", 5)[:3] + b"\x00" + b"\x0c" + struct.pack("<I", victim.thread_id()))
        _, answer = recv_packet(killer)
        out.append("ok" if answer[0] == 0 else ("error", struct.unpack("<H", answer[1:3])[0]))
        try:
            with victim.cursor() as cur:
                cur.execute("SELECT 1")
                out.append(("victim", cur.fetchone()))
        except pymysql.MySQLError as e:
            out.append(("victim gone", e.args[0] in (2006, 2013, 1927)))
    finally:
        killer.close()
        victim.close()
    return out


@pytest.mark.xfail(SERVER.mysql, strict=True, reason="proxy/frontend.py translates COM_PROCESS_KILL into KILL <id> "
                   "on every server; MySQL 8.0+ no longer has the command and answers 1047 Unknown command")
def test_com_process_kill_with_the_greeting_id(mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess]) -> None:
    direct = process_kill_command(mariadb.connect, lambda: _raw_login(mariadb.host, mariadb.port, APP_USER, APP_PASSWORD))
    p = proxy_factory()
    via = process_kill_command(p.connect, lambda: _raw_login(p.host, p.port, APP_USER, APP_PASSWORD))
    # MySQL 8.0 removed COM_PROCESS_KILL: an error, and the victim goes on.
    assert direct == ([("error", 1047), ("victim", (1,))] if SERVER.mysql else ["ok", ("victim gone", True)])
    assert via == direct


def no_backslash_escapes_status(connect: Connect) -> list[Any]:
    """sql_mode NO_BACKSLASH_ESCAPES set by the init command, then answers the proxy may give itself
    (SET autocommit, COM_PING): drivers read the mode from the status flags of the last OK and
    escape strings by it (aiomysql's and PyMySQL's escape(); a wrong one breaks quoting)."""
    out: list[Any] = []
    conn = connect(init_command="SET sql_mode='NO_BACKSLASH_ESCAPES'", autocommit=False)
    try:
        out.append(("after connect", bool(conn.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES),
                    conn.escape("foo'bar\\")))
        conn.ping(reconnect=False)
        out.append(("after ping", bool(conn.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES)))
        conn.autocommit(True)
        out.append(("after SET autocommit", bool(conn.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES)))
    finally:
        conn.close()
    return out


def test_no_backslash_escapes_in_the_proxy_s_own_answers(mariadb: MariaDB,
                                                        proxy_factory: Callable[..., ProxyProcess]) -> None:
    direct = no_backslash_escapes_status(mariadb.connect)
    p = proxy_factory()
    via = no_backslash_escapes_status(p.connect)
    assert direct == [("after connect", True, "'foo''bar\\'"), ("after ping", True), ("after SET autocommit", True)]
    assert via == direct


# -- a TLS client that leaves with close_notify alone -----------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tls_files: TlsFiles) -> Iterator[MariaDB]:
    """A private server that offers TLS, for the direct half of the comparison."""
    try:
        db = MariaDB.launch(prefix="mpp-mariadb-tls-", hint=mariadb_server.INSTALL_HINT,
                            tls_files=(tls_files.ca, tls_files.server_cert, tls_files.server_key))
    except mariadb_server.ServerError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        db.make_account(APP_USER, APP_PASSWORD, APP_DB)
        db.sql(f"CREATE TABLE `{APP_DB}`.tls_leave (id INT PRIMARY KEY) ENGINE=InnoDB")
        yield db
    finally:
        db.remove()


def open_transactions(server: MariaDB) -> int:
    return int(server.sql("SELECT COUNT(*) FROM information_schema.innodb_trx")[0][0])


def leave_with_close_notify(connect: Connect, server: MariaDB, ca: str) -> list[Any]:
    """A TLS client inside a transaction sends close_notify and no COM_QUIT, its TCP connection left
    open (asyncio's TLS transport closes so: aiomysql's close()). The server ends such a session at
    once and rolls its transaction back; through the proxy the link must not stay held by it."""
    out: list[Any] = []
    conn = connect(autocommit=False, ssl={"ca": ca})
    with conn.cursor() as cur:
        cur.execute("INSERT INTO tls_leave VALUES (1)")
    out.append(("open transactions before", open_transactions(server)))
    sock = conn._sock  # noqa: SLF001 - the client's SSLSocket
    assert isinstance(sock, ssl.SSLSocket)
    sock.settimeout(10)
    try:
        sock.unwrap()  # close_notify; returns (or fails) once the other side closes
    except (OSError, ssl.SSLError):
        pass
    try:
        deadline = time.monotonic() + 30
        while open_transactions(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = open_transactions(server)
        out.append(("open transactions after", left))
        if left:  # what the server still runs, for the failure message
            out.append(server.sql("SELECT id, user, command, time, state FROM information_schema.processlist"))
        out.append(("rows", server.sql(f"SELECT COUNT(*) FROM `{APP_DB}`.tls_leave")[0][0]))
    finally:
        sock.close()  # only now does the TCP connection close
        conn._sock = None  # noqa: SLF001
    return out


@pytest.mark.xfail(strict=False, reason="open bug: on the current proxy the transaction of a TLS client that left with "
                   "close_notify alone stayed open for 30 s (seen at the end of the session, not yet explained)")
def test_tls_client_leaving_with_close_notify_ends_its_session(tls_server: MariaDB, tls_files: TlsFiles,
                                                               proxy_factory: Callable[..., ProxyProcess]) -> None:
    """The proxy ends the session of a TLS client that leaves with close_notify alone, at once, so
    its link is not held by a client that has left. (Servers differ here: MariaDB 10.11 ends such a
    session, usually at once; MariaDB 11.8 and MySQL 9.7 keep it until the TCP connection closes.
    Their answer is no property of the proxy, and under load 10.11's was late, so it is not compared.)"""
    ended = [("open transactions before", 1), ("open transactions after", 0), ("rows", 0)]
    p = proxy_factory({"listen": {"tls_cert": tls_files.server_cert, "tls_key": tls_files.server_key},
                       "backend": {"host": tls_server.host, "port": tls_server.port}})
    via = leave_with_close_notify(p.connect, tls_server, tls_files.ca)
    assert via == ended


# -- a session's foreign_key_checks = 0 stays its own ------------------------------------------


def checks_off_in_one_session(connect: Connect) -> list[Any]:
    """A turns foreign_key_checks and unique_checks off (Django does around fixture loading and
    schema changes) and back on; B writes in between. B's writes are checked as ever. On MySQL 8
    and 9, SET foreign_key_checks = DEFAULT turns the checks OFF (Django's suite on MySQL 9.7 found
    it: test_integrity_checks_on_creation passed directly and was skipped through the proxy)."""
    out: list[Any] = []
    a, b = connect(), connect()
    try:
        with a.cursor() as ca, b.cursor() as cb:
            ca.execute("DROP TABLE IF EXISTS fk_child")
            ca.execute("DROP TABLE IF EXISTS fk_parent")
            ca.execute("CREATE TABLE fk_parent (id INT PRIMARY KEY) ENGINE=InnoDB")
            ca.execute("CREATE TABLE fk_child (id INT PRIMARY KEY, pid INT, FOREIGN KEY (pid) REFERENCES fk_parent (id))"
                       " ENGINE=InnoDB")
            ca.execute("SET foreign_key_checks = 0, unique_checks = 0")
            out.append(("a, checks off", ask(a, "INSERT INTO fk_child VALUES (1, 999)")))
            out.append(("b", ask(b, "INSERT INTO fk_child VALUES (2, 999)")))
            out.append(("b sees", ask(b, "SELECT @@foreign_key_checks, @@unique_checks")))
            ca.execute("SET foreign_key_checks = 1, unique_checks = 1")
            out.append(("a, checks on", ask(a, "INSERT INTO fk_child VALUES (3, 999)")))
            out.append(("b again", ask(b, "INSERT INTO fk_child VALUES (4, 999)")))
            cb.execute("DROP TABLE fk_child")
            cb.execute("DROP TABLE fk_parent")
    finally:
        a.close()
        b.close()
    return out


def test_foreign_key_checks_off_stays_in_its_session(mariadb: MariaDB,
                                                     proxy_factory: Callable[..., ProxyProcess]) -> None:
    direct = checks_off_in_one_session(mariadb.connect)
    p = proxy_factory({"pool": {"max_connections": 1}})  # B is served on A's link
    via = checks_off_in_one_session(p.connect)
    fk_error = ("error", 1452)
    assert direct == [("a, checks off", None), ("b", fk_error), ("b sees", (1, 1)), ("a, checks on", fk_error),
                      ("b again", fk_error)]
    assert via == direct
