"""Real drivers through the proxy behave exactly as on a direct connection.

Each driver runs one small script twice: straight to the private server, then
through a proxy with a pool of 2 links while other clients (the "noise") keep
leasing the same links with a very different session state: another schema,
character set, time zone, sql_mode, sql_select_limit, auto_increment_increment,
group_concat_max_len, lc_time_names. Both runs must give the same
observations, and concrete values are checked too, so a session setting that
leaks from one client to another, or gets lost on the way, shows up as a wrong
value and not as a vague error later. The noise clients check their own state
on every round as well. Where a script asks about its previous statement
(LAST_INSERT_ID(), ROW_COUNT(), SHOW WARNINGS) it first lets two "neighbours"
take both links at once, so the question certainly comes after another session
used the link.

test_200_django_like_sessions_share_4_links runs 200 sessions over 4 backend
links and asks the admin console whether they really were multiplexed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pymysql
import pymysql.cursors
import pytest
from pymysql.constants import CLIENT

from cache_metadata_client import CachingClient
from conftest import APP_DB, APP_PASSWORD, APP_USER, SERVER, MariaDB, ProxyProcess, in_transaction, run_cli

ADMIN = {"admin": {"user": "admin", "password": "adminpw"}}
NOISE_DB = "drv_noise"
UTC = dt.timezone.utc
# Where the servers answer differently (directly and through the proxy alike). The private
# server's default sql_mode (no my.cnf): what a fresh session sees; TRADITIONAL as it expands.
if SERVER.mysql:
    SERVER_SQL_MODE = ("ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
                       "NO_ENGINE_SUBSTITUTION")
    TRADITIONAL = ("STRICT_TRANS_TABLES,STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
                   "TRADITIONAL,NO_ENGINE_SUBSTITUTION")
else:
    SERVER_SQL_MODE = "STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION"
    TRADITIONAL = ("STRICT_TRANS_TABLES,STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
                   "TRADITIONAL,NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION")
# The collation ``SET NAMES utf8mb4`` (what the drivers send) picks: the server's default for utf8mb4.
UTF8MB4_DEFAULT = {"mariadb-10.11": "utf8mb4_general_ci", "mariadb-11.8": "utf8mb4_uca1400_ai_ci",
                   "mysql-9.7": "utf8mb4_0900_ai_ci"}[SERVER.name]
# The isolation level's name: tx_isolation until MySQL 8.0 and MariaDB 11.1, transaction_isolation from then.
ISOLATION = "@@tx_isolation" if SERVER.name == "mariadb-10.11" else "@@transaction_isolation"

# Time zones are seen in FROM_UNIXTIME(86400), a day after the epoch: MariaDB 11.8 answers NULL for
# FROM_UNIXTIME(0) in every time zone ("Truncated incorrect unixtime value"), and MariaDB 11 for
# any time before 1970, which UTC-3 makes of the epoch.
DAY_ONE = dt.datetime(1970, 1, 2)


def key(table: str, name: str) -> str:
    """A unique key as duplicate-entry messages name it: MySQL 8+ puts the table before it."""
    return f"{table}.{name}" if SERVER.mysql else name


# --------------------------------------------------------------------------- helpers


def start_proxy(proxy_factory: Callable[..., ProxyProcess], max_connections: int = 2, **pool: Any) -> ProxyProcess:
    return proxy_factory({**ADMIN, "pool": {"max_connections": max_connections, **pool}})


def admin_query(p: ProxyProcess, stmt: str) -> list[dict[str, Any]]:
    conn = pymysql.connect(host=p.host, port=p.port, user="admin", password="adminpw", autocommit=True,
                           connect_timeout=10, read_timeout=30, cursorclass=pymysql.cursors.DictCursor)
    try:
        with conn.cursor() as cur:
            cur.execute(stmt)
            return list(cur.fetchall())
    finally:
        conn.close()


def admin_stats(p: ProxyProcess) -> dict[str, float]:
    return {r["name"]: float(r["value"]) for r in admin_query(p, "SHOW STATS")}


def client_row(p: ProxyProcess, client_id: int) -> dict[str, Any]:
    rows = [r for r in admin_query(p, "SHOW CLIENTS") if int(r["id"]) == client_id]
    assert rows, f"client {client_id} not in SHOW CLIENTS"
    return rows[0]


def log_excerpt(p: ProxyProcess, lines: int = 60) -> str:
    text = p.log().splitlines()
    notable = [ln for ln in text if any(w in ln for w in ("WARNING", "ERROR", "Traceback", "error"))]
    return "\n".join(["--- proxy warnings/errors ---", *notable[-30:], "--- proxy log tail ---", *text[-lines:]])


@contextmanager
def proxy_log_on_failure(p: ProxyProcess) -> Iterator[None]:
    """Add the proxy's log to whatever goes wrong inside, so a failure says what the proxy saw."""
    try:
        yield
    except Exception as e:
        raise AssertionError(f"{type(e).__name__}: {e}\n{log_excerpt(p)}") from e


def grant_noise_db(mariadb: MariaDB) -> None:
    mariadb.sql(f"CREATE DATABASE IF NOT EXISTS `{NOISE_DB}`")
    mariadb.sql(f"GRANT ALL ON `{NOISE_DB}`.* TO %s@'%%'", (APP_USER,))
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS `{NOISE_DB}`.noise (id INT AUTO_INCREMENT PRIMARY KEY, who INT)")


# The server's default group_concat_max_len (1 MiB on MariaDB, 1 KiB on MySQL).
GROUP_CONCAT_DEFAULT = 1024 if SERVER.mysql else 1048576

# Session state of the noise clients: nothing like what the drivers under test use.
_NOISE_SETUPS = [
    (
        [
            f"USE `{NOISE_DB}`",
            "SET NAMES latin1",
            "SET time_zone = '-07:00'",
            "SET sql_mode = 'ANSI_QUOTES,NO_BACKSLASH_ESCAPES'",
            "SET SESSION sql_select_limit = 3",
            "SET SESSION auto_increment_increment = 7",
        ],
        (NOISE_DB, "latin1", "latin1_swedish_ci", "-07:00", "ANSI_QUOTES,NO_BACKSLASH_ESCAPES", 3, 7, GROUP_CONCAT_DEFAULT, "en_US"),
    ),
    (
        [
            "SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci",
            "SET time_zone = '+09:30'",
            "SET sql_mode = 'PAD_CHAR_TO_FULL_LENGTH'",
            "SET SESSION group_concat_max_len = 4",
            "SET lc_time_names = 'de_DE'",
        ],
        (APP_DB, "utf8mb4", "utf8mb4_unicode_ci", "+09:30", "PAD_CHAR_TO_FULL_LENGTH", 18446744073709551615, 1, 4,
         "de_DE"),
    ),
]
_NOISE_CHECK = (
    "SELECT DATABASE(), @@character_set_client, @@collation_connection, @@time_zone, @@sql_mode, "
    "@@sql_select_limit, @@auto_increment_increment, @@group_concat_max_len, @@lc_time_names"
)


class Noise:
    """Other clients of the same proxy, hammering the shared links with their own session state."""

    def __init__(self, p: ProxyProcess) -> None:
        self.p = p
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.rounds = [0] * len(_NOISE_SETUPS)
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(len(_NOISE_SETUPS))]

    def __enter__(self) -> Noise:
        for t in self.threads:
            t.start()
        deadline = time.monotonic() + 20
        while min(self.rounds) < 3 and not self.errors and time.monotonic() < deadline:
            time.sleep(0.01)  # every noise client has its state set before the driver starts
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        if exc[0] is None:
            self.check()

    def check(self) -> None:
        assert not self.errors, "noise clients saw wrong state:\n" + "\n".join(self.errors[:10])
        assert min(self.rounds) >= 3, f"noise clients barely ran: {self.rounds}"

    def _run(self, i: int) -> None:
        setup, want = _NOISE_SETUPS[i]
        try:
            conn = pymysql.connect(host=self.p.host, port=self.p.port, user=APP_USER, password=APP_PASSWORD,
                                   database=APP_DB, autocommit=True, connect_timeout=10, read_timeout=60)
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"noise {i}: connect: {e!r}")
            return
        try:
            with conn.cursor() as cur:
                for stmt in setup:
                    cur.execute(stmt)
                n = 0
                while not self.stop.is_set():
                    cur.execute(_NOISE_CHECK)
                    got = cur.fetchone()
                    if got != want:
                        self.errors.append(f"noise {i} round {n}: {got} != {want}")
                    if i == 0 and n % 4 == 0:
                        cur.execute(f"INSERT INTO `{NOISE_DB}`.noise (who) VALUES (%s)", (i,))
                        if (cur.lastrowid - 1) % 7:
                            self.errors.append(f"noise {i}: id {cur.lastrowid} ignores auto_increment_increment=7")
                    if i == 1 and n % 5 == 0:
                        cur.execute("BEGIN")
                        cur.execute("SELECT GROUP_CONCAT('abcdefgh'), DATE_FORMAT('2024-03-01', '%M')")
                        got2 = cur.fetchone()
                        cur.execute("COMMIT")
                        if got2 != ("abcd", "März"):
                            self.errors.append(f"noise {i}: group_concat/lc_time_names lost: {got2}")
                    n += 1
                    self.rounds[i] = n
                    time.sleep(0.002)
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"noise {i}: {e!r}")
        finally:
            conn.close()


class Neighbours:
    """Two more clients that, when called, take both links of the pool of 2 at the same moment.

    A script calls ``between()`` where it matters (between a statement and the question about it):
    the link its client just gave back is then certainly used by another session first, which sets
    its own LAST_INSERT_ID() and ROW_COUNT() on it. When the script's client rightly still holds its
    link, one neighbour just waits in the queue and the script goes on after a short wait.
    """

    STATEMENT = f"INSERT INTO `{NOISE_DB}`.noise (who) SELECT SLEEP(0.03) + 9"

    def __init__(self, p: ProxyProcess) -> None:
        self.conns = [p.connect(), p.connect()]
        self.busy: list[threading.Thread | None] = [None, None]
        self.errors: list[str] = []
        self.calls = 0

    def _run(self, conn: Any) -> None:
        try:
            with conn.cursor() as cur:
                cur.execute(self.STATEMENT)
        except Exception as e:  # noqa: BLE001
            self.errors.append(repr(e))

    def __call__(self) -> None:
        self.calls += 1
        for i, conn in enumerate(self.conns):
            t = self.busy[i]
            if t is not None and t.is_alive():
                continue  # still queued behind a pinned session
            self.busy[i] = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self.busy[i].start()
        for t in self.busy:
            if t is not None:
                t.join(0.3)

    def check(self) -> None:
        for t in self.busy:
            if t is not None:
                t.join(30)
        assert self.calls > 0
        assert not self.errors, self.errors[:5]


def no_one_between() -> None:
    """The direct run: nobody else uses a direct connection."""


def _norm(value: Any) -> Any:
    """bytearray and bytes compare equal; tuples and lists too (drivers differ in what they return)."""
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, (list, tuple)):
        return tuple(_norm(v) for v in value)
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


