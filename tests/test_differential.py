"""The same session scripts, directly and through the proxy with other clients interleaving.

A pool of 2 is shared with noisy neighbours that keep changing their own session
state (time zone, sql_mode, character set, last insert id, warnings), so every
statement of the script may land on a link another session just used. The
results must be identical, statement by statement.
"""

from __future__ import annotations

import random
import threading

import pymysql
import pytest

from conftest import APP_DB, SERVER

# Isolation level and read-only mode by the server's names: MySQL 8+ has only transaction_*,
# MariaDB 10.11 only tx_* (MariaDB 11.1+ has both).
ISOLATION, READ_ONLY = (
    ("tx_isolation", "tx_read_only") if SERVER.name == "mariadb-10.11" else ("transaction_isolation", "transaction_read_only")
)

SCRIPTS: dict[str, list[str]] = {
    "variables": [
        "SET sql_mode='ANSI_QUOTES,STRICT_ALL_TABLES'",
        "SET time_zone='+05:30'",
        "SET foreign_key_checks=0, unique_checks=0",
        "SET SESSION max_execution_time=0, group_concat_max_len=4096",
        "SELECT @@sql_mode, @@time_zone, @@foreign_key_checks, @@unique_checks, @@group_concat_max_len",
        'SELECT "no_such_column"',
        "SELECT FROM_UNIXTIME(86400)",  # (MariaDB 11.8 answers NULL for FROM_UNIXTIME(0) in any time zone)
        "SET SESSION sql_mode=DEFAULT",
        "SELECT @@sql_mode = @@GLOBAL.sql_mode",
        "SET time_zone=DEFAULT",
        "SELECT @@time_zone",
    ],
    "schema": [
        "SELECT DATABASE()",
        "USE information_schema",
        "SELECT DATABASE()",
        "SELECT COUNT(*) > 0 FROM TABLES",
        "USE mysql",
        "SELECT DATABASE()",
        f"USE {APP_DB}",
        "SELECT DATABASE()",
    ],
    "transactions": [
        "DROP TABLE IF EXISTS d_tx",
        "CREATE TABLE d_tx (id INT AUTO_INCREMENT PRIMARY KEY, v INT)",
        "BEGIN",
        "INSERT INTO d_tx (v) VALUES (1), (2)",
        "SELECT @@in_transaction",
        "ROLLBACK",
        "SELECT COUNT(*) FROM d_tx",
        "START TRANSACTION",
        "INSERT INTO d_tx (v) VALUES (3)",
        "COMMIT",
        "SELECT v FROM d_tx ORDER BY id",
        "SET autocommit=0",
        "SELECT @@autocommit",
        "INSERT INTO d_tx (v) VALUES (4)",
        "ROLLBACK",
        "INSERT INTO d_tx (v) VALUES (5)",
        "COMMIT",
        "SET autocommit=1",
        "SELECT v FROM d_tx ORDER BY id",
    ],
    "isolation": [
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        f"SELECT @@{ISOLATION}",
        "SELECT 1",
        f"SELECT @@{ISOLATION}",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "BEGIN",
        "SELECT 2",
        "COMMIT",
        f"SELECT @@{ISOLATION}",
        "SET SESSION TRANSACTION READ ONLY",
        f"SELECT @@{READ_ONLY}",
        "SELECT 3",
        f"SELECT @@{READ_ONLY}",
        "SET SESSION TRANSACTION READ WRITE, ISOLATION LEVEL REPEATABLE READ",
        f"SELECT @@{READ_ONLY}, @@{ISOLATION}",
    ],
    "names": [
        "DROP TABLE IF EXISTS d_names",
        "CREATE TABLE d_names (id INT PRIMARY KEY, v VARCHAR(50) CHARACTER SET utf8mb4)",
        "SET NAMES utf8mb4",
        "INSERT INTO d_names VALUES (1, 'héllo wörld ✓ 日本')",
        "SELECT v, HEX(v), CHAR_LENGTH(v) FROM d_names",
        "SET NAMES latin1",
        "SELECT @@character_set_client, @@character_set_connection, @@character_set_results, @@collation_connection",
        "SELECT HEX(v), HEX(CAST(v AS BINARY)) FROM d_names",
        "SELECT HEX('é')",
        "SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci",
        "SELECT @@collation_connection, @@character_set_client",
        "SELECT v FROM d_names",
        "SET CHARACTER SET utf8mb4",
        "SELECT @@character_set_client, @@character_set_results, @@collation_connection",
        "SET character_set_results = NULL",
        "SELECT @@character_set_results IS NULL",
        "SET NAMES utf8mb4",
    ],
    "last_insert_id": [
        "DROP TABLE IF EXISTS d_ids",
        "CREATE TABLE d_ids (id INT AUTO_INCREMENT PRIMARY KEY, v INT)",
        "INSERT INTO d_ids (v) VALUES (10)",
        "SELECT LAST_INSERT_ID()",
        "INSERT INTO d_ids (v) VALUES (11), (12), (13)",
        "SELECT LAST_INSERT_ID()",
        "UPDATE d_ids SET v = v + 1",
        "SELECT LAST_INSERT_ID()",
        "SELECT 1",
        "SELECT LAST_INSERT_ID(), LAST_INSERT_ID() + 1",
    ],
    "warnings": [
        "SELECT CAST('abc' AS SIGNED)",
        "SHOW WARNINGS",
        "SELECT CAST('1x' AS SIGNED), CAST('2y' AS SIGNED)",
        "SELECT @@warning_count",
        "SHOW WARNINGS",
        "SELECT CAST('abc' AS SIGNED)",
        "SHOW COUNT(*) WARNINGS",
        "SHOW WARNINGS LIMIT 1",
        "SELECT COUNT(*) FROM d_noise WHERE id < 0",
        "SHOW WARNINGS",
        "SELECT @@warning_count",
        "SELECT * FROM no_such_table",
        "SHOW ERRORS",
        "SELECT @@error_count",
        "GET DIAGNOSTICS CONDITION 1 @errno = MYSQL_ERRNO",
        "SELECT @errno",
        "SELECT COUNT(*) FROM d_noise WHERE id < 0",
        "SHOW ERRORS",
        "SELECT @@error_count, @@warning_count",
    ],
    "row_count": [
        "DROP TABLE IF EXISTS d_rc",
        "CREATE TABLE d_rc (id INT PRIMARY KEY, v INT)",
        "INSERT INTO d_rc VALUES (1, 1), (2, 2), (3, 3)",
        "SELECT ROW_COUNT()",
        "UPDATE d_rc SET v = 0 WHERE id < 3",
        "SELECT ROW_COUNT()",
        "UPDATE d_rc SET v = 0 WHERE id < 3",
        "SELECT ROW_COUNT()",
        "SELECT * FROM d_rc ORDER BY id",
        "SELECT ROW_COUNT()",
        "DELETE FROM d_rc WHERE id = 3",
        "SELECT ROW_COUNT() AS n",
    ],
    "found_rows": [
        "DROP TABLE IF EXISTS d_fr",
        "CREATE TABLE d_fr (id INT PRIMARY KEY)",
        "INSERT INTO d_fr VALUES (1), (2), (3), (4), (5)",
        "SELECT SQL_CALC_FOUND_ROWS id FROM d_fr ORDER BY id LIMIT 2",
        "SELECT FOUND_ROWS()",
        "SELECT id FROM d_fr WHERE id > 1 ORDER BY id",
        "SELECT FOUND_ROWS()",
    ],
    "temporary_and_user_variables": [
        "SET @a = 5, @b = 'x'",
        "CREATE TEMPORARY TABLE d_tmp (x INT)",
        "INSERT INTO d_tmp VALUES (1), (2)",
        "SELECT 1",
        "SELECT @a, @b, (SELECT COUNT(*) FROM d_tmp)",
        "SELECT @c := 7",
        "SELECT @c",
        "DROP TEMPORARY TABLE d_tmp",
    ],
    "sql_prepare": [
        "PREPARE s1 FROM 'SELECT ? + 1 AS n'",
        "SET @p = 41",
        "EXECUTE s1 USING @p",
        "SELECT 0",
        "EXECUTE s1 USING @p",
        "DEALLOCATE PREPARE s1",
        "EXECUTE s1 USING @p",
    ],
    "locks": [
        "SELECT GET_LOCK('d_lock', 1)",
        "SELECT IS_USED_LOCK('d_lock') IS NOT NULL",
        "SELECT 1",
        "SELECT RELEASE_LOCK('d_lock')",
        "DROP TABLE IF EXISTS d_lk",
        "CREATE TABLE d_lk (id INT)",
        "LOCK TABLES d_lk WRITE",
        "INSERT INTO d_lk VALUES (1)",
        "SELECT COUNT(*) FROM d_lk",
        "UNLOCK TABLES",
        "SELECT COUNT(*) FROM d_lk",
    ],
}


