"""Data through the proxy: large results, large packets, errors, transactions, per-statement answers.

Where the server has an answer the proxy's must equal it: the same script runs
on a direct connection and through the proxy.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from typing import Any

import pymysql
import pytest

from conftest import APP_DB, APP_PASSWORD, APP_USER, in_transaction, require_binary, run_cli

MAX_PACKET = 64 * 1024 * 1024
CHUNK = 0xFFFFFF  # largest payload of one protocol packet


def _table(mariadb, name: str, ddl: str) -> str:
    mariadb.sql(f"DROP TABLE IF EXISTS {APP_DB}.{name}")
    mariadb.sql(f"CREATE TABLE {APP_DB}.{name} {ddl}")
    return name


@pytest.fixture
def big_packets(mariadb):
    """The server accepts 64 MiB packets; set before the proxy opens its links (new sessions read it)."""
    mariadb.set_global("max_allowed_packet", MAX_PACKET)
    return MAX_PACKET


# --------------------------------------------------------------------------- large results


def test_100k_row_result(mariadb, proxy) -> None:
    sql = "SELECT seq, CONCAT('row-', seq, '-', REPEAT('x', seq % 50)) FROM seq_1_to_100000 ORDER BY seq"
    direct = mariadb.connect()
    with direct.cursor() as cur:
        cur.execute(sql)
        expected = cur.fetchall()
    assert len(expected) == 100_000
    conn = proxy.connect()
    with conn.cursor() as cur:
        cur.execute(sql)
        got = cur.fetchall()
        assert got == expected
        cur.execute("SELECT 'after'")  # the link and the client are in step afterwards
        assert cur.fetchone() == ("after",)
    # Unbuffered: the client reads rows as they come (back-pressure path).
    with conn.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute(sql)
        n, digest = 0, hashlib.sha256()
        for row in cur:
            n += 1
            digest.update(repr(row).encode())
    assert n == 100_000
    assert digest.hexdigest() == hashlib.sha256(b"".join(repr(r).encode() for r in expected)).hexdigest()


def test_100k_rows_through_the_cli(proxy) -> None:
    rc, out, err = run_cli(proxy.port, APP_USER, APP_PASSWORD, "SELECT seq FROM seq_1_to_100000", APP_DB)
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 100_000
    assert lines[0] == "1" and lines[-1] == "100000"


# --------------------------------------------------------------------------- large packets


def test_20_mib_blob_round_trip(mariadb, big_packets, proxy_factory) -> None:
    table = _table(mariadb, "blob_t", "(id INT PRIMARY KEY, b LONGBLOB) ENGINE=InnoDB")
    p = proxy_factory()
    blob = os.urandom(20 * 1024 * 1024)
    conn = p.connect(max_allowed_packet=MAX_PACKET, read_timeout=120, write_timeout=120)
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (1, %s)", (blob,))  # a ~20 MiB query: two packets and more
        cur.execute(f"SELECT LENGTH(b), SHA2(b, 256) FROM {table} WHERE id = 1")
        assert cur.fetchone() == (len(blob), hashlib.sha256(blob).hexdigest())
        cur.execute(f"SELECT b FROM {table} WHERE id = 1")  # a ~20 MiB row
        (back,) = cur.fetchone()
    assert back == blob
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


BOUNDARY = (CHUNK - 1, CHUNK, CHUNK + 1)  # payload sizes around where a packet must be split


def test_rows_at_the_16_mib_packet_boundary(mariadb, big_packets, proxy_factory) -> None:
    """A row payload of exactly 0xFFFFFF bytes is followed by an empty packet; one byte less or more is not."""
    p = proxy_factory()
    conn = p.connect(max_allowed_packet=MAX_PACKET, read_timeout=120)
    for payload in BOUNDARY:
        n = payload - 4  # one string column of n bytes: 0xFD + 3-byte length + n bytes (n < 2^24)
        with conn.cursor() as cur:
            cur.execute("SELECT REPEAT('a', %s), 'tail'", (n,))
            value, tail = cur.fetchone()
            assert (len(value), tail) == (n, "tail"), f"row payload {payload:#x}"
            assert value == "a" * n
            cur.execute("SELECT 2")
            assert cur.fetchone() == (2,)


def test_queries_at_the_16_mib_packet_boundary(mariadb, big_packets, proxy_factory) -> None:
    """A COM_QUERY payload (command byte + SQL) of exactly 0xFFFFFF is followed by an empty packet."""
    head, tail = "SELECT LENGTH('", "'), 'end'"
    p = proxy_factory()
    conn = p.connect(max_allowed_packet=MAX_PACKET, read_timeout=120, write_timeout=120)
    for payload in BOUNDARY:
        n = payload - 1 - len(head) - len(tail)
        with conn.cursor() as cur:
            cur.execute(head + "b" * n + tail)
            assert cur.fetchone() == (n, "end"), f"query payload {payload:#x}"
            cur.execute("SELECT 3")
            assert cur.fetchone() == (3,)


def test_20_mib_blob_round_trip_through_the_cli(mariadb, big_packets, proxy_factory, tmp_path) -> None:
    table = _table(mariadb, "cli_blob_t", "(id INT PRIMARY KEY, b LONGBLOB) ENGINE=InnoDB")
    p = proxy_factory()
    blob = os.urandom(20 * 1024 * 1024)
    script = tmp_path / "blob.sql"
    script.write_text(f"INSERT INTO {table} VALUES (1, 0x{blob.hex()});\nSELECT HEX(b) FROM {table} WHERE id = 1;\n")
    client = require_binary("mariadb", "mysql")
    with open(script, "rb") as stdin:
        r = subprocess.run(
            [client, "--no-defaults", "-h127.0.0.1", f"-P{p.port}", "--protocol=TCP", f"-u{APP_USER}",
             f"--password={APP_PASSWORD}", "--max-allowed-packet=64M", "-N", "-B", APP_DB],
            stdin=stdin, capture_output=True, timeout=120,
        )
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert bytes.fromhex(r.stdout.decode().strip()) == blob
    assert mariadb.sql(f"SELECT SHA2(b, 256) FROM {APP_DB}.{table}") == ((hashlib.sha256(blob).hexdigest(),),)


# --------------------------------------------------------------------------- errors


def _error(conn, sql: str) -> tuple:
    with pytest.raises(pymysql.MySQLError) as ei:
        with conn.cursor() as cur:
            cur.execute(sql)
    return ei.value.args


@pytest.mark.parametrize(
    "sql",
    [
        "SELEC 1",
        "SELECT * FROM err_t WHERE",
        "INSERT INTO err_t VALUES (1, 'dup')",
        "INSERT INTO err_t (id, v) VALUES (2, 'a'), (1, 'dup')",
        "SELECT nope FROM err_t",
        "SELECT * FROM no_such_table",
        "INSERT INTO err_t VALUES (5, REPEAT('x', 100))",
        "SELECT 1 UNION SELECT 1, 2",
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'custom failure', MYSQL_ERRNO = 1644",
    ],
    ids=["syntax", "syntax-eof", "duplicate-key", "duplicate-key-multirow", "bad-column", "no-table",
         "too-long", "union-columns", "signal"],
)
def test_errors_pass_through_like_the_servers(mariadb, proxy, sql: str) -> None:
    table = _table(mariadb, "err_t", "(id INT PRIMARY KEY, v VARCHAR(10)) ENGINE=InnoDB")
    mariadb.sql(f"INSERT INTO {APP_DB}.{table} VALUES (1, 'one')")
    direct = mariadb.connect(sql_mode="STRICT_ALL_TABLES")
    conn = proxy.connect(sql_mode="STRICT_ALL_TABLES")
    d = _error(direct, sql)
    got = _error(conn, sql)
    assert got == d
    assert type(got) is type(d)
    # The connection goes on, and nothing of the failed statement stuck.
    with conn.cursor() as cur:
        cur.execute(f"SELECT id, v FROM {table} ORDER BY id")
        assert cur.fetchall() == ((1, "one"),)


def _direct_error(mariadb, sql: str) -> tuple[Any, ...]:
    """The error a direct connection gets for ``sql``."""
    conn = mariadb.connect()
    try:
        with conn.cursor() as cur, pytest.raises(pymysql.MySQLError) as ei:
            cur.execute(sql)
        return tuple(ei.value.args)
    finally:
        conn.close()


def test_duplicate_key_and_syntax_error_codes(mariadb, proxy) -> None:
    table = _table(mariadb, "dup_t", "(id INT PRIMARY KEY) ENGINE=InnoDB")
    conn = proxy.connect()
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (7)")
        with pytest.raises(pymysql.err.IntegrityError) as ei:
            cur.execute(f"INSERT INTO {table} VALUES (7)")
        # The server's own words (MySQL 8 names the key 'dup_t.PRIMARY', MariaDB 'PRIMARY').
        assert ei.value.args == _direct_error(mariadb, f"INSERT INTO {table} VALUES (7)")
        assert ei.value.args[0] == 1062 and "Duplicate entry '7' for key" in ei.value.args[1]
        with pytest.raises(pymysql.err.ProgrammingError) as ei:
            cur.execute("SELEC 1")
        assert ei.value.args[0] == 1064
        assert "You have an error in your SQL syntax" in ei.value.args[1]
        assert "'SELEC 1'" in ei.value.args[1]


def test_error_inside_a_transaction_keeps_the_transaction(mariadb, proxy) -> None:
    table = _table(mariadb, "errtx_t", "(id INT PRIMARY KEY) ENGINE=InnoDB")
    conn = proxy.connect()
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute(f"INSERT INTO {table} VALUES (1)")
        with pytest.raises(pymysql.err.IntegrityError):
            cur.execute(f"INSERT INTO {table} VALUES (1)")
        assert in_transaction(conn) == 1
        cur.execute(f"INSERT INTO {table} VALUES (2)")
        cur.execute("COMMIT")
    assert mariadb.sql(f"SELECT id FROM {APP_DB}.{table} ORDER BY id") == ((1,), (2,))


def test_multi_statement_with_an_error_in_the_middle(mariadb, proxy) -> None:
    table = _table(mariadb, "multi_t", "(id INT PRIMARY KEY) ENGINE=InnoDB")
    script = f"INSERT INTO {table} VALUES (1); SELECT COUNT(*) FROM {table}; INSERT INTO {table} VALUES (1); SELECT 99"
    flags = pymysql.constants.CLIENT.MULTI_STATEMENTS
    results = []
    for conn in (mariadb.connect(client_flag=flags), proxy.connect(client_flag=flags)):
        mariadb.sql(f"DELETE FROM {APP_DB}.{table}")
        with conn.cursor() as cur:
            with pytest.raises(pymysql.MySQLError) as ei:
                cur.execute(script)
                while cur.nextset():
                    pass
            results.append(ei.value.args)
            cur.execute("SELECT 5")
            assert cur.fetchone() == (5,)
    assert results[0] == results[1]
    assert results[1][0] == 1062


# --------------------------------------------------------------------------- transactions


def test_commit_is_visible_and_rollback_is_not(mariadb, proxy) -> None:
    table = _table(mariadb, "tx_t", "(id INT PRIMARY KEY) ENGINE=InnoDB")
    a = proxy.connect()
    other = proxy.connect()  # another client through the proxy
    direct = mariadb.connect()

    def visible(conn) -> list[int]:
        with conn.cursor() as cur:
            cur.execute(f"SELECT id FROM {table} ORDER BY id")
            return [r[0] for r in cur.fetchall()]

    with a.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute(f"INSERT INTO {table} VALUES (1)")
        assert visible(a) == [1]
        assert visible(other) == [] and visible(direct) == []  # not committed yet
        cur.execute("COMMIT")
    assert visible(other) == [1] and visible(direct) == [1]

    with a.cursor() as cur:
        cur.execute("START TRANSACTION")
        cur.execute(f"INSERT INTO {table} VALUES (2)")
        cur.execute(f"DELETE FROM {table} WHERE id = 1")
        assert visible(a) == [2]
        cur.execute("ROLLBACK")
    assert visible(a) == [1] and visible(other) == [1] and visible(direct) == [1]


def test_driver_level_commit_and_rollback(mariadb, proxy) -> None:
    """PyMySQL with autocommit off: conn.commit() / conn.rollback()."""
    table = _table(mariadb, "drv_tx_t", "(id INT PRIMARY KEY) ENGINE=InnoDB")
    conn = proxy.connect(autocommit=False)
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (1)")
    assert mariadb.sql(f"SELECT COUNT(*) FROM {APP_DB}.{table}") == ((0,),)
    conn.commit()
    assert mariadb.sql(f"SELECT COUNT(*) FROM {APP_DB}.{table}") == ((1,),)
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (2)")
        cur.execute(f"UPDATE {table} SET id = 10 WHERE id = 1")
    conn.rollback()
    assert mariadb.sql(f"SELECT id FROM {APP_DB}.{table}") == ((1,),)
    with conn.cursor() as cur:
        cur.execute("SELECT @@autocommit")
        assert cur.fetchone() == (0,)


def test_transactions_from_many_clients_neither_lost_nor_doubled(mariadb, proxy_factory) -> None:
    table = _table(mariadb, "many_tx_t", "(id INT PRIMARY KEY, who INT) ENGINE=InnoDB")
    p = proxy_factory({"pool": {"max_connections": 2}})
    clients = [p.connect() for _ in range(6)]
    committed = set()
    n = 0
    for rnd in range(5):
        for i, c in enumerate(clients):  # interleaved: each client's transaction spans the others'
            c.begin()
            with c.cursor() as cur:
                cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (n, i))
            if (rnd + i) % 2 == 0:
                c.commit()
                committed.add(n)
            else:
                c.rollback()
            n += 1
    assert {r[0] for r in mariadb.sql(f"SELECT id FROM {APP_DB}.{table}")} == committed


# --------------------------------------------------------------------------- per-statement answers


def _last_insert_id_script(a, b, table: str, with_transaction: bool) -> list:
    """Two sessions interleaved; returns everything a client can see of LAST_INSERT_ID()."""
    out: list = []

    def q(conn, sql, args=None):
        with conn.cursor() as cur:
            cur.execute(sql, args)
            out.append((sql.replace(table, "T"), cur.lastrowid, cur.rowcount, cur.fetchall()))

    q(a, f"INSERT INTO {table} (v) VALUES ('a1')")
    q(b, f"INSERT INTO {table} (v) VALUES ('b1'), ('b2'), ('b3')")
    q(a, "SELECT LAST_INSERT_ID()")
    q(b, "SELECT LAST_INSERT_ID()")
    q(a, f"INSERT INTO {table} (id, v) VALUES (100, 'explicit')")
    q(a, "SELECT LAST_INSERT_ID()")
    q(b, "SELECT 1")
    q(b, "SELECT LAST_INSERT_ID()")
    q(a, f"INSERT INTO {table} (v) VALUES ('a2')")
    q(a, "SELECT LAST_INSERT_ID()")
    q(b, f"INSERT IGNORE INTO {table} (id, v) VALUES (100, 'dup')")
    q(b, "SELECT LAST_INSERT_ID()")
    q(a, f"INSERT INTO {table} (v) VALUES ('a3'), ('a4')")
    q(b, "SELECT LAST_INSERT_ID()")
    q(a, "SELECT LAST_INSERT_ID()")
    q(a, f"UPDATE {table} SET v = 'u' WHERE id = LAST_INSERT_ID(1)")
    q(a, "SELECT LAST_INSERT_ID()")
    if with_transaction:  # b works while a's transaction holds a link: needs two
        q(a, "BEGIN")
        q(a, f"INSERT INTO {table} (v) VALUES ('in-tx')")
        q(b, f"INSERT INTO {table} (v) VALUES ('b4')")
        q(a, "SELECT LAST_INSERT_ID()")
        q(a, "COMMIT")
        q(a, "SELECT LAST_INSERT_ID()")
        q(b, "SELECT LAST_INSERT_ID()")
    return out


@pytest.mark.parametrize("links", [1, 2])
def test_last_insert_id_and_lastrowid_match_direct(mariadb, proxy_factory, links: int) -> None:
    ddl = "(id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB"
    _table(mariadb, "lid_direct", ddl)
    _table(mariadb, "lid_proxy", ddl)
    expected = _last_insert_id_script(mariadb.connect(), mariadb.connect(), "lid_direct", links > 1)
    p = proxy_factory({"pool": {"max_connections": links, "queue_timeout": 3}})
    got = _last_insert_id_script(p.connect(), p.connect(), "lid_proxy", links > 1)
    for e, g in zip(expected, got):
        assert g == e, f"after {g[0]!r}: proxy gave {g[1:]}, direct gave {e[1:]}"
    assert len(got) == len(expected)


def test_last_insert_id_with_an_argument_matches_direct(mariadb, proxy_factory) -> None:
    ddl = "(id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB"

    def script(a, b, table: str) -> list:
        out = []
        for conn, sql in (
            (a, f"INSERT INTO {table} (v) VALUES ('a')"),
            (b, f"INSERT INTO {table} (v) VALUES ('b')"),
            (b, "SELECT LAST_INSERT_ID(42)"),
            (a, "SELECT LAST_INSERT_ID()"),
            (b, "SELECT LAST_INSERT_ID()"),
        ):
            with conn.cursor() as cur:
                cur.execute(sql)
                out.append((cur.lastrowid, cur.fetchall()))
        return out

    _table(mariadb, "lid2_direct", ddl)
    _table(mariadb, "lid2_proxy", ddl)
    expected = script(mariadb.connect(), mariadb.connect(), "lid2_direct")
    assert expected[-1] == (None, ((42,),))
    p = proxy_factory({"pool": {"max_connections": 1, "queue_timeout": 3}})
    assert script(p.connect(), p.connect(), "lid2_proxy") == expected
