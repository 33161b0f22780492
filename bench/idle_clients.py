"""Memory per idle client: open N logged-in client connections through the proxy, read its RSS.

    .venv/bin/python bench/idle_clients.py [-n 2000] [--batch 200]

Starts its own private MariaDB and a fresh proxy (both on 127.0.0.1, free ports, stopped at the
end), opens ``-n`` client connections that each complete the full handshake (greeting, login with
mysql_native_password, OK) and then sit idle, and reports the proxy's VmRSS from /proc/PID/status
before, with all clients connected, and after they closed, plus KB per idle client. The soft
``ulimit -n`` is raised as far as the hard limit allows (the proxy inherits it).

``measure()`` is also used by bench/run.py against a proxy it started.
"""

from __future__ import annotations

import argparse
import gc
import resource
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _server import BenchError, Proxy, describe_source, private_mariadb, proc_status_kb, proxy_source  # noqa: E402

from proxy.mysql.auth import native_scramble  # noqa: E402

USER, PASSWORD, DB = "bench", "bench-secret", "benchdb"

# LONG_PASSWORD | CONNECT_WITH_DB | PROTOCOL_41 | TRANSACTIONS | SECURE_CONNECTION | PLUGIN_AUTH
_CLIENT_CAPS = 0x1 | 0x8 | 0x200 | 0x2000 | 0x8000 | 0x80000


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise BenchError("connection closed during the handshake")
        buf += chunk
    return bytes(buf)


def _read_packet(s: socket.socket) -> tuple[int, bytes]:
    head = _recv_exact(s, 4)
    length = head[0] | head[1] << 8 | head[2] << 16
    return head[3], _recv_exact(s, length)


def _send_packet(s: socket.socket, seq: int, payload: bytes) -> None:
    s.sendall(struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload)


def _parse_greeting(p: bytes) -> tuple[bytes, str]:
    """(20-byte scramble, auth plugin name) from a protocol-10 greeting."""
    if p[0] != 10:
        raise BenchError(f"unexpected greeting: {p[:60]!r}")
    pos = p.index(b"\0", 1) + 1 + 4  # server version, connection id
    part1 = p[pos : pos + 8]
    pos += 8 + 1 + 2 + 1 + 2 + 2  # filler, caps low, charset, status, caps high
    auth_len = p[pos]
    pos += 1 + 10
    n2 = max(13, auth_len - 8)
    part2 = p[pos : pos + n2].rstrip(b"\0")
    pos += n2
    plugin = p[pos:].split(b"\0", 1)[0].decode() if pos < len(p) else "mysql_native_password"
    return part1 + part2[:12], plugin


def open_client(host: str, port: int, user: str, password: str, db: str | None, timeout: float = 30) -> socket.socket:
    """A socket logged in to ``host:port`` (full handshake done), ready for commands."""
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        _, greeting = _read_packet(s)
        scramble, plugin = _parse_greeting(greeting)
        caps = _CLIENT_CAPS if db else _CLIENT_CAPS & ~0x8
        auth = native_scramble(password, scramble)
        payload = struct.pack("<IIB", caps, 1 << 24, 45) + b"\0" * 23
        payload += user.encode() + b"\0" + bytes([len(auth)]) + auth
        if db:
            payload += db.encode() + b"\0"
        payload += b"mysql_native_password\0"
        _send_packet(s, 1, payload)
        seq, reply = _read_packet(s)
        if reply[:1] == b"\xfe":  # auth switch: answer with the scramble for the new data
            name, _, data = reply[1:].partition(b"\0")
            if name != b"mysql_native_password":
                raise BenchError(f"auth switch to {name.decode()!r} is not supported here")
            _send_packet(s, seq + 1, native_scramble(password, data.rstrip(b"\0")))
            seq, reply = _read_packet(s)
        if reply[:1] == b"\xff":
            code = struct.unpack_from("<H", reply, 1)[0]
            raise BenchError(f"login refused: error {code}: {reply[9:].decode(errors='replace')}")
        if reply[:1] != b"\x00":
            raise BenchError(f"unexpected login reply: {reply[:40]!r}")
        s.settimeout(None)
        return s
    except BaseException:
        s.close()
        raise


