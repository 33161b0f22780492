"""Listeners, signals, the janitor loop, and what every client shares (pool, ids, server facts)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import stat
import time
from collections.abc import Coroutine
from typing import Any

from . import admin
from . import config as config_mod
from . import tls
from .backend import BackendLink, LinkLost, open_link
from .config import Config
from .frontend import ClientConnection, ClientStats
from .mysql.constants import Command
from .mysql.messages import ServerError
from .pool import Pool, PoolTimeout
from .session import CHARSET_VARIABLES, PIN_TRANSACTION

log = logging.getLogger("proxy.server")

JANITOR_INTERVAL = 0.5
_GRANT_LIMIT = re.compile(r"MAX_USER_CONNECTIONS\s+(\d+)", re.I)


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


class ProxyServer:
    def __init__(self, cfg: Config, config_path: str | None = None) -> None:
        self.config = cfg
        self.config_path = config_path
        self.backend_tls = tls.backend_context(cfg.backend)  # raises ConfigError for a bad file
        self.listen_tls = tls.listen_context(cfg.listen)
        self.pool = Pool(cfg.pool, self._connect)
        self.pool.on_first_link = self._learn_server
        self.clients: dict[int, ClientConnection] = {}
        self.client_stats = ClientStats()
        self.known_schemas: set[str] = set()
        self.collations: dict[int, tuple[str, str]] = {}
        self.account_limit: int | None = None
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

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a slow path as a task; keep a reference, log what it did not handle."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("internal error in a client task", exc_info=task.exception())

    async def _connect(self, kind: int, on_idle_death: Any, timeout: float) -> BackendLink:
        return await open_link(self.config.backend, kind=kind, timeout=timeout, tls=self.backend_tls,
                               on_idle_death=on_idle_death)

    def admin_statement(self, sql: str, caps: int) -> list[bytes]:
        """The admin console's answer to one statement (payloads to frame)."""
        return admin.execute(self, sql, caps)

    def charset_variables(self, collation_id: int) -> dict[str, str]:
        """The character-set variables a client's handshake collation sets (as the server would)."""
        found = self.collations.get(collation_id) or self.collations.get(self.config.backend.collation)
        if found is None:
            return {}
        charset, collation = found
        return dict(zip(CHARSET_VARIABLES, (charset, charset, charset, collation)))

    async def _learn_server(self, link: BackendLink) -> None:
        """On the first link: collation ids, the account's connection limit."""
        link.set_held()
        collations, grants, limit = await link.exchange([
            (Command.QUERY, b"SELECT ID, CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLLATIONS"),
            (Command.QUERY, b"SHOW GRANTS"),
            (Command.QUERY, b"SELECT @@max_user_connections"),
        ])
        self.collations = {int(r[0] or 0): (r[1] or "", r[2] or "") for r in collations.rows()}
        limit_value = None
        for (grant,) in grants.rows():
            m = _GRANT_LIMIT.search(grant or "")
            if m and int(m.group(1)) > 0:
                limit_value = int(m.group(1))
        if limit_value is None:
            global_limit = int(limit.rows()[0][0] or 0)
            limit_value = global_limit or None
        self.account_limit = limit_value
        cap = self.config.pool.max_connections
        if limit_value is not None and cap > limit_value:
            log.warning(
                "pool %s: max_connections %d exceeds the account's limit of %d connections "
                "(max_user_connections); the proxy will hold at most what the server allows",
                self.pool.name, cap, limit_value,
            )
        if link.facts.wait_timeout and self.config.pool.idle_timeout >= link.facts.wait_timeout:
            log.warning(
                "pool %s: idle_timeout %gs is not below the server's wait_timeout %ds; "
                "the server will drop idle links first (they are replaced, but set idle_timeout lower)",
                self.pool.name, self.config.pool.idle_timeout, link.facts.wait_timeout,
            )

    async def kill_backend_thread(self, thread_id: int, query_only: bool) -> None:
        """KILL [QUERY] on the server, run on a pooled link (never outside the cap)."""
        try:
            link = await self.pool.acquire(False)
        except PoolTimeout as e:
            log.warning("KILL of thread %d not sent: %s", thread_id, e.message)
            return
        try:
            link.set_held()
            await link.exchange([(Command.QUERY, b"KILL %s%d" % (b"QUERY " if query_only else b"", thread_id))])
        except ServerError as e:
            log.info("KILL of thread %d: %s", thread_id, e.message)
        except (LinkLost, OSError):
            self.pool.discard(link)
            return
        self.pool.release(link)

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
        srv = await loop.create_server(lambda: ClientConnection(self), cfg.listen.host, cfg.listen.port,
                                       reuse_address=True, backlog=1024)
        self._servers.append(srv)
        path = cfg.listen.unix_socket
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
        log.info("listening on %s; pool '%s' -> %s@%s, max_connections %d", cfg.listen.address, self.pool.name,
                 cfg.backend.user, cfg.backend.address, cfg.pool.max_connections)
        self._janitor = loop.create_task(self._janitor_loop())
        self.spawn(self._warm_up())

    async def _warm_up(self) -> None:
        """Open one link at start: learn the server version for greetings and check the account."""
        try:
            link = await self.pool.acquire(False)
        except PoolTimeout as e:
            log.warning("server not reachable at start (%s); clients will queue until it is", e.message)
            return
        self.pool.release(link)

    async def _janitor_loop(self) -> None:
        while True:
            await asyncio.sleep(JANITOR_INTERVAL)
            try:
                self.pool.maintain()
                limit = self.config.pool.idle_transaction_timeout
                if limit:
                    now = time.monotonic()
                    for client in list(self.clients.values()):
                        s = client.session
                        if s is not None and not client.busy and PIN_TRANSACTION in s.pins and now - client.idle_since > limit:
                            self.spawn(client.end_idle_transaction())
            except Exception:  # noqa: BLE001 - the janitor must outlive any one bad pass
                log.exception("janitor pass failed")

    def reload(self) -> None:
        """SIGHUP: re-read the config; keep the old one if the new one is bad."""
        if not self.config_path:
            return
        try:
            new = config_mod.load(self.config_path)
            # Read again even when the config is unchanged: certificate files may have been renewed.
            new_tls = tls.backend_context(new.backend)
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
        self.backend_tls = new_tls
        self.listen_tls = new_listen_tls  # for connections from now on
        if new.backend != old.backend:
            # New credentials or address: links opened from now use them; idle old ones go.
            for idle in self.pool.idle.values():
                for link in list(idle):
                    self.pool.discard(link)
        self.config = new
        self.pool.resize(new.pool)
        logging.getLogger().setLevel(new.log_level.upper())
        log.info("config reloaded: max_connections %d, queue_timeout %gs", new.pool.max_connections, new.pool.queue_timeout)
        sd_notify(f"STATUS=reloaded; max_connections {new.pool.max_connections}")

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
        self.pool.close_all()
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
