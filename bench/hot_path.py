"""Python CPU per query on the proxy's relay path, without sockets.

sysbench through the proxy measures everything at once: the kernel's loopback TCP, the
scheduler sharing two CPUs between three processes, the event loop and the proxy's own
Python. Their noise (a few percent from run to run) hides the Python part, which is the
part a change to ``proxy/`` moves. This drives the real ``ClientConnection``, ``Pool``
and ``BackendLink`` objects with in-memory transports: clients send point selects (text
protocol, or COM_STMT_EXECUTE with ``--ps``), more clients than links so most commands
queue as they do under sysbench, and each link answers with a captured-shape result set
(one column, one row). It prints microseconds of CPU per query: the best of 5 parts of the run.

    .venv/bin/python bench/hot_path.py                # 64 clients, pool 8, 200,000 queries
    .venv/bin/python bench/hot_path.py --ps --profile  # prepared statements, with cProfile's top 25
    .venv/bin/python bench/hot_path.py --ps --cache-metadata  # as sysbench's libmariadb talks to the proxy

No server is needed. The number is only comparable between runs on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy import config as config_mod  # noqa: E402
from proxy.backend import BackendLink  # noqa: E402
from proxy.frontend import _COMMAND, ClientConnection  # noqa: E402
from proxy.mysql.constants import KIND_CAPS, Cap, Command, Status  # noqa: E402
from proxy.mysql.messages import build_result_set  # noqa: E402
from proxy.mysql.packets import frame  # noqa: E402
from proxy.server import ProxyServer  # noqa: E402
from proxy.session import LinkState, Session  # noqa: E402

# The queries are timed in this many parts; the fastest part is reported (the least disturbed by
# whatever else the machine was doing).
REPEATS = 5
CLIENT_CAPS = Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.TRANSACTIONS | Cap.MULTI_RESULTS | Cap.PS_MULTI_RESULTS


class MemoryTransport:
    """Just enough of asyncio.Transport: remembers what was written."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def text_response(seq: int, caps: int) -> bytes:
    payloads = build_result_set(["c"], [["x" * 119]], Status.AUTOCOMMIT, caps)
    return b"".join(frame(p, seq + i) for i, p in enumerate(payloads))


def binary_response(seq: int, caps: int) -> bytes:
    # Column count, one definition, EOF, one binary row (header 0x00, null bitmap, lenenc string), EOF.
    # With metadata caching the server leaves the unchanged definition out: count (flag 0), EOF, row, EOF.
    text = build_result_set(["c"], [], Status.AUTOCOMMIT)
    row = b"\x00\x00" + bytes((119,)) + b"x" * 119
    payloads = text[:3] + [row] + text[3:]
    if caps & Cap.MARIADB_CACHE_METADATA:
        payloads = [payloads[0] + b"\x00"] + payloads[2:]
    return b"".join(frame(p, seq + i) for i, p in enumerate(payloads))


