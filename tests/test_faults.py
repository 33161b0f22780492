"""Backends that go away, a server that restarts, an account at its limit: the app never notices."""

from __future__ import annotations

import random
import signal
import socket
import threading
import time

import pymysql
import pytest

from conftest import APP_DB, SERVER, count_backend_connections, in_transaction

ER_SERVER_SHUTDOWN = 1053  # MySQL answers statements that run while it shuts down with it


def _proxy_thread_ids(mariadb, user: str = "app") -> set[int]:
    return {r[0] for r in mariadb.sql("SELECT ID FROM information_schema.PROCESSLIST WHERE USER=%s", (user,))}


def test_wait_timeout_expiry_is_invisible(mariadb, proxy_factory):
    """The server drops idle links after wait_timeout; the next query still works."""
    mariadb.set_global("wait_timeout", 2)
    p = proxy_factory({"pool": {"max_connections": 2, "ping_after_idle": 0}})
    conn = p.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
        time.sleep(4)  # the server's wait_timeout fires on the idle pooled link
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
    assert "was closed by the server" in p.log()


def test_killed_backend_between_queries(mariadb, proxy_factory):
    p = proxy_factory({"pool": {"max_connections": 1}})
    conn = p.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        killed = mariadb.kill_user_connections("app")
        assert killed == 1
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)


def test_killed_backend_just_before_query_is_retried(mariadb, proxy_factory):
    """A dead link noticed only when the statement is sent: retried once, invisibly."""
    # Ping and idle checks off, so the proxy lends the dead link and must retry.
    p = proxy_factory({"pool": {"max_connections": 1, "ping_after_idle": 0}})
    conn = p.connect()
    with conn.cursor() as cur:
        for i in range(5):
            cur.execute("SELECT %s", (i,))
            assert cur.fetchone() == (i,)
            mariadb.kill_user_connections("app")
    assert "Traceback" not in p.log()


def test_kill_inside_transaction_reports_lost_transaction(mariadb, proxy_factory):
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS {APP_DB}.tx_lost (id INT PRIMARY KEY)")
    mariadb.sql(f"DELETE FROM {APP_DB}.tx_lost")
    p = proxy_factory({"pool": {"max_connections": 2}})
    conn = p.connect()
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO tx_lost VALUES (1)")
        mariadb.kill_user_connections("app")
        time.sleep(0.2)
        with pytest.raises(pymysql.err.OperationalError) as e:
            cur.execute("INSERT INTO tx_lost VALUES (2)")
        assert e.value.args[0] == 2013
        assert "transaction was rolled back" in e.value.args[1]
        # Its other half must never commit alone: every statement fails until ROLLBACK (COMMIT too).
        for stmt in ("INSERT INTO tx_lost VALUES (3)", "COMMIT", "SELECT 1"):
            with pytest.raises(pymysql.err.OperationalError) as e:
                cur.execute(stmt)
            assert e.value.args[0] == 1927 and "send ROLLBACK" in e.value.args[1], stmt
        cur.execute("ROLLBACK")
        # The next statement starts clean, on a new link.
        cur.execute("SELECT COUNT(*) FROM tx_lost")
        assert cur.fetchone() == (0,)
        assert in_transaction(conn) == 0


