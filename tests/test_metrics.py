"""Prometheus metrics (metrics.port): what /metrics says against what the server and the clients saw."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pymysql
import pytest
import yaml
from conftest import REPO_ROOT, APP_USER, MariaDB, ProxyFactory, ProxyProcess, count_backend_connections, free_port
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.parser import text_string_to_metric_families

P = "mysql_pool_proxy_"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == CONTENT_TYPE_PLAIN_0_0_4  # what every Prometheus version reads
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(P + name, tuple(sorted(labels.items())))]


@pytest.fixture
def metered(proxy_factory: ProxyFactory) -> tuple[ProxyProcess, int]:
    port = free_port()
    p = proxy_factory({"metrics": {"port": port}, "pool": {"max_connections": 2, "queue_timeout": 0.6}})
    return p, port


def test_counts_match_what_happened(metered: tuple[ProxyProcess, int], mariadb: MariaDB) -> None:
    p, port = metered
    conn = p.connect()
    before = scrape(port)
    with conn.cursor() as cur:
        for _ in range(7):
            cur.execute("SELECT 1")
        with pytest.raises(pymysql.err.ProgrammingError):
            cur.execute("SELEC 1")  # 1064 from the server
        with pytest.raises(pymysql.err.ProgrammingError):
            cur.execute("INSERT INTO no_such_table_xyz VALUES (1)")  # 1146
    after = scrape(port)
    assert value(after, "statements_total") - value(before, "statements_total") == 9
    assert value(after, "errors_total", code="1064") - before.get((P + "errors_total", (("code", "1064"),)), 0) == 1
    assert value(after, "errors_total", code="1146") - before.get((P + "errors_total", (("code", "1146"),)), 0) == 1
    assert value(after, "clients") == 1
    assert value(after, "max_connections", pool="main") == 2
    assert value(after, "backend_up", pool="main") == 1
    # The links it reports are the ones the server has for the account.
    open_links = sum(value(after, "backends", pool="main", state=s) for s in ("idle", "in_use", "opening"))
    assert open_links == count_backend_connections(mariadb, APP_USER) >= 1
    assert value(after, "backend_connects_total", pool="main") >= open_links


def test_queue_wait_and_timeout(metered: tuple[ProxyProcess, int]) -> None:
    p, port = metered
    holders = [p.connect() for _ in range(2)]
    waiter = p.connect()
    for h in holders:  # both links pinned in transactions
        with h.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("SELECT 1")
    with pytest.raises(pymysql.err.OperationalError) as info:
        with waiter.cursor() as cur:
            cur.execute("SELECT 1")  # waits queue_timeout (0.6 s), then 9001
    assert info.value.args[0] == 9001
    # A client that waits 0.3 s for a link, then gets it.
    done = threading.Event()

    def wait_for_link() -> None:
        with waiter.cursor() as cur:
            cur.execute("SELECT 1")
        done.set()

    t = threading.Thread(target=wait_for_link)
    t.start()
    time.sleep(0.3)
    waiting = scrape(port)
    assert value(waiting, "waiting_clients", pool="main") == 1
    assert 0.2 <= value(waiting, "oldest_waiter_seconds", pool="main") < 5
    holders[0].commit()
    t.join(10)
    assert done.is_set()
    s = scrape(port)
    assert value(s, "queue_timeouts_total", pool="main") == 1
    assert value(s, "errors_total", code="9001") == 1
    # Queued: the request that timed out and the one served after 0.3 s (the holders' statements
    # found idle links, or links being opened for them, and may have queued too, but briefly).
    assert value(s, "queued_leases_total", pool="main") >= 2
    assert 0.85 <= value(s, "queue_wait_seconds_total", pool="main") < 5
    assert value(s, "oldest_waiter_seconds", pool="main") == 0  # nobody waits now
    assert value(s, "waiting_clients", pool="main") == 0
    assert value(s, "clients_pinned") == 1  # holders[1] still in its transaction


def test_http_errors_and_garbage(metered: tuple[ProxyProcess, int]) -> None:
    p, port = metered
    for path, status in (("/", 404), ("/metricsx", 404)):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
        assert info.value.code == status
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 405
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x00\x01garbage\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /" + b"a" * 20000)  # a head over the limit: closed
        assert sock.recv(100) == b""
    assert value(scrape(port), "clients") == 0
    # The SQL side never noticed.
    with p.connect().cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_backend_down(proxy_factory: ProxyFactory) -> None:
    port = free_port()
    p = proxy_factory({"metrics": {"port": port}, "backend": {"port": free_port()},  # nobody listens there
                       "pool": {"queue_timeout": 0.5}})
    p.wait_log("cannot connect to the server")
    s = scrape(port)
    assert value(s, "backend_up", pool="main") == 0
    assert value(s, "backend_connect_failures_total", pool="main") >= 1
    assert value(s, "backends", pool="main", state="idle") == 0


def test_config(tmp_path: Path) -> None:
    def check(metrics: dict) -> subprocess.CompletedProcess[str]:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"listen": {"port": 3307}, "backend": {"user": "app"}, "metrics": metrics}))
        return subprocess.run([sys.executable, "-m", "proxy", "check", "-c", str(cfg)], capture_output=True,
                              text=True, timeout=30, cwd=REPO_ROOT)

    ok = check({"port": 9187})
    assert ok.returncode == 0 and "metrics     http://127.0.0.1:9187/metrics" in ok.stdout
    assert "metrics" not in check({}).stdout  # off unless a port is given
    same = check({"port": 3307})
    assert same.returncode == 2 and "metrics.port: must differ from listen.port" in same.stderr
    wide = check({"port": 9187, "host": "0.0.0.0"})
    assert wide.returncode == 0 and "metrics.host: 0.0.0.0 is not loopback" in wide.stdout
