"""Multiplexed sessions: multi-results, procedures, LOCAL INFILE, capability flags, identity, reset."""

from __future__ import annotations

import struct
import threading

import pymysql
import pytest
from pymysql.constants import CLIENT

from conftest import APP_DB, APP_PASSWORD, APP_USER, run_cli
from proxy.mysql.auth import native_scramble


def _admin(p):
    return pymysql.connect(host=p.host, port=p.port, user="admin", password="admin-pw")


def _clients(p) -> dict[int, tuple]:
    conn = _admin(p)
    with conn.cursor() as cur:
        cur.execute("SHOW CLIENTS")
        rows = {r[0]: r for r in cur.fetchall()}
    conn.close()
    return rows


@pytest.fixture
def shared(proxy_factory):
    """A pool of 2 with an admin console."""
    return proxy_factory({"pool": {"max_connections": 2}, "admin": {"user": "admin", "password": "admin-pw"}})


def _busy_neighbour(p, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        conn = p.connect()
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("SET time_zone='+01:00'")
                cur.execute("SELECT 1")
        conn.close()

    t = threading.Thread(target=run)
    t.start()
    return t


def test_procedure_with_several_result_sets(mariadb, shared):
    mariadb.sql(f"DROP PROCEDURE IF EXISTS {APP_DB}.two_results")
    mariadb.sql(f"CREATE PROCEDURE {APP_DB}.two_results(IN n INT) BEGIN SELECT n AS a; SELECT n + 1 AS b, 'x' AS c; END")
    stop = threading.Event()
    t = _busy_neighbour(shared, stop)
    try:
        conn = shared.connect()
        with conn.cursor() as cur:
            for i in range(20):
                cur.execute("CALL two_results(%s)", (i,))
                assert cur.fetchall() == ((i,),)
                assert cur.nextset()
                assert cur.fetchall() == ((i + 1, "x"),)
                assert cur.nextset()  # the CALL's own OK
                assert not cur.nextset()
                cur.execute("SELECT %s", (i,))
                assert cur.fetchone() == (i,)
    finally:
        stop.set()
        t.join()
    # A procedure may leave anything (user variables, temporary tables, locks) that no tracker
    # reports: the session keeps its link until it leaves.
    assert _clients(shared)[conn.thread_id()][4].startswith("untracked session state")


def test_multi_statements_follow_each_client(mariadb, shared):
    multi = shared.connect(client_flag=CLIENT.MULTI_STATEMENTS)
    single = shared.connect()
    for _ in range(5):  # alternate so both use both links
        with multi.cursor() as cur:
            cur.execute("SELECT 1; SELECT 2")
            assert cur.fetchall() == ((1,),)
            assert cur.nextset()
            assert cur.fetchall() == ((2,),)
        with single.cursor() as cur:
            with pytest.raises(pymysql.err.ProgrammingError) as e:
                cur.execute("SELECT 1; SELECT 2")
            assert e.value.args[0] == 1064


def test_found_rows_flag_follows_each_client(mariadb, shared):
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS {APP_DB}.fr_flag (id INT PRIMARY KEY, v INT)")
    mariadb.sql(f"REPLACE INTO {APP_DB}.fr_flag VALUES (1, 0)")
    found = shared.connect(client_flag=CLIENT.FOUND_ROWS)
    changed = shared.connect()
    for _ in range(3):
        with found.cursor() as cur:
            assert cur.execute("UPDATE fr_flag SET v = 0 WHERE id = 1") == 1  # matched rows
        with changed.cursor() as cur:
            assert cur.execute("UPDATE fr_flag SET v = 0 WHERE id = 1") == 0  # changed rows


def test_load_data_local_infile(mariadb, shared, tmp_path):
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS {APP_DB}.infile_rows (id INT PRIMARY KEY, name VARCHAR(20))")
    mariadb.sql(f"DELETE FROM {APP_DB}.infile_rows")
    data = tmp_path / "rows.csv"
    data.write_text("".join(f"{i},name{i}\n" for i in range(1000)))
    conn = shared.connect(local_infile=True)
    with conn.cursor() as cur:
        n = cur.execute(f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE infile_rows FIELDS TERMINATED BY ','")
        assert n == 1000
        cur.execute("SELECT COUNT(*), MAX(name) FROM infile_rows")
        assert cur.fetchone() == (1000, "name999")
    # A client without CLIENT_LOCAL_FILES gets the refusal the server would give.
    plain = shared.connect()
    with plain.cursor() as cur:
        with pytest.raises(pymysql.err.MySQLError) as e:
            cur.execute(f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE infile_rows")
        assert e.value.args[0] in (1148, 4166)


def test_big_packets_through_a_multiplexed_session(mariadb, proxy_factory):
    mariadb.set_global("max_allowed_packet", 64 * 1024 * 1024)
    p = proxy_factory({"pool": {"max_connections": 2}})
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS {APP_DB}.big (id INT PRIMARY KEY, b LONGBLOB)")
    mariadb.sql(f"DELETE FROM {APP_DB}.big")
    blob = bytes(range(256)) * (17 * 1024 * 1024 // 256)  # 17 MiB: more than one packet
    conn = p.connect()
    other = p.connect()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO big VALUES (1, %s)", (blob,))
    with other.cursor() as cur:
        cur.execute("SELECT 1")
    with conn.cursor() as cur:
        cur.execute("SELECT b, LENGTH(b) FROM big WHERE id = 1")
        got, length = cur.fetchone()
    assert length == len(blob) and got == blob


def test_kill_query_by_greeting_id(mariadb, shared):
    victim = shared.connect()
    killer = shared.connect()
    result: list[object] = []

    def run() -> None:
        try:
            with victim.cursor() as cur:
                cur.execute("SELECT SLEEP(20)")
                result.append(cur.fetchone())
        except pymysql.err.MySQLError as e:
            result.append(e.args[0])

    t = threading.Thread(target=run)
    t.start()
    for _ in range(100):
        if _clients(shared)[victim.thread_id()][3] == "active":
            break
        threading.Event().wait(0.05)
    with killer.cursor() as cur:
        cur.execute(f"KILL QUERY {victim.thread_id()}")
    t.join(10)
    assert not t.is_alive()
    # SLEEP() interrupted returns 1 (MariaDB) or the statement fails with 1317.
    assert result and result[0] in ((1,), 1317), result
    with victim.cursor() as cur:  # the victim's connection goes on
        cur.execute("SELECT 5")
        assert cur.fetchone() == (5,)
    with killer.cursor() as cur:
        with pytest.raises(pymysql.err.MySQLError) as e:
            cur.execute("KILL 999999")
        assert e.value.args[0] == 1094


def test_kill_connection_by_greeting_id(shared):
    victim = shared.connect()
    killer = shared.connect()
    with killer.cursor() as cur:
        cur.execute(f"KILL {victim.thread_id()}")
    with pytest.raises(pymysql.err.MySQLError):
        with victim.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchall()
            cur.execute("SELECT 1")


def test_reset_connection_and_change_user(mariadb, shared):
    p = shared
    conn = p.connect()
    with conn.cursor() as cur:
        cur.execute("SET @v = 1")
        cur.execute("SET time_zone = '+03:00'")
        cur.execute("CREATE TEMPORARY TABLE t_reset (x INT)")
    assert "untracked session state" in (_clients(p)[conn.thread_id()][4] or "")
    conn.ping()
    # COM_RESET_CONNECTION (PyMySQL has no API for it): send it raw.
    conn._execute_command(0x1F, b"")
    ok = conn._read_packet()
    assert ok.is_ok_packet()
    with conn.cursor() as cur:
        cur.execute("SELECT @v, @@time_zone = @@GLOBAL.time_zone")
        assert cur.fetchone() == (None, 1)
        with pytest.raises(pymysql.err.ProgrammingError):
            cur.execute("SELECT * FROM t_reset")
        cur.execute("SELECT 1")  # ends the hold for the error's diagnostics
    assert _clients(p)[conn.thread_id()][4] is None


def _change_user(conn, user: str, password: str) -> None:
    """COM_CHANGE_USER on a PyMySQL connection (PyMySQL has no API for it); raises on an ERR."""
    answer = native_scramble(password, conn.salt)
    payload = (user.encode() + b"\0" + bytes((len(answer),)) + answer + APP_DB.encode() + b"\0"
               + struct.pack("<H", 45) + b"mysql_native_password\0")
    conn._execute_command(0x11, payload)
    assert conn._read_packet().is_ok_packet()


def test_change_user_wrong_password_is_refused(shared):
    conn = shared.connect()
    with pytest.raises(pymysql.err.OperationalError) as e:
        _change_user(conn, APP_USER, "wrong")
    assert e.value.args[0] == 1045
    good = shared.connect()
    _change_user(good, APP_USER, APP_PASSWORD)
    with good.cursor() as cur:
        cur.execute("SELECT CURRENT_USER(), DATABASE()")
        assert cur.fetchone() == (f"{APP_USER}@%", APP_DB)


def test_change_user_after_a_reload_checks_the_new_password(proxy_factory):
    """Passwords are looked up at each check, so a reload reaches connections opened before it."""
    p = proxy_factory({"users": [{"user": "webapp", "password": "old-pw"}]})
    before = [p.connect(user="webapp", password="old-pw") for _ in range(2)]
    p.rewrite_config({"users": [{"user": "webapp", "password": "new-pw"}]})
    p.reload()
    p.wait_log("config reloaded")
    with pytest.raises(pymysql.err.OperationalError) as e:
        _change_user(before[0], "webapp", "old-pw")
    assert e.value.args[0] == 1045
    _change_user(before[1], "webapp", "new-pw")
    with before[1].cursor() as cur:
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone() == (APP_DB,)
    with pytest.raises(pymysql.err.OperationalError):
        p.connect(user="webapp", password="old-pw")
    p.connect(user="webapp", password="new-pw").close()


def test_follow_up_on_its_own_untouched_link_keeps_found_rows_and_row_count(mariadb, proxy_factory):
    """A link that once carried warnings is cleaned before another session's follow-up question,
    but not before the question of the session whose statement it just ran: the cleaning statement
    would reset FOUND_ROWS() and ROW_COUNT() (seen as FOUND_ROWS() = 1 instead of 4)."""
    p = proxy_factory({"pool": {"max_connections": 1}})
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS {APP_DB}.fr_own (id INT PRIMARY KEY)")
    mariadb.sql(f"DELETE FROM {APP_DB}.fr_own")
    mariadb.sql(f"INSERT INTO {APP_DB}.fr_own VALUES (1), (2), (3), (4), (5)")
    conn = p.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT CAST('x' AS SIGNED)")  # a warning: the only link is now marked dirty
        cur.execute("SELECT 1")
        assert cur.execute("SELECT id FROM fr_own WHERE id > 1") == 4
        cur.execute("SELECT FOUND_ROWS()")
        assert cur.fetchone() == (4,)
        cur.execute("SELECT CAST('y' AS SIGNED)")
        cur.execute("SELECT 1")
        assert cur.execute("UPDATE fr_own SET id = id + 10 WHERE id > 2") == 3
        cur.execute("SELECT ROW_COUNT()")
        assert cur.fetchone() == (3,)
    conn.close()


def test_a_session_without_a_database_never_runs_on_one(mariadb, proxy_factory):
    """A link that another client left in appdb must not give a session with no database one.

    Otherwise an unqualified CREATE TABLE from such a session (a migration tool, a console)
    would land in whatever database the previous client used, instead of failing with 1046.
    """
    p = proxy_factory({"pool": {"max_connections": 1}})  # one link: every client gets the same one
    with_db = p.connect()
    nodb = p.connect(database=None)
    with nodb.cursor() as cur:
        cur.execute("SET @@session.sql_mode = 'ANSI_QUOTES'")
    for _ in range(2):  # back and forth over the one link
        with with_db.cursor() as cur:
            cur.execute("SELECT DATABASE(), @@session.sql_mode")
            assert cur.fetchone()[0] == APP_DB
        with nodb.cursor() as cur:
            cur.execute("SELECT DATABASE(), @@session.sql_mode")
            assert cur.fetchone() == (None, "ANSI_QUOTES")  # no database, and its own state replayed
            with pytest.raises(pymysql.err.OperationalError) as e:
                cur.execute("CREATE TABLE t_nodb_misplaced (i INT)")
            assert e.value.args[0] == 1046
            cur.execute("SELECT 1")  # an error holds the link for questions about it; this lets it go
    assert not mariadb.sql("SELECT 1 FROM information_schema.TABLES WHERE TABLE_NAME = 't_nodb_misplaced'")
    with nodb.cursor() as cur:
        cur.execute(f"USE {APP_DB}")  # from here on it has one, like any other session
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone()[0] == APP_DB
    rc, out, err = run_cli(p.port, APP_USER, APP_PASSWORD, "SELECT DATABASE()")
    assert (rc, out.strip()) == (0, "NULL"), err