def assert_same(direct: list[tuple[str, Any]], via: list[tuple[str, Any]]) -> None:
    """Observation by observation, so the first difference is named by its step."""
    for (step_d, got_d), (step_v, got_v) in zip(direct, via):
        assert step_d == step_v, f"scripts diverged: {step_d} vs {step_v}"
        assert _norm(got_v) == _norm(got_d), f"step {step_d!r}: proxy {got_v!r} != direct {got_d!r}"
    assert len(direct) == len(via), f"direct made {len(direct)} observations, proxy {len(via)}"


class Recorder:
    """Wraps a connect function and keeps the connections it made, to look them up afterwards."""

    def __init__(self, connect: Callable[..., Any]) -> None:
        self._connect = connect
        self.conns: list[Any] = []

    def __call__(self, **kw: Any) -> Any:
        conn = self._connect(**kw)
        self.conns.append(conn)
        return conn

    def close(self) -> None:
        for c in self.conns:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass


def obs_dict(observations: list[tuple[str, Any]]) -> dict[str, Any]:
    return dict(observations)


# --------------------------------------------------------------------------- PyMySQL

_ROW1 = ("zoë ☃ 🎉", Decimal("12.34"), dt.datetime(2024, 1, 2, 3, 4, 5, 678901), b"\x00\xff'\\\"", 1.5)
_ROWS = [
    ("b", Decimal("1.00"), dt.datetime(2020, 2, 29, 0, 0), b"b", 0.25),
    ("c", Decimal("-2.50"), None, None, None),
    ("d", Decimal("1000.01"), dt.datetime(1999, 12, 31, 23, 59, 59), b"", -1e100),
]
_CREATE = (
    "CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(20) NOT NULL, amount DECIMAL(10,2), "
    "at DATETIME(6), data VARBINARY(16), f DOUBLE, UNIQUE KEY (name)) DEFAULT CHARSET=utf8mb4"
)
_STATE = ("SELECT DATABASE(), @@character_set_client, @@collation_connection, @@time_zone, @@sql_mode, "
          "@@sql_select_limit, @@auto_increment_increment, @@group_concat_max_len, @@lc_time_names")


def pymysql_script(connect: Callable[..., Any], between: Callable[[], None] = no_one_between) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    conn = connect()
    cur = conn.cursor()
    cur.execute(_STATE)
    out.append(("initial state", cur.fetchone()))
    cur.execute("DROP TABLE IF EXISTS drv_pymysql")
    cur.execute(_CREATE.format(t="drv_pymysql"))
    n = cur.execute("INSERT INTO drv_pymysql (name, amount, at, data, f) VALUES (%s, %s, %s, %s, %s)", _ROW1)
    out.append(("insert", (n, cur.lastrowid, conn.insert_id())))
    n = cur.executemany("INSERT INTO drv_pymysql (name, amount, at, data, f) VALUES (%s, %s, %s, %s, %s)", _ROWS)
    out.append(("executemany", (n, cur.lastrowid)))
    between()
    cur.execute("SELECT LAST_INSERT_ID()")
    out.append(("last_insert_id", cur.fetchone()))
    n = cur.execute("UPDATE drv_pymysql SET amount = amount + 1 WHERE id > 2")
    out.append(("update", n))
    between()
    cur.execute("SELECT ROW_COUNT()")
    out.append(("row_count", cur.fetchone()))
    n = cur.execute("UPDATE drv_pymysql SET name = name WHERE id = 1")
    out.append(("no-op update", n))
    n = cur.execute("INSERT IGNORE INTO drv_pymysql (name) VALUES ('b')")
    between()
    out.append(("insert ignore", (n, conn.show_warnings())))
    cur.execute("SELECT id, name, amount, at, data, f FROM drv_pymysql ORDER BY id")
    rows = cur.fetchall()
    out.append(("rows", rows))
    out.append(("types", [tuple(type(v).__name__ for v in r) for r in rows]))

    cur.execute("SET time_zone = '+03:00'")
    between()
    cur.execute("SELECT @@time_zone, FROM_UNIXTIME(86400), CONVERT_TZ('2024-01-01 00:00', @@time_zone, '+00:00')")
    out.append(("time_zone", cur.fetchone()))
    cur.execute("SET sql_mode = 'STRICT_ALL_TABLES'")
    try:
        cur.execute("INSERT INTO drv_pymysql (name) VALUES (%s)", ("x" * 30,))
        out.append(("strict insert", "no error"))
    except pymysql.MySQLError as e:
        out.append(("strict insert", e.args[0]))
    cur.execute("SET sql_mode = ''")
    n = cur.execute("INSERT INTO drv_pymysql (name) VALUES (%s)", ("y" * 30,))
    between()
    out.append(("lax insert", (n, cur.lastrowid, conn.show_warnings())))

    conn.begin()
    cur.execute("INSERT INTO drv_pymysql (name) VALUES ('rolled back')")
    out.append(("in transaction", in_transaction(conn)))
    conn.rollback()
    conn.begin()
    cur.execute("UPDATE drv_pymysql SET amount = 99 WHERE name = 'b'")
    conn.commit()
    cur.execute("SELECT name, amount FROM drv_pymysql WHERE name IN ('rolled back', 'b') ORDER BY name")
    out.append(("after transactions", cur.fetchall()))

    conn.autocommit(False)
    cur.execute("UPDATE drv_pymysql SET amount = 0")
    cur.execute("SELECT SUM(amount) FROM drv_pymysql")
    out.append(("uncommitted sum", cur.fetchone()))
    conn.rollback()
    conn.autocommit(True)
    cur.execute("SELECT (SELECT SUM(amount) FROM drv_pymysql), @@autocommit")
    out.append(("rolled back sum", (cur.fetchone(), conn.get_autocommit())))

    ss = conn.cursor(pymysql.cursors.SSCursor)
    ss.execute("SELECT seq, REPEAT('x', seq MOD 100) FROM seq_1_to_3000")
    total = count = 0
    for seq, pad in ss:
        total += seq + len(pad)
        count += 1
    ss.close()
    out.append(("unbuffered", (count, total)))
    dc = conn.cursor(pymysql.cursors.DictCursor)
    dc.execute("SELECT name, amount FROM drv_pymysql WHERE id = 1")
    out.append(("dict row", dc.fetchone()))
    big = "ä" * 700_000  # 1.4 MB on the wire, twice: many TCP reads for one packet
    cur.execute("SELECT CHAR_LENGTH(%s), SHA2(%s, 256)", (big, big))  # (MySQL 9 has no MD5())
    out.append(("big param", cur.fetchone()))
    conn.ping(reconnect=False)
    conn.select_db("information_schema")
    cur.execute("SELECT DATABASE()")
    out.append(("select_db", cur.fetchone()))
    conn.select_db(APP_DB)
    cur.execute("SELECT DATABASE(), COUNT(*) FROM drv_pymysql")
    out.append(("back to appdb", cur.fetchone()))

    # A second session: FOUND_ROWS (affected = matched), its own LAST_INSERT_ID, a user variable.
    other = connect(client_flag=CLIENT.FOUND_ROWS)
    oc = other.cursor()
    between()
    out.append(("found_rows no-op update", oc.execute("UPDATE drv_pymysql SET name = name WHERE id = 1")))
    oc.execute("SELECT LAST_INSERT_ID(), @@time_zone, @@sql_mode")
    out.append(("other session's own state", oc.fetchone()))
    oc.execute("SET @v = 41")
    oc.execute("SELECT @v + 1")
    out.append(("user variable", oc.fetchone()))

    # Multi-statements and latin1 on the wire.
    multi = connect(client_flag=CLIENT.MULTI_STATEMENTS, charset="latin1")
    mc = multi.cursor()
    mc.execute("SELECT 'café', @@character_set_client; UPDATE drv_pymysql SET data = 'é' WHERE id = 2; SELECT 3")
    sets = [mc.fetchall()]
    while mc.nextset():
        sets.append((mc.rowcount, mc.fetchall()))
    out.append(("multi statements latin1", sets))
    mc.execute("INSERT INTO drv_pymysql (name) VALUES ('naïve')")
    cur.execute("SELECT name, HEX(name), data FROM drv_pymysql WHERE name = 'naïve' OR id = 2 ORDER BY id")
    out.append(("latin1 round trip read as utf8mb4", cur.fetchall()))
    # LOAD DATA LOCAL INFILE: the server asks the client for the file in the middle of the response.
    loader = connect(local_infile=True)
    lc = loader.cursor()
    with tempfile.NamedTemporaryFile("w", suffix=".csv", encoding="utf-8", delete=False) as f:
        f.write("über,1.25\nload2,2.50\nload3,\\N\n")
    try:
        n = lc.execute(f"LOAD DATA LOCAL INFILE '{f.name}' INTO TABLE drv_pymysql CHARACTER SET utf8mb4 "
                       "FIELDS TERMINATED BY ',' (name, amount)")
    finally:
        os.unlink(f.name)
    lc.execute("SELECT name, amount FROM drv_pymysql WHERE name IN ('über', 'load2', 'load3') ORDER BY id")
    out.append(("load data local infile", (n, lc.fetchall())))
    cur.execute(_STATE)
    out.append(("final state", cur.fetchone()))
    return out


