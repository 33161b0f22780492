"""Prometheus metrics over HTTP (``metrics.port``): ``GET /metrics`` in the text exposition format.

Everything is read at scrape time from what the pool and the client connections count
anyway; the relay's only extra work is counting the error packets it passes on. Queue waits
are a sum and a count (and the oldest waiter's age), as PgBouncer reports them, not a
histogram: bucketing every lease cost 1.5% of the relay's Python per query.
The exposition itself is prometheus-client's (``generate_latest``); the HTTP side is a few
lines of asyncio on the proxy's own loop, so no thread ever reads state the loop is changing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, exposition, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from .config import MetricsConfig
    from .frontend import ClientConnection, ClientStats
    from .upstream import Upstream

log = logging.getLogger("proxy.metrics")

PREFIX = "mysql_pool_proxy_"
# The text format every Prometheus version reads; newer prometheus-client calls 1.0.0 its latest.
CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", CONTENT_TYPE_LATEST)
MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT = 5.0


class MetricsContext(Protocol):
    """What the metrics report on; ProxyServer (server.py) is the one."""

    upstreams: dict[str, Upstream]
    clients: dict[int, ClientConnection]
    client_stats: ClientStats
    clients_total: int


def families(ctx: MetricsContext) -> Iterator[Metric]:
    """Every metric, as prometheus-client families; those of a pool labelled with its name."""
    clients = list(ctx.clients.values())
    yield GaugeMetricFamily(PREFIX + "clients", "Client connections open now (logging in, idle or running a command)",
                            value=len(clients))
    yield GaugeMetricFamily(PREFIX + "clients_pinned",
                            "Clients holding a backend between statements (transaction, lock, ...)",
                            value=sum(1 for c in clients if c.session is not None and c.session.pinned))
    yield CounterMetricFamily(PREFIX + "clients_accepted", "Client connections accepted since start",
                              value=ctx.clients_total)
    yield CounterMetricFamily(PREFIX + "statements", "Commands clients sent that went to (or were meant for) the server",
                              value=ctx.client_stats.statements_total(clients))
    errors = CounterMetricFamily(PREFIX + "errors", "Error packets sent to clients, by MySQL error code",
                                 labels=["code"])
    for code, n in sorted(ctx.client_stats.errors.items()):
        errors.add_metric([str(code)], n)
    yield errors

    upstreams = list(ctx.upstreams.values())
    backends = GaugeMetricFamily(PREFIX + "backends", "Backend links by state", labels=["pool", "state"])
    for u in upstreams:
        pool = u.pool
        backends.add_metric([pool.name, "idle"], pool.idle_total)
        backends.add_metric([pool.name, "in_use"], len(pool.links) - pool.idle_total)
        backends.add_metric([pool.name, "opening"], pool.opening)
    yield backends

    def per_pool(family: type[GaugeMetricFamily | CounterMetricFamily], name: str, doc: str,
                 value: Callable[[Upstream], float | None]) -> Metric:
        m = family(PREFIX + name, doc, labels=["pool"])
        for u in upstreams:
            v = value(u)
            if v is not None:  # unknown (the account's limit before the server said it): no sample
                m.add_metric([u.name], v)
        return m

    def gauge(name: str, doc: str, value: Callable[[Upstream], float | None]) -> Metric:
        return per_pool(GaugeMetricFamily, name, doc, value)

    def counter(name: str, doc: str, value: Callable[[Upstream], float]) -> Metric:
        return per_pool(CounterMetricFamily, name, doc, value)

    yield gauge("max_connections", "The pool's cap on links (pool.max_connections)", lambda u: u.pool.cap)
    yield gauge("effective_max_connections", "The cap in force: lower while the server refuses links (1226/1040)",
                lambda u: u.pool.effective_cap)
    yield gauge("account_max_user_connections", "The backend account's connection limit, as the server reports it",
                lambda u: u.account_limit)
    yield gauge("waiting_clients", "Clients queued for a link now", lambda u: len(u.pool.waiters))
    yield gauge("backend_up", "1 while links can be opened (0 after a failed connect, until one succeeds)",
                lambda u: 0 if u.pool.last_connect_error else 1)
    yield counter("backend_connects", "Links opened", lambda u: u.pool.stats.connects)
    yield counter("backend_connect_failures", "Failed attempts to open a link", lambda u: u.pool.stats.connect_failures)
    yield counter("backend_capacity_refusals", "Connects the server refused as over a limit (1226, 1040)",
                  lambda u: u.pool.stats.capacity_refusals)
    yield counter("backends_died_idle", "Idle links the server closed (wait_timeout, KILL, restart)",
                  lambda u: u.pool.stats.links_died_idle)
    yield counter("leases", "Links lent to clients", lambda u: u.pool.stats.leases)
    yield counter("queued_leases", "Requests for a link that had to queue (all links busy)",
                  lambda u: u.pool.stats.queued_leases)
    yield counter("queue_wait_seconds", "Time queued requests waited, served or timed out (divide by "
                  "queued_leases_total for the mean)", lambda u: u.pool.stats.total_wait)
    yield gauge("oldest_waiter_seconds", "How long the first client in the queue has waited so far",
                lambda u: u.pool.loop.time() - u.pool.waiters[0][2] if u.pool.waiters else 0.0)
    yield counter("queue_timeouts", "Requests for a link that waited queue_timeout and got error 9001",
                  lambda u: u.pool.stats.queue_timeouts)


class _Collector:
    def __init__(self, ctx: MetricsContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        return families(self.ctx)


def render(ctx: MetricsContext) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(ctx))  # type: ignore[arg-type]
    return generate_latest(registry)


def answer(request_head: bytes, ctx: MetricsContext) -> tuple[int, bytes, str]:
    """(status, body, content type) for one HTTP request head."""
    line = request_head.split(b"\r\n", 1)[0].split()
    if len(line) != 3 or not line[2].startswith(b"HTTP/"):
        return 400, b"bad request\n", "text/plain"
    method, target = line[0], line[1].split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return 405, b"only GET\n", "text/plain"
    if target != b"/metrics":
        return 404, b"not found; the metrics are at /metrics\n", "text/plain"
    return 200, render(ctx), CONTENT_TYPE


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


async def start(ctx: MetricsContext, cfg: MetricsConfig) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            status, body, ctype = answer(head, ctx)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            log.info("metrics: no complete request from %s; closing", peer)
            writer.close()
            return
        if status != 200:
            log.info("metrics: answered %d to %s", status, peer)
        head_only = head.startswith(b"HEAD ")
        writer.write(
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + (b"" if head_only else body)
        )
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    return await asyncio.start_server(handle, cfg.host, cfg.port, limit=MAX_REQUEST_HEAD, reuse_address=True)
