"""No pool deadlock: an app that holds a transaction on one connection and needs a second.

Processes that each BEGIN and write on one connection, then open a second before they COMMIT
(MediaWiki's object cache, Django with two aliases ...), over a pool with fewer links than such
processes: every link ends up held by an idle transaction whose own process waits in the queue.
The proxy must break that within about stall_timeout, as a database breaks a deadlock: one
transaction is rolled back and its next statement gets 1213; nothing of it is stored; the others
commit exactly once; an app that retries on 1213 completes every request.
"""

from __future__ import annotations

import threading
import time

import pymysql
from conftest import APP_DB


def _request(p, i: int, outcome: dict[int, str], tries: int = 5) -> None:
    """One 'process': BEGIN and INSERT on its first connection, then a query on a second, then COMMIT."""
    for attempt in range(tries):
        first, second = p.connect(autocommit=False), None
        try:
            with first.cursor() as cur:
                cur.execute("INSERT INTO stall_rows (id, attempt) VALUES (%s, %s)", (i, attempt))
            second = p.connect()
            with second.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM stall_rows")
            first.commit()
            outcome[i] = f"committed on attempt {attempt}"
            return
        except pymysql.MySQLError as e:
            if e.args[0] != 1213:
                outcome[i] = f"error {e.args}"
                return
            try:
                first.rollback()
            except pymysql.MySQLError:
                pass
        finally:
            first.close()
            if second is not None:
                second.close()
    outcome[i] = "gave up"


def test_hold_and_wait_is_broken_fast_and_commits_once(mariadb, proxy_factory) -> None:
    mariadb.sql(f"DROP TABLE IF EXISTS {APP_DB}.stall_rows")
    mariadb.sql(f"CREATE TABLE {APP_DB}.stall_rows (id INT PRIMARY KEY, attempt INT)")
    p = proxy_factory({"admin": {"user": "admin", "password": "adminpw"},
                       "pool": {"max_connections": 2, "queue_timeout": 30, "stall_timeout": 1}})
    outcome: dict[int, str] = {}
    started = time.monotonic()
    threads = [threading.Thread(target=_request, args=(p, i, outcome)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - started
    assert outcome == {i: outcome[i] for i in range(4)} and all(v.startswith("committed") for v in outcome.values()), outcome
    rows = mariadb.sql(f"SELECT id, attempt FROM {APP_DB}.stall_rows ORDER BY id")
    assert [r[0] for r in rows] == [0, 1, 2, 3]  # each request's row exactly once
    assert [r[1] for r in rows] == [int(outcome[i].rsplit(" ", 1)[1]) for i in range(4)]  # the attempt that committed
    admin = pymysql.connect(host=p.host, port=p.port, user="admin", password="adminpw")
    with admin.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute("SHOW POOLS")
        broken = int(cur.fetchone()["stalls_broken"])
    admin.close()
    assert broken >= 1  # the load did stall (otherwise this test proves nothing)
    assert elapsed < 25, f"stalls were left to queue_timeout: {elapsed:.1f} s"  # far below the 30 s queue_timeout


def test_victim_holding_a_lock_is_closed_not_left_without_it(mariadb, proxy_factory) -> None:
    mariadb.sql(f"DROP TABLE IF EXISTS {APP_DB}.stall_rows")
    mariadb.sql(f"CREATE TABLE {APP_DB}.stall_rows (id INT PRIMARY KEY, attempt INT)")
    p = proxy_factory({"pool": {"max_connections": 1, "queue_timeout": 30, "stall_timeout": 1}})
    holder = p.connect(autocommit=False)
    with holder.cursor() as cur:
        cur.execute("SELECT GET_LOCK('stall_lock', 0)")
        cur.execute("INSERT INTO stall_rows VALUES (1, 0)")
    waiter = p.connect()
    with waiter.cursor() as cur:
        cur.execute("SELECT IS_FREE_LOCK('stall_lock'), (SELECT COUNT(*) FROM stall_rows)")
        assert cur.fetchone() == (1, 0)  # the lock was released and the insert rolled back with the victim
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT 1")
        raise AssertionError("the victim holding a named lock went on without it")
    except pymysql.MySQLError as e:
        assert e.args[0] in (1213, 2013), e.args  # the close's error, or the lost connection
