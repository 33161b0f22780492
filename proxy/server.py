"""Listeners, signals, the janitor loop, and what every client shares (the pools, ids, routing)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Coroutine, MutableMapping
from typing import Any

from . import admin
from . import config as config_mod
from . import tls
from .config import Config
from .frontend import STALL_VICTIM_PINS, ClientConnection, ClientStats
from .session import PIN_NEXT_STATEMENT, PIN_TRANSACTION
from .upstream import Upstream

log = logging.getLogger("proxy.server")

JANITOR_INTERVAL = 0.5


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message.encode(), addr)
    except OSError as e:
        log.debug("sd_notify failed: %s", e)


def _claim_socket_path(path: str) -> None:
    """Make way for our unix socket: a stale socket file goes, a live one or another file stays.

    A proxy (or mysqld) killed without cleaning up leaves its socket file behind; binding
    over a live one would silently take its clients, so that is an error instead.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: stale
        return
    except (BlockingIOError, TimeoutError):
        pass  # a listener whose queue is full is still a listener
    finally:
        probe.close()
    raise OSError(f"{path}: another process is listening on it")


# Socket activation: systemd passes listening sockets from this file descriptor on.
SD_LISTEN_FDS_START = 3


def systemd_sockets(environ: MutableMapping[str, str]) -> list[socket.socket]:
    """The listening sockets systemd passed (socket activation), or none.

    With a .socket unit, systemd holds the listening socket: while the proxy restarts,
    new clients wait in its backlog instead of being refused. The sockets are ours only when
    LISTEN_PID names this process. The variables are removed once read, as sd_listen_fds()
    does, so that nothing started later takes them for its own.
    """
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = environ.get("LISTEN_FDS", "0")
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(var, None)
    if not count.isdigit():
        raise OSError(f"socket activation: LISTEN_FDS={count!r} is not a number")
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise OSError(f"socket activation: file descriptor {fd} is not a socket ({e.strerror or e})") from None
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()
            raise OSError(f"socket activation: file descriptor {fd} is not a listening stream socket "
                          "(the .socket unit needs ListenStream=)")
        sockets.append(sock)
    return sockets