def raise_nofile(want: int) -> int:
    """Raise the soft RLIMIT_NOFILE to at least ``want`` if allowed; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    if hard != resource.RLIM_INFINITY and hard < want:
        try:  # root may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


@dataclass
class IdleResult:
    clients: int
    rss_before_kb: int
    rss_connected_kb: int
    rss_closed_kb: int
    hwm_kb: int
    open_seconds: float

    @property
    def kb_per_client(self) -> float:
        return (self.rss_connected_kb - self.rss_before_kb) / self.clients if self.clients else 0.0

    def lines(self) -> list[str]:
        mb = lambda kb: f"{kb / 1024:.1f} MB"  # noqa: E731
        return [
            f"idle clients             {self.clients} (opened in {self.open_seconds:.1f} s, "
            f"{self.clients / max(self.open_seconds, 1e-9):.0f} logins/s)",
            f"proxy RSS before         {mb(self.rss_before_kb)}",
            f"proxy RSS all connected  {mb(self.rss_connected_kb)}  (peak {mb(self.hwm_kb)})",
            f"proxy RSS after close    {mb(self.rss_closed_kb)}",
            f"per idle client          {self.kb_per_client:.1f} KB "
            f"(10,000 clients ~ {self.kb_per_client * 10000 / 1024:.0f} MB above the baseline)",
        ]


def _settle(pid: int, seconds: float = 1.0) -> int:
    time.sleep(seconds)
    return proc_status_kb(pid, "VmRSS")


def measure(host: str, port: int, pid: int, user: str, password: str, db: str | None, n: int,
            progress: bool = False) -> IdleResult:
    """Open ``n`` idle logged-in clients through the proxy at ``host:port`` (process ``pid``)."""
    before = _settle(pid)
    socks: list[socket.socket] = []
    t0 = time.monotonic()
    try:
        for i in range(n):
            socks.append(open_client(host, port, user, password, db))
            if progress and (i + 1) % 1000 == 0:
                print(f"  {i + 1} clients connected, proxy RSS {proc_status_kb(pid) / 1024:.1f} MB", flush=True)
        elapsed = time.monotonic() - t0
        connected = _settle(pid, 2.0)
        hwm = proc_status_kb(pid, "VmHWM")
    finally:
        for s in socks:
            s.close()
        socks.clear()
        gc.collect()
    closed = _settle(pid, 2.0)
    return IdleResult(n, before, connected, closed, hwm, elapsed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--clients", type=int, default=2000, help="idle clients to open (default 2000, up to 10000)")
    ap.add_argument("--pool", type=int, default=8, help="proxy pool max_connections (default 8)")
    ap.add_argument("--proxy-rev", metavar="REV",
                    help="run proxy/ as of this git revision (e.g. HEAD) instead of the working tree")
    args = ap.parse_args(argv)
    if not 1 <= args.clients <= 10000:
        ap.error("--clients must be between 1 and 10000")
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the server and the proxy.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    limit = raise_nofile(args.clients + 1024)
    if limit < args.clients + 100:
        print(f"ulimit -n is {limit}; too low for {args.clients} clients", file=sys.stderr)
        return 2
    try:
        with proxy_source(args.proxy_rev) as src, private_mariadb() as db:
            db.make_account(USER, PASSWORD, DB)
            extra = {"listen": {"max_client_connections": max(10000, args.clients + 100), "handshake_timeout": 30}}
            with Proxy(db, USER, PASSWORD, pool=args.pool, extra=extra, src_root=src) as proxy:
                print(f"MariaDB {db.version} on {db.host}:{db.port}; proxy pid {proxy.pid} on {proxy.host}:{proxy.port} "
                      f"({describe_source(args.proxy_rev)}); ulimit -n {limit}", flush=True)
                # One login first, so the baseline is taken from a proxy that has served a client.
                open_client(proxy.host, proxy.port, USER, PASSWORD, DB).close()
                res = measure(proxy.host, proxy.port, proxy.pid, USER, PASSWORD, DB, args.clients, progress=True)
                for line in res.lines():
                    print(line)
                problems = [ln for ln in proxy.log().splitlines() if " ERROR " in ln or "Traceback" in ln]
                if not proxy.alive:
                    problems.insert(0, f"proxy exited with code {proxy.proc.returncode}")  # type: ignore[union-attr]
                if problems:
                    print("proxy problems:\n  " + "\n  ".join(problems[:20]))
                    return 1
    except BenchError as e:
        print(f"idle_clients: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