def test_restart_under_load_loses_and_doubles_nothing(mariadb, proxy_factory):
    """20 clients loop reads and short write transactions while the server restarts."""
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS {APP_DB}.counter (id INT PRIMARY KEY, n INT NOT NULL)")
    mariadb.sql(f"REPLACE INTO {APP_DB}.counter VALUES (1, 0)")
    p = proxy_factory({"pool": {"max_connections": 5, "queue_timeout": 30, "reconnect_backoff_max": 0.5}})
    stop = threading.Event()
    committed = [0] * 20
    # COMMITs whose answer was lost: the server may have committed them before the link went
    # (a direct client has the same doubt). Each may or may not be in the counter.
    commit_unknown = [0] * 20
    failures: list[tuple[int, str]] = []
    recovered_at: dict[int, float] = {}  # client -> its first success after the restart
    restart_done = threading.Event()
    server_back = [0.0]

    def worker(i: int) -> None:
        conn = p.connect()
        cur = conn.cursor()
        rng = random.Random(i)
        while not stop.is_set():
            try:
                if rng.random() < 0.5:
                    cur.execute("SELECT n FROM counter WHERE id=1")
                    cur.fetchall()
                else:
                    cur.execute("BEGIN")
                    cur.execute("UPDATE counter SET n = n + 1 WHERE id=1")
                    try:
                        cur.execute("COMMIT")
                    except pymysql.err.OperationalError:
                        commit_unknown[i] += 1
                        raise
                    committed[i] += 1
                if restart_done.is_set() and i not in recovered_at:
                    recovered_at[i] = time.monotonic()
            except pymysql.err.OperationalError as e:
                failures.append((e.args[0], str(e.args[1])[:120]))
                try:
                    cur.execute("ROLLBACK")
                except pymysql.err.Error:
                    pass
            time.sleep(0.005)
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    mariadb.stop()
    time.sleep(1.5)
    mariadb.start()
    server_back[0] = time.monotonic()
    restart_done.set()
    time.sleep(3.0)
    stop.set()
    for t in threads:
        t.join(30)
    n = mariadb.sql(f"SELECT n FROM {APP_DB}.counter WHERE id=1")[0][0]
    # Nothing lost (every commit the client saw is there), nothing doubled (nothing beyond those
    # and the commits whose answer was lost).
    assert sum(committed) <= n <= sum(committed) + sum(commit_unknown), \
        f"counter {n}, commits seen {sum(committed)}, commits with a lost answer {sum(commit_unknown)}; failures {failures[:5]}"
    # Only statements in flight during the restart may fail, and only with "lost connection", or on
    # MySQL with the answer it gives statements running when it shuts down, as to a direct client.
    allowed = {2013, ER_SERVER_SHUTDOWN} if SERVER.mysql else {2013}
    assert all(code in allowed for code, _ in failures), failures[:5]
    assert len(failures) <= 20 * 3, failures[:5]
    # Every client works again within a second of the server answering.
    assert len(recovered_at) == 20
    recovery = max(recovered_at.values()) - server_back[0]
    print(f"all 20 clients recovered {recovery:.2f}s after the server answered; {len(failures)} statements failed")
    assert recovery < 1.0
    assert count_backend_connections(mariadb, "app") <= 5


def test_account_limit_is_back_pressure(mariadb, proxy_factory):
    """An account WITH MAX_USER_CONNECTIONS 3, 2 slots held outside: 30 clients all succeed."""
    mariadb.make_user("limited", "limited-pw", max_user_connections=3)
    outside = [mariadb.connect(user="limited", password="limited-pw") for _ in range(2)]
    p = proxy_factory({
        "backend": {"user": "limited", "password": "limited-pw"},
        "pool": {"max_connections": 5, "queue_timeout": 30},
    })
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            conn = p.connect(user="limited", password="limited-pw")
            with conn.cursor() as cur:
                for _ in range(5):
                    cur.execute("SELECT SLEEP(0.01), %s", (i,))
                    assert cur.fetchone()[1] == i
            conn.close()
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert count_backend_connections(mariadb, "limited") <= 3
    log = p.log()
    assert "lowering the effective cap" in log
    assert "exceeds the account's limit of 3" in log
    for c in outside:
        c.close()


def test_idle_transaction_timeout_frees_the_link(mariadb, proxy_factory):
    p = proxy_factory({"pool": {"max_connections": 1, "idle_transaction_timeout": 1, "queue_timeout": 10}})
    idle = p.connect()
    with idle.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT 1")
    other = p.connect()
    with other.cursor() as cur:
        t0 = time.monotonic()
        cur.execute("SELECT 2")  # waits for the single link until the janitor rolls the idle one back
        assert cur.fetchone() == (2,)
        assert time.monotonic() - t0 < 5
    with idle.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as e:
            cur.execute("SELECT 3")
        assert "idle_transaction_timeout" in e.value.args[1]
        with pytest.raises(pymysql.err.OperationalError):  # nothing runs alone after half a transaction
            cur.execute("SELECT 4")
        cur.execute("ROLLBACK")
        cur.execute("SELECT 4")
        assert cur.fetchone() == (4,)


