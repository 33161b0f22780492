"""The admin console: SHOW POOLS / CLIENTS / BACKENDS / STATS / CONFIG, RELOAD, PAUSE, RESUME.

An operator logs in with the admin user on the proxy's own port
(``mariadb -h127.0.0.1 -P3307 -uadmin -p``); statements are answered here, never
sent to the server. Each answer is a list of payloads for the frontend to frame (an
ERR payload for a statement it does not know).
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Protocol

from .config import BackendConfig
from .mysql.constants import Cap, Status
from .mysql.messages import OK, build_err, build_ok, build_result_set

if TYPE_CHECKING:
    from .config import Config
    from .frontend import ClientConnection, ClientStats
    from .pool import Pool
    from .upstream import Upstream

ER_PARSE_ERROR = 1064

HELP = ("SHOW POOLS | SHOW CLIENTS | SHOW BACKENDS | SHOW STATS | SHOW CONFIG | RELOAD | PAUSE [pool] | RESUME [pool]"
        " | RECONNECT [pool] | SHOW HELP")


class ConsoleContext(Protocol):
    """What the console reports on and acts on; ProxyServer (server.py) is the one."""

    config: Config
    upstreams: dict[str, Upstream]
    clients: dict[int, ClientConnection]
    clients_total: int
    client_stats: ClientStats

    def reload(self) -> None: ...


def _result(columns: list[str], rows: list[list[object]], caps: int, numeric: set[str] | None = None) -> list[bytes]:
    return build_result_set(columns, rows, Status.AUTOCOMMIT, caps, numeric)


def _ok(message: str, caps: int) -> list[bytes]:
    return [build_ok(OK(status=Status.AUTOCOMMIT, info=message.encode()), caps)]


def show_pools(server: ConsoleContext, caps: int) -> list[bytes]:
    snaps = []
    for upstream in server.upstreams.values():
        snap = upstream.pool.snapshot()
        snap["account_limit"] = upstream.account_limit  # the server's max_user_connections for the account
        snap["backend"] = f"{upstream.spec.backend.user}@{upstream.spec.backend.address}"
        snaps.append(snap)
    cols = list(snaps[0])
    numeric = {k for k, v in snaps[0].items() if isinstance(v, int)} | {"account_limit"}
    return _result(cols, [[snap[c] for c in cols] for snap in snaps], caps, numeric)


def show_clients(server: ConsoleContext, caps: int) -> list[bytes]:
    now = time.monotonic()
    rows: list[list[object]] = []
    for client in list(server.clients.values()):
        s = client.session
        pins = ", ".join(f"{reason} ({now - since:.1f}s)" for reason, since in s.pins.items()) if s else ""
        state = "login" if s is None else "active" if client.busy else "idle"
        link = client.link.facts.thread_id if client.link is not None else None
        tls = client.transport is not None and client.transport.get_extra_info("ssl_object") is not None
        rows.append([
            client.proxy_id, s.user if s else "", client.peer, state, pins or None, link,
            client.statements, s.multiplexed if s else 0, round(now - client.connected_at, 1), int(tls),
            client.upstream.name if s else None,
        ])
    cols = ["id", "user", "peer", "state", "pinned_for", "backend_thread", "statements", "links_returned", "connected_s",
            "tls", "pool"]
    return _result(cols, rows, caps, {"id", "backend_thread", "statements", "links_returned", "tls"})


def show_backends(server: ConsoleContext, caps: int) -> list[bytes]:
    now = time.monotonic()
    rows: list[list[object]] = []
    for pool in [u.pool for u in server.upstreams.values()]:
        idle = {id(link) for links in pool.idle.values() for link in links}
        rows += [[
            link.facts.thread_id, "idle" if id(link) in idle else "in use", link.leased_by,
            round(now - link.created, 1), round(now - link.last_used, 1), link.uses,
            int(bool(link.kind & Cap.FOUND_ROWS)), int(link.tracker.cache_metadata), int(link.tls), link.state.schema,
            pool.name,
        ] for link in list(pool.links)]
    cols = ["thread_id", "state", "client", "age_s", "idle_s", "statements", "found_rows", "cache_metadata", "tls", "schema",
            "pool"]
    return _result(cols, rows, caps, {"thread_id", "client", "statements", "found_rows", "cache_metadata", "tls"})


def show_stats(server: ConsoleContext, caps: int) -> list[bytes]:
    pools = [u.pool for u in server.upstreams.values()]

    def total(name: str) -> int | float:  # a pool counter summed over the pools (SHOW POOLS has each)
        return sum(getattr(p.stats, name) for p in pools)

    sessions = [c.session for c in server.clients.values() if c.session is not None]
    summed: list[list[object]] = [[name, total(name)] for name in (
        "connects", "connect_failures", "capacity_refusals", "links_died_idle", "leases", "queue_timeouts",
        "max_open_seen")]
    rows: list[list[object]] = [
        ["clients", len(server.clients)],
        ["clients_pinned", sum(1 for s in sessions if s.pinned)],
        ["clients_total", server.clients_total],
        ["statements_total", server.client_stats.statements_total(server.clients.values())],
        ["errors_total", sum(server.client_stats.errors.values())],
        *summed,
        ["wait_seconds_total", round(total("total_wait"), 3)],
    ]
    return _result(["name", "value"], rows, caps)


def show_config(server: ConsoleContext, caps: int) -> list[bytes]:
    cfg = server.config
    sections: list[tuple[str, object]] = [("listen", cfg.listen)]
    for spec in cfg.pools:  # keys as the file has them: backend.host, or pools.NAME.backend.host
        sections += [(f"{spec.key_prefix}backend", spec.backend), (f"{spec.key_prefix}pool", spec.pool)]
    rows: list[list[object]] = []
    for section, values in sections:
        for key, value in vars(values).items():
            if "password" in key:
                continue  # never show a secret
            rows.append([f"{section}.{key}", value])
        if isinstance(values, BackendConfig):
            rows.append([f"{section}.tls_mode", values.tls_mode])  # in force: backend.tls may be unset
    rows += [["max_allowed_packet", cfg.max_allowed_packet], ["shutdown_timeout", cfg.shutdown_timeout]]
    return _result(["key", "value"], rows, caps)


def _pause(pools: list[Pool]) -> str:
    for pool in pools:
        pool.paused = True
    return f"paused {', '.join(p.name for p in pools)}: new leases wait until RESUME"


def _resume(pools: list[Pool]) -> str:
    for pool in pools:
        pool.resume()
    return f"resumed {', '.join(p.name for p in pools)}"


def _reconnect(pools: list[Pool]) -> str:
    # After a failover behind a DNS name, or to pick up server-side changes to the account.
    counts = [f"{p.name} {p.retire_all()}" for p in pools]
    return f"reconnecting ({', '.join(counts)} links): idle links closed, lent ones close when they come back"


# Admin commands that act on every pool, or on the one named after them.
_POOL_VERBS = {"pause": _pause, "resume": _resume, "reconnect": _reconnect}

_COMMANDS = {
    "show pools": show_pools,
    "show clients": show_clients,
    "show backends": show_backends,
    "show stats": show_stats,
    "show config": show_config,
}


def execute(server: ConsoleContext, sql: str, caps: int) -> list[bytes]:
    """Answer one admin statement: a result set, an OK, or an ERR for anything else."""
    stmt = re.sub(r"\s+", " ", sql.strip().rstrip(";").strip()).lower()
    if stmt in _COMMANDS:
        return _COMMANDS[stmt](server, caps)
    if stmt == "reload":
        server.reload()
        return _ok("reloaded", caps)
    verb, _, name = stmt.partition(" ")
    if verb in _POOL_VERBS and " " not in name:
        name = sql.strip().rstrip(";").split()[1] if name else ""  # as written: pool names keep their case
        if name and name not in server.upstreams:
            return [build_err(ER_PARSE_ERROR, f"admin console: no pool named '{name}' (SHOW POOLS lists them)")]
        pools = [server.upstreams[name].pool] if name else [u.pool for u in server.upstreams.values()]
        return _ok(_POOL_VERBS[verb](pools), caps)
    if stmt in ("show help", "help"):
        return _result(["command"], [[c] for c in HELP.split(" | ")], caps)
    if stmt.startswith("set "):
        # Drivers set names / autocommit on connect; nothing here depends on them.
        return _ok("", caps)
    if stmt.startswith("select @@version_comment"):
        # The mariadb / mysql command-line clients ask this on connect.
        return _result(["@@version_comment"], [["mysql-pool-proxy admin console"]], caps)
    return [build_err(ER_PARSE_ERROR, f"admin console: unknown command; use one of: {HELP}")]