class ProxyServer:
    def __init__(self, cfg: Config, config_path: str | None = None) -> None:
        self.config = cfg
        self.config_path = config_path
        self.listen_tls = tls.listen_context(cfg.listen)
        # Contexts first: a certificate that does not load is a ConfigError before anything starts.
        contexts = [tls.backend_context(spec.backend) for spec in cfg.pools]
        self.upstreams: dict[str, Upstream] = {
            spec.name: Upstream(spec, ctx) for spec, ctx in zip(cfg.pools, contexts)
        }
        # Pools a reload removed: no new logins; closed once their last client has left.
        self._retired: list[Upstream] = []
        self.clients: dict[int, ClientConnection] = {}
        self.pending_logins = 0  # of those, not logged in yet (frontend.MAX_PENDING_LOGINS)
        self.client_stats = ClientStats()
        self._next_id = 0
        self.clients_total = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._socket_inode: int | None = None  # of listen.unix_socket's file, once we made it
        self._stopping = asyncio.Event()
        self._janitor: asyncio.Task[None] | None = None

    # -- shared services for client connections ----------------------------------

    def next_client_id(self) -> int:
        self._next_id += 1
        self.clients_total += 1
        return self._next_id

    def route(self, user: str) -> Upstream | None:
        """The pool a client logged in as ``user`` uses; None if no pool serves that name (now)."""
        spec = self.config.pool_of(user)
        return self.upstreams[spec.name] if spec is not None else None

    def first_upstream(self) -> Upstream:
        """The pool of a client that has not logged in yet, and of the admin console (which sends nothing)."""
        return next(iter(self.upstreams.values()))

    def greeting_facts(self) -> tuple[str | None, int, int]:
        """Server version, capabilities and default collation for a greeting, sent before the
        client names its user.

        The version and collation are the first pool's server's (a client that names no character
        set takes the greeting's, as it would straight). The capabilities are those every pool's
        server offered, so that whichever pool the login picks can honour what the greeting
        promised; a pool that has not reached its server yet offers nothing extra.
        """
        pools = [u.pool for u in self.upstreams.values()]
        caps = pools[0].server_caps
        for pool in pools[1:]:
            caps &= pool.server_caps
        return pools[0].server_version, caps, pools[0].server_collation

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a slow path as a task; keep a reference, log what it did not handle."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("internal error in a client task", exc_info=task.exception())

    def admin_statement(self, sql: str, caps: int) -> list[bytes]:
        """The admin console's answer to one statement (payloads to frame)."""
        return admin.execute(self, sql, caps)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        for w in cfg.warnings:
            log.warning("config: %s", w)
        # Metrics first: by the time clients can connect, what they do can be watched.
        if cfg.metrics.port:
            from . import metrics  # only then: prometheus-client's import costs memory a proxy without it need not

            try:
                self._servers.append(await metrics.start(self, cfg.metrics))
            except OSError as e:
                raise OSError(f"metrics {cfg.metrics.address}: {e.strerror or e}") from None
            log.info("metrics on http://%s/metrics", cfg.metrics.address)
        inherited = systemd_sockets(os.environ)
        if inherited:
            where = await self._serve_inherited(inherited)
        else:
            where = cfg.listen.address
            await self._bind(cfg.listen)
        for upstream in self.upstreams.values():
            spec = upstream.spec
            log.info("listening on %s; pool '%s' -> %s@%s, max_connections %d", where, spec.name,
                     spec.backend.user, spec.backend.address, spec.pool.max_connections)
            self.spawn(upstream.warm_up())
        self._janitor = loop.create_task(self._janitor_loop())

    async def _serve_inherited(self, sockets: list[socket.socket]) -> str:
        """Serve on the listening sockets systemd passed (socket activation); returns where, for the log."""
        loop = asyncio.get_running_loop()
        where = []
        for sock in sockets:
            sock.setblocking(False)
            if sock.family == socket.AF_UNIX:
                self._servers.append(await loop.create_unix_server(lambda: ClientConnection(self), sock=sock))
                where.append(str(sock.getsockname()))
            else:
                self._servers.append(await loop.create_server(lambda: ClientConnection(self), sock=sock))
                host, port = sock.getsockname()[:2]
                where.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        log.info("socket activation: serving the %d socket(s) systemd passed; listen.host, port and unix_socket "
                 "are not bound", len(sockets))
        return " and ".join(where) + " (from systemd)"

    async def _bind(self, listen: config_mod.ListenConfig) -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(lambda: ClientConnection(self), listen.host, listen.port,
                                       reuse_address=True, backlog=1024)
        self._servers.append(srv)
        path = listen.unix_socket
        if path:
            _claim_socket_path(path)
            try:
                self._servers.append(await loop.create_unix_server(lambda: ClientConnection(self), path, backlog=1024))
            except OSError as e:  # the bare errno text would not say which path (a missing directory, say)
                raise OSError(f"listen.unix_socket {path}: {e.strerror or e}") from None
            # Reachable by every local user, as mysqld's socket is (logins are checked all the
            # same); the service's umask (0077 in the unit) would leave it to the proxy's user.
            os.chmod(path, 0o777)
            self._socket_inode = os.stat(path).st_ino

    async def _janitor_loop(self) -> None:
        while True:
            await asyncio.sleep(JANITOR_INTERVAL)
            try:
                for upstream in self.upstreams.values():
                    upstream.pool.maintain()
                self._close_retired()
                now = time.monotonic()
                for client in list(self.clients.values()):
                    self._watch_client(client, now)
                for upstream in self.upstreams.values():
                    self._break_stall(upstream)
            except Exception:  # noqa: BLE001 - the janitor must outlive any one bad pass
                log.exception("janitor pass failed")

    def _break_stall(self, upstream: Upstream) -> None:
        """Every link held by a client idle while pinned, and clients waiting past stall_timeout:
        nothing moves until one of them gives its link up (an app holding a transaction while its
        own process waits for a second connection never will). Choose a victim as a database
        chooses a deadlock's: one holding only a transaction if any, the youngest transaction."""
        pool = upstream.pool
        timeout = upstream.spec.pool.stall_timeout
        if not timeout or not pool.waiters or pool.idle_total or pool.opening or pool.total < pool.effective_cap:
            return
        if asyncio.get_running_loop().time() - pool.waiters[0][2] < timeout:
            return
        holders = [c for c in self.clients.values() if c.upstream is upstream and c.link is not None]
        if len(holders) < len(pool.links) or any(c.busy or c.session is None or not c.session.pins for c in holders):
            return  # a link is busy or on its way back: it will free itself
        plain = [c for c in holders if set(c.session.pins) <= STALL_VICTIM_PINS]  # type: ignore[union-attr]
        victim = max(plain or holders, key=lambda c: max(c.session.pins.values()))  # type: ignore[union-attr]
        pool.stats.stalls_broken += 1
        self.spawn(victim.be_stall_victim(len(pool.waiters)))

    def _watch_client(self, client: ClientConnection, now: float) -> None:
        """The per-client time bounds: no client holds a link for nothing for long."""
        pool_cfg = client.upstream.spec.pool
        if client.write_stalled_since and pool_cfg.client_write_timeout and (
                now - client.write_stalled_since > pool_cfg.client_write_timeout):
            client.close_stalled_reader()
            return
        s = client.session
        if s is None or client.busy or not s.pins:
            return
        idle = now - client.idle_since
        if s.pins.keys() == {PIN_NEXT_STATEMENT}:
            # Kept only for a question about its last statement's warnings: not while others wait.
            if client.upstream.pool.waiters or (pool_cfg.pinned_idle_timeout and idle > pool_cfg.pinned_idle_timeout):
                self.spawn(client.give_up_diagnostics())
        elif pool_cfg.idle_transaction_timeout and PIN_TRANSACTION in s.pins and idle > pool_cfg.idle_transaction_timeout:
            self.spawn(client.end_idle_transaction())
        elif pool_cfg.pinned_idle_timeout and idle > pool_cfg.pinned_idle_timeout:
            client.close_idle_pinned()

    def reload(self) -> None:
        """SIGHUP: re-read the config; keep the old one if the new one is bad."""
        if not self.config_path:
            return
        try:
            new = config_mod.load(self.config_path)
            # Read again even when the config is unchanged: certificate files may have been renewed.
            contexts = [tls.backend_context(spec.backend) for spec in new.pools]
            new_listen_tls = tls.listen_context(new.listen)
        except config_mod.ConfigError as e:
            log.error("reload failed, keeping the running config: %s", e)
            return
        old = self.config
        if new.listen.address != old.listen.address:
            log.warning("reload: listen address changes need a restart; keeping %s", old.listen.address)
            new = config_mod.Config(**{**new.__dict__, "listen": old.listen})
        if new.metrics != old.metrics:
            log.warning("reload: metrics address changes need a restart; keeping %s",
                        old.metrics.address if old.metrics.port else "metrics off")
            new = config_mod.Config(**{**new.__dict__, "metrics": old.metrics})
        self.listen_tls = new_listen_tls  # for connections from now on
        self.config = new
        upstreams: dict[str, Upstream] = {}
        for spec, ctx in zip(new.pools, contexts):
            upstream = self.upstreams.pop(spec.name, None)
            if upstream is None:
                upstream = Upstream(spec, ctx)
                log.info("reload: new pool '%s' -> %s@%s", spec.name, spec.backend.user, spec.backend.address)
                self.spawn(upstream.warm_up())
            else:
                upstream.apply(spec, ctx)
            upstreams[spec.name] = upstream
        for gone in self.upstreams.values():
            log.info("reload: pool '%s' removed; its clients keep their sessions, its links close when they leave",
                     gone.name)
            self._retired.append(gone)
        self.upstreams = upstreams
        self._close_retired()
        logging.getLogger().setLevel(new.log_level.upper())
        caps = ", ".join(f"{u.spec.pool.max_connections}" + (f" ({u.name})" if len(upstreams) > 1 else "")
                         for u in upstreams.values())
        log.info("config reloaded: max_connections %s", caps)  # "3", or "2 (shop), 3 (blog)"
        sd_notify(f"STATUS=reloaded; max_connections {caps}")

    def _close_retired(self) -> None:
        """Close the links of removed pools: idle ones at once, the whole pool once no client uses it."""
        for upstream in list(self._retired):
            upstream.pool.retire_all()
            if not any(c.upstream is upstream for c in self.clients.values()):
                upstream.pool.close_all()
                self._retired.remove(upstream)

    async def drain(self) -> None:
        """SIGTERM: stop accepting, let open transactions finish, then close everything."""
        log.info("shutting down: no new clients; waiting up to %gs for open transactions", self.config.shutdown_timeout)
        sd_notify("STOPPING=1")
        for srv in self._servers:
            srv.close()
        self._remove_socket_file()
        deadline = time.monotonic() + self.config.shutdown_timeout
        while time.monotonic() < deadline:
            active = [c for c in self.clients.values() if c.busy or (c.session and c.session.pinned)]
            if not active:
                break
            await asyncio.sleep(0.05)
        for client in list(self.clients.values()):
            if client.transport is not None:
                client.transport.close()
        await asyncio.sleep(0)
        for upstream in [*self.upstreams.values(), *self._retired]:
            upstream.pool.close_all()
        if self._janitor:
            self._janitor.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0.05)
        log.info("stopped")

    def _remove_socket_file(self) -> None:
        """Remove our unix socket file, unless another process has put its own there since."""
        path = self.config.listen.unix_socket
        if not path or self._socket_inode is None:
            return
        try:
            if os.stat(path).st_ino == self._socket_inode:
                os.unlink(path)
        except OSError:
            pass
        self._socket_inode = None

    async def serve(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        loop.add_signal_handler(signal.SIGINT, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        sd_notify("READY=1")
        sd_notify(f"STATUS=serving on {self.config.listen.address}")
        await self._stopping.wait()
        await self.drain()
