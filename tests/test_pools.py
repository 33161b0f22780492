"""Several named pools (``pools:``): a client's user name picks its pool, and each pool keeps its own cap.

Two accounts on the private server, each behind a pool of its own, with the same database.
The server's PROCESSLIST tells which account a link logs in as, so it shows both that every
client was routed to its own pool and that each pool kept its own cap.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pymysql
import pytest
import yaml

from conftest import (APP_DB, REPO_ROOT, MariaDB, ProxyFactory, ProxyProcess, count_backend_connections, free_port,
                      run_cli)
from test_metrics import scrape, value
from test_session_features import _change_user
from proxy import config as config_mod

SHOP, SHOP_PW = "shop_app", "shop-secret"
BLOG, BLOG_PW = "blog_app", "blog-secret"
ADMIN = {"user": "pooladmin", "password": "pooladmin-pw"}


def two_pools(shop_cap: int = 2, blog_cap: int = 3) -> dict:
    return {
        "admin": ADMIN,
        "pools": {
            "shop": {"backend": {"user": SHOP, "password": SHOP_PW}, "pool": {"max_connections": shop_cap}},
            "blog": {"backend": {"user": BLOG, "password": BLOG_PW}, "pool": {"max_connections": blog_cap}},
        },
    }


@pytest.fixture
def accounts(mariadb: MariaDB):
    mariadb.make_user(SHOP, SHOP_PW)
    mariadb.make_user(BLOG, BLOG_PW)
    yield
    deadline = time.monotonic() + 5  # the next test counts these accounts' threads from zero
    while time.monotonic() < deadline and (count_backend_connections(mariadb, SHOP) or count_backend_connections(mariadb, BLOG)):
        time.sleep(0.05)


def admin_rows(p: ProxyProcess, sql: str) -> list[dict]:
    conn = p.connect(user=ADMIN["user"], password=ADMIN["password"], database=None)
    try:
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def current_user(conn: pymysql.connections.Connection) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        return str(cur.fetchone()[0]).split("@")[0]


def test_each_user_reaches_its_own_pool_and_each_pool_keeps_its_cap(
        mariadb: MariaDB, proxy_factory: ProxyFactory, accounts: None) -> None:
    p = proxy_factory(two_pools(shop_cap=2, blog_cap=3))
    peak = {SHOP: 0, BLOG: 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for user in peak:
                peak[user] = max(peak[user], count_backend_connections(mariadb, user))
            time.sleep(0.005)

    def client(user: str, password: str) -> list[str]:
        conn = p.connect(user=user, password=password)
        seen = []
        with conn.cursor() as cur:
            for i in range(10):
                cur.execute("SELECT CURRENT_USER(), SLEEP(0.005), %s", (i,))
                row = cur.fetchone()
                assert row[2] == i
                seen.append(str(row[0]).split("@")[0])
        conn.close()
        return seen

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(40) as ex:
            futures = [ex.submit(client, *(SHOP, SHOP_PW) if i % 2 else (BLOG, BLOG_PW)) for i in range(40)]
            results = [(i % 2, f.result()) for i, f in enumerate(futures)]
    finally:
        stop.set()
        sampler.join()
    for is_shop, seen in results:
        assert set(seen) == {SHOP if is_shop else BLOG}
    assert 1 <= peak[SHOP] <= 2, peak
    assert 1 <= peak[BLOG] <= 3, peak
    pools = {r["pool"]: r for r in admin_rows(p, "SHOW POOLS")}
    assert set(pools) == {"shop", "blog"}
    assert int(pools["shop"]["cap"]) == 2 and int(pools["blog"]["cap"]) == 3
    assert pools["shop"]["backend"] == f"{SHOP}@{mariadb.host}:{mariadb.port}"
    assert int(pools["shop"]["max_open_seen"]) <= 2 and int(pools["blog"]["max_open_seen"]) <= 3
    # 20 clients x 10 statements each, plus each pool's warm-up lease.
    assert int(pools["shop"]["leases"]) >= 200 and int(pools["blog"]["leases"]) >= 200


def test_a_password_opens_only_its_own_pool(proxy_factory: ProxyFactory, accounts: None) -> None:
    p = proxy_factory(two_pools())
    for user, password in ((SHOP, BLOG_PW), (BLOG, SHOP_PW), ("app", "app-secret"), ("nobody", SHOP_PW)):
        with pytest.raises(pymysql.err.OperationalError) as e:
            p.connect(user=user, password=password)
        assert e.value.args[0] == 1045, (user, e.value.args)
    # The mariadb command-line client, too.
    rc, out, err = run_cli(p.port, BLOG, BLOG_PW, "SELECT CURRENT_USER()", APP_DB)
    assert rc == 0 and out.strip().startswith(f"{BLOG}@"), (rc, out, err)


def test_admin_console_shows_and_pauses_each_pool(proxy_factory: ProxyFactory, accounts: None) -> None:
    p = proxy_factory(two_pools())
    shop, blog = p.connect(user=SHOP, password=SHOP_PW), p.connect(user=BLOG, password=BLOG_PW)
    assert current_user(shop) == SHOP and current_user(blog) == BLOG
    clients = {r["user"]: r["pool"] for r in admin_rows(p, "SHOW CLIENTS") if r["user"] in (SHOP, BLOG)}
    assert clients == {SHOP: "shop", BLOG: "blog"}
    backends = admin_rows(p, "SHOW BACKENDS")
    assert {r["pool"] for r in backends} == {"shop", "blog"}
    config = {r["key"]: r["value"] for r in admin_rows(p, "SHOW CONFIG")}
    assert config["pools.shop.backend.user"] == SHOP and config["pools.blog.pool.max_connections"] == "3"
    assert not any("password" in k for k in config)

    # PAUSE one pool: its clients wait, the other pool's go on.
    console = p.connect(user=ADMIN["user"], password=ADMIN["password"], database=None)
    with console.cursor() as cur:
        cur.execute("PAUSE shop")
    done = threading.Event()

    def shop_query() -> None:
        current_user(shop)
        done.set()

    t = threading.Thread(target=shop_query)
    t.start()
    assert current_user(blog) == BLOG
    time.sleep(0.3)
    assert not done.is_set(), "a statement of the paused pool ran"
    with console.cursor() as cur:
        cur.execute("RESUME shop")
    t.join(10)
    assert done.is_set()
    with console.cursor() as cur, pytest.raises(pymysql.err.ProgrammingError) as e:
        cur.execute("PAUSE nosuchpool")
    assert "no pool named 'nosuchpool'" in e.value.args[1]


def test_kill_reaches_only_the_clients_of_ones_own_pool(proxy_factory: ProxyFactory, accounts: None) -> None:
    p = proxy_factory(two_pools())
    shop, blog, shop2 = (p.connect(user=SHOP, password=SHOP_PW), p.connect(user=BLOG, password=BLOG_PW),
                         p.connect(user=SHOP, password=SHOP_PW))
    with blog.cursor() as cur, pytest.raises(pymysql.err.MySQLError) as e:
        cur.execute(f"KILL {shop.thread_id()}")
    assert e.value.args[0] == 1095
    assert current_user(shop) == SHOP  # untouched
    with shop2.cursor() as cur:
        cur.execute(f"KILL {shop.thread_id()}")
    with pytest.raises(pymysql.err.OperationalError):
        current_user(shop)


def test_reload_adds_and_removes_pools(mariadb: MariaDB, proxy_factory: ProxyFactory, accounts: None) -> None:
    cfg = two_pools()
    del cfg["pools"]["blog"]
    p = proxy_factory(cfg)
    with pytest.raises(pymysql.err.OperationalError):
        p.connect(user=BLOG, password=BLOG_PW)
    shop = p.connect(user=SHOP, password=SHOP_PW)

    p.rewrite_config(two_pools())
    p.reload()
    p.wait_log("new pool 'blog'")
    blog, other = p.connect(user=BLOG, password=BLOG_PW), p.connect(user=BLOG, password=BLOG_PW)
    with blog.cursor() as cur, other.cursor() as cur2:  # two links at once: one stays in a transaction
        cur.execute("BEGIN")
        cur.execute("SELECT 1")
        cur2.execute("BEGIN")
        cur2.execute("SELECT 1")
        cur2.execute("COMMIT")  # its link goes back to the pool, idle
    assert count_backend_connections(mariadb, BLOG) == 2

    p.config["pools"].pop("blog")
    p.rewrite_config({})
    p.reload()
    p.wait_log("pool 'blog' removed")
    with pytest.raises(pymysql.err.OperationalError) as e:
        p.connect(user=BLOG, password=BLOG_PW)
    assert e.value.args[0] == 1045
    # The idle link closes at once; the transaction's stays with its client.
    deadline = time.monotonic() + 5
    while count_backend_connections(mariadb, BLOG) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count_backend_connections(mariadb, BLOG) == 1, "a removed pool kept an idle link"
    # Clients that were there keep their sessions (and transactions) until they leave.
    assert current_user(blog) == BLOG and current_user(other) == BLOG
    with blog.cursor() as cur:
        cur.execute("COMMIT")
    blog.close()
    other.close()
    deadline = time.monotonic() + 5
    while count_backend_connections(mariadb, BLOG) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count_backend_connections(mariadb, BLOG) == 0, "the removed pool's links outlived its last client"
    assert current_user(shop) == SHOP
    assert {r["pool"] for r in admin_rows(p, "SHOW POOLS")} == {"shop"}
    assert "Traceback" not in p.log()


# --------------------------------------------------------------------------- config

def _multi(**over: object) -> dict:
    cfg: dict = {
        "backend": {"host": "db.internal", "port": 3306},
        "pool": {"queue_timeout": 7},
        "pools": {
            "shop": {"backend": {"user": SHOP, "password": SHOP_PW}, "pool": {"max_connections": 2}},
            "blog": {"backend": {"user": BLOG, "password": BLOG_PW, "port": 3307}},
        },
    }
    cfg.update(over)
    return cfg


def test_pools_inherit_the_top_level_sections_and_route_by_user(tmp_path) -> None:
    cfg = config_mod.parse(_multi())
    shop, blog = cfg.pools
    assert (shop.name, blog.name) == ("shop", "blog")
    assert shop.backend.host == blog.backend.host == "db.internal"  # inherited
    assert (shop.backend.port, blog.backend.port) == (3306, 3307)  # a pool's own key wins
    assert (shop.pool.max_connections, blog.pool.max_connections) == (2, 5)
    assert shop.pool.queue_timeout == blog.pool.queue_timeout == 7
    assert cfg.pool_of(BLOG) is blog and cfg.pool_of(SHOP) is shop
    assert cfg.client_password(BLOG) == BLOG_PW and cfg.client_password("nobody") is None
    # A pool's own password_file replaces a default password (and the other way round).
    pw_file = tmp_path / "pw"
    pw_file.write_text("from-file\n")
    pw_file.chmod(0o600)
    raw = _multi()
    raw["backend"]["password"] = "default-pw"
    raw["pools"]["blog"]["backend"] = {"user": BLOG, "password_file": str(pw_file)}
    raw["pools"]["shop"]["backend"].pop("password")
    shop, blog = config_mod.parse(raw).pools
    assert (shop.backend.password, blog.backend.password) == ("default-pw", "from-file")
    # Pools on one server account share its connection limit: said at check and at start.
    shared = _multi()
    shared["pools"]["blog"]["backend"] = {"user": SHOP, "password": SHOP_PW}
    shared["pools"]["blog"]["users"] = [{"user": BLOG, "password": BLOG_PW}]
    assert config_mod.parse(shared).warnings == (
        f"pools 'shop', 'blog' all log in as {SHOP}@db.internal:3306: together they may open 7 connections "
        "against that account's max_user_connections",)
    assert config_mod.parse(_multi()).warnings == ()
    # The single-pool form is one pool, named by pool.name.
    single = config_mod.parse({"backend": {"user": "app"}, "pool": {"name": "web"}})
    assert [p.name for p in single.pools] == ["web"] and single.pools[0].key_prefix == ""


BAD_POOL_CONFIGS = [
    (_multi(users=[{"user": "u"}]), "users", "each pool lists its own users"),
    (_multi(pools={}), "pools", "expected a mapping"),
    (_multi(pools={"a": {"backend": {"user": SHOP}}, "b": {"backend": {"user": SHOP}}}), "pools.b.users",
     "already logs in to pool 'a'"),
    (_multi(pools={"a": {"backend": {"user": SHOP}}, "b": {"backend": {"user": BLOG}, "users": [{"user": SHOP}]}}),
     "pools.b.users", "already logs in to pool 'a'"),
    (_multi(pools={"a": {"backend": {"user": SHOP}, "pool": {"name": "x"}}}), "pools.a.pool.name", "its key"),
    (_multi(pool={"name": "x"}), "pool.name", "its key under pools"),
    (_multi(pools={"a b": {"backend": {"user": SHOP}}}), "pools.a b", "a pool name is"),
    (_multi(pools={"a": {"backend": {"user": SHOP}, "pool": {"max_connections": 0}}}), "pools.a.pool.max_connections",
     "at least 1"),
    (_multi(pools={"a": {"backend": {"user": SHOP}, "pol": {}}}), "pools.a.pol", "unknown key"),
    (_multi(pools={"a": {"backend": {"host": "h"}}}, backend={}), "pools.a.backend.user", "required"),
    (_multi(backend={"port": "x"}), "backend.port", "expected an integer"),
    (_multi(admin={"user": BLOG, "password": "x"}), "admin.user", "pool 'blog'"),
]


@pytest.mark.parametrize(("raw", "key", "problem"), BAD_POOL_CONFIGS, ids=[case[1] for case in BAD_POOL_CONFIGS])
def test_pool_config_errors_name_the_key(raw: dict, key: str, problem: str) -> None:
    with pytest.raises(config_mod.ConfigError) as e:
        config_mod.parse(raw)
    assert str(e.value).startswith(f"{key}:") and problem in str(e.value), str(e.value)


def test_check_prints_every_pool(tmp_path) -> None:
    path = tmp_path / "pools.yaml"
    path.write_text(yaml.safe_dump(_multi()))
    r = subprocess.run([sys.executable, "-m", "proxy", "check", "-c", str(path)], capture_output=True, text=True,
                       timeout=30, cwd=REPO_ROOT)
    assert r.returncode == 0, r.stderr
    assert "pool 'shop'  at most 2" in r.stdout and "pool 'blog'  at most 5" in r.stdout, r.stdout
    assert f"log in as {BLOG} (the backend account)" in r.stdout
    assert SHOP_PW not in r.stdout + r.stderr


def test_metrics_have_a_series_per_pool(proxy_factory: ProxyFactory, accounts: None) -> None:
    port = free_port()
    p = proxy_factory({**two_pools(shop_cap=2, blog_cap=3), "metrics": {"port": port}})
    blog = p.connect(user=BLOG, password=BLOG_PW)
    for _ in range(5):
        current_user(blog)
    samples = scrape(port)
    assert value(samples, "max_connections", pool="shop") == 2
    assert value(samples, "max_connections", pool="blog") == 3
    assert value(samples, "leases_total", pool="blog") >= 5 + value(samples, "leases_total", pool="shop")
    for pool in ("shop", "blog"):
        assert value(samples, "backend_up", pool=pool) == 1


def test_greeting_offers_what_every_pools_server_offers() -> None:
    from proxy.mysql.constants import Cap
    from proxy.server import ProxyServer

    server = ProxyServer(config_mod.parse(_multi(backend={"host": "127.0.0.1"})))
    shop, blog = (server.upstreams[name].pool for name in ("shop", "blog"))
    shop.server_version, shop.server_caps = "10.11.9-MariaDB", Cap.MARIADB_CACHE_METADATA | Cap.PROTOCOL_41
    shop.server_collation = 8  # latin1_swedish_ci: a server without a character-set setting
    assert server.greeting_facts() == ("10.11.9-MariaDB", 0, 8)  # blog's server not reached yet: nothing extra
    blog.server_version, blog.server_caps = "8.0.36", Cap.PROTOCOL_41
    assert server.greeting_facts() == ("10.11.9-MariaDB", Cap.PROTOCOL_41, 8)
    blog.server_caps |= Cap.MARIADB_CACHE_METADATA
    assert server.greeting_facts()[1] & Cap.MARIADB_CACHE_METADATA
    assert server.route(BLOG) is server.upstreams["blog"] and server.route(SHOP) is server.upstreams["shop"]
    assert server.route("nobody") is None and server.first_upstream() is server.upstreams["shop"]


def test_change_user_moves_the_client_to_the_other_users_pool(proxy_factory: ProxyFactory, accounts: None) -> None:
    p = proxy_factory(two_pools())
    conn = p.connect(user=SHOP, password=SHOP_PW)
    with conn.cursor() as cur:
        cur.execute("SET @x = 1")  # pins the shop link to this client
    _change_user(conn, BLOG, BLOG_PW)
    assert current_user(conn) == BLOG
    rows = {int(r["id"]): r for r in admin_rows(p, "SHOW CLIENTS")}
    assert rows[conn.thread_id()]["pool"] == "blog" and rows[conn.thread_id()]["pinned_for"] is None
    pools = {r["pool"]: r for r in admin_rows(p, "SHOW POOLS")}
    assert int(pools["shop"]["in_use"]) == 0, "the shop link was not given back"
    with pytest.raises(pymysql.err.OperationalError) as e:
        _change_user(conn, SHOP, BLOG_PW)
    assert e.value.args[0] == 1045


# --------------------------------------------------------------------------- replacing links

def thread_of(conn: pymysql.connections.Connection) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT @@pseudo_thread_id")
        return int(cur.fetchone()[0])


def test_a_reload_to_another_account_lends_no_old_link_again(mariadb: MariaDB, proxy_factory: ProxyFactory,
                                                            accounts: None) -> None:
    clients = [{"user": "webapp", "password": "webapp-pw"}]
    p = proxy_factory({"backend": {"user": SHOP, "password": SHOP_PW}, "users": clients})
    in_tx, idle = p.connect(user="webapp", password="webapp-pw"), p.connect(user="webapp", password="webapp-pw")
    assert current_user(idle) == SHOP
    with in_tx.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT CURRENT_USER()")
    p.rewrite_config({"backend": {"user": BLOG, "password": BLOG_PW}})
    p.reload()
    p.wait_log("config reloaded")
    assert current_user(idle) == BLOG
    assert current_user(in_tx) == SHOP  # its transaction goes on where it started
    with in_tx.cursor() as cur:
        cur.execute("COMMIT")
    for _ in range(5):
        assert current_user(in_tx) == BLOG and current_user(idle) == BLOG
    deadline = time.monotonic() + 5
    while count_backend_connections(mariadb, SHOP) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert count_backend_connections(mariadb, SHOP) == 0, "a link of the old account was kept"


def test_reconnect_replaces_every_link_and_waits_for_lent_ones(proxy_factory: ProxyFactory) -> None:
    p = proxy_factory({"admin": ADMIN, "pool": {"max_connections": 2}})
    in_tx, other = p.connect(), p.connect()
    with in_tx.cursor() as cur:
        cur.execute("BEGIN")
    held = thread_of(in_tx)
    before = thread_of(other)
    console = p.connect(user=ADMIN["user"], password=ADMIN["password"], database=None)
    with console.cursor() as cur:
        cur.execute("RECONNECT")
        assert b"idle links closed" in console._result.message
    after = thread_of(other)
    assert after not in (before, held)
    assert thread_of(in_tx) == held  # the transaction keeps its link ...
    with in_tx.cursor() as cur:
        cur.execute("COMMIT")
    assert thread_of(in_tx) not in (held, before)  # ... which is not lent again
    with console.cursor() as cur, pytest.raises(pymysql.err.ProgrammingError):
        cur.execute("RECONNECT nosuchpool")