def test_pymysql(mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess]) -> None:
    grant_noise_db(mariadb)
    direct_rec = Recorder(mariadb.connect)
    direct = pymysql_script(direct_rec)
    direct_rec.close()
    p = start_proxy(proxy_factory)
    rec = Recorder(p.connect)
    with proxy_log_on_failure(p):
        with Noise(p):
            between = Neighbours(p)
            via = pymysql_script(rec, between)
            between.check()
        assert_same(direct, via)
        got = obs_dict(via)
        assert got["initial state"] == (APP_DB, "utf8mb4", UTF8MB4_DEFAULT, "SYSTEM", SERVER_SQL_MODE,
                                        18446744073709551615, 1, GROUP_CONCAT_DEFAULT, "en_US")
        assert got["insert"] == (1, 1, 1)
        assert got["executemany"] == (3, 2)  # one multi-row INSERT: lastrowid is its first id
        assert got["last_insert_id"] == (2,)
        assert got["update"] == 2 and got["row_count"] == (2,)
        assert got["no-op update"] == 0  # changed rows, not matched: no FOUND_ROWS on this connection
        assert got["insert ignore"] == (0, (("Warning", 1062, f"Duplicate entry 'b' for key '{key('drv_pymysql', 'name')}'"),))
        assert got["rows"] == (
            (1, *_ROW1),
            (2, "b", Decimal("1.00"), dt.datetime(2020, 2, 29), b"b", 0.25),
            (3, "c", Decimal("-1.50"), None, None, None),
            (4, "d", Decimal("1001.01"), dt.datetime(1999, 12, 31, 23, 59, 59), b"", -1e100),
        )
        assert got["types"][0] == ("int", "str", "Decimal", "datetime", "bytes", "float")
        assert got["time_zone"] == ("+03:00", dt.datetime(1970, 1, 2, 3, 0), dt.datetime(2023, 12, 31, 21, 0))
        assert got["strict insert"] == 1406  # Data too long: sql_mode held across links
        assert got["lax insert"] == (1, 6, (("Warning", 1265, "Data truncated for column 'name' at row 1"),))
        assert got["in transaction"] == 1
        assert got["after transactions"] == (("b", Decimal("99.00")),)
        assert got["uncommitted sum"] == (Decimal("0.00"),)
        assert got["rolled back sum"] == ((Decimal("1110.85"), 1), True)
        assert got["unbuffered"] == (3000, 4650000)
        assert got["dict row"] == {"name": _ROW1[0], "amount": Decimal("12.34")}
        assert got["big param"] == (700000, hashlib.sha256(("ä" * 700_000).encode()).hexdigest())
        assert got["select_db"] == ("information_schema",)
        assert got["back to appdb"] == (APP_DB, 5)
        assert got["found_rows no-op update"] == 1  # matched rows with CLIENT_FOUND_ROWS
        # A session that never inserted sees LAST_INSERT_ID() 0 and none of the first session's settings.
        assert got["other session's own state"] == (0, "SYSTEM", SERVER_SQL_MODE)
        assert got["user variable"] == (42,)
        assert _norm(got["multi statements latin1"]) == ((("café", "latin1"),), (1, ()), (1, ((3,),)))
        assert got["latin1 round trip read as utf8mb4"] == (("b", "62", b"\xe9"), ("naïve", "6E61C3AF7665", None))
        assert got["load data local infile"] == (3, (("über", Decimal("1.25")), ("load2", Decimal("2.50")),
                                                     ("load3", None)))
        assert got["final state"] == (APP_DB, "utf8mb4", UTF8MB4_DEFAULT, "+03:00", "", 18446744073709551615, 1,
                                      GROUP_CONCAT_DEFAULT, "en_US")
        # The first session really shared links with the noise, it was not pinned all along.
        row = client_row(p, rec.conns[0].thread_id())
        assert row["pinned_for"] in (None, ""), row
        assert int(row["links_returned"]) > 20, row


def _collate_script(connect: Callable[..., Any], neighbour: Callable[[], Any]) -> list[tuple[str, Any]]:
    """``connect()`` gives a DB-API connection already set to a non-default collation, or None: then
    the script sets them with SET NAMES ... COLLATE."""
    out: list[tuple[str, Any]] = []
    cases = [("", "'ß' = 'ss'")] if connect is not None else [
        ("utf8mb4 COLLATE utf8mb4_unicode_ci", "'ß' = 'ss'"),
        ("utf8mb4 COLLATE utf8mb4_bin", "'a' = 'A'"),
        ("latin1 COLLATE latin1_bin", "'a' = 'A'"),
    ]
    conn = connect() if connect is not None else neighbour()
    cur = conn.cursor()
    for names, probe in cases:
        if names:
            cur.execute(f"SET NAMES {names}")
        cur.execute(f"SELECT @@collation_connection, {probe}")
        label = names or "collation= option"
        out.append((f"{label}: right after", tuple(cur.fetchone())))
        other = neighbour()  # another client takes the link meanwhile (a pool of 1 makes it certain)
        oc = other.cursor()
        oc.execute("SELECT @@collation_connection")
        out.append((f"{label}: other client", oc.fetchone()))
        other.close()
        cur.execute(f"SELECT @@collation_connection, {probe}")
        out.append((f"{label}: after the link was shared", tuple(cur.fetchone())))
    return out


def _collate_connect(driver: str, host: str, port: int) -> Callable[[], Any] | None:
    if driver == "SET NAMES":
        return None
    if driver == "pymysql":
        return lambda: pymysql.connect(host=host, port=port, user=APP_USER, password=APP_PASSWORD, database=APP_DB,
                                       autocommit=True, charset="utf8mb4", collation="utf8mb4_unicode_ci")
    if driver == "mysqlclient":
        return lambda: _mysqldb_connect(host, port)(collation="utf8mb4_unicode_ci")
    return lambda: _connector_connect(host, port)(charset="utf8mb4", collation="utf8mb4_unicode_ci")


@pytest.mark.parametrize("driver", ["SET NAMES", "pymysql", "mysqlclient", "mysql-connector"])
def test_collation_survives_multiplexing(driver: str, mariadb: MariaDB,
                                         proxy_factory: Callable[..., ProxyProcess]) -> None:
    """A session's collation (SET NAMES x COLLATE y, or the driver's collation= option, which sends
    that) must still hold after another client used its link. MariaDB's session tracker reports
    character_set_client/connection/results for SET NAMES ... COLLATE, never collation_connection."""
    direct = _collate_script(_collate_connect(driver, mariadb.host, mariadb.port), mariadb.connect)
    p = start_proxy(proxy_factory, max_connections=1)
    with proxy_log_on_failure(p):
        via = _collate_script(_collate_connect(driver, p.host, p.port), p.connect)
        assert_same(direct, via)
        for step, value in via:
            if step.endswith("after the link was shared"):
                wanted = step.split("COLLATE ")[1].split(":")[0] if "COLLATE" in step else "utf8mb4_unicode_ci"
                assert value[0] == wanted, (step, value)


# --------------------------------------------------------------------------- mysqlclient (MySQLdb)


def mysqldb_script(connect: Callable[..., Any], between: Callable[[], None] = no_one_between) -> list[tuple[str, Any]]:
    import MySQLdb
    import MySQLdb.cursors

    out: list[tuple[str, Any]] = []
    conn = connect()
    out.append(("server", ("MariaDB" in conn.get_server_info(), conn.character_set_name(), conn.get_autocommit())))
    cur = conn.cursor()
    cur.execute(_STATE)
    out.append(("initial state", cur.fetchone()))
    cur.execute("DROP TABLE IF EXISTS drv_mysqldb")
    cur.execute(_CREATE.format(t="drv_mysqldb"))
    n = cur.execute("INSERT INTO drv_mysqldb (name, amount, at, data, f) VALUES (%s, %s, %s, %s, %s)", _ROW1)
    out.append(("insert", (n, cur.lastrowid, conn.insert_id(), conn.affected_rows())))
    n = cur.executemany("INSERT INTO drv_mysqldb (name, amount, at, data, f) VALUES (%s, %s, %s, %s, %s)", _ROWS)
    out.append(("executemany", (n, cur.lastrowid, conn.info())))
    n = cur.execute("UPDATE drv_mysqldb SET amount = amount * 2 WHERE amount > 0")
    out.append(("update", (n, conn.info())))
    between()
    cur.execute("SELECT ROW_COUNT(), LAST_INSERT_ID()")
    out.append(("row_count, last_insert_id", cur.fetchone()))
    n = cur.execute("UPDATE drv_mysqldb SET name = 'b' WHERE name = 'b'")
    out.append(("no-op update", n))
    n = cur.execute("INSERT IGNORE INTO drv_mysqldb (name) VALUES ('c')")
    between()
    out.append(("insert ignore", (n, conn.warning_count(), conn.show_warnings())))
    cur.execute("SELECT id, name, amount, at, data, f FROM drv_mysqldb ORDER BY id")
    rows = cur.fetchall()
    out.append(("rows", rows))
    out.append(("types", [tuple(type(v).__name__ for v in r) for r in rows]))
    out.append(("description", [d[:2] for d in cur.description]))

    # Multi-statements are on by default in mysqlclient.
    cur.execute("SELECT 1 AS a; UPDATE drv_mysqldb SET f = 2 WHERE id = 1; SELECT name FROM drv_mysqldb WHERE id = 1")
    sets = [cur.fetchall()]
    while cur.nextset():
        sets.append((cur.rowcount, cur.fetchall()))
    out.append(("multi statements", sets))

    cur.execute("SET time_zone = '-03:00', sql_mode = 'TRADITIONAL'")
    between()
    cur.execute("SELECT @@time_zone, FROM_UNIXTIME(86400), @@sql_mode")
    out.append(("session variables", cur.fetchone()))
    try:
        cur.execute("INSERT INTO drv_mysqldb (name, amount) VALUES ('zero', 1/0)")
        out.append(("traditional 1/0", "no error"))
    except MySQLdb.MySQLError as e:
        out.append(("traditional 1/0", e.args[0]))

    conn.begin()
    cur.execute("INSERT INTO drv_mysqldb (name) VALUES ('tx1')")
    tx_id = cur.lastrowid
    conn.rollback()
    conn.begin()
    cur.execute("INSERT INTO drv_mysqldb (name) VALUES ('tx2')")
    conn.commit()
    cur.execute("SELECT name FROM drv_mysqldb WHERE name LIKE 'tx%'")
    out.append(("transactions", (tx_id, cur.fetchall())))
    conn.autocommit(False)
    out.append(("autocommit off", conn.get_autocommit()))
    cur.execute("DELETE FROM drv_mysqldb")
    conn.rollback()
    conn.autocommit(True)
    cur.execute("SELECT (SELECT COUNT(*) FROM drv_mysqldb), @@autocommit")
    out.append(("after rollback", (cur.fetchone(), conn.get_autocommit())))

    ss = conn.cursor(MySQLdb.cursors.SSCursor)
    ss.execute("SELECT seq, CONCAT('row ', seq) FROM seq_1_to_5000")
    first = ss.fetchmany(10)
    rest = ss.fetchall()
    ss.close()
    out.append(("unbuffered", (first[:2], len(rest), rest[-1])))
    dc = conn.cursor(MySQLdb.cursors.DictCursor)
    dc.execute("SELECT name, at FROM drv_mysqldb WHERE id = 2")
    out.append(("dict row", dc.fetchone()))
    conn.ping()
    out.append(("stat", conn.stat().startswith("Uptime:")))
    conn.select_db("information_schema")
    cur.execute("SELECT DATABASE()")
    out.append(("select_db", cur.fetchone()))
    conn.select_db(APP_DB)
    conn.set_character_set("latin1")
    cur.execute("SELECT @@character_set_client, @@character_set_results, %s", ("é",))
    out.append(("latin1", cur.fetchone()))
    conn.set_character_set("utf8mb4")

    # A stored procedure with two result sets (CLIENT_MULTI_RESULTS), called the DB-API way.
    cur.execute("DROP PROCEDURE IF EXISTS drv_mysqldb_proc")
    cur.execute("CREATE PROCEDURE drv_mysqldb_proc(IN n INT) BEGIN SELECT n * 2 AS doubled; "
                "SELECT name FROM drv_mysqldb WHERE id <= n ORDER BY id; END")
    cur.execute("CALL drv_mysqldb_proc(2)")
    sets = [cur.fetchall()]
    while cur.nextset():
        sets.append(cur.fetchall())
    out.append(("procedure", sets))
    cur.callproc("drv_mysqldb_proc", (1,))  # sets @_drv_mysqldb_proc_0: a user variable, pins from here
    sets = [cur.fetchall()]
    while cur.nextset():
        sets.append(cur.fetchall())
    cur.execute("SELECT @_drv_mysqldb_proc_0")
    out.append(("callproc", (sets, cur.fetchone())))
    cur.execute(_STATE)
    out.append(("final state", cur.fetchone()))
    # COM_CHANGE_USER (what connection pools use to reset a session): a fresh session, variables gone.
    other = connect()
    oc = other.cursor()
    oc.execute("SET @u = 1")
    oc.execute("SET time_zone = '+01:00'")
    other.select_db("information_schema")
    other.change_user(APP_USER, APP_PASSWORD, APP_DB)
    oc = other.cursor()
    oc.execute("SELECT @u, @@time_zone, @@sql_mode, DATABASE(), CURRENT_USER()")
    out.append(("after change_user", oc.fetchone()))
    return out


