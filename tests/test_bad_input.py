"""Bad input never hurts anyone else: malformed, oversized, out-of-order and random packets."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import APP_PASSWORD, APP_USER, count_backend_connections, recv_packet
from proxy.mysql import auth
from proxy.mysql.constants import Cap
from proxy.mysql.messages import HandshakeResponse, build_handshake_response, parse_handshake


def _packet(payload: bytes, seq: int) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes((seq,)) + payload


def _login(host: str, port: int) -> socket.socket:
    """A raw, authenticated client socket (mysql_native_password)."""
    sock = socket.create_connection((host, port), timeout=5)
    _seq, greeting = recv_packet(sock)
    hs = parse_handshake(greeting)
    caps = Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH | Cap.LONG_PASSWORD | Cap.CONNECT_WITH_DB
    resp = HandshakeResponse(caps, 1 << 24, 45, APP_USER, auth.native_scramble(APP_PASSWORD, hs.scramble), "appdb", auth.NATIVE)
    sock.sendall(_packet(build_handshake_response(resp), 1))
    _seq, ok = recv_packet(sock)
    assert ok[0] == 0, ok
    return sock


def _read_until_closed(sock: socket.socket, timeout: float = 3.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except TimeoutError:
        return data + b"<still open>"


def _assert_healthy(proxy) -> None:
    conn = proxy.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT 40 + 2")
        assert cur.fetchone() == (42,)
    conn.close()


@pytest.fixture
def small_packet_proxy(proxy_factory):
    return proxy_factory({"max_allowed_packet": 1 << 20})


def test_oversized_packet_gets_1153_and_close(small_packet_proxy):
    proxy = small_packet_proxy
    sock = _login(proxy.host, proxy.port)
    # Announce a 0xFFFFFF payload followed by more: far over max_allowed_packet (1 MiB here).
    sock.sendall(b"\xff\xff\xff\x00" + b"\x03" + b"x" * 1000)
    data = _read_until_closed(sock)
    assert data[4] == 0xFF and struct.unpack("<H", data[5:7])[0] == 1153, data[:80]
    assert not data.endswith(b"<still open>")
    _assert_healthy(proxy)


def test_out_of_order_command_is_refused(small_packet_proxy):
    sock = _login(small_packet_proxy.host, small_packet_proxy.port)
    sock.sendall(_packet(b"\x03SELECT 1", 5))
    data = _read_until_closed(sock)
    assert data[4] == 0xFF and struct.unpack("<H", data[5:7])[0] == 1156, data[:80]
    _assert_healthy(small_packet_proxy)


def test_truncated_handshake_and_garbage_before_login(small_packet_proxy):
    p = small_packet_proxy
    for junk in (b"\x01\x00\x00\x01\x00", b"\x05\x00\x00\x01abcde", b"GET / HTTP/1.1\r\n\r\n", b"\x00" * 64):
        sock = socket.create_connection((p.host, p.port), timeout=5)
        recv_packet(sock)
        sock.sendall(junk)
        data = _read_until_closed(sock, timeout=2.0)
        # Either a clear error packet and a close, or (for a packet still incomplete) silence
        # until our close; never a hang that outlives the handshake timeout.
        if data and not data.endswith(b"<still open>"):
            assert data[4] == 0xFF
        sock.close()
    _assert_healthy(p)


_blobs = st.one_of(
    st.binary(max_size=64),
    st.tuples(st.integers(0, 255), st.binary(max_size=40)).map(lambda t: _packet(t[1], t[0])),
    st.binary(min_size=1, max_size=40).map(lambda b: _packet(b, 0)),  # well-framed random commands
)


def test_fuzz_random_packets_leave_daemon_and_pool_intact(proxy_factory, mariadb):
    """Thousands of random inputs before and after login; then the daemon serves and no link leaked."""
    p = proxy_factory({"max_allowed_packet": 1 << 20, "listen": {"handshake_timeout": 1}}, log_level="info")

    @settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(stage=st.sampled_from(["greeting", "command"]), blob=_blobs)
    def fuzz(stage: str, blob: bytes) -> None:
        if stage == "greeting":
            sock = socket.create_connection((p.host, p.port), timeout=5)
            recv_packet(sock)
        else:
            sock = _login(p.host, p.port)
        try:
            sock.sendall(blob)
            sock.settimeout(0.02)
            try:
                sock.recv(65536)
            except (TimeoutError, ConnectionError):
                pass
        finally:
            sock.close()

    fuzz()
    conns = [p.connect() for _ in range(5)]
    for c in conns:
        with c.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    for c in conns:
        c.close()
    # Links the proxy holds are links the server sees, never beyond the cap.
    assert 1 <= count_backend_connections(mariadb, "app") <= 5
    assert "internal error" not in p.log()
    assert p.returncode is None


class _CorruptingForwarder:
    """A TCP forwarder between proxy and server that can replace a response with garbage."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.corrupt = threading.Event()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_server and self.corrupt.is_set():
                    self.corrupt.clear()
                    data = b"\x07\x00\x00\x01\xfe\xfd\xfc\x00garbage-from-server" + bytes(range(256))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self.listener.close()


def test_garbage_from_backend_ends_only_that_command(mariadb, proxy_factory):
    fwd = _CorruptingForwarder((mariadb.host, mariadb.port))
    try:
        p = proxy_factory({"backend": {"port": fwd.port}, "pool": {"max_connections": 2}})
        bystander = p.connect()
        victim = p.connect()
        with victim.cursor() as cur:
            cur.execute("SELECT 1")
            fwd.corrupt.set()
            with pytest.raises(pymysql.err.OperationalError) as e:
                cur.execute("SELECT 2")
            assert e.value.args[0] == 2013
            cur.execute("SELECT 3")  # a fresh link serves the next statement
            assert cur.fetchone() == (3,)
        with bystander.cursor() as cur:
            cur.execute("SELECT 4")
            assert cur.fetchone() == (4,)
        assert count_backend_connections(mariadb, "app") <= 2
    finally:
        fwd.close()
