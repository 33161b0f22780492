"""Connection identity through the proxy: the ids a client knows, and accounts as walls.

Clients know the ids their greetings gave (CONNECTION_ID()); the server's thread ids serve every
client in turn. So KILL, SHOW PROCESSLIST and IS_USED_LOCK() must speak proxy ids, and one client
account must never see or kill another's connections, even when both are served by one server
account (``users:`` of one pool).
"""

from __future__ import annotations

import pymysql
import pytest

USERS = {"users": [{"user": "alice", "password": "alice-pw"}, {"user": "bob", "password": "bob-pw"}]}


@pytest.fixture
def two_accounts(proxy_factory):
    return proxy_factory({**USERS, "pool": {"max_connections": 3}})


def _as(p, user: str):
    return p.connect(user=user, password=f"{user}-pw")


def _scalar(conn, sql: str):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def test_processlist_shows_the_accounts_own_connections_under_proxy_ids(two_accounts) -> None:
    a1, a2, b = _as(two_accounts, "alice"), _as(two_accounts, "alice"), _as(two_accounts, "bob")
    with a1.cursor() as cur:
        cur.execute("SHOW FULL PROCESSLIST")
        rows = cur.fetchall()
    ids = {row[0] for row in rows}
    assert ids == {_scalar(a1, "SELECT CONNECTION_ID()"), _scalar(a2, "SELECT CONNECTION_ID()")}
    assert ids == {a1.thread_id(), a2.thread_id()}  # the ids the greetings gave
    assert b.thread_id() not in ids and {row[1] for row in rows} == {"alice"}
    mine = [row for row in rows if row[0] == a1.thread_id()][0]
    assert mine[4] == "Query" and mine[7] == "SHOW FULL PROCESSLIST"


def test_kill_only_within_the_account_and_only_plain(two_accounts) -> None:
    a, a_victim, b = _as(two_accounts, "alice"), _as(two_accounts, "alice"), _as(two_accounts, "bob")
    with pytest.raises(pymysql.err.OperationalError) as e, b.cursor() as cur:
        cur.execute(f"KILL {a_victim.thread_id()}")
    assert e.value.args[0] == 1095  # not owner of thread
    assert _scalar(a_victim, "SELECT 1") == 1
    for sql in (f"SELECT 1; KILL {a_victim.thread_id()}", "KILL USER alice", f"KILL ({a_victim.thread_id()})"):
        with pytest.raises(pymysql.MySQLError), a.cursor() as cur:
            cur.execute(sql)
        assert _scalar(a_victim, "SELECT 1") == 1, sql  # refused, never sent with a server id
    with a.cursor() as cur:
        cur.execute(f"KILL /* odd */ connection {a_victim.thread_id()}")
    with pytest.raises(pymysql.MySQLError):
        _scalar(a_victim, "SELECT 1")


def test_is_used_lock_names_the_holder_by_its_proxy_id(mariadb, proxy_factory) -> None:
    p = proxy_factory({"pool": {"max_connections": 3}})
    holder, other = p.connect(), p.connect()
    assert _scalar(holder, "SELECT GET_LOCK('identity_lock', 0)") == 1
    assert _scalar(holder, "SELECT IS_USED_LOCK('identity_lock') = CONNECTION_ID()") == 1
    assert _scalar(other, "SELECT IS_USED_LOCK('identity_lock')") == holder.thread_id()
    assert _scalar(other, "SELECT IS_USED_LOCK('no_such_lock')") is None
    # Unmapped, the server would answer the thread it holds the lock on, an id no client knows.
    server_thread = _scalar(holder, "SELECT @@pseudo_thread_id")
    assert server_thread != holder.thread_id()
    assert int(mariadb.sql("SELECT IS_USED_LOCK('identity_lock')")[0][0]) == server_thread


def test_information_schema_processlist_speaks_proxy_ids(two_accounts) -> None:
    a1, a2, b = _as(two_accounts, "alice"), _as(two_accounts, "alice"), _as(two_accounts, "bob")
    _scalar(a2, "SELECT GET_LOCK('processlist_pin', 0)")  # a2 holds its link: a server thread serves it now
    _scalar(b, "SELECT GET_LOCK('processlist_pin_b', 0)")  # so does bob's connection
    with a1.cursor() as cur:
        cur.execute("SELECT ID, USER, INFO FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()")
        own = cur.fetchall()
        cur.execute("SELECT p.ID FROM `information_schema`.`PROCESSLIST` p ORDER BY p.ID")
        ids = [row[0] for row in cur.fetchall()]
    assert len(own) == 1 and own[0][0] == a1.thread_id() and own[0][1] == "app"  # the server account's name
    assert ids == sorted([a1.thread_id(), a2.thread_id()])  # bob's thread is another account's: not shown
