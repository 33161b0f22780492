"""A link lost at the worst moment: after the server ran a statement, before its answer came back.

A small TCP relay sits between the proxy and the server (the proxy's backend address points at it). It
forwards everything, but when it sees a marked COM_QUERY (one containing ``/*cut*/``) it forwards it,
waits until the server has run it, then closes both sides without passing the answer back: to the
proxy this looks exactly like a server that died after committing. Each marked statement is cut once
only, so a proxy that sends it again gets an answer (and the test sees the doubled row).

What must hold: a write is never run twice (the client gets 2013, never a silent retry or an OK over a
doubled row); a transaction whose link was lost stays lost (nothing of it commits, its later
statements fail until ROLLBACK); a read may be retried, but never answers wrong. And dead idle links
(KILL, wait_timeout) stay invisible to clients, writes included.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pymysql
import pytest

from conftest import APP_DB, MariaDB, ProxyFactory, ProxyProcess

MARK = b"/*cut*/"
COM_QUERY = 3
CR_SERVER_LOST = 2013


@dataclass(slots=True)
class _Pair:
    down: socket.socket  # from the proxy
    up: socket.socket  # to the server
    cutting: bool = False  # set before a marked statement goes out: its answer must never come back


@dataclass
class CuttingRelay:
    """Forwards proxy <-> server; cuts a link right after a marked statement has run on the server."""

    target: tuple[str, int]
    # Blocks until the server has run the given statement (polls the server, or waits a moment).
    wait_ran: Callable[[bytes], None]
    listener: socket.socket = field(init=False)
    cut: list[bytes] = field(default_factory=list)  # the statements cut so far, in order
    errors: list[str] = field(default_factory=list)
    _pairs: list[_Pair] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        with self._lock:
            for pair in self._pairs:
                _close(pair.down, pair.up)

    def _accept(self) -> None:
        while not self._closed:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.target, timeout=10)
                up.settimeout(None)
            except OSError as e:
                self.errors.append(f"connect to the server: {e}")
                down.close()
                continue
            pair = _Pair(down, up)
            with self._lock:
                self._pairs.append(pair)
            threading.Thread(target=self._to_server, args=(pair,), daemon=True).start()
            threading.Thread(target=self._to_proxy, args=(pair,), daemon=True).start()

    def _to_proxy(self, pair: _Pair) -> None:
        try:
            while data := pair.up.recv(65536):
                if pair.cutting:
                    return  # the answer to the marked statement (and anything after) is lost
                pair.down.sendall(data)
        except OSError:
            pass
        finally:
            if not pair.cutting:
                _close(pair.down, pair.up)

    def _to_server(self, pair: _Pair) -> None:
        buf = b""
        try:
            while data := pair.down.recv(65536):
                buf += data
                out = b""
                # Whole packets only: a marked statement must be seen before any of it goes out.
                while len(buf) >= 4 and len(buf) >= (size := 4 + int.from_bytes(buf[:3], "little")):
                    packet, buf = buf[:size], buf[size:]
                    payload = packet[4:]
                    if payload[:1] == bytes((COM_QUERY,)) and MARK in payload and payload not in self.cut:
                        self._cut(pair, out + packet, payload)
                        return
                    out += packet
                if out:
                    pair.up.sendall(out)
        except OSError:
            pass
        finally:
            if not pair.cutting:
                _close(pair.down, pair.up)

    def _cut(self, pair: _Pair, data: bytes, payload: bytes) -> None:
        pair.cutting = True
        self.cut.append(payload)
        pair.up.sendall(data)
        try:
            self.wait_ran(payload)
        except Exception as e:  # noqa: BLE001 - reported by the test, the link is cut anyway
            self.errors.append(f"{payload[1:80]!r}: {e}")
        _close(pair.down, pair.up)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


def _poll(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen after {timeout} s")
        time.sleep(0.02)


class Rows:
    """Counts rows as the server sees them, uncommitted ones included (READ UNCOMMITTED, as root)."""

    def __init__(self, mariadb: MariaDB) -> None:
        self._conn = mariadb.root_conn()
        with self._conn.cursor() as cur:
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED")

    def count(self, id: int) -> int:
        with self._conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {APP_DB}.chaos_rows WHERE id = %s", (id,))
            return int(cur.fetchone()[0])

    def close(self) -> None:
        self._conn.close()


def _marked_id(payload: bytes) -> int:
    """The id a marked INSERT writes: ``... VALUES (<id>) /*cut*/``."""
    head = payload[: payload.index(MARK)]
    return int(head[head.rindex(b"(") + 1 : head.rindex(b")")])


@pytest.fixture
def chaos(mariadb: MariaDB) -> Iterator[Rows]:
    # No unique key on id: a statement run twice shows as two rows instead of a duplicate-key error.
    mariadb.sql(f"DROP TABLE IF EXISTS {APP_DB}.chaos_rows")
    mariadb.sql(f"CREATE TABLE {APP_DB}.chaos_rows (seq INT AUTO_INCREMENT PRIMARY KEY, id INT NOT NULL)")
    rows = Rows(mariadb)
    yield rows
    rows.close()


@pytest.fixture
def relayed(mariadb: MariaDB, proxy_factory: ProxyFactory, chaos: Rows) -> Iterator[tuple[ProxyProcess, CuttingRelay]]:
    """A proxy whose links go through a CuttingRelay. A marked INSERT counts as run once its row is
    visible (uncommitted rows included); any other marked statement after a moment (0.3 s)."""

    def wait_ran(payload: bytes) -> None:
        if payload[1:].lstrip().upper().startswith(b"INSERT"):
            row = _marked_id(payload)
            _poll(lambda: chaos.count(row) >= 1, f"row {row} on the server")
        else:
            time.sleep(0.3)

    relay = CuttingRelay((mariadb.host, mariadb.port), wait_ran)
    p = proxy_factory({"backend": {"host": "127.0.0.1", "port": relay.port}, "pool": {"max_connections": 2}})
    yield p, relay
    relay.close()
    assert not relay.errors, relay.errors


def _error(run: Callable[[], object]) -> tuple[int, str] | None:
    """(code, message) of the MySQL error ``run`` raised; None when it succeeded."""
    try:
        run()
    except pymysql.MySQLError as e:
        return (int(e.args[0]) if e.args else -1), str(e.args[1] if len(e.args) > 1 else e)
    return None


def test_cut_autocommit_insert_is_stored_once_and_reported_2013(relayed, chaos: Rows) -> None:
    """10 times: the server stores the INSERT, its answer is lost. Never an OK over a doubled row."""
    p, relay = relayed
    conn = p.connect()
    outcomes: dict[int, tuple[tuple[int, str] | None, int]] = {}
    with conn.cursor() as cur:
        for i in range(1, 11):
            err = _error(lambda: cur.execute(f"INSERT INTO chaos_rows (id) VALUES ({i}) /*cut*/"))
            outcomes[i] = (err, chaos.count(i))
    assert len(relay.cut) == 10, "the relay did not cut every marked INSERT"
    doubled = [i for i, (_e, n) in outcomes.items() if n > 1]
    lost = [i for i, (_e, n) in outcomes.items() if n == 0]
    answered_ok = [i for i, (e, _n) in outcomes.items() if e is None]
    assert not doubled, f"INSERTs stored twice: {doubled} (answered OK: {answered_ok})"
    assert not lost, f"INSERTs the server ran are missing: {lost}"
    wrong = {i: e for i, (e, _n) in outcomes.items() if e is None or e[0] != CR_SERVER_LOST}
    assert not wrong, f"the client must get 2013 when a write's answer is lost, got: {wrong}"
    for i, (e, _n) in outcomes.items():
        assert e is not None and "may or may not have run" in e[1], f"INSERT {i}: the message must say so: {e}"
    with conn.cursor() as cur:  # and the client goes on, on a new link
        cur.execute("SELECT COUNT(*) FROM chaos_rows")
        assert cur.fetchone() == (10,)


def test_cut_transaction_stays_lost_until_rollback(relayed, chaos: Rows, mariadb: MariaDB) -> None:
    """BEGIN; INSERT 100; INSERT 101 (link cut) -> 2013; then nothing of it may ever commit."""
    p, relay = relayed
    conn = p.connect()
    cur = conn.cursor()
    cur.execute("BEGIN")
    cur.execute("INSERT INTO chaos_rows (id) VALUES (100)")
    err = _error(lambda: cur.execute("INSERT INTO chaos_rows (id) VALUES (101) /*cut*/"))
    assert relay.cut, "the relay did not cut the marked INSERT"
    assert err is not None and err[0] == CR_SERVER_LOST, f"INSERT 101 whose link was cut: {err}"
    # Until ROLLBACK every statement fails (or the proxy closes the client, as the server would).
    after = {
        "INSERT 102": _error(lambda: cur.execute("INSERT INTO chaos_rows (id) VALUES (102)")),
        "SELECT": _error(lambda: cur.execute("SELECT 1")),
        "COMMIT": _error(lambda: cur.execute("COMMIT")),
    }
    committed = {i: n for i in (100, 101, 102) if (n := chaos.count(i))}
    assert not committed, f"rows of the lost transaction are on the server: {committed}; the client got {after}"
    ran = [what for what, e in after.items() if e is None]
    assert not ran, f"after the lost transaction these succeeded before any ROLLBACK: {ran} ({after})"
    closed = _error(lambda: cur.execute("ROLLBACK")) is not None
    if closed:  # the proxy closed the client: a new one starts clean
        conn = p.connect()
        cur = conn.cursor()
    cur.execute("SELECT COUNT(*) FROM chaos_rows")
    assert cur.fetchone() == (0,)
    cur.execute("INSERT INTO chaos_rows (id) VALUES (103)")  # autocommit again: root sees it at once
    assert mariadb.sql(f"SELECT id FROM {APP_DB}.chaos_rows") == ((103,),)


def test_cut_read_is_retried_or_2013_never_wrong(relayed) -> None:
    """A read without side effects may be sent again; its answer must still be its own."""
    p, relay = relayed
    conn = p.connect()
    outcomes = []
    with conn.cursor() as cur:
        for i in range(5):
            err = _error(lambda: cur.execute(f"SELECT /*cut*/ {i} * 10 + 2"))
            outcomes.append(err[0] if err else cur.fetchall())
            cur.execute("SELECT 7")  # the client goes on either way
            assert cur.fetchall() == ((7,),)
    assert len(relay.cut) == 5
    for i, got in enumerate(outcomes):
        assert got in (((i * 10 + 2,),), CR_SERVER_LOST), f"SELECT {i}: {got!r}"


def _closed_by_server(p: ProxyProcess) -> int:
    return p.log().count("was closed by the server")


def test_killed_idle_links_stay_invisible_to_writes(mariadb: MariaDB, proxy_factory: ProxyFactory, chaos: Rows) -> None:
    """KILL from root while the link is idle: the next INSERT works and is stored once, 5 times over."""
    p = proxy_factory({"pool": {"max_connections": 2}})
    conn = p.connect()
    errors = []
    with conn.cursor() as cur:
        for i in range(1, 6):
            errors.append(_error(lambda: cur.execute(f"INSERT INTO chaos_rows (id) VALUES ({i})")))
            seen = _closed_by_server(p)
            killed = mariadb.kill_user_connections("app")
            assert killed >= 1
            # The proxy finds a dead idle link on its own (its EOF watch) before lending it again.
            _poll(lambda: _closed_by_server(p) >= seen + killed, "the proxy noticing the killed link")
        errors.append(_error(lambda: cur.execute("INSERT INTO chaos_rows (id) VALUES (6)")))
    assert errors == [None] * 6, errors
    assert mariadb.sql(f"SELECT id, COUNT(*) FROM {APP_DB}.chaos_rows GROUP BY id") == tuple((i, 1) for i in range(1, 7))


def test_wait_timeout_expiry_stays_invisible_to_writes(mariadb: MariaDB, proxy_factory: ProxyFactory,
                                                        chaos: Rows) -> None:
    mariadb.set_global("wait_timeout", 2)
    p = proxy_factory({"pool": {"max_connections": 2, "ping_after_idle": 0}})
    conn = p.connect()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO chaos_rows (id) VALUES (1)")
        time.sleep(3.5)  # the server's wait_timeout ends the idle link
        cur.execute("INSERT INTO chaos_rows (id) VALUES (2)")
        cur.execute("SELECT id FROM chaos_rows ORDER BY id")
        assert cur.fetchall() == ((1,), (2,))
    assert "was closed by the server" in p.log()
