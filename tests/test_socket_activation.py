"""Socket activation (systemd/mysql-pool-proxy.socket): the proxy serves the listening sockets it is passed.

The test plays systemd: it binds the sockets, keeps them, and hands them to each proxy it
starts as file descriptors 3, 4 ... with LISTEN_FDS and LISTEN_PID. Because the sockets
outlive any one proxy, a client that connects while the proxy restarts waits in the
kernel's backlog and is served by the next one, where a bound port would refuse it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from conftest import APP_DB, APP_PASSWORD, APP_USER, REPO_ROOT, ProxyFactory, free_port, run_cli
from proxy.server import systemd_sockets


@pytest.fixture
def held_sockets(tmp_path: Path) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A TCP and a unix listening socket, held here as systemd would hold them."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(64)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(tmp_path / "activated.sock"))
    unix.listen(64)
    yield tcp, unix
    tcp.close()
    unix.close()


def query_user(conn: pymysql.connections.Connection) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        return str(cur.fetchone()[0])


def test_serves_the_passed_sockets_instead_of_binding(proxy_factory: ProxyFactory, held_sockets, tmp_path) -> None:
    tcp, unix = held_sockets
    configured = free_port()
    p = proxy_factory({"listen": {"port": configured, "unix_socket": str(tmp_path / "configured.sock")}},
                      wait=False, inherit=[tcp, unix])
    p.port = tcp.getsockname()[1]
    p.wait_ready()
    log = p.wait_log("(from systemd)")
    assert f"127.0.0.1:{p.port} and {tmp_path / 'activated.sock'} (from systemd)" in log
    assert query_user(p.connect()).startswith(f"{APP_USER}@")
    rc, out, err = run_cli(0, APP_USER, APP_PASSWORD, "SELECT 7", APP_DB, unix_socket=str(tmp_path / "activated.sock"))
    assert (rc, out.strip()) == (0, "7"), err
    # What the config names is not bound: systemd's sockets replace it.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", configured), timeout=2).close()
    assert not (tmp_path / "configured.sock").exists()


def test_a_client_that_connects_during_a_restart_is_served_by_the_next_proxy(
        proxy_factory: ProxyFactory, held_sockets) -> None:
    tcp, _unix = held_sockets
    first = proxy_factory(wait=False, inherit=[tcp])
    first.port = tcp.getsockname()[1]
    first.wait_ready()
    assert query_user(first.connect()).startswith(f"{APP_USER}@")
    first.close_clients()
    assert first.stop() == 0
    # No proxy runs now. The kernel still accepts into the socket's backlog.
    result: dict[str, object] = {}

    def late_client() -> None:
        try:
            conn = pymysql.connect(host="127.0.0.1", port=first.port, user=APP_USER, password=APP_PASSWORD,
                                   database=APP_DB, connect_timeout=30, read_timeout=30)
            result["user"] = query_user(conn)
            conn.close()
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    t = threading.Thread(target=late_client)
    t.start()
    t.join(0.5)
    assert t.is_alive() and not result, f"the client did not wait for the next proxy: {result}"
    second = proxy_factory(wait=False, inherit=[tcp])
    second.port = first.port
    t.join(30)
    assert "error" not in result, result.get("error")
    assert str(result.get("user", "")).startswith(f"{APP_USER}@")
    assert "(from systemd)" in second.log()


def test_sockets_meant_for_another_process_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2"}
    assert systemd_sockets(env) == []
    assert env["LISTEN_FDS"] == "2"  # not ours: not consumed either
    assert systemd_sockets({}) == []


def test_a_passed_descriptor_that_is_not_a_listening_socket_stops_the_start(tmp_path: Path) -> None:
    """A .socket unit with ListenDatagram= (or a stray fd) is a clear error at start, not a hang."""
    config = tmp_path / "c.yaml"
    config.write_text(f"listen: {{port: {free_port()}}}\nbackend: {{user: app, password: x}}\n")
    config.chmod(0o600)
    a, b = socket.socketpair()  # connected, not listening
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    script = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
              "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
              "os.execv(sys.executable, [sys.executable, '-m', 'proxy', 'run', '-c', sys.argv[2]])")
    r = subprocess.run([sys.executable, "-c", script, str(a.fileno()), str(config)], pass_fds=[a.fileno()],
                       capture_output=True, text=True, timeout=30, env=env)
    a.close()
    b.close()
    assert r.returncode == 1, r.stderr
    assert "file descriptor 3 is not a listening stream socket" in r.stderr
    assert "Traceback" not in r.stderr