def _mysqldb_connect(host: str, port: int) -> Callable[..., Any]:
    import MySQLdb

    def connect(**kw: Any) -> Any:
        args = {"host": host, "port": port, "user": APP_USER, "password": APP_PASSWORD, "database": APP_DB,
                "charset": "utf8mb4", "autocommit": True, "connect_timeout": 10, "read_timeout": 60}
        args.update(kw)
        return MySQLdb.connect(**args)

    return connect


def test_mysqlclient(mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess]) -> None:
    grant_noise_db(mariadb)
    direct = mysqldb_script(_mysqldb_connect(mariadb.host, mariadb.port))
    p = start_proxy(proxy_factory)
    rec = Recorder(_mysqldb_connect(p.host, p.port))
    with proxy_log_on_failure(p):
        with Noise(p):
            between = Neighbours(p)
            via = mysqldb_script(rec, between)
            between.check()
        # Multiplexed all along; pinned at the end only by the user variable that callproc set.
        row = client_row(p, rec.conns[0].thread_id())
        assert int(row["links_returned"]) > 20 and row["pinned_for"].startswith("untracked session state"), row
        # COM_CHANGE_USER ended the pin of the other connection's user variable.
        assert client_row(p, rec.conns[1].thread_id())["pinned_for"] in (None, "")
        rec.close()
        assert_same(direct, via)
        got = obs_dict(via)
        assert got["server"] == (SERVER.mariadb, "utf8mb4", True)
        assert got["insert"] == (1, 1, 1, 1)
        assert got["executemany"] == (3, 2, "Records: 3  Duplicates: 0  Warnings: 0")
        assert got["update"] == (3, "Rows matched: 3  Changed: 3  Warnings: 0")
        assert got["row_count, last_insert_id"] == (3, 2)
        assert got["no-op update"] == 0
        assert got["insert ignore"] == (0, 1, (("Warning", 1062, f"Duplicate entry 'c' for key '{key('drv_mysqldb', 'name')}'"),))
        assert got["rows"] == (
            (1, _ROW1[0], Decimal("24.68"), _ROW1[2], _ROW1[3], 1.5),
            (2, "b", Decimal("2.00"), dt.datetime(2020, 2, 29), b"b", 0.25),
            (3, "c", Decimal("-2.50"), None, None, None),
            (4, "d", Decimal("2000.02"), dt.datetime(1999, 12, 31, 23, 59, 59), b"", -1e100),
        )
        assert got["description"] == [("id", 3), ("name", 253), ("amount", 246), ("at", 12), ("data", 253), ("f", 5)]
        assert got["multi statements"] == [((1,),), (1, ()), (1, ((_ROW1[0],),))]
        assert got["session variables"] == ("-03:00", dt.datetime(1970, 1, 1, 21, 0), TRADITIONAL)
        assert got["traditional 1/0"] == 1365  # Division by 0: an error only under TRADITIONAL
        assert got["transactions"] == (6, (("tx2",),))
        assert got["autocommit off"] is False
        assert got["after rollback"] == ((5, 1), True)
        assert got["unbuffered"] == (((1, "row 1"), (2, "row 2")), 4990, (5000, "row 5000"))
        assert got["dict row"] == {"name": "b", "at": dt.datetime(2020, 2, 29)}
        assert got["stat"] is True
        assert got["select_db"] == ("information_schema",)
        assert got["latin1"] == ("latin1", "latin1", "é")
        assert got["procedure"] == [((4,),), ((_ROW1[0],), ("b",)), ()]
        assert got["callproc"] == ([((2,),), ((_ROW1[0],),), ()], (1,))
        assert got["final state"] == (APP_DB, "utf8mb4", UTF8MB4_DEFAULT, "-03:00", TRADITIONAL,
                                      18446744073709551615, 1, GROUP_CONCAT_DEFAULT, "en_US")
        assert got["after change_user"] == (None, "SYSTEM", SERVER_SQL_MODE, APP_DB, "app@%")


# --------------------------------------------------------------------------- mysql-connector-python (pure)


def _connector_connect(host: str, port: int) -> Callable[..., Any]:
    import mysql.connector

    def connect(**kw: Any) -> Any:
        args = {"host": host, "port": port, "user": APP_USER, "password": APP_PASSWORD, "database": APP_DB,
                "use_pure": True, "autocommit": True, "connection_timeout": 10}
        args.update(kw)
        return mysql.connector.connect(**args)

    return connect


def connector_script(connect: Callable[..., Any], between: Callable[[], None] = no_one_between) -> list[tuple[str, Any]]:
    import mysql.connector

    out: list[tuple[str, Any]] = []
    conn = connect()
    out.append(("connection", (type(conn).__name__, conn.charset, conn.collation, "MariaDB" in conn.server_info,
                               conn.autocommit, conn.in_transaction)))
    cur = conn.cursor()
    cur.execute(_STATE)
    out.append(("initial state", cur.fetchone()))
    cur.execute("DROP TABLE IF EXISTS drv_connector")
    cur.execute(_CREATE.format(t="drv_connector"))
    cur.execute("INSERT INTO drv_connector (name, amount, at, data, f) VALUES (%s, %s, %s, %s, %s)", _ROW1)
    out.append(("insert", (cur.rowcount, cur.lastrowid)))
    cur.executemany("INSERT INTO drv_connector (name, amount, at, data, f) VALUES (%s, %s, %s, %s, %s)", _ROWS)
    out.append(("executemany", (cur.rowcount, cur.lastrowid)))
    cur.execute("UPDATE drv_connector SET amount = -amount WHERE id IN (2, 3)")
    out.append(("update", cur.rowcount))
    cur.execute("SELECT id, name, amount, at, data, f FROM drv_connector ORDER BY id")
    rows = cur.fetchall()
    out.append(("text rows", rows))
    out.append(("text types", [tuple(type(v).__name__ for v in r) for r in rows]))
    dc = conn.cursor(dictionary=True, buffered=True)
    dc.execute("SELECT name, f FROM drv_connector WHERE id = %(id)s", {"id": 2})
    out.append(("dict row", (dc.rowcount, dc.fetchone())))
    dc.close()

    conn.start_transaction()
    cur.execute("UPDATE drv_connector SET f = 0")
    out.append(("in transaction", (conn.in_transaction, cur.rowcount)))
    conn.rollback()
    conn.start_transaction(isolation_level="SERIALIZABLE")
    cur.execute("SELECT COUNT(*) FROM drv_connector WHERE f = 0")
    in_tx = cur.fetchone()
    cur.execute("DELETE FROM drv_connector WHERE name = 'c'")
    conn.commit()
    cur.execute(f"SELECT (SELECT COUNT(*) FROM drv_connector), {ISOLATION}")
    out.append(("transactions", (in_tx, cur.fetchone(), conn.in_transaction)))

    # Binary protocol: prepared cursors, each holding one server statement. The same statements are
    # executed again and again while other sessions take the links, so they must follow the session
    # to whichever link serves it (prepared there lazily, or the session pinned).
    pins = conn.cursor(prepared=True)
    psel = conn.cursor(prepared=True)
    ins = "INSERT INTO drv_connector (name, amount, at, data, f) VALUES (?, ?, ?, ?, ?)"
    sel = "SELECT id, name, amount, at, data, f, NULL AS n FROM drv_connector WHERE name LIKE ? AND id > ? ORDER BY id"
    ids, counts = [], []
    for i in range(20):
        pins.execute(ins, (f"p{i}", Decimal(i) / 4, dt.datetime(2001, 1, 1, 0, 0, i, i * 1000), bytes([i, 255 - i]),
                           i * 0.5 if i % 3 else None))
        ids.append((pins.rowcount, pins.lastrowid))
        if i % 5 == 4:
            between()
            psel.execute(sel, ("p%", 0))
            counts.append(len(psel.fetchall()))
    out.append(("prepared inserts", (ids, counts)))
    results = []
    for pattern, after in (("p1%", 0), ("p%", 20), ("zo%", 0), ("nothing", 0)):
        between()
        psel.execute(sel, (pattern, after))
        results.append(psel.fetchall())
    out.append(("prepared selects", results))
    out.append(("prepared types", [type(v).__name__ for v in results[0][0]]))
    pc = conn.cursor(prepared=True)
    pc.execute("UPDATE drv_connector SET f = ? WHERE name LIKE ?", (9.75, "p1%"))
    out.append(("prepared update", pc.rowcount))
    pc.execute("SELECT ?, ? + 1, CHAR_LENGTH(?), ? IS NULL", ("ünï ☃", 41, "x" * 70000, None))
    out.append(("prepared parameters", pc.fetchall()))
    # Statements prepared before the transaction, executed inside it. (A COM_STMT_PREPARE sent
    # inside a transaction: test_connector_prepare_inside_transaction.)
    conn.start_transaction()
    pins.execute(ins, ("in tx", Decimal("1"), None, None, None))
    tx_id = pins.lastrowid
    between()
    psel.execute(sel, ("in tx", 0))
    seen_in_tx = [r[:2] for r in psel.fetchall()]
    conn.rollback()
    psel.execute(sel, ("in tx", 0))
    out.append(("prepared in rolled back transaction", (tx_id, seen_in_tx, psel.fetchall())))
    pc.executemany("UPDATE drv_connector SET amount = ? WHERE name = ?", [(Decimal("7.5"), "p2"), (Decimal("8.5"), "p3")])
    out.append(("prepared executemany", pc.rowcount))
    try:
        pins.execute(ins, ("p2", None, None, None, None))
        out.append(("prepared duplicate", "no error"))
    except mysql.connector.Error as e:
        out.append(("prepared duplicate", e.errno))
    for c in (pins, psel, pc):
        c.close()

    conn.cmd_ping()
    out.append(("statistics", sorted(conn.cmd_statistics())[:3]))
    conn.database = "information_schema"
    cur.execute("SELECT DATABASE()")
    out.append(("database", cur.fetchone()))
    conn.database = APP_DB
    cur.execute("SELECT COUNT(*), SUM(amount) FROM drv_connector")
    out.append(("totals", cur.fetchone()))

    # COM_RESET_CONNECTION ends the pin that a user variable set.
    cur.execute("SET @mark = 'x'")
    cur.execute("SELECT @mark")
    before = cur.fetchone()
    conn.cmd_reset_connection()
    cur.execute("SELECT @mark, DATABASE(), @@autocommit")
    out.append(("reset connection", (before, cur.fetchone())))
    cur.execute(_STATE)
    out.append(("final state", cur.fetchone()))
    return out