async def run(clients: int, pool_size: int, queries: int, ps: bool, profile: bool, caps: int) -> float:
    cfg = config_mod.parse({
        "listen": {"host": "127.0.0.1", "port": 1},
        "backend": {"host": "127.0.0.1", "port": 2, "user": "app", "password": "x"},
        "pool": {"max_connections": pool_size, "queue_timeout": 30},
    })
    server = ProxyServer(cfg)
    pool = server.first_upstream().pool
    links: list[tuple[BackendLink, MemoryTransport]] = []
    for _ in range(pool_size):
        link = BackendLink(kind=caps & KIND_CAPS)
        link.tracker.cache_metadata = bool(caps & Cap.MARIADB_CACHE_METADATA)
        t = MemoryTransport()
        link.connection_made(t)  # type: ignore[arg-type]
        link.state = LinkState(schema="sbtest")
        pool.links.add(link)
        pool.release(link)
        links.append((link, t))
    conns: list[tuple[ClientConnection, MemoryTransport]] = []
    for _ in range(clients):
        c = ClientConnection(server)
        t = MemoryTransport()
        c.connection_made(t)  # type: ignore[arg-type]
        if c._handshake_timer is not None:
            c._handshake_timer.cancel()
        c.session = Session(proxy_id=c.proxy_id, user="app", client_caps=caps, state=LinkState(schema="sbtest"))
        c._pool_kind = caps & KIND_CAPS  # as its login would set it
        c._phase = _COMMAND
        conns.append((c, t))

    if ps:
        # Each client prepares the statement once; links prepare it lazily (answered below).
        sql = b"SELECT c FROM sbtest1 WHERE id=?"
        prepare_ok = frame(b"\x00" + (1).to_bytes(4, "little") + b"\x01\x00\x01\x00\x00\x00\x00", 1)
        param = frame(build_result_set(["?"], [], 0)[1], 2) + frame(b"\xfe\x00\x00\x02\x00", 3)
        col = frame(build_result_set(["c"], [], 0)[1], 4) + frame(b"\xfe\x00\x00\x02\x00", 5)
        prepare_answer = prepare_ok + param + col
        for c, _t in conns:
            c.data_received(frame(bytes((Command.STMT_PREPARE,)) + sql, 0))
            await answer_links(links, prepare_answer)
        for c, t in conns:
            t.written.clear()
        # As libmysqlclient does: parameter types with a client's first execute, then only values.
        head = bytes((Command.STMT_EXECUTE,)) + (1).to_bytes(4, "little") + b"\x00\x01\x00\x00\x00\x00"
        first_request = frame(head + b"\x01\x03\x00" + (1234).to_bytes(4, "little"), 0)
        request = frame(head + b"\x00" + (1234).to_bytes(4, "little"), 0)
        for c, _t in conns:
            c.data_received(first_request)
            await answer_links(links, prepare_answer, binary_response(1, caps))
        for c, t in conns:
            t.written.clear()
        response = binary_response(1, caps)
    else:
        prepare_answer = b""
        request = frame(b"\x03SELECT c FROM sbtest1 WHERE id=5023", 0)
        response = text_response(1, caps)

    ready: deque[ClientConnection] = deque(c for c, _ in conns)
    prof = cProfile.Profile() if profile else None
    per_query = []
    for _ in range(REPEATS):
        answered = 0
        start = time.process_time()
        if prof:
            prof.enable()
        while answered < queries // REPEATS:
            # Every idle client sends its next query (most of them queue for a link) ...
            while ready:
                ready.popleft().data_received(request)
            # ... then every busy link answers, which hands it to the next queued client.
            for link, t in links:
                if t.written:
                    sent = t.written[0]
                    t.written.clear()
                    link.data_received(prepare_answer if sent[4] == Command.STMT_PREPARE else response)
            for c, t in conns:
                if t.written:
                    t.written.clear()
                    answered += 1
                    ready.append(c)
            await asyncio.sleep(0)  # let spawned slow-path tasks (lazy prepares) run
        if prof:
            prof.disable()
        per_query.append((time.process_time() - start) / answered * 1e6)
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    if pool.total > pool_size or pool.stats.max_open_seen > pool_size:
        raise SystemExit("the pool went over its cap")
    return min(per_query)  # the least disturbed of the runs


async def answer_links(links: list[tuple[BackendLink, MemoryTransport]], answer: bytes, other: bytes = b"") -> None:
    """Answer what the links were sent: COM_STMT_PREPARE with ``answer``, anything else with ``other``."""
    for _ in range(20):
        await asyncio.sleep(0)
        for link, t in links:
            if t.written:
                sent = t.written[0]
                t.written.clear()
                link.data_received(answer if sent[4] == Command.STMT_PREPARE or not other else other)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--pool", type=int, default=8)
    ap.add_argument("--queries", type=int, default=200_000)
    ap.add_argument("--ps", action="store_true", help="COM_STMT_EXECUTE instead of text queries")
    ap.add_argument("--profile", action="store_true", help="print cProfile's top functions (slows the run)")
    ap.add_argument("--cache-metadata", action="store_true",
                    help="clients and links with MariaDB's metadata caching, as sysbench (libmariadb) has them")
    args = ap.parse_args()
    caps = CLIENT_CAPS | (Cap.MARIADB_CACHE_METADATA if args.cache_metadata else 0)
    us = asyncio.run(run(args.clients, args.pool, args.queries, args.ps, args.profile, caps))
    kind = ("COM_STMT_EXECUTE" if args.ps else "COM_QUERY") + (", metadata caching" if args.cache_metadata else "")
    print(f"{kind}: {us:.2f} us of CPU per query ({args.clients} clients, pool {args.pool}, {args.queries} queries)")


if __name__ == "__main__":
    main()
