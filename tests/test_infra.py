"""The test infrastructure itself, without the proxy: every other test trusts these fixtures."""

from __future__ import annotations

import uuid

import pymysql
import pytest
from conftest import APP_DB, SERVER, MariaDB, _merge, count_backend_connections, run_cli


def _error_code(exc: BaseException) -> int:
    assert isinstance(exc, pymysql.MySQLError), exc
    return int(exc.args[0])


def test_private_server_answers_root_over_tcp(mariadb: MariaDB) -> None:
    assert mariadb.port not in (3306, 3307)
    conn = mariadb.root_conn(host=mariadb.host, port=mariadb.port)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION(), @@port, @@datadir, CURRENT_USER()")
            version, port, datadir, user = cur.fetchone()
    finally:
        conn.close()
    assert ("mariadb" in version.lower()) == SERVER.mariadb  # the flavour MYSQL_TEST_SERVER asked for
    assert port == mariadb.port
    assert datadir.rstrip("/") == mariadb.datadir.rstrip("/")  # ours, not a system server
    assert user == "root@127.0.0.1"


def test_app_user_logs_in_and_creates_tables(mariadb: MariaDB) -> None:
    conn = mariadb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER(), DATABASE()")
            assert cur.fetchone() == ("app@%", APP_DB)
            cur.execute("CREATE TABLE infra_t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
            cur.execute("INSERT INTO infra_t VALUES (1, 'one'), (2, 'two')")
            cur.execute("SELECT v FROM infra_t ORDER BY id")
            assert cur.fetchall() == (("one",), ("two",))
            cur.execute("DROP TABLE infra_t")
    finally:
        conn.close()


def test_wrong_password_is_refused_with_1045(mariadb: MariaDB) -> None:
    with pytest.raises(pymysql.err.OperationalError) as ei:
        mariadb.connect(password="not-the-password")
    assert _error_code(ei.value) == 1045


def test_restart_keeps_data_and_really_restarts(mariadb: MariaDB) -> None:
    token = uuid.uuid4().hex
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS `{APP_DB}`.infra_persist (token CHAR(32) PRIMARY KEY)")
    mariadb.sql(f"INSERT INTO `{APP_DB}`.infra_persist VALUES (%s)", (token,))
    old = mariadb.connect()
    old_pid = mariadb.proc.pid if mariadb.proc else None
    port = mariadb.port

    mariadb.restart()

    assert mariadb.port == port
    assert mariadb.proc is not None and mariadb.proc.pid != old_pid
    # A connection from before the restart is dead: the server really went away.
    with pytest.raises(pymysql.err.OperationalError) as ei:
        old.ping(reconnect=False)
    assert _error_code(ei.value) in (2006, 2013)
    rows = mariadb.sql(f"SELECT token FROM `{APP_DB}`.infra_persist WHERE token = %s", (token,))
    assert rows == ((token,),)
    mariadb.sql(f"DROP TABLE `{APP_DB}`.infra_persist")


def test_stop_keeps_it_down_until_start(mariadb: MariaDB) -> None:
    mariadb.stop()
    assert not mariadb.running
    with pytest.raises(pymysql.err.OperationalError) as ei:
        mariadb.connect(connect_timeout=2)
    assert _error_code(ei.value) == 2003  # can't connect: nobody listens
    mariadb.start()
    assert mariadb.running
    assert mariadb.sql("SELECT 1") == ((1,),)


def test_max_user_connections_really_limits(mariadb: MariaDB) -> None:
    user = mariadb.make_user("infra_limited", "pw-1", max_user_connections=1)
    first = mariadb.connect(user=user, password="pw-1")
    try:
        assert count_backend_connections(mariadb, user) == 1
        with pytest.raises(pymysql.err.OperationalError) as ei:
            mariadb.connect(user=user, password="pw-1")
        assert _error_code(ei.value) == 1226
    finally:
        first.close()
    # make_user is idempotent: recreating without a limit lifts it.
    mariadb.make_user(user, "pw-2")
    conns = [mariadb.connect(user=user, password="pw-2") for _ in range(3)]
    try:
        assert count_backend_connections(mariadb, user) == 3
    finally:
        for c in conns:
            c.close()


def test_set_global_is_restored(mariadb: MariaDB) -> None:
    before = mariadb.sql("SELECT @@GLOBAL.wait_timeout")[0][0]
    mariadb.set_global("wait_timeout", 7)
    assert mariadb.sql("SELECT @@GLOBAL.wait_timeout")[0][0] == 7
    mariadb.restore_globals()
    assert mariadb.sql("SELECT @@GLOBAL.wait_timeout")[0][0] == before
    with pytest.raises(ValueError):
        mariadb.set_global("wait_timeout; DROP DATABASE appdb", 1)


def test_cli_helper_talks_to_the_server(mariadb: MariaDB) -> None:
    rc, out, err = run_cli(mariadb.port, "app", "app-secret", "SELECT 40 + 2, DATABASE()", database=APP_DB)
    assert (rc, out, err) == (0, "42\tappdb\n", "")
    rc, out, err = run_cli(mariadb.port, "app", "wrong", "SELECT 1")
    assert rc != 0
    assert "1045" in err


def test_config_merge_is_deep_and_does_not_alias() -> None:
    base = {"listen": {"host": "127.0.0.1", "port": 1}, "pool": {"max_connections": 5}}
    merged = _merge(base, {"pool": {"max_connections": 2}, "users": [{"user": "a"}]})
    assert merged == {
        "listen": {"host": "127.0.0.1", "port": 1},
        "pool": {"max_connections": 2},
        "users": [{"user": "a"}],
    }
    merged["listen"]["port"] = 9
    assert base["listen"]["port"] == 1