def test_mysql_connector(mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess]) -> None:
    grant_noise_db(mariadb)
    direct = connector_script(_connector_connect(mariadb.host, mariadb.port))
    p = start_proxy(proxy_factory)
    rec = Recorder(_connector_connect(p.host, p.port))
    with proxy_log_on_failure(p):
        with Noise(p):
            between = Neighbours(p)
            via = connector_script(rec, between)
            between.check()
        # Prepared statements did not pin; COM_RESET_CONNECTION ended the user variable's pin.
        row = client_row(p, rec.conns[0].connection_id)
        assert int(row["links_returned"]) > 20 and row["pinned_for"] in (None, ""), row
        rec.close()
        assert_same(direct, via)
        got = obs_dict(via)
        # conn.collation is the connector's own idea, picked by the server's version number:
        # utf8mb4_0900_ai_ci from "8.0" on, which MariaDB 11's version passes too.
        collation = "utf8mb4_general_ci" if SERVER.name == "mariadb-10.11" else "utf8mb4_0900_ai_ci"
        assert got["connection"] == ("MySQLConnection", "utf8mb4", collation, SERVER.mariadb, True, False)
        assert got["insert"] == (1, 1)
        assert got["executemany"] == (3, 2)
        assert got["update"] == 2
        assert _norm(got["text rows"]) == (
            (1, *_ROW1),
            (2, "b", Decimal("-1.00"), dt.datetime(2020, 2, 29), b"b", 0.25),
            (3, "c", Decimal("2.50"), None, None, None),
            (4, "d", Decimal("1000.01"), dt.datetime(1999, 12, 31, 23, 59, 59), b"", -1e100),
        )
        assert got["dict row"] == (1, {"name": "b", "f": 0.25})
        assert got["in transaction"] == (True, 4)
        assert got["transactions"] == ((0,), (3, "REPEATABLE-READ"), False)
        assert got["prepared inserts"] == ([(1, i) for i in range(5, 25)], [5, 10, 15, 20])
        selects = _norm(got["prepared selects"])
        assert [r[1] for r in selects[0]] == ["p1", *(f"p{i}" for i in range(10, 20))]
        assert selects[0][0] == (6, "p1", Decimal("0.25"), dt.datetime(2001, 1, 1, 0, 0, 1, 1000), b"\x01\xfe", 0.5, None)
        assert selects[0][3] == (17, "p12", Decimal("3.00"), dt.datetime(2001, 1, 1, 0, 0, 12, 12000), b"\x0c\xf3", None,
                                 None)
        assert [r[0] for r in selects[1]] == [21, 22, 23, 24]
        assert selects[2] == ((1, *_ROW1, None),)
        assert selects[3] == ()
        assert got["prepared types"] == ["int", "str", "Decimal", "datetime", "bytes", "float", "NoneType"]
        assert got["prepared update"] == 11
        assert _norm(got["prepared parameters"]) == (("ünï ☃", 42, 70000, 1),)
        assert _norm(got["prepared in rolled back transaction"]) == (25, ((25, "in tx"),), ())
        assert got["prepared executemany"] == 2
        assert got["prepared duplicate"] == 1062
        # The first three names in COM_STATISTICS's answer, sorted (MySQL's has "Flush tables" too).
        assert got["statistics"] == (["Flush tables", "Open tables", "Opens"] if SERVER.mysql
                                     else ["Open tables", "Opens", "Queries per second avg"])
        assert got["database"] == ("information_schema",)
        assert got["totals"] == (23, Decimal("1073.60"))
        assert got["reset connection"] == (("x",), (None, APP_DB, 1))
        assert got["final state"] == got["initial state"]


# --------------------------------------------------------------------------- SQLAlchemy ORM


def sqlalchemy_script(url: str) -> list[tuple[str, Any]]:
    from sqlalchemy import create_engine, func, select, text, update
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import Session

    from driver_app.sa_models import Account, Base, Entry

    out: list[tuple[str, Any]] = []
    engine = create_engine(url, pool_size=3, max_overflow=0, isolation_level="READ COMMITTED", pool_pre_ping=True)
    try:
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        with Session(engine) as s:
            s.add_all([
                Account(name="alice", balance=Decimal("100.00"), opened=dt.datetime(2020, 1, 1, 9, 30), note="ünï"),
                Account(name="bob", balance=Decimal("50.50"), opened=dt.datetime(2021, 6, 15, 12, 0, 1)),
                Account(name="carol ☃", balance=Decimal("0.00"), opened=dt.datetime(2022, 12, 31, 23, 59, 59)),
            ])
            s.commit()
            accounts = s.scalars(select(Account).order_by(Account.id)).all()
            out.append(("inserted", [(a.id, a.name, a.balance, a.opened, a.note, a.version) for a in accounts]))
            alice = accounts[0]
            alice.entries.append(Entry(amount=Decimal("-10.00")))
            alice.balance -= 10
            s.commit()  # UPDATE ... WHERE id = ? AND version = ?: rowcount must be 1
            out.append(("orm update", (alice.balance, alice.version, [e.amount for e in alice.entries])))
            res = s.execute(update(Account).where(Account.balance > 0).values(note="positive"))
            out.append(("bulk update rowcount", res.rowcount))
            res = s.execute(update(Account).where(Account.name == "bob").values(balance=Decimal("50.50")))
            out.append(("same-value update rowcount (FOUND_ROWS)", res.rowcount))
            s.commit()
            out.append(("isolation", tuple(s.execute(text(f"SELECT {ISOLATION}, @@autocommit")).one())))
            s.commit()

        with Session(engine) as s, s.begin():
            bob = s.scalars(select(Account).where(Account.name == "bob").with_for_update()).one()
            bob.balance += Decimal("0.25")
            s.add(Entry(account=bob, amount=Decimal("0.25")))
        try:
            with Session(engine) as s, s.begin():
                carol = s.scalars(select(Account).where(Account.name == "carol ☃")).one()
                carol.balance = Decimal("999.99")
                s.add(Entry(account=carol, amount=Decimal("999.99")))
                s.flush()
                raise RuntimeError("abort")
        except RuntimeError:
            pass
        with Session(engine) as s:
            with s.begin():
                s.add(Account(name="dave", balance=Decimal("1"), opened=dt.datetime(2023, 1, 1)))
                nested = s.begin_nested()  # SAVEPOINT
                s.add(Account(name="alice", balance=Decimal("1"), opened=dt.datetime(2023, 1, 1)))
                try:
                    s.flush()
                except IntegrityError as e:
                    nested.rollback()
                    out.append(("savepoint duplicate", e.orig.args[0]))
            rows = s.execute(select(Account.name, Account.balance, Account.version).order_by(Account.id)).all()
            out.append(("after transactions", [tuple(r) for r in rows]))
            total = s.scalar(select(func.sum(Entry.amount)))
            out.append(("entries total", total))

        # Concurrent sessions of one engine: transfers under SELECT ... FOR UPDATE keep the sum.
        def transfers(k: int) -> None:
            for i in range(10):
                with Session(engine) as s, s.begin():
                    a, b = s.scalars(select(Account).where(Account.name.in_(["alice", "bob"]))
                                     .order_by(Account.id).with_for_update()).all()
                    amount = Decimal(k + i) / 100
                    a.balance -= amount
                    b.balance += amount

        threads = [threading.Thread(target=transfers, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        with engine.connect() as c:
            out.append(("after transfers", tuple(c.execute(text(
                "SELECT SUM(balance), MIN(version), MAX(version), COUNT(*) FROM drv_sa_account")).one())))
            out.append(("raw dbapi state", tuple(c.exec_driver_sql("SELECT DATABASE(), @@sql_mode, @@time_zone").one())))
    finally:
        engine.dispose()
    return out


def test_sqlalchemy_orm(mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess]) -> None:
    grant_noise_db(mariadb)
    url = "mysql+pymysql://{u}:{pw}@{h}:{port}/{db}?charset=utf8mb4"
    direct = sqlalchemy_script(url.format(u=APP_USER, pw=APP_PASSWORD, h=mariadb.host, port=mariadb.port, db=APP_DB))
    p = start_proxy(proxy_factory)
    with proxy_log_on_failure(p):
        with Noise(p):
            via = sqlalchemy_script(url.format(u=APP_USER, pw=APP_PASSWORD, h=p.host, port=p.port, db=APP_DB))
        assert_same(direct, via)
        got = obs_dict(via)
        assert got["inserted"] == [
            (1, "alice", Decimal("100.00"), dt.datetime(2020, 1, 1, 9, 30), "ünï", 1),
            (2, "bob", Decimal("50.50"), dt.datetime(2021, 6, 15, 12, 0, 1), None, 1),
            (3, "carol ☃", Decimal("0.00"), dt.datetime(2022, 12, 31, 23, 59, 59), None, 1),
        ]
        assert got["orm update"] == (Decimal("90.00"), 2, [Decimal("-10.00")])
        assert got["bulk update rowcount"] == 2
        assert got["same-value update rowcount (FOUND_ROWS)"] == 1  # the pymysql dialect asks for FOUND_ROWS
        assert got["isolation"] == ("READ-COMMITTED", 0)
        assert got["savepoint duplicate"] == 1062
        assert got["after transactions"] == [("alice", Decimal("90.00"), 2), ("bob", Decimal("50.75"), 2),
                                             ("carol ☃", Decimal("0.00"), 1), ("dave", Decimal("1.00"), 1)]
        assert got["entries total"] == Decimal("-9.75")  # the rolled back entry is not there
        # 30 transfers, of which the first moves 0.00 (no UPDATE): versions 2 + 29; the sum is kept.
        assert got["after transfers"] == (Decimal("141.75"), 1, 31, 4)
        assert got["raw dbapi state"] == (APP_DB, SERVER_SQL_MODE, "SYSTEM")
        stats = admin_stats(p)
        assert stats["max_open_seen"] <= 2, stats


# --------------------------------------------------------------------------- Django ORM


def _django_setup(databases: dict[str, tuple[str, int]]) -> None:
    """Configure Django once per process; point each alias at (host, port) for this test."""
    import django
    from django.conf import settings

    def db(host: str, port: int) -> dict[str, Any]:
        return {
            "ENGINE": "django.db.backends.mysql", "HOST": host, "PORT": port, "USER": APP_USER,
            "PASSWORD": APP_PASSWORD, "NAME": APP_DB,
            "OPTIONS": {
                "charset": "utf8mb4",
                # What Django projects put here; the backend adds FOUND_ROWS and READ COMMITTED itself.
                "init_command": "SET sql_mode='STRICT_TRANS_TABLES', time_zone='+00:00'",
            },
        }

    if not settings.configured:
        settings.configure(
            DATABASES={alias: db(*where) for alias, where in databases.items()},
            INSTALLED_APPS=["driver_app"],
            USE_TZ=True,
            TIME_ZONE="UTC",
            DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        )
        django.setup()
    from django.db import connections

    for alias, (host, port) in databases.items():
        connections[alias].close()
        connections[alias].settings_dict.update({"HOST": host, "PORT": port})


def django_script(alias: str) -> list[tuple[str, Any]]:
    from django.db import IntegrityError, connections, transaction
    from django.db.models import F, Sum

    from driver_app.models import Entry

    out: list[tuple[str, Any]] = []
    conn = connections[alias]
    objects = Entry.objects.using(alias)
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS drv_django_entry")
    with conn.schema_editor() as editor:
        editor.create_model(Entry)
    with conn.cursor() as cur:
        cur.execute(f"SELECT @@sql_mode, @@time_zone, {ISOLATION}, @@character_set_client, @@autocommit")
        out.append(("connection state", cur.fetchone()))
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    e = objects.create(title="ünïcödé ☃", body="x" * 5000, qty=1, price=Decimal("9.99"), created=when,
                       meta={"tags": ["a", "b"], "n": 1})
    out.append(("create", e.pk))
    batch = objects.bulk_create([
        Entry(title=f"bulk {i}", qty=i, price=Decimal(i) / 8, created=when + dt.timedelta(days=i), meta={"n": i})
        for i in range(2, 6)
    ])
    out.append(("bulk_create pks", [b.pk for b in batch]))
    out.append(("count", objects.filter(qty__gte=2).count()))
    out.append(("values_list", list(objects.order_by("pk").values_list("pk", "title", "qty", "price"))))
    got = objects.get(title="ünïcödé ☃")
    out.append(("get", (got.pk, got.body == "x" * 5000, got.price, got.created, got.meta)))
    out.append(("json lookup", list(objects.filter(meta__n__gte=3).order_by("pk").values_list("title", flat=True))))
    out.append(("update rowcount", objects.filter(qty__lt=4).update(qty=F("qty") + 10)))
    out.append(("same-value update rowcount (FOUND_ROWS)", objects.filter(pk=e.pk).update(qty=11)))
    out.append(("update nothing", objects.filter(title="missing").update(qty=0)))
    e.body = "changed"
    e.save(update_fields=["body"])
    out.append(("save", objects.filter(body="changed").count()))

    with transaction.atomic(using=alias):
        objects.create(title="committed", qty=100, created=when)
        locked = objects.select_for_update().get(title="committed")
        locked.qty += 1
        locked.save()
        try:
            with transaction.atomic(using=alias):  # a savepoint
                objects.create(title="committed", qty=0, created=when)
        except IntegrityError as err:
            out.append(("savepoint duplicate", err.args[0]))
        out.append(("in atomic", conn.in_atomic_block))
    try:
        with transaction.atomic(using=alias):
            objects.create(title="rolled back", qty=1, created=when)
            objects.filter(title="committed").update(qty=0)
            raise RuntimeError("abort")
    except RuntimeError:
        pass
    out.append(("after atomic", list(objects.filter(title__in=["committed", "rolled back"]).values_list("title", "qty"))))
    out.append(("aggregate", objects.aggregate(total=Sum("price"), qty=Sum("qty"))))
    objects.filter(title__startswith="bulk").delete()
    out.append(("after delete", objects.count()))
    with conn.cursor() as cur:
        cur.execute(f"SELECT @@sql_mode, @@time_zone, {ISOLATION}, @@character_set_client, @@autocommit")
        out.append(("final state", cur.fetchone()))
    return out


def test_django_orm(mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess]) -> None:
    grant_noise_db(mariadb)
    p = start_proxy(proxy_factory)
    _django_setup({"default": (p.host, p.port), "direct": (mariadb.host, mariadb.port)})
    from django.db import connections

    try:
        direct = django_script("direct")
        with proxy_log_on_failure(p):
            with Noise(p):
                via = django_script("default")
            assert_same(direct, via)
            got = obs_dict(via)
            assert got["connection state"] == ("STRICT_TRANS_TABLES", "+00:00", "READ-COMMITTED", "utf8mb4", 1)
            assert got["create"] == 1
            # INSERT ... RETURNING on MariaDB; MySQL has none, so Django cannot know the new ids.
            assert got["bulk_create pks"] == ([None] * 4 if SERVER.mysql else [2, 3, 4, 5])
            assert got["count"] == 4
            assert got["values_list"] == [(1, "ünïcödé ☃", 1, Decimal("9.99")), (2, "bulk 2", 2, Decimal("0.25")),
                                          (3, "bulk 3", 3, Decimal("0.38")), (4, "bulk 4", 4, Decimal("0.50")),
                                          (5, "bulk 5", 5, Decimal("0.63"))]
            assert got["get"] == (1, True, Decimal("9.99"), dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
                                  {"tags": ["a", "b"], "n": 1})
            assert got["json lookup"] == ["bulk 3", "bulk 4", "bulk 5"]
            assert got["update rowcount"] == 3
            assert got["same-value update rowcount (FOUND_ROWS)"] == 1  # Django connects with CLIENT_FOUND_ROWS
            assert got["update nothing"] == 0
            assert got["save"] == 1
            assert got["savepoint duplicate"] == 1062
            assert got["in atomic"] is True
            assert got["after atomic"] == [("committed", 101)]
            assert got["aggregate"] == {"total": Decimal("11.75"), "qty": 146}
            assert got["after delete"] == 2
            assert got["final state"] == got["connection state"]
            row = client_row(p, connections["default"].connection.thread_id())
            assert row["pinned_for"] in (None, "") and int(row["links_returned"]) > 10, row
    finally:
        connections.close_all()


