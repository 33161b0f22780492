"""The cap, the queue and transaction pooling: what a backend link is lent for, and for how long.

Backend links are told apart by the server thread behind them: ``@@pseudo_thread_id``
(the proxy rewrites ``CONNECTION_ID()`` to its own client id, so that cannot be used).
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pymysql
import pytest

from cache_metadata_client import read_lenenc
from conftest import APP_DB, APP_USER, count_backend_connections, in_transaction, run_cli

ADMIN = {"admin": {"user": "pooladmin", "password": "pooladmin-pw"}}
POOL_BUSY = 9001


def backend_thread(conn: pymysql.connections.Connection) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT @@pseudo_thread_id")
        return int(cur.fetchone()[0])


def scalar(conn: pymysql.connections.Connection, sql: str, args: object = None) -> object:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


def pool_row(p) -> dict[str, str]:
    """SHOW POOLS on the admin console, through the mariadb CLI (what the console is made for)."""
    rc, out, err = run_cli(p.port, "pooladmin", "pooladmin-pw", "SHOW POOLS", extra_args=("--column-names",))
    assert rc == 0, err
    header, row = out.splitlines()[:2]
    return dict(zip(header.split("\t"), row.split("\t")))


def wait_for_waiters(p, n: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        row = pool_row(p)
        if int(row["waiting"]) >= n:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the pool never had {n} waiting clients: {row}")
        time.sleep(0.02)


class ProcesslistSampler:
    """Samples how many server threads ``user`` has, from a thread, until stopped."""

    def __init__(self, mariadb, user: str) -> None:
        self.mariadb = mariadb
        self.user = user
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            conn = self.mariadb.root_conn()
            try:
                with conn.cursor() as cur:
                    while not self._stop.is_set():
                        cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (self.user,))
                        self.samples.append(int(cur.fetchone()[0]))
                        time.sleep(0.002)  # pacing, not synchronisation
            finally:
                conn.close()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def __enter__(self) -> ProcesslistSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    @property
    def max(self) -> int:
        return max(self.samples, default=0)


@dataclass
class ClientRun:
    errors: list[str] = field(default_factory=list)
    done: int = 0


def run_clients(p, n: int, work: Callable[[pymysql.connections.Connection, int], None], **connect_kw) -> ClientRun:
    """``n`` clients connect, wait for each other, then run ``work`` at once; errors are collected."""
    out = ClientRun()
    lock = threading.Lock()
    barrier = threading.Barrier(n)

    def client(i: int) -> None:
        conn = None
        try:
            conn = p.connect(**connect_kw)
            barrier.wait(60)
            work(conn, i)
            with lock:
                out.done += 1
        except BaseException as e:  # noqa: BLE001
            barrier.abort()
            with lock:
                out.errors.append(f"client {i}: {type(e).__name__}: {e}")
        finally:
            if conn is not None:
                conn.close()

    with ThreadPoolExecutor(max_workers=n) as ex:
        list(ex.map(client, range(n)))
    return out


# --------------------------------------------------------------------------- the cap


def _busy_work(table: str) -> Callable[[pymysql.connections.Connection, int], None]:
    def work(conn: pymysql.connections.Connection, i: int) -> None:
        with conn.cursor() as cur:
            for j in range(4):
                cur.execute("BEGIN")
                cur.execute(f"INSERT INTO {table} (client, n) VALUES (%s, %s)", (i, j))
                cur.execute("SELECT SLEEP(0.01)")
                cur.execute("COMMIT")
                cur.execute(f"SELECT COUNT(*) FROM {table} WHERE client = %s", (i,))
                assert cur.fetchone() == (j + 1,)
    return work


def _fresh_table(mariadb, name: str) -> str:
    mariadb.sql(f"DROP TABLE IF EXISTS {APP_DB}.{name}")
    mariadb.sql(f"CREATE TABLE {APP_DB}.{name} (id INT AUTO_INCREMENT PRIMARY KEY, client INT, n INT, "
                "UNIQUE KEY (client, n)) ENGINE=InnoDB")
    return name


def test_50_clients_over_3_connections(mariadb, proxy_factory) -> None:
    user = mariadb.make_user("pool_cap", "pool-cap-pw")
    table = _fresh_table(mariadb, "cap_t")
    p = proxy_factory({"backend": {"user": user, "password": "pool-cap-pw"},
                       "pool": {"max_connections": 3, "queue_timeout": 30}})
    with ProcesslistSampler(mariadb, user) as sampler:
        run = run_clients(p, 50, _busy_work(table), user=user, password="pool-cap-pw")
    assert sampler.error is None, sampler.error
    assert not run.errors, run.errors[:5]
    assert run.done == 50
    assert len(sampler.samples) > 20, "the PROCESSLIST sampler barely ran"
    assert sampler.max <= 3, f"the server saw {sampler.max} connections of {user} (cap 3)"
    assert sampler.max == 3, f"the pool never used its 3 connections (max seen {sampler.max}); not a real test"
    assert mariadb.sql(f"SELECT COUNT(*), COUNT(DISTINCT client) FROM {APP_DB}.{table}") == ((200, 50),)


@pytest.mark.parametrize("cap", [3, 5], ids=["cap-equal-to-limit", "cap-above-limit"])
def test_account_with_max_user_connections_3_never_gives_1226(mariadb, proxy_factory, cap: int) -> None:
    user = mariadb.make_user("pool_lim3", "pool-lim3-pw", max_user_connections=3)
    table = _fresh_table(mariadb, "lim_t")
    p = proxy_factory({"backend": {"user": user, "password": "pool-lim3-pw"},
                       "pool": {"max_connections": cap, "queue_timeout": 30}})
    with ProcesslistSampler(mariadb, user) as sampler:
        run = run_clients(p, 50, _busy_work(table), user=user, password="pool-lim3-pw")
    assert sampler.error is None, sampler.error
    assert not run.errors, run.errors[:5]
    assert sampler.max <= 3
    assert mariadb.sql(f"SELECT COUNT(*) FROM {APP_DB}.{table}") == ((200,),)
    if cap > 3:
        # The proxy reads the account's limit and says the config asks for more.
        assert re.search(r"max_connections 5 exceeds the account's limit of 3", p.log()), p.log()[-3000:]


def test_admin_console_refuses_what_it_does_not_know_and_goes_on(proxy_factory) -> None:
    p = proxy_factory(ADMIN)
    console = pymysql.connect(host=p.host, port=p.port, user="pooladmin", password="pooladmin-pw")
    with console.cursor() as cur:
        with pytest.raises(pymysql.err.ProgrammingError) as ei:
            cur.execute("DROP TABLE important")  # never sent to the server
        code, message = ei.value.args
        assert code == 1064 and "unknown command" in message and "SHOW POOLS" in message, message
        cur.execute("SHOW POOLS")
        assert int(dict(zip([d[0] for d in cur.description], cur.fetchone()))["cap"]) == 5
    console.close()
    rc, out, err = run_cli(p.port, "pooladmin", "pooladmin-pw", "SELECT 1")
    assert rc == 1 and "ERROR 1064" in err and "unknown command" in err, (out, err)


# --------------------------------------------------------------------------- the queue


def test_queue_timeout_error_names_pool_cap_and_waiters_and_connection_survives(mariadb, proxy_factory) -> None:
    p = proxy_factory({**ADMIN, "pool": {"name": "orders", "max_connections": 2, "queue_timeout": 1.5}})
    # Everyone logs in first: PyMySQL's connect sends a statement (SET NAMES) that needs a link.
    holders = [p.connect(), p.connect()]
    waiter = p.connect()
    waiter_id = waiter.thread_id()
    for h in holders:
        with h.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("SELECT 1")
    t0 = time.monotonic()
    with pytest.raises(pymysql.MySQLError) as ei:
        with waiter.cursor() as cur:
            cur.execute("SELECT 2")
    elapsed = time.monotonic() - t0
    code, message = ei.value.args
    assert code == POOL_BUSY
    assert 1.3 < elapsed < 6, f"answered after {elapsed:.2f}s with queue_timeout 1.5"
    assert "'orders'" in message, message  # the pool by name
    assert re.search(r"\b2\b[^,;]*connections", message), f"the cap (2) is not in: {message}"
    assert re.search(r"\b1\b[^,;0-9]*waiting", message), f"the number waiting (1) is not in: {message}"
    assert "queue_timeout" in message
    # The client's connection stays open and usable once a link is free.
    for h in holders:
        h.commit()
    with waiter.cursor() as cur:
        cur.execute("SELECT 3")
        assert cur.fetchone() == (3,)
    assert waiter.thread_id() == waiter_id and waiter.open
    assert count_backend_connections(mariadb, APP_USER) <= 2


def test_waiters_are_served_first_come_first_served(mariadb, proxy_factory) -> None:
    table = "fifo_t"
    mariadb.sql(f"DROP TABLE IF EXISTS {APP_DB}.{table}")
    mariadb.sql(f"CREATE TABLE {APP_DB}.{table} (seq INT AUTO_INCREMENT PRIMARY KEY, who INT)")
    p = proxy_factory({**ADMIN, "pool": {"max_connections": 1, "queue_timeout": 20}})
    holder = p.connect()
    waiters = [p.connect() for _ in range(5)]
    with holder.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT 1")
    for i, w in enumerate(waiters):
        # Send without reading the answer; the next one goes only once this one is queued.
        w._execute_command(pymysql.constants.COMMAND.COM_QUERY, f"INSERT INTO {table} (who) VALUES ({i})")
        wait_for_waiters(p, i + 1)
    holder.commit()
    for w in waiters:
        w._read_query_result()
    rows = mariadb.sql(f"SELECT who FROM {APP_DB}.{table} ORDER BY seq")
    assert [r[0] for r in rows] == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- pinning


def _prepare(mariadb) -> None:
    mariadb.sql(f"DROP TABLE IF EXISTS {APP_DB}.pin_t")
    mariadb.sql(f"CREATE TABLE {APP_DB}.pin_t (id INT PRIMARY KEY) ENGINE=InnoDB")


@dataclass
class PinCase:
    pin: Callable[[pymysql.connections.Connection], int]  # returns the backend thread it pinned
    check: Callable[[pymysql.connections.Connection], int]  # asserts the state is there; returns the thread
    unpin: Callable[[pymysql.connections.Connection], None] | None = None


def _run(conn, *stmts: str) -> None:
    with conn.cursor() as cur:
        for s in stmts:
            cur.execute(s)


def _case_transaction() -> PinCase:
    def pin(c):
        _run(c, "BEGIN", "INSERT INTO pin_t VALUES (1)")
        return backend_thread(c)

    def check(c):
        assert scalar(c, "SELECT COUNT(*) FROM pin_t") == 1  # its own uncommitted row
        assert in_transaction(c) == 1
        return backend_thread(c)

    return PinCase(pin, check, lambda c: _run(c, "COMMIT"))


def _case_autocommit_off() -> PinCase:
    def pin(c):
        _run(c, "SET autocommit = 0", "INSERT INTO pin_t VALUES (2)")
        return backend_thread(c)

    def check(c):
        assert scalar(c, "SELECT COUNT(*) FROM pin_t WHERE id = 2") == 1
        return backend_thread(c)

    return PinCase(pin, check, lambda c: _run(c, "COMMIT", "SET autocommit = 1"))


def _case_lock_tables() -> PinCase:
    def pin(c):
        _run(c, "LOCK TABLES pin_t WRITE")
        return backend_thread(c)

    def check(c):
        _run(c, "INSERT INTO pin_t VALUES (3)")  # only the lock holder may write
        with pytest.raises(pymysql.MySQLError) as ei:
            _run(c, "SELECT 1 FROM pin_other LIMIT 1")  # under LOCK TABLES, other tables are off limits
        assert ei.value.args[0] in (1100, 1146)
        return backend_thread(c)

    return PinCase(pin, check, lambda c: _run(c, "UNLOCK TABLES"))


def _case_get_lock(mariadb) -> PinCase:
    def pin(c):
        assert scalar(c, "SELECT GET_LOCK('pin_lock', 0)") == 1
        return backend_thread(c)

    def check(c):
        t = backend_thread(c)
        assert mariadb.sql("SELECT IS_USED_LOCK('pin_lock')") == ((t,),)
        return t

    def unpin(c):
        assert scalar(c, "SELECT RELEASE_LOCK('pin_lock')") == 1

    return PinCase(pin, check, unpin)


def _case_temporary_table() -> PinCase:
    def pin(c):
        _run(c, "CREATE TEMPORARY TABLE pin_tmp (a INT)", "INSERT INTO pin_tmp VALUES (7)")
        return backend_thread(c)

    def check(c):
        assert scalar(c, "SELECT a FROM pin_tmp") == 7
        return backend_thread(c)

    return PinCase(pin, check)


def _case_user_variable(stmt: str) -> PinCase:
    def pin(c):
        _run(c, stmt)
        return backend_thread(c)

    def check(c):
        assert scalar(c, "SELECT @pin_v") == 42
        return backend_thread(c)

    return PinCase(pin, check)


def _case_sql_prepare() -> PinCase:
    def pin(c):
        _run(c, "PREPARE pin_s FROM 'SELECT @@pseudo_thread_id'")
        return backend_thread(c)

    def check(c):
        return int(scalar(c, "EXECUTE pin_s"))

    return PinCase(pin, check, lambda c: _run(c, "DEALLOCATE PREPARE pin_s"))


def _case_calc_found_rows() -> PinCase:
    def pin(c):
        with c.cursor() as cur:
            cur.execute("SELECT SQL_CALC_FOUND_ROWS seq, @@pseudo_thread_id FROM seq_1_to_57 LIMIT 3")
            rows = cur.fetchall()
        assert len(rows) == 3
        return int(rows[0][1])

    def check(c):
        with c.cursor() as cur:
            cur.execute("SELECT FOUND_ROWS(), @@pseudo_thread_id")
            found, thread = cur.fetchone()
        assert found == 57
        return int(thread)

    # Held while the client asks about the last statement; any other statement ends it.
    return PinCase(pin, check, lambda c: _run(c, "SELECT 1"))


def _p(name: str, make: Callable[[object], PinCase], **kw: object) -> object:
    return pytest.param(name, make, id=name, **kw)


PIN_CASES = [
    _p("transaction", lambda db: _case_transaction()),
    _p("autocommit-0", lambda db: _case_autocommit_off()),
    _p("lock-tables", lambda db: _case_lock_tables()),
    _p("get-lock", _case_get_lock),
    _p("temporary-table", lambda db: _case_temporary_table()),
    _p("user-variable-set", lambda db: _case_user_variable("SET @pin_v = 42")),
    _p("user-variable-select", lambda db: _case_user_variable("SELECT @pin_v := 42")),
    _p("sql-prepare", lambda db: _case_sql_prepare()),
    _p("sql-calc-found-rows", lambda db: _case_calc_found_rows()),
]


@pytest.mark.parametrize(("reason", "make_case"), PIN_CASES)
def test_pinned_session_keeps_its_backend(mariadb, proxy_factory, reason: str, make_case) -> None:
    """While pinned, a session keeps its link and nobody else gets it; once the reason ends, it goes back."""
    _prepare(mariadb)
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS {APP_DB}.pin_other (id INT)")
    case = make_case(mariadb)
    p = proxy_factory({"pool": {"max_connections": 2, "queue_timeout": 2}})
    x, y, z = p.connect(), p.connect(), p.connect()
    tx = case.pin(x)
    # Another client takes a link and keeps it. Were x's link back in the pool, y would get it
    # (it is the only idle one, or the most recently used one).
    y.begin()
    ty = backend_thread(y)
    assert ty != tx, f"{reason}: another client got the backend of a session pinned for {reason}"
    assert case.check(x) == tx, f"{reason}: the pinned session moved to another backend"
    if case.unpin is None:
        y.rollback()
        return
    case.unpin(x)
    # x's link is free again: z gets it at once (y still holds the other one; were x still
    # pinned, z would wait and get the queue-timeout error).
    try:
        tz = backend_thread(z)
    except pymysql.MySQLError as e:
        pytest.fail(f"{reason}: the session stayed pinned after its reason ended: {e.args}")
    assert tz == tx
    y.rollback()


def test_unpinned_sessions_share_one_backend(mariadb, proxy_factory) -> None:
    """Pool of 1: two clients alternate on the same link, each with its own replayable state."""
    _prepare(mariadb)
    p = proxy_factory({"pool": {"max_connections": 1, "queue_timeout": 2}})
    a, b = p.connect(), p.connect()
    _run(a, "SET time_zone = '+05:00'", "SET sql_mode = 'ANSI_QUOTES'")
    _run(b, "SET time_zone = '-03:00'")
    seen = set()
    for i in range(4):
        for conn, tz, mode_has_ansi in ((a, "+05:00", True), (b, "-03:00", False)):
            with conn.cursor() as cur:
                cur.execute("SELECT @@pseudo_thread_id, @@time_zone, @@sql_mode")
                thread, zone, mode = cur.fetchone()
                seen.add(thread)
                assert zone == tz
                assert ("ANSI_QUOTES" in mode) == mode_has_ansi
                assert in_transaction(conn) == 0
                # Statements that change nothing the proxy cannot replay keep the session unpinned.
                cur.execute("INSERT INTO pin_t VALUES (%s)", (100 * (conn is a) + i,))
                cur.execute("SELECT COUNT(*) FROM pin_t")
        _run(a, "BEGIN", "SELECT 1", "COMMIT")
        _run(b, "BEGIN", "SELECT 1", "ROLLBACK")
    assert len(seen) == 1, f"a pool of 1 used several server threads: {seen}"
    assert count_backend_connections(mariadb, APP_USER) == 1


# --------------------------------------------------------------------------- binary prepared statements

COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_CLOSE = 0x16, 0x17, 0x19


def stmt_prepare(conn, sql: str) -> tuple[int, int]:
    conn._execute_command(COM_STMT_PREPARE, sql)
    data = conn._read_packet().get_all_data()
    assert data[0] == 0, data
    stmt_id, ncols, nparams = struct.unpack_from("<IHH", data, 1)
    for _ in range(nparams + (1 if nparams else 0) + ncols + (1 if ncols else 0)):
        conn._read_packet()
    return stmt_id, ncols


def stmt_execute_strings(conn, stmt_id: int, params: bytes = b"") -> list[list[bytes | None]]:
    """Execute a statement whose columns are all strings; binary rows.

    ``params``: the raw parameter block (null bitmap, new-params-bound flag, types, values).
    """
    conn._execute_command(COM_STMT_EXECUTE, struct.pack("<IBI", stmt_id, 0, 1) + params)
    return read_binary_strings(conn)


def read_binary_strings(conn) -> list[list[bytes | None]]:
    """The binary rows of an execute's result set whose columns are all strings."""
    data = conn._read_packet().get_all_data()
    ncols, _ = read_lenenc(data, 0)
    for _ in range(ncols):
        conn._read_packet()
    conn._read_packet()  # EOF
    rows = []
    while True:
        pkt = conn._read_packet()
        if pkt.is_eof_packet():
            return rows
        d = pkt.get_all_data()
        assert d[0] == 0
        bitmap_len = (ncols + 7 + 2) // 8
        bitmap = d[1 : 1 + bitmap_len]
        pos = 1 + bitmap_len
        row: list[bytes | None] = []
        for i in range(ncols):
            if bitmap[(i + 2) // 8] & (1 << ((i + 2) % 8)):
                row.append(None)
                continue
            n, pos = read_lenenc(d, pos)
            row.append(d[pos : pos + n])
            pos += n
        rows.append(row)


def stmt_close(conn, stmt_id: int) -> None:
    conn._execute_command(COM_STMT_CLOSE, struct.pack("<I", stmt_id))


def test_binary_prepared_statements_survive_multiplexing(mariadb, proxy_factory) -> None:
    """Pool of 1: a statement prepared by one client still runs right after others used the link."""
    _prepare(mariadb)
    mariadb.sql(f"INSERT INTO {APP_DB}.pin_t VALUES (1), (2), (3)")
    p = proxy_factory({"pool": {"max_connections": 1, "queue_timeout": 2}})
    a, b = p.connect(), p.connect()
    sid, ncols = stmt_prepare(a, "SELECT CAST(COUNT(*) AS CHAR), CAST(@@pseudo_thread_id AS CHAR) FROM pin_t")
    assert ncols == 2
    first = stmt_execute_strings(a, sid)
    assert first[0][0] == b"3"
    for i in range(3):
        # b works on the only link between a's executions (a pinned link would make b time out).
        _run(b, f"INSERT INTO pin_t VALUES ({10 + i})")
        other_sid, _ = stmt_prepare(b, "SELECT CAST(MAX(id) AS CHAR) FROM pin_t")
        assert stmt_execute_strings(b, other_sid) == [[str(10 + i).encode()]]
        stmt_close(b, other_sid)
        assert stmt_execute_strings(a, sid)[0][0] == str(4 + i).encode()
    stmt_close(a, sid)
    with pytest.raises(pymysql.MySQLError) as ei:
        stmt_execute_strings(a, sid)
    assert ei.value.args[0] == 1243  # unknown prepared statement handler, as the server says
    assert backend_thread(a) == backend_thread(b)


def test_pipelined_statement_commands_each_run_their_own_statement(mariadb, proxy_factory) -> None:
    """Executes queued for the only link, pipelined with a close: each runs the statement it names.

    The proxy looks a command's statement up when the command arrives and uses it once a
    link is free; the commands queued behind it must not change what it runs.
    """
    p = proxy_factory({"pool": {"max_connections": 1, "queue_timeout": 5}})
    a, b = p.connect(), p.connect()
    one, _ = stmt_prepare(a, "SELECT CAST('one' AS CHAR)")
    two, _ = stmt_prepare(a, "SELECT CAST('two' AS CHAR)")

    def packet(payload: bytes) -> bytes:
        return struct.pack("<I", len(payload))[:3] + b"\x00" + payload

    def execute(sid: int) -> bytes:
        return packet(struct.pack("<BIBI", COM_STMT_EXECUTE, sid, 0, 1))

    b._execute_command(pymysql.constants.COMMAND.COM_QUERY, "SELECT SLEEP(0.3)")  # holds the only link
    time.sleep(0.05)
    close_one = packet(struct.pack("<BI", COM_STMT_CLOSE, one))
    a._sock.sendall(execute(one) + execute(two) + close_one + execute(one) + execute(two))
    b._read_query_result()
    answers = []
    for _ in range(4):
        a._next_seq_id = 1  # each answer starts its own sequence
        try:
            answers.append(read_binary_strings(a))
        except pymysql.MySQLError as e:
            answers.append(e.args[0])
    assert answers == [[[b"one"]], [[b"two"]], 1243, [[b"two"]]]


def _one_param(types: bytes | None, value: bytes) -> bytes:
    """Parameter block of a one-parameter execute: types None = "bound before, not sent again"."""
    return b"\x00" + (b"\x00" if types is None else b"\x01" + types) + value


def test_statement_bound_with_other_types_by_another_client(mariadb, proxy_factory) -> None:
    """Pool of 1: two clients bind one statement with different types; each execute sends none.

    Both land on the same server statement. The proxy must give the server the right
    types whenever the other client's were the last ones bound, or the value is misread.
    """
    p = proxy_factory({"pool": {"max_connections": 1, "queue_timeout": 2}})
    a, b = p.connect(), p.connect()
    sql = "SELECT CAST(? AS CHAR)"
    sid_a, _ = stmt_prepare(a, sql)
    sid_b, _ = stmt_prepare(b, sql)
    longlong, var_string = b"\x08\x00", b"\xfd\x00"

    def number(n: int) -> bytes:
        return n.to_bytes(8, "little", signed=True)

    def text(t: str) -> bytes:
        return bytes((len(t),)) + t.encode()

    assert stmt_execute_strings(a, sid_a, _one_param(longlong, number(42))) == [[b"42"]]
    assert stmt_execute_strings(b, sid_b, _one_param(var_string, text("hello"))) == [[b"hello"]]
    for i in range(3):
        assert stmt_execute_strings(a, sid_a, _one_param(None, number(-7 - i))) == [[str(-7 - i).encode()]]
        assert stmt_execute_strings(a, sid_a, _one_param(None, number(1000 + i))) == [[str(1000 + i).encode()]]
        assert stmt_execute_strings(b, sid_b, _one_param(None, text(f"x{i}"))) == [[f"x{i}".encode()]]
    # A failed execute leaves nothing assumed: the next one still binds right.
    with pytest.raises(pymysql.MySQLError):
        stmt_execute_strings(a, sid_a, b"\x00\x00")  # value missing: the server refuses the packet
    assert stmt_execute_strings(a, sid_a, _one_param(None, number(5))) == [[b"5"]]
    assert stmt_execute_strings(b, sid_b, _one_param(None, text("end"))) == [[b"end"]]
    assert backend_thread(a) == backend_thread(b)


# --------------------------------------------------------------------------- a pinned client leaves


@pytest.mark.parametrize("how", ["quit", "socket-closed"])
def test_pinned_client_leaving_leaves_a_clean_link(mariadb, proxy_factory, how: str) -> None:
    _prepare(mariadb)
    p = proxy_factory({"pool": {"max_connections": 1, "queue_timeout": 10}})
    a = p.connect()
    _run(
        a,
        "SET @x = 5",
        "CREATE TEMPORARY TABLE leak_tmp (a INT)",
        "SET SESSION sql_mode = 'ANSI_QUOTES'",
        "PREPARE leak_s FROM 'SELECT 1'",
        "LOCK TABLES pin_t WRITE",
        "UNLOCK TABLES",
        "BEGIN",
        "INSERT INTO pin_t VALUES (99)",
    )
    assert scalar(a, "SELECT GET_LOCK('leak_lock', 0)") == 1
    if how == "quit":
        a.close()
    else:
        a._sock.shutdown(socket.SHUT_RDWR)
        a._sock.close()
        a._sock = None
    p.clients.remove(a)
    b = p.connect()
    with b.cursor() as cur:
        cur.execute("SELECT @x, @@sql_mode, @@pseudo_thread_id")
        x, mode, _b_thread = cur.fetchone()
        assert x is None, "a user variable of the departed client leaked"
        assert in_transaction(b) == 0
        assert "ANSI_QUOTES" not in mode
        with pytest.raises(pymysql.MySQLError) as ei:
            cur.execute("SELECT * FROM leak_tmp")
        assert ei.value.args[0] == 1146, "a temporary table of the departed client leaked"
        with pytest.raises(pymysql.MySQLError) as ei:
            cur.execute("EXECUTE leak_s")
        assert ei.value.args[0] == 1243
        cur.execute("SELECT COUNT(*) FROM pin_t")
        assert cur.fetchone() == (0,), "the departed client's open transaction was not rolled back"
        cur.execute("SELECT IS_FREE_LOCK('leak_lock')")
        assert cur.fetchone() == (1,)
    assert mariadb.sql("SELECT IS_FREE_LOCK('leak_lock')") == ((1,),)
    assert mariadb.sql(f"SELECT COUNT(*) FROM {APP_DB}.pin_t") == ((0,),)
    # Reset and reused (b_thread == a_thread), or closed and replaced: both are fine; the cap holds.
    assert count_backend_connections(mariadb, APP_USER) == 1


def _idle_with_warnings_script(conn: pymysql.connections.Connection, i: int) -> None:
    """What a framework's connect hook does (sql_mode and time_zone), then a statement that leaves a
    warning: on MySQL the SET sql_mode itself warns (3135: NO_ZERO_DATE ... with strict mode)."""
    with conn.cursor() as cur:
        cur.execute("SET SESSION sql_mode = 'STRICT_TRANS_TABLES'")
        cur.execute("SET time_zone = %s", (f"+{i % 12:02d}:00",))
        cur.execute("SELECT CAST('x' AS SIGNED)")  # 1292 Truncated incorrect INTEGER value


def _warnings(conn: pymysql.connections.Connection) -> tuple[Any, ...]:
    with conn.cursor() as cur:
        cur.execute("SHOW WARNINGS")
        return tuple(cur.fetchall())


def test_idle_clients_with_warnings_share_the_links(mariadb, proxy_factory) -> None:
    """40 clients set sql_mode and time_zone on connect, end with a statement that left a warning and
    stay idle: a pool of 3 serves them all and one more, and each still gets its own warnings from
    SHOW WARNINGS afterwards, as a direct connection does."""
    direct = mariadb.connect()
    try:
        _idle_with_warnings_script(direct, 0)
        want = _warnings(direct)
    finally:
        direct.close()
    assert any(row[1] == 1292 for row in want), want
    p = proxy_factory({**ADMIN, "pool": {"max_connections": 3, "queue_timeout": 20}})
    sampler = ProcesslistSampler(mariadb, APP_USER)
    clients = []
    with sampler:
        for i in range(40):
            conn = p.connect()
            _idle_with_warnings_script(conn, i)
            clients.append(conn)
        late = p.connect()
        assert scalar(late, "SELECT 'served'") == "served"
        late.close()
        for i, conn in enumerate(clients):
            assert _warnings(conn) == want, f"client {i}"
            with conn.cursor() as cur:
                cur.execute("SELECT @@sql_mode, @@time_zone")
                assert cur.fetchone() == ("STRICT_TRANS_TABLES", f"+{i % 12:02d}:00"), f"client {i}"
            conn.close()
    assert sampler.error is None and sampler.samples, sampler.error
    assert sampler.max <= 3, f"the server saw {sampler.max} logins of the account (pool of 3)"