def _run(conn: pymysql.connections.Connection, script: list[str]) -> list[object]:
    out: list[object] = []
    with conn.cursor() as cur:
        for stmt in script:
            try:
                n = cur.execute(stmt)
                rows = cur.fetchall()
                desc = [d[0] for d in cur.description] if cur.description else None
                out.append((stmt, n, desc, rows, cur.lastrowid))
            except pymysql.err.MySQLError as e:
                out.append((stmt, "error", e.args[0], str(e.args[1]) if len(e.args) > 1 else ""))
    return out


class Neighbours:
    """Clients that keep dirtying whatever links they get."""

    STATEMENTS = [
        "SET time_zone='-03:00'",
        "SET sql_mode=''",
        "SET NAMES latin1",
        "SET NAMES utf8mb4",
        "SET autocommit=1",
        "SELECT CAST('noise' AS SIGNED)",
        "INSERT INTO d_noise (v) VALUES (1)",
        "UPDATE d_noise SET v = v + 1 WHERE id < 3",
        "SELECT SQL_CALC_FOUND_ROWS * FROM d_noise LIMIT 1",
        "SELECT * FROM d_noise LIMIT 3",
        "SELECT 1",
        "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SELECT * FROM no_such_noise",
    ]

    def __init__(self, proxy, n: int = 3) -> None:
        self.proxy = proxy
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._loop, args=(i,)) for i in range(n)]

    def _loop(self, i: int) -> None:
        rng = random.Random(i)
        try:
            conn = self.proxy.connect()
            with conn.cursor() as cur:
                while not self.stop.is_set():
                    try:
                        cur.execute(rng.choice(self.STATEMENTS))
                        cur.fetchall()
                    except pymysql.err.ProgrammingError:
                        pass
            conn.close()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.errors.append(e)

    def __enter__(self) -> Neighbours:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


@pytest.fixture(scope="module")
def noise_table(mariadb):
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS {APP_DB}.d_noise (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
    mariadb.sql(f"INSERT INTO {APP_DB}.d_noise (v) VALUES (1), (2), (3)")


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_same_answers_direct_and_through_proxy(name, mariadb, proxy_factory, noise_table):
    script = SCRIPTS[name]
    direct = _run(mariadb.connect(), script)
    p = proxy_factory({"pool": {"max_connections": 2}})
    with Neighbours(p) as neighbours:
        proxied = _run(p.connect(), script)
    assert not neighbours.errors, neighbours.errors[:3]
    for d, q in zip(direct, proxied):
        assert q == d, f"{name}: direct {d!r} != proxy {q!r}"
    assert len(direct) == len(proxied)


def test_connection_id_is_the_greeting_id(proxy):
    a, b = proxy.connect(), proxy.connect()
    for conn in (a, b):
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            assert cur.fetchone() == (conn.thread_id(),)
            cur.execute("SELECT CONNECTION_ID() + 0 AS id")
            assert cur.fetchone() == (conn.thread_id(),)
    assert a.thread_id() != b.thread_id()