# --------------------------------------------------------------------------- the mariadb CLI

# MySQL has no @@in_transaction (and the app account may not read its transaction tables): there the
# script shows the uncommitted row alone, and the ROLLBACK by the rows listed after it.
_IN_TX = "@@in_transaction, " if SERVER.mariadb else ""
_CLI_SCRIPT = f"""
SET NAMES utf8mb4;
DROP TABLE IF EXISTS drv_cli;
CREATE TABLE drv_cli (id INT AUTO_INCREMENT PRIMARY KEY, s VARCHAR(40) NOT NULL) DEFAULT CHARSET=utf8mb4;
INSERT INTO drv_cli (s) VALUES ('Grüße'), ('日本語'), ('emoji 🎉');
SELECT LAST_INSERT_ID();
SELECT @@character_set_client, @@character_set_results, @@collation_connection, DATABASE();
START TRANSACTION;
INSERT INTO drv_cli (s) VALUES ('rolled back');
SELECT {_IN_TX}COUNT(*) FROM drv_cli;
ROLLBACK;
BEGIN;
UPDATE drv_cli SET s = CONCAT(s, ' ✓') WHERE id = 2;
COMMIT;
SELECT id, s, HEX(s), CHAR_LENGTH(s) FROM drv_cli ORDER BY id;
USE information_schema;
SELECT DATABASE(), COUNT(*) FROM TABLES WHERE TABLE_SCHEMA = 'appdb' AND TABLE_NAME = 'drv_cli';
SET time_zone = '+05:45';
SELECT @@time_zone, FROM_UNIXTIME(86400);
"""

_CLI_EXPECTED = [
    "1",  # the first id of the multi-row INSERT
    f"utf8mb4\tutf8mb4\t{UTF8MB4_DEFAULT}\tappdb",
    "1\t4" if SERVER.mariadb else "4",
    "1\tGrüße\t4772C3BCC39F65\t5",
    "2\t日本語 ✓\tE697A5E69CACE8AA9E20E29C93\t5",
    "3\temoji 🎉\t656D6F6A6920F09F8E89\t7",
    "information_schema\t1",
    "+05:45\t1970-01-02 05:45:00",
]


def test_mariadb_cli(mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess]) -> None:
    grant_noise_db(mariadb)
    rc, direct, err = run_cli(mariadb.port, APP_USER, APP_PASSWORD, _CLI_SCRIPT, APP_DB)
    assert rc == 0, err
    assert direct.splitlines() == _CLI_EXPECTED
    p = start_proxy(proxy_factory)
    with proxy_log_on_failure(p):
        with Noise(p):
            runs = [run_cli(p.port, APP_USER, APP_PASSWORD, _CLI_SCRIPT, APP_DB) for _ in range(3)]
        for rc, via, err in runs:
            assert rc == 0, err
            assert via.splitlines() == direct.splitlines()


# --------------------------------------------------------------------------- 200 sessions over 4 links

_MODES = ["STRICT_TRANS_TABLES", "NO_ENGINE_SUBSTITUTION", "STRICT_TRANS_TABLES,ANSI_QUOTES"]