def test_vanished_client_mid_transaction_frees_link(mariadb, proxy_factory):
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS {APP_DB}.vanish (id INT PRIMARY KEY)")
    mariadb.sql(f"DELETE FROM {APP_DB}.vanish")
    p = proxy_factory({"pool": {"max_connections": 1}})
    gone = p.connect()
    with gone.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO vanish VALUES (1)")
    gone._sock.shutdown(socket.SHUT_RDWR)  # vanish without COM_QUIT
    gone._sock.close()
    other = p.connect()
    with other.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM vanish")
        assert cur.fetchone() == (0,)  # rolled back, and the single link was handed on


def test_handshake_timeout_and_client_limit(mariadb, proxy_factory):
    p = proxy_factory({"listen": {"handshake_timeout": 0.5, "max_client_connections": 3}})
    silent = socket.create_connection((p.host, p.port))
    silent.settimeout(5)
    greeting = silent.recv(4096)
    assert greeting[4] == 10  # protocol 10 greeting
    # Say nothing: the proxy ends it with an error packet, then closes.
    rest = silent.recv(4096)
    assert rest[4] == 0xFF and b"timed out" in rest
    assert silent.recv(4096) == b""
    conns = [p.connect() for _ in range(3)]
    with pytest.raises(pymysql.err.OperationalError) as e:
        p.connect()
    assert e.value.args[0] == 1040
    for c in conns:
        c.close()


def test_sighup_changes_cap_with_clients_connected(mariadb, proxy_factory):
    p = proxy_factory({"pool": {"max_connections": 1, "queue_timeout": 20}})
    clients = [p.connect() for _ in range(6)]
    p.rewrite_config({"pool": {"max_connections": 3}})
    p.reload()
    p.wait_log("config reloaded: max_connections 3")
    seen = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.append(count_backend_connections(mariadb, "app"))
            time.sleep(0.01)

    def work(c) -> None:
        with c.cursor() as cur:
            cur.execute("SELECT SLEEP(0.5)")

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stop.set()
    sampler.join()
    assert max(seen) == 3  # the new cap is used, and never exceeded
    with clients[0].cursor() as cur:  # the clients connected before the reload still work
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_sighup_with_bad_config_keeps_running(mariadb, proxy_factory):
    p = proxy_factory()
    conn = p.connect()
    p.config_path.write_text("pool: {max_connections: -1}\n")
    p.reload()
    p.wait_log("reload failed, keeping the running config")
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_sigterm_lets_open_transaction_commit(mariadb, proxy_factory):
    mariadb.sql(f"CREATE TABLE IF NOT EXISTS {APP_DB}.drain (id INT PRIMARY KEY)")
    mariadb.sql(f"DELETE FROM {APP_DB}.drain")
    p = proxy_factory({"shutdown_timeout": 10})
    conn = p.connect()
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("INSERT INTO drain VALUES (1)")
        p.send_signal(signal.SIGTERM)
        p.wait_log("shutting down")
        time.sleep(0.3)
        assert p.returncode is None  # still draining: our transaction is open
        cur.execute("INSERT INTO drain VALUES (2)")
        cur.execute("COMMIT")
    assert p.wait_exit(10) == 0
    assert mariadb.sql(f"SELECT COUNT(*) FROM {APP_DB}.drain")[0][0] == 2


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_reader_keeps_proxy_memory_bounded(mariadb, proxy_factory):
    """A client that reads a 150 MB result slowly: the proxy pauses the server instead of buffering."""
    p = proxy_factory({"pool": {"max_connections": 2}}, log_level="info")
    conn = p.connect(cursorclass=pymysql.cursors.SSCursor)
    base = _rss_kb(p.pid)
    peak = base
    with conn.cursor() as cur:
        # 150,000 rows of 1 KB, generated by the server.
        cur.execute("SELECT seq, REPEAT('x', 1000) FROM seq_1_to_150000")
        n = 0
        for _row in cur:
            n += 1
            if n % 5000 == 0:
                time.sleep(0.05)  # a slow consumer
                peak = max(peak, _rss_kb(p.pid))
        assert n == 150000
    assert peak - base < 40 * 1024, f"proxy RSS grew by {(peak - base) // 1024} MB while relaying"
    other = p.connect()
    with other.cursor() as cur:  # and nobody else was held up
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def _admin_rows(p, statement: str) -> list[tuple]:
    conn = pymysql.connect(host=p.host, port=p.port, user="admin", password="admin-pw")
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return list(cur.fetchall())
    finally:
        conn.close()


