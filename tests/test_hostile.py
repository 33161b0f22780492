"""A hostile or careless client cannot stall, starve or fool the others.

A legal statement built to make a classifier backtrack, unauthenticated sockets that send huge login
packets or just sit there, a client that stops reading a big result or idles while it holds a link,
malformed binary executes, a user name that carries a newline: each must cost the proxy a bounded
amount of time, memory and links, and every other client keeps being served.

The starvation check in test_lexer_bait_does_not_stall_others measures a gap between answers: it is a
functional check (does anyone else get served while the statement is classified?), with a bound far
above a normal gap (a few milliseconds).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pymysql
import pymysql.cursors
import pytest

from conftest import APP_DB, APP_PASSWORD, APP_USER, SERVER, ProxyFactory, ProxyProcess, recv_packet
from proxy.mysql import auth
from proxy.mysql.constants import Cap
from proxy.mysql.messages import HandshakeResponse, build_handshake_response, parse_handshake

ADMIN = {"user": "admin", "password": "admin-pw"}
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17


# --------------------------------------------------------------------------- raw protocol


def _packet(payload: bytes, seq: int) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes((seq,)) + payload


def _raw_login(p: ProxyProcess, user: str = APP_USER, password: str = APP_PASSWORD) -> tuple[socket.socket, bytes]:
    """A raw client socket after its login (to ``p.host``, ``p.port``: the proxy, or the server);
    returns it and the answer to the login (OK or ERR)."""
    sock = socket.create_connection((p.host, p.port), timeout=10)
    _seq, greeting = recv_packet(sock)
    hs = parse_handshake(greeting)
    caps = Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH | Cap.LONG_PASSWORD | Cap.CONNECT_WITH_DB
    resp = HandshakeResponse(caps, 1 << 24, 45, user, auth.native_scramble(password, hs.scramble), APP_DB, auth.NATIVE)
    sock.sendall(_packet(build_handshake_response(resp), 1))
    _seq, answer = recv_packet(sock)
    return sock, answer


def _prepare(sock: socket.socket, sql: str) -> int:
    """COM_STMT_PREPARE; returns the statement id (reads the parameter and column definitions too)."""
    sock.sendall(_packet(bytes((COM_STMT_PREPARE,)) + sql.encode(), 0))
    _seq, ok = recv_packet(sock)
    assert ok[0] == 0, ok
    stmt_id, columns, params = struct.unpack("<IHH", ok[1:9])
    for n in (params, columns):  # each block of definitions ends with an EOF (no CLIENT_DEPRECATE_EOF)
        for _ in range(n + (1 if n else 0)):
            recv_packet(sock)
    return stmt_id


def _answer(sock: socket.socket, timeout: float = 10.0) -> str:
    """'error', 'closed', 'answered' (any other first packet) or 'hang' (nothing within ``timeout``)."""
    sock.settimeout(timeout)
    try:
        _seq, payload = recv_packet(sock)
    except TimeoutError:
        return "hang"
    except (ConnectionError, OSError):
        return "closed"
    return "error" if payload[:1] == b"\xff" else "answered"


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/PID/status")


def _served(p: ProxyProcess, **kw: object) -> None:
    """A new client logs in and gets an answer."""
    conn = p.connect(**kw)
    with conn.cursor() as cur:
        cur.execute("SELECT 40 + 2")
        assert cur.fetchone() == (42,)
    conn.close()


def _admin_answers(p: ProxyProcess) -> None:
    conn = pymysql.connect(host=p.host, port=p.port, user=ADMIN["user"], password=ADMIN["password"],
                           connect_timeout=10, read_timeout=30)
    with conn.cursor() as cur:
        cur.execute("SHOW POOLS")
        assert cur.fetchall()
    conn.close()


# --------------------------------------------------------------------------- (a) classifier bait


@pytest.mark.parametrize("kb", [18, 63])
def test_lexer_bait_does_not_stall_others(proxy_factory: ProxyFactory, kb: int) -> None:
    """``SELECT LENGTH(';/*;/*...'), @v``: answered, and meanwhile another client's loop never waits 0.5 s."""
    p = proxy_factory({"pool": {"max_connections": 3}}, log_level="info")
    bait = ";/*" * (kb * 1024 // 3)
    ticker = p.connect()
    hostile = p.connect(read_timeout=15)  # a stalled proxy fails the test in 15 s, not minutes
    stamps: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        try:
            with ticker.cursor() as cur:
                while not stop.is_set():
                    cur.execute("SELECT 1")
                    cur.fetchall()
                    stamps.append(time.monotonic())
        except pymysql.MySQLError:
            pass  # a proxy stalled past read_timeout: the gap shows it

    t = threading.Thread(target=tick, daemon=True)
    t.start()
    while len(stamps) < 20:  # the loop runs before the bait goes out
        time.sleep(0.01)
    t0 = time.monotonic()
    try:
        with hostile.cursor() as cur:
            cur.execute(f"SELECT LENGTH('{bait}'), @v")
            got = cur.fetchall()
    except pymysql.MySQLError as e:
        got = e
    t1 = time.monotonic()
    stop.set()
    t.join(20)
    marks = [t0, *(s for s in stamps if t0 <= s <= t1), t1]
    worst = max(b - a for a, b in zip(marks, marks[1:]))
    assert got == ((len(bait), None),), f"the {kb} KB statement: {got!r} after {t1 - t0:.1f} s"
    assert worst < 0.5, f"another client waited {worst:.2f} s while a {kb} KB statement was classified"


# --------------------------------------------------------------------------- (b) huge login packets


def test_unauthenticated_huge_login_packets_keep_memory_bounded(proxy_factory: ProxyFactory) -> None:
    """40 sockets that never log in, each sending 8 MB of a declared 16 MB login packet."""
    p = proxy_factory({"listen": {"handshake_timeout": 30}, "admin": ADMIN}, log_level="info")
    _served(p)
    base = _rss_mb(p.pid)
    peak = [base]
    sending = threading.Event()
    sending.set()

    def sample() -> None:
        while sending.is_set():
            peak[0] = max(peak[0], _rss_mb(p.pid))
            time.sleep(0.02)

    chunk = b"\x00" * (1 << 20)
    socks: list[socket.socket] = []

    def flood() -> None:
        try:
            s = socket.create_connection((p.host, p.port), timeout=5)
            socks.append(s)
            recv_packet(s)  # the greeting
            s.sendall(b"\xff\xff\xff\x01")  # a login packet of 16 MB - 1 ...
            for _ in range(8):  # ... of which 8 MB arrive
                s.sendall(chunk)
        except OSError:
            pass  # refused or closed early: what a bounded proxy may well do

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    floods = [threading.Thread(target=flood, daemon=True) for _ in range(40)]
    for t in floods:
        t.start()
    for t in floods:
        t.join(60)
    # While the 40 sockets are still open: logins work.
    _served(p)
    _admin_answers(p)
    time.sleep(0.3)  # a last sample after the bytes were read
    sending.clear()
    sampler.join(5)
    peak[0] = max(peak[0], _rss_mb(p.pid))
    for s in socks:
        s.close()
    assert peak[0] - base < 100, f"proxy RSS grew from {base:.0f} MB to {peak[0]:.0f} MB"


# --------------------------------------------------------------------------- (c) clients that hold links


def test_client_that_stops_reading_is_closed_and_its_link_returns(mariadb, proxy_factory: ProxyFactory) -> None:
    """pool.client_write_timeout: a client that stops reading a big result loses it; others get the link."""
    mariadb.sql(f"DROP TABLE IF EXISTS {APP_DB}.hostile_ten")
    mariadb.sql(f"CREATE TABLE {APP_DB}.hostile_ten (n INT)")
    mariadb.sql(f"INSERT INTO {APP_DB}.hostile_ten VALUES (0), (1), (2), (3), (4), (5), (6), (7), (8), (9)")
    p = proxy_factory({"pool": {"max_connections": 1, "queue_timeout": 20, "client_write_timeout": 2}},
                      log_level="info")
    stalled = p.connect(cursorclass=pymysql.cursors.SSCursor)
    cur = stalled.cursor()
    # 10^6 rows of 1 KB, made by the server as they are sent: far more than any socket buffer holds.
    cur.execute("SELECT REPEAT('x', 1000) FROM hostile_ten a, hostile_ten b, hostile_ten c, hostile_ten d, "
                "hostile_ten e, hostile_ten f")
    _served(p)  # waits for the single link until the stalled client is closed
    assert "client_write_timeout" in p.log()
    with pytest.raises(pymysql.MySQLError):
        for _row in cur:  # what was in flight, then the close
            pass
    # Left to the garbage collector, the unbuffered cursor would try to read the rest of its result
    # from the closed socket in __del__, at some later moment of another test.
    for result in (cur._result, stalled._result):
        if result is not None:
            result.unbuffered_active = False
    cur._result = stalled._result = None
    cur.close()


@pytest.mark.parametrize("pin", [
    ["SET @held = 1"],
    ["BEGIN", "INSERT INTO hostile_rows VALUES (1)"],
    ["SELECT GET_LOCK('hostile_lock', 0)"],
], ids=["user_variable", "open_transaction", "named_lock"])
def test_client_idle_while_pinned_is_closed_and_its_link_returns(
        mariadb, proxy_factory: ProxyFactory, pin: list[str]) -> None:
    """pool.pinned_idle_timeout: a client that holds its link and does nothing loses it."""
    mariadb.sql(f"DROP TABLE IF EXISTS {APP_DB}.hostile_rows")
    mariadb.sql(f"CREATE TABLE {APP_DB}.hostile_rows (id INT PRIMARY KEY)")
    p = proxy_factory({"pool": {"max_connections": 1, "queue_timeout": 20, "pinned_idle_timeout": 2}},
                      log_level="info")
    idle = p.connect()
    with idle.cursor() as cur:
        for stmt in pin:
            cur.execute(stmt)
    _served(p)  # waits for the single link until the idle client is closed
    assert "pinned_idle_timeout" in p.log()
    with pytest.raises(pymysql.MySQLError), idle.cursor() as cur:
        cur.execute("SELECT 1")  # closed, with a clear error
    assert mariadb.sql(f"SELECT COUNT(*) FROM {APP_DB}.hostile_rows") == ((0,),)  # rolled back, never committed


# --------------------------------------------------------------------------- (d) silent sockets


def test_unauthenticated_sockets_do_not_lock_out_logins(proxy_factory: ProxyFactory) -> None:
    """max_client_connections silent sockets (within handshake_timeout): a new login and the admin still work."""
    p = proxy_factory({"listen": {"max_client_connections": 20, "handshake_timeout": 30}, "admin": ADMIN},
                      log_level="info")
    silent = [socket.create_connection((p.host, p.port), timeout=5) for _ in range(20)]
    try:
        for s in silent:
            s.recv(4096)  # the greeting (or a refusal): they never answer it
        _served(p)
        _admin_answers(p)
    finally:
        for s in silent:
            s.close()


# --------------------------------------------------------------------------- (e) malformed executes


def _execute(stmt_id: int, body: bytes) -> bytes:
    return bytes((COM_STMT_EXECUTE,)) + struct.pack("<I", stmt_id) + body


HEAD = b"\x00" + struct.pack("<I", 1)  # flags (no cursor), iteration count 1
TWO_STRINGS = b"\x00" + b"\x01" + b"\xfd\x00\xfd\x00"  # null bitmap, new-params-bound, 2 x VAR_STRING

# Bodies after the statement id of a prepared ``SELECT ?, ?``.
MALFORMED = {
    "id_only": b"",
    "no_parameter_block": HEAD,
    "types_cut_short": HEAD + b"\x00\x01\xfd",
    "value_longer_than_packet": HEAD + TWO_STRINGS + b"\xfc\xff\xff" + b"ab",
    "eight_byte_length": HEAD + TWO_STRINGS + b"\xfe" + b"\xff" * 8,
    "null_bitmap_only": HEAD + b"\x00",
}


def _send_execute(where: object, body: bytes) -> tuple[socket.socket, str]:
    """Log in at ``where`` (host, port), prepare, send the execute; the socket and what came back."""
    sock, answer = _raw_login(where)  # type: ignore[arg-type]
    assert answer[:1] == b"\x00", answer
    stmt_id = _prepare(sock, "SELECT ?, ?")
    sock.sendall(_packet(_execute(stmt_id, body), 0))
    return sock, _answer(sock)


@pytest.fixture
def one_link_proxy(proxy_factory: ProxyFactory) -> Iterator[ProxyProcess]:
    yield proxy_factory({"pool": {"max_connections": 1, "queue_timeout": 10}}, log_level="info")


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_execute_gets_error_or_close_never_holds_the_link(mariadb, one_link_proxy: ProxyProcess,
                                                                    name: str) -> None:
    """What the server refuses (MariaDB 10.11: 1835 or 1210 for all but value_longer_than_packet, which it
    reads and answers), the proxy refuses too, with an error or a close; never a hang holding the link.

    The client stays connected and idle afterwards: whatever the proxy keeps for it (a server error's
    diagnostics, say), the pool's only link must still reach the next client."""
    server_did = "answered"  # MySQL 9 has no mysql_native_password for this raw client: no refusal demanded
    if not SERVER.mysql:
        direct, server_did = _send_execute(mariadb, MALFORMED[name])
        direct.close()
        assert server_did != "hang", f"the server itself did not answer {name}"
    sock, got = _send_execute(one_link_proxy, MALFORMED[name])
    allowed = ("error", "closed", "answered") if server_did == "answered" else ("error", "closed")
    assert got in allowed, f"a malformed COM_STMT_EXECUTE got: {got} (the server: {server_did})"
    try:
        _served(one_link_proxy)  # the one link is not held by the client that sent it (still connected, if not closed)
    finally:
        sock.close()


def test_execute_of_unknown_statement_is_an_error(one_link_proxy: ProxyProcess) -> None:
    sock, answer = _raw_login(one_link_proxy)
    assert answer[:1] == b"\x00", answer
    sock.sendall(_packet(_execute(0x7777, HEAD), 0))
    assert _answer(sock) == "error"
    _served(one_link_proxy)
    sock.close()


# --------------------------------------------------------------------------- (f) log injection


def test_user_name_with_newline_does_not_forge_a_log_line(proxy_factory: ProxyFactory) -> None:
    p = proxy_factory()
    forged = "INJECTED proxy.admin: admin console login accepted"
    sock, answer = _raw_login(p, user=f"nobody\n{forged}", password="x")
    sock.close()
    assert answer[:1] == b"\xff", "an unknown user must be refused"
    p.wait_log("INJECTED")  # the refusal is logged with the name in it ...
    lines = p.log().splitlines()
    assert not [line for line in lines if line.startswith("INJECTED")], "... but never as a line of its own"


def test_idle_client_with_warnings_gives_its_link_up_and_keeps_its_warnings(mariadb, proxy_factory: ProxyFactory) -> None:
    """A client idle after a statement with warnings keeps its link only while nobody waits; when
    someone does, it reads them first, so its SHOW WARNINGS still answers as direct."""
    mariadb.sql(f"DROP TABLE IF EXISTS {APP_DB}.hostile_warn")
    mariadb.sql(f"CREATE TABLE {APP_DB}.hostile_warn (id INT PRIMARY KEY)")
    mariadb.sql(f"INSERT INTO {APP_DB}.hostile_warn VALUES (1)")
    p = proxy_factory({"pool": {"max_connections": 1, "queue_timeout": 20}}, log_level="info")
    idle = p.connect()
    with idle.cursor() as cur:
        cur.execute("INSERT IGNORE INTO hostile_warn VALUES (1)")
    _served(p)  # another client gets the only link while `idle` sits on its warnings
    with idle.cursor() as cur:
        cur.execute("SHOW WARNINGS")
        assert [row[1] for row in cur.fetchall()] == [1062]
        cur.execute("SHOW COUNT(*) WARNINGS")
        assert cur.fetchone() == (1,)
        cur.execute("SELECT COUNT(*) FROM hostile_warn")  # a statement that reads a table clears them
        cur.execute("SHOW WARNINGS")
        assert cur.fetchall() == ()  # as on the server