def test_200_django_like_sessions_share_4_links(mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess]) -> None:
    """200 sessions set sql_mode and time_zone on connect (as Django does), then work in autocommit and in a
    short transaction, all at once over a pool of 4. Each must see only its own settings, the server must
    never see more than 4 logins, and the idle sessions must be unpinned and multiplexed."""
    n_sessions, cap = 200, 4
    mariadb.sql(f"DROP TABLE IF EXISTS `{APP_DB}`.drv_many")
    mariadb.sql(f"CREATE TABLE `{APP_DB}`.drv_many (id INT AUTO_INCREMENT PRIMARY KEY, session INT NOT NULL, "
                "n INT NOT NULL, note VARCHAR(8) NOT NULL DEFAULT '', KEY (session))")
    normalized = {}
    direct = mariadb.connect()
    with direct.cursor() as cur:
        for mode in _MODES:
            cur.execute("SET SESSION sql_mode = %s", (mode,))
            cur.execute("SELECT @@sql_mode")
            normalized[mode] = cur.fetchone()[0]
    direct.close()

    p = start_proxy(proxy_factory, max_connections=cap, queue_timeout=30)
    errors: list[str] = []
    connected = threading.Barrier(n_sessions + 1, timeout=60)
    checked = threading.Barrier(n_sessions + 1, timeout=60)
    stop_sampling = threading.Event()
    samples: list[int] = []

    def sample_processlist() -> None:
        conn = mariadb.root_conn()
        try:
            with conn.cursor() as cur:
                while not stop_sampling.is_set():
                    cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (APP_USER,))
                    samples.append(int(cur.fetchone()[0]))
                    time.sleep(0.005)
        finally:
            conn.close()

    def session(i: int) -> None:
        mode, tz = _MODES[i % len(_MODES)], f"+{i % 13:02d}:{(i % 4) * 15:02d}"
        want = (normalized[mode], tz)
        strict = "STRICT" in mode
        last_id = 0

        def check(where: str, cur: Any) -> None:
            cur.execute("SELECT @@sql_mode, @@time_zone, LAST_INSERT_ID()")
            got = cur.fetchone()
            if got != (*want, last_id):
                errors.append(f"session {i} {where}: {got} != {(*want, last_id)}")

        conn = None
        try:
            conn = pymysql.connect(host=p.host, port=p.port, user=APP_USER, password=APP_PASSWORD, database=APP_DB,
                                   autocommit=True, connect_timeout=30, read_timeout=60, write_timeout=60)
            with conn.cursor() as cur:
                cur.execute("SET SESSION sql_mode = %s", (mode,))
                cur.execute("SET time_zone = %s", (tz,))
                check("after connect", cur)
                for k in range(3):
                    cur.execute("INSERT INTO drv_many (session, n) VALUES (%s, %s)", (i, k))
                    last_id = cur.lastrowid
                    if cur.execute("UPDATE drv_many SET n = n + 100 WHERE id = %s", (last_id,)) != 1:
                        errors.append(f"session {i}: update rowcount {cur.rowcount}")
                    cur.execute("SELECT COUNT(*), SUM(n) FROM drv_many WHERE session = %s", (i,))
                    got = cur.fetchone()
                    if got != (k + 1, Decimal(sum(100 + j for j in range(k + 1)))):
                        errors.append(f"session {i} round {k}: {got}")
                check("after autocommit work", cur)
                # Strict or not decides whether a too-long value is an error or a truncation.
                try:
                    cur.execute("INSERT INTO drv_many (session, n, note) VALUES (%s, -1, 'too long for it')", (i,))
                    last_id = cur.lastrowid
                    if strict:
                        errors.append(f"session {i}: strict mode lost, too-long value accepted")
                except pymysql.err.DataError as e:
                    if not strict or e.args[0] != 1406:
                        errors.append(f"session {i}: {e!r} with sql_mode {mode}")
                cur.execute("SELECT FROM_UNIXTIME(86400)")
                offset = cur.fetchone()[0] - DAY_ONE
                if offset != dt.timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])):
                    errors.append(f"session {i}: FROM_UNIXTIME(86400) is {offset} off, time_zone {tz}")
                conn.begin()
                cur.execute("SELECT id FROM drv_many WHERE session = %s AND n >= 100 ORDER BY id FOR UPDATE", (i,))
                ids = [r[0] for r in cur.fetchall()]
                cur.execute("UPDATE drv_many SET n = n + 1000 WHERE session = %s AND n >= 100", (i,))
                if cur.rowcount != 3 or len(ids) != 3:
                    errors.append(f"session {i}: transaction saw {ids}, updated {cur.rowcount}")
                if in_transaction(conn) != 1:
                    errors.append(f"session {i}: not in a transaction after BEGIN")
                conn.commit()
                check("after the transaction", cur)
            connected.wait()  # idle and connected while the main thread looks at the admin console
            checked.wait()
            with conn.cursor() as cur:
                check("at the end", cur)
        except Exception as e:  # noqa: BLE001
            errors.append(f"session {i}: {e!r}")
            for b in (connected, checked):
                b.abort()
        finally:
            if conn is not None:
                conn.close()

    sampler = threading.Thread(target=sample_processlist, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=session, args=(i,), daemon=True) for i in range(n_sessions)]
    started = time.monotonic()
    with proxy_log_on_failure(p):
        try:
            for t in threads:
                t.start()
            try:
                connected.wait()
            except threading.BrokenBarrierError:
                pytest.fail("sessions failed before they were all connected:\n" + "\n".join(errors[:20]))
            clients = [r for r in admin_query(p, "SHOW CLIENTS") if r["user"] == APP_USER]
            stats = admin_stats(p)
            on_server = int(mariadb.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s",
                                        (APP_USER,))[0][0])
            checked.wait()
        finally:
            for t in threads:
                t.join(60)
            stop_sampling.set()
            sampler.join(10)
        elapsed = time.monotonic() - started

        assert not errors, f"{len(errors)} session errors, first ones:\n" + "\n".join(errors[:20])
        # All 200 are connected and idle: none pinned, each has given links back many times.
        assert len(clients) == n_sessions, clients[:3]
        pinned = [c for c in clients if c["pinned_for"]]
        assert not pinned, pinned[:5]
        assert all(c["state"] == "idle" and c["backend_thread"] is None for c in clients), clients[:5]
        returned = sorted(int(c["links_returned"]) for c in clients)
        assert returned[0] >= 10, returned[:10]
        assert stats["clients_pinned"] == 0, stats
        assert stats["leases"] >= n_sessions * 15, stats
        assert stats["max_open_seen"] <= cap, stats
        assert on_server <= cap
        assert samples and max(samples) <= cap, f"server saw {max(samples)} app logins (cap {cap})"
        assert len(samples) >= 10, f"only {len(samples)} PROCESSLIST samples in {elapsed:.1f} s"
        rows = mariadb.sql(f"SELECT COUNT(*), COUNT(DISTINCT session), SUM(n >= 1100) FROM `{APP_DB}`.drv_many")
        assert rows[0][:2] == (n_sessions * 3 + sum(1 for i in range(n_sessions) if "STRICT" not in _MODES[i % 3]),
                               n_sessions)
        assert int(rows[0][2]) == n_sessions * 3


def test_connector_prepare_inside_transaction(mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess]) -> None:
    """mysql-connector prepares a statement (COM_STMT_PREPARE) inside an open transaction, then
    executes it; meanwhile another client runs an autocommit INSERT. The transaction must stay on
    its link until ROLLBACK: the other client must not run inside it, the rolled back row must not
    stay, and the other client's committed row must."""
    mariadb.sql(f"DROP TABLE IF EXISTS `{APP_DB}`.drv_prep_tx")
    mariadb.sql(f"CREATE TABLE `{APP_DB}`.drv_prep_tx (id INT AUTO_INCREMENT PRIMARY KEY, who VARCHAR(10))")
    p = start_proxy(proxy_factory, max_connections=2, queue_timeout=5)
    conn = _connector_connect(p.host, p.port)()
    other = p.connect(read_timeout=20)
    with proxy_log_on_failure(p):
        conn.start_transaction()
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM drv_prep_tx")
        assert cur.fetchall() == [(0,)]
        stmt = conn.cmd_stmt_prepare(b"INSERT INTO drv_prep_tx (who) VALUES (?)")
        pinned = client_row(p, conn.connection_id)["pinned_for"] or ""
        with other.cursor() as oc:
            oc.execute("INSERT INTO drv_prep_tx (who) VALUES ('other')")
        other_in_tx = in_transaction(other)
        conn.cmd_stmt_execute(stmt["statement_id"], data=("mine",), parameters=stmt["parameters"])
        in_tx = conn.in_transaction
        conn.rollback()
        conn.cmd_stmt_close(stmt["statement_id"])
        rows = mariadb.sql(f"SELECT who FROM `{APP_DB}`.drv_prep_tx ORDER BY id")
        assert (other_in_tx, rows, in_tx) == (0, (("other",),), True), (
            f"after COM_STMT_PREPARE inside the transaction: pinned_for={pinned!r}; the other client's "
            f"autocommit INSERT ran inside a transaction: {other_in_tx}; rows after ROLLBACK: {rows}"
        )
        assert pinned.startswith("transaction"), pinned
    conn.close()


def _kill_script(connect: Callable[..., Any]) -> list[tuple[str, Any]]:
    """KILL QUERY and KILL with the id the driver got in the greeting, from another connection."""
    out: list[tuple[str, Any]] = []
    victim, killer = connect(), connect()
    vid = victim.thread_id()
    with victim.cursor() as c:
        c.execute("SELECT CONNECTION_ID()")
        out.append(("CONNECTION_ID() is the greeting id", c.fetchone() == (vid,)))
    result: dict[str, Any] = {}

    def sleeper() -> None:
        started = time.monotonic()
        try:
            with victim.cursor() as c:
                c.execute("SELECT SLEEP(20)")
                result["sleep"] = c.fetchone()
        except pymysql.MySQLError as e:
            result["sleep"] = e.args[0]
        result["interrupted early"] = time.monotonic() - started < 10

    t = threading.Thread(target=sleeper)
    t.start()
    time.sleep(0.5)
    with killer.cursor() as k:
        k.execute(f"KILL QUERY {vid}")
    t.join(30)
    out.append(("KILL QUERY", (result.get("sleep"), result.get("interrupted early"))))
    with victim.cursor() as c:
        c.execute("SELECT 'still connected'")
        out.append(("victim after KILL QUERY", c.fetchone()))
    killer.kill(vid)  # PyMySQL sends KILL <id>
    time.sleep(0.2)
    try:
        with victim.cursor() as c:
            c.execute("SELECT 1")
            out.append(("victim after KILL", c.fetchone()))
    except pymysql.MySQLError as e:
        out.append(("victim after KILL", e.args[0]))
    with killer.cursor() as k:
        k.execute("SELECT 'killer fine'")
        out.append(("killer", k.fetchone()))
    return out


def test_kill_with_the_driver_s_connection_id(mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess]) -> None:
    direct_rec = Recorder(mariadb.connect)
    direct = _kill_script(direct_rec)
    direct_rec.close()
    p = start_proxy(proxy_factory)
    with proxy_log_on_failure(p):
        via = _kill_script(p.connect)
        assert_same(direct, via)
        got = obs_dict(via)
        assert got["CONNECTION_ID() is the greeting id"] is True
        # MariaDB: 1317 Query execution was interrupted; MySQL's SLEEP() returns 1 when its query is killed.
        assert got["KILL QUERY"] == (((1,), True) if SERVER.mysql else (1317, True))
        assert got["victim after KILL QUERY"] == ("still connected",)
        assert got["victim after KILL"] in (1927, 2013), got["victim after KILL"]
        assert got["killer"] == ("killer fine",)


# --------------------------------------------------------------------------- schema change under a prepared statement


def schema_change_script(connect: Callable[..., Any], between: Callable[[], None] = no_one_between) -> list[tuple[str, Any]]:
    """One prepared SELECT * executed before and after an ALTER TABLE that changes its columns.

    Through the proxy the statement lives on several links: prepared there lazily, before or after
    the change. Each execute must still bring the client the columns and values of now.
    """
    import mysql.connector

    out: list[tuple[str, Any]] = []
    conn = connect()
    cur = conn.cursor()
    cur.execute("DROP TABLE IF EXISTS drv_schema")
    cur.execute("CREATE TABLE drv_schema (id INT PRIMARY KEY, v INT)")
    cur.execute("INSERT INTO drv_schema VALUES (1, 10), (2, 20)")
    ps = conn.cursor(prepared=True)
    sql = "SELECT * FROM drv_schema WHERE id >= ? ORDER BY id"
    for phase in ("before", "after"):
        if phase == "after":
            cur.execute("ALTER TABLE drv_schema MODIFY v VARCHAR(10), ADD COLUMN w DATE DEFAULT '2024-01-02'")
        for _ in range(4):
            between()
            try:
                ps.execute(sql, (1,))
                out.append((phase, (tuple(ps.column_names), ps.fetchall())))
            except mysql.connector.Error as e:
                out.append((phase, ("error", e.errno)))
    ps.close()
    cur.execute("DROP TABLE drv_schema")
    return out