def test_idle_and_old_links_are_retired_and_stale_ones_pinged(mariadb, proxy_factory):
    admin = {"user": "admin", "password": "admin-pw"}
    p = proxy_factory({"pool": {"max_connections": 2, "idle_timeout": 1, "ping_after_idle": 0}, "admin": admin})
    conn = p.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    assert count_backend_connections(mariadb, "app") >= 1
    deadline = time.monotonic() + 5
    while count_backend_connections(mariadb, "app") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert count_backend_connections(mariadb, "app") == 0  # the janitor closed the idle link
    with conn.cursor() as cur:  # and the client does not notice
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)

    q = proxy_factory({"pool": {"max_connections": 1, "max_lifetime": 1, "idle_timeout": 0, "ping_after_idle": 0},
                       "admin": admin})
    c = q.connect()
    with c.cursor() as cur:
        cur.execute("SELECT @@pseudo_thread_id")
        first = cur.fetchone()[0]
        time.sleep(1.5)
        cur.execute("SELECT 1")  # served by the old link, which is retired when it comes back
        cur.execute("SELECT @@pseudo_thread_id")
        assert cur.fetchone()[0] != first

    r = proxy_factory({"pool": {"max_connections": 1, "ping_after_idle": 0.3}, "admin": admin})
    c = r.connect()
    with c.cursor() as cur:
        cur.execute("SELECT 1")
    before = int(mariadb.sql("SHOW GLOBAL STATUS LIKE 'Com_admin_commands'")[0][1])
    time.sleep(0.6)
    with c.cursor() as cur:
        cur.execute("SELECT 2")  # the link sat idle past ping_after_idle: pinged before reuse
        assert cur.fetchone() == (2,)
    after = int(mariadb.sql("SHOW GLOBAL STATUS LIKE 'Com_admin_commands'")[0][1])
    assert after > before


def test_wait_timeout_not_above_idle_timeout_is_warned(mariadb, proxy_factory):
    mariadb.set_global("wait_timeout", 30)
    p = proxy_factory({"pool": {"idle_timeout": 60}})
    p.wait_log("is not below the server's wait_timeout 30s")


def test_systemd_notify_ready_reload_and_stopping(mariadb, tmp_path):
    """Type=notify: READY=1 once listening, STATUS= on reload, STOPPING=1 on SIGTERM."""
    import os
    import subprocess
    import sys

    import yaml

    from conftest import REPO_ROOT, free_port, proxy_defaults

    sock_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(sock_path)
    listener.settimeout(15)
    cfg = proxy_defaults(mariadb)
    cfg["listen"]["port"] = free_port()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "run", "-c", str(tmp_path / "c.yaml")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        messages = [listener.recv(4096).decode()]
        assert messages[0] == "READY=1"
        # Ready means ready: a client can log in right away.
        conn = pymysql.connect(host="127.0.0.1", port=cfg["listen"]["port"], user="app", password="app-secret")
        conn.close()
        proc.send_signal(signal.SIGHUP)
        while not any(m.startswith("STATUS=reloaded") for m in messages):
            messages.append(listener.recv(4096).decode())
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in messages:
            messages.append(listener.recv(4096).decode())
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
    assert b"Traceback" not in proc.stderr.read()