def test_prepared_statement_follows_a_schema_change_on_every_link(mariadb: MariaDB,
                                                                 proxy_factory: Callable[..., ProxyProcess]) -> None:
    grant_noise_db(mariadb)
    direct = schema_change_script(_connector_connect(mariadb.host, mariadb.port))
    p = start_proxy(proxy_factory)
    rec = Recorder(_connector_connect(p.host, p.port))
    with proxy_log_on_failure(p):
        between = Neighbours(p)
        via = schema_change_script(rec, between)
        between.check()
        row = client_row(p, rec.conns[0].connection_id)
        assert int(row["links_returned"]) >= 8, row  # the statement did move between links
        rec.close()
    assert_same(direct, via)
    before = ("id", "v"), [(1, 10), (2, 20)]
    after = ("id", "v", "w"), [(1, "10", dt.date(2024, 1, 2)), (2, "20", dt.date(2024, 1, 2))]
    assert [(ph, (names, [tuple(r) for r in rows])) for ph, (names, rows) in via] == \
        [("before", before)] * 4 + [("after", after)] * 4


# --------------------------------------------------------------------------- MariaDB metadata caching

# Connector/C (and so sysbench, Connector/Python) asks for MARIADB_CLIENT_CACHE_METADATA: the server
# then leaves an execute's column definitions out while they are unchanged, and the client decodes
# the rows with the ones it holds. Through the proxy a statement runs on several links, each with
# its own idea of what that client holds.


MARIADB_CACHING_ONLY = pytest.mark.skipif(
    SERVER.mysql, reason="MariaDB only: MySQL offers no metadata caching (MARIADB_CLIENT_CACHE_METADATA)")
# What SHOW BACKENDS says of links opened for a client that asks for metadata caching.
CACHING_LINK = "1" if SERVER.mariadb else "0"


def _mariadb_connect(host: str, port: int) -> Callable[..., Any]:
    import mariadb

    def connect(**kw: Any) -> Any:
        args = {"host": host, "port": port, "user": APP_USER, "password": APP_PASSWORD, "database": APP_DB,
                "autocommit": True, "connect_timeout": 10}
        args.update(kw)
        return mariadb.connect(**args)

    return connect


def _caching_client(host: str, port: int) -> CachingClient:
    return CachingClient(host, port, APP_USER, APP_PASSWORD, APP_DB)


def metadata_cache_script(connect: Callable[[], CachingClient], alter: Callable[[str], None],
                          hold_a_link: Callable[[], Callable[[], None]]) -> list[tuple[str, Any]]:
    """A long-lived prepared SELECT * whose table changes; an execute then runs where the statement is new.

    ``hold_a_link`` keeps the link the statement ran on busy (through the proxy: another session's
    open transaction), so that the execute after the ALTER TABLE is prepared afresh on another link,
    whose server then leaves out definitions the client has never seen. It returns the function
    that lets go of it.
    """
    out: list[tuple[str, Any]] = []
    c = connect()
    assert c.cache_metadata, "metadata caching was not offered"
    c.query("DROP TABLE IF EXISTS drv_meta")
    c.query("CREATE TABLE drv_meta (id INT PRIMARY KEY, v INT)")
    c.query("INSERT INTO drv_meta VALUES (1, 10), (2, 20)")
    stmt = c.prepare("SELECT * FROM drv_meta WHERE id >= ? ORDER BY id")

    def run(step: str) -> None:
        out.append((step, c.execute(stmt, 1)))

    run("first")
    run("again, definitions left out")
    let_go = hold_a_link()
    alter("ALTER TABLE drv_meta MODIFY v VARCHAR(10), ADD COLUMN w DATE DEFAULT '2024-01-02'")
    run("after ALTER, on a link new to the statement")
    run("after ALTER, again")
    let_go()
    for i in range(3):
        run(f"after ALTER, any link {i}")
    alter("ALTER TABLE drv_meta DROP COLUMN w")
    run("after the second ALTER")
    c.query("DROP TABLE drv_meta")
    c.close()
    return out


def wait_for_first_link(p: ProxyProcess) -> None:
    """Until the proxy's first link (opened at start) told it what the server offers its clients."""
    deadline = time.monotonic() + 10
    while int(admin_query(p, "SHOW POOLS")[0]["connects"]) < 1:
        assert time.monotonic() < deadline, "the proxy opened no link in 10 s"
        time.sleep(0.05)


@MARIADB_CACHING_ONLY
def test_mariadb_metadata_caching_stays_right_across_links(mariadb: MariaDB,
                                                           proxy_factory: Callable[..., ProxyProcess]) -> None:
    def alter(stmt: str) -> None:
        mariadb.sql(f"ALTER TABLE `{APP_DB}`.{stmt.removeprefix('ALTER TABLE ')}")

    direct = metadata_cache_script(lambda: _caching_client(mariadb.host, mariadb.port), alter, lambda: lambda: None)
    p = start_proxy(proxy_factory)

    def hold_a_link() -> Callable[[], None]:
        # A client of the same kind (metadata caching), or it would get a link of its own kind.
        holder = _caching_client(p.host, p.port)
        holder.query("BEGIN")  # a transaction that touches no table: the ALTER does not wait for it

        def let_go() -> None:
            holder.query("ROLLBACK")
            holder.close()

        return let_go

    with proxy_log_on_failure(p):
        wait_for_first_link(p)
        via = metadata_cache_script(lambda: _caching_client(p.host, p.port), alter, hold_a_link)
        assert any(int(b["cache_metadata"]) == 1 for b in admin_query(p, "SHOW BACKENDS"))
        # The case this test is for did happen: a link's server left out definitions the client lacked.
        assert "putting them in" in p.log()
    assert_same(direct, via)
    names = [got[0] for _step, got in via]
    assert names == [["id", "v"]] * 2 + [["id", "v", "w"]] * 5 + [["id", "v"]]
    assert all(len(got[1]) == 2 for _step, got in via)  # both rows, every time


def test_clients_with_and_without_metadata_caching_share_a_pool(mariadb: MariaDB,
                                                               proxy_factory: Callable[..., ProxyProcess]) -> None:
    """Each kind of client gets links of its own kind; the cap is shared (2 here) and never passed.

    On MySQL, which offers no metadata caching, the Connector/C client that asks for it is served
    as any other: both clients are of one kind and share the links."""
    p = start_proxy(proxy_factory)
    with proxy_log_on_failure(p):
        wait_for_first_link(p)
        caching = _mariadb_connect(p.host, p.port)()
        plain = p.connect()
        for round_ in range(5):
            cur = caching.cursor(prepared=True)
            cur.execute("SELECT ? + 1, 'x'", (round_,))
            assert cur.fetchall() == [(round_ + 1, "x")]
            cur.close()
            text = caching.cursor()
            text.execute("SELECT 1 AS a, NULL AS b")
            assert ([d[0] for d in text.description], text.fetchall()) == (["a", "b"], [(1, None)])
            with plain.cursor() as c:
                c.execute("SELECT 2 AS a, 'y' AS b")
                assert c.fetchall() == ((2, "y"),)
        kinds = sorted(int(b["cache_metadata"]) for b in admin_query(p, "SHOW BACKENDS"))
        # MariaDB: one link of each kind, so both clients were served in every round.
        assert kinds == ([0, 1] if SERVER.mariadb else [0] * len(kinds)) and kinds, kinds
        assert int(admin_query(p, "SHOW POOLS")[0]["max_open_seen"]) <= 2
        caching.close()
        plain.close()


def test_mariadb_cli_with_metadata_caching_reads_text_results_and_the_console(
        mariadb: MariaDB, proxy_factory: Callable[..., ProxyProcess]) -> None:
    """The mariadb CLI (Connector/C) asks for metadata caching: the flag after every column count,
    from the server's result sets and from the ones the admin console builds itself. On MySQL,
    which offers no caching, the proxy does not grant it either, and the same reads work without."""
    p = start_proxy(proxy_factory)
    with proxy_log_on_failure(p):
        wait_for_first_link(p)
        rc, out, err = run_cli(p.port, APP_USER, APP_PASSWORD, "SELECT 1 AS a, NULL AS b, 'x' AS c; SELECT 2", APP_DB)
        assert rc == 0, err
        assert out.splitlines() == ["1\tNULL\tx", "2"]
        rc, out, err = run_cli(p.port, "admin", "adminpw", "SHOW BACKENDS", extra_args=("--column-names",))
        assert rc == 0, err
        header, *rows = out.splitlines()
        assert "cache_metadata" in header.split("\t") and rows
        col = header.split("\t").index("cache_metadata")
        # The CLI's own link was opened with metadata caching: it asked for it, and so was served.
        assert CACHING_LINK in [r.split("\t")[col] for r in rows], out
        # The CLI reads a text result's column count alone; a client that reads the flag after it
        # must find it in the console's own result sets too.
        console = CachingClient(p.host, p.port, "admin", "adminpw", "")
        assert console.cache_metadata == SERVER.mariadb
        assert len(console.query("SHOW POOLS")) == 1
        console.close()


def execute_direct_script(connect: Callable[[], CachingClient]) -> list[tuple[str, Any]]:
    """MariaDB's PREPARE + EXECUTE of statement id -1 in one round trip (mariadb_stmt_execute_direct)."""
    out: list[tuple[str, Any]] = []
    c = connect()
    c.query("DROP TABLE IF EXISTS drv_direct")
    c.query("CREATE TABLE drv_direct (id INT PRIMARY KEY, v VARCHAR(5))")
    c.query("INSERT INTO drv_direct VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    out.append(("first", c.prepare_and_execute("SELECT * FROM drv_direct WHERE id >= ? ORDER BY id", 2)))
    out.append(("another", c.prepare_and_execute("SELECT v FROM drv_direct WHERE id = ?", 1)))
    out.append(("a PREPARE that fails", c.prepare_and_execute("SELEKT nothing", 1)))
    out.append(("then a good one", c.prepare_and_execute("SELECT COUNT(*) AS n FROM drv_direct WHERE id > ?", 0)))
    stmt = c.prepare("SELECT id FROM drv_direct WHERE v = 'c' AND id > ?")
    out.append(("its own id still works", c.execute(stmt, 0)))
    c.query("DROP TABLE drv_direct")
    c.close()
    return out


@pytest.mark.skipif(SERVER.mysql, reason="MariaDB only: execute-direct (COM_STMT_EXECUTE of statement id -1 "
                    "right after its PREPARE) is MariaDB's protocol extension")
def test_mariadb_execute_direct_names_the_last_prepared_statement(mariadb: MariaDB,
                                                                 proxy_factory: Callable[..., ProxyProcess]) -> None:
    direct = execute_direct_script(lambda: _caching_client(mariadb.host, mariadb.port))
    p = start_proxy(proxy_factory)
    with proxy_log_on_failure(p):
        via = execute_direct_script(lambda: _caching_client(p.host, p.port))
    assert_same(direct, via)
    got = dict(via)
    assert got["first"][0] == ["id", "v"] and len(got["first"][1]) == 2
    assert got["a PREPARE that fails"] == (1064, 1243)  # a syntax error, then "unknown statement handler"
    assert got["then a good one"][0] == ["n"]

