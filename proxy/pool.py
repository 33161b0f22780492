"""The cap: leases, a FIFO queue of waiters, the idle set, reconnects, the adaptive cap.

Invariant: ``len(self.links) + self.opening <= self.cap`` at every await point,
whatever interleaving of acquires, releases, deaths and reloads happens. Slots
are counted before a connect starts, so concurrent openers cannot overshoot.

The pool knows nothing of SQL. Links are partitioned by ``key`` (whether the
link was opened with CLIENT_FOUND_ROWS, which changes what the server answers);
the cap is shared by all keys.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .backend import BackendLink, LinkLost
from .config import PoolConfig
from .mysql.constants import CAPACITY_ERRORS, Command
from .mysql.messages import ServerError
from .mysql.packets import ProtocolError

log = logging.getLogger("proxy.pool")

Connector = Callable[[bool, Callable[[BackendLink], None], float], Awaitable[BackendLink]]

# Seconds between upward probes after the server said the account is full.
PROBE_INTERVAL = 1.0


class PoolTimeout(Exception):
    """No link could be had within queue_timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class _Waiter:
    key: bool
    future: asyncio.Future[BackendLink | None]
    since: float = field(default_factory=time.monotonic)


@dataclass
class PoolStats:
    connects: int = 0
    connect_failures: int = 0
    capacity_refusals: int = 0
    links_died_idle: int = 0
    leases: int = 0
    queue_timeouts: int = 0
    max_open_seen: int = 0
    total_wait: float = 0.0


class Pool:
    def __init__(self, cfg: PoolConfig, connector: Connector) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._connector = connector
        self.links: set[BackendLink] = set()  # open links, idle or leased
        self.opening = 0
        self.idle: dict[bool, list[BackendLink]] = {False: [], True: []}
        self.waiters: deque[_Waiter] = deque()
        self.effective_cap = cfg.max_connections
        self.stats = PoolStats()
        self.last_connect_error: str | None = None
        self.server_version: str | None = None
        self.paused = False
        self._connect_slots = asyncio.Semaphore(cfg.max_concurrent_connects)
        self._backoff = 0.0
        self._last_probe = 0.0
        self.on_first_link: Callable[[BackendLink], Awaitable[None]] | None = None
        self._first_link_done = False

    # -- numbers ---------------------------------------------------------------

    @property
    def cap(self) -> int:
        return self.cfg.max_connections

    @property
    def total(self) -> int:
        return len(self.links) + self.opening

    def idle_count(self) -> int:
        return len(self.idle[False]) + len(self.idle[True])

    def snapshot(self) -> dict[str, int | float | str | None]:
        return {
            "pool": self.name,
            "cap": self.cap,
            "effective_cap": self.effective_cap,
            "open": len(self.links),
            "opening": self.opening,
            "idle": self.idle_count(),
            "in_use": len(self.links) - self.idle_count(),
            "waiting": len(self.waiters),
            "connects": self.stats.connects,
            "connect_failures": self.stats.connect_failures,
            "capacity_refusals": self.stats.capacity_refusals,
            "links_died_idle": self.stats.links_died_idle,
            "leases": self.stats.leases,
            "queue_timeouts": self.stats.queue_timeouts,
            "max_open_seen": self.stats.max_open_seen,
            "last_connect_error": self.last_connect_error,
        }

    # -- lease -------------------------------------------------------------------

    def try_acquire(self, key: bool) -> BackendLink | None:
        """The fast path: an idle link that needs no check, when nobody queues before us."""
        if self.waiters or self.paused:
            return None
        idle = self.idle[key]
        if not idle:
            return None
        link = idle[-1]
        ping_after = self.cfg.ping_after_idle
        if ping_after and time.monotonic() - link.last_used > ping_after:
            return None
        idle.pop()
        self.stats.leases += 1
        return link

    def take_back(self, link: BackendLink) -> BackendLink | None:
        """The given link, if it is idle (a session wants the link its last statement ran on)."""
        if self.waiters or self.paused or link.closed:
            return None
        idle = self.idle[link.found_rows]
        if link not in idle:
            return None
        idle.remove(link)
        self.stats.leases += 1
        return link

    async def acquire(self, key: bool) -> BackendLink:
        """A link for ``key``: idle, newly opened, or handed over after queueing FIFO."""
        start = time.monotonic()
        deadline = start + self.cfg.queue_timeout
        first_in_line = False  # a waiter woken for a free slot goes before the queue
        try:
            while True:
                may_go = (first_in_line or not self.waiters) and not self.paused
                first_in_line = False
                if may_go:
                    link = await self._take_idle(key)
                    if link is not None:
                        return link
                    if self.total < self.effective_cap:
                        link = await self._open(key, deadline)
                        if link is not None:
                            return link
                        continue
                    if self._evict_other_key(key):
                        first_in_line = True
                        continue
                link = await self._wait(key, deadline)
                if link is not None:
                    return link
                first_in_line = True
        finally:
            self.stats.total_wait += time.monotonic() - start

    async def _take_idle(self, key: bool) -> BackendLink | None:
        idle = self.idle[key]
        while idle:
            link = idle.pop()
            if link.closed:
                continue
            ping_after = self.cfg.ping_after_idle
            if ping_after and time.monotonic() - link.last_used > ping_after:
                try:
                    link.set_held()
                    await link.exchange([(Command.PING, b"")])
                except (LinkLost, ServerError, OSError) as e:
                    log.info("pool %s: idle link %d failed its ping (%s); replacing it", self.name, link.facts.thread_id, e)
                    self._drop(link)
                    continue
            self.stats.leases += 1
            return link
        return None

    async def _open(self, key: bool, deadline: float) -> BackendLink | None:
        """Open a new link under the cap, retrying with backoff while the server is down.

        The slot stays counted while retrying, so no more than the cap are ever
        connecting. None means: the server says the account is full; queue.
        """
        self.opening += 1
        link = None
        try:
            while True:
                try:
                    async with self._connect_slots:
                        timeout = max(0.05, min(self.cfg.connect_timeout, deadline - time.monotonic()))
                        link = await self._connector(key, self._idle_death, timeout)
                    break
                except ServerError as e:
                    self.stats.connect_failures += 1
                    self.last_connect_error = f"({e.code}) {e.message}"
                    if e.code in CAPACITY_ERRORS:
                        self.opening -= 1
                        self._capacity_refused(e)
                        self.opening += 1  # balanced by the finally below
                        return None  # queue; the janitor probes upward later
                    await self._back_off(deadline, e)
                except (OSError, LinkLost, asyncio.TimeoutError, ProtocolError) as e:
                    self.stats.connect_failures += 1
                    self.last_connect_error = str(e) or type(e).__name__
                    await self._back_off(deadline, e)
        finally:
            self.opening -= 1
            if link is None:
                self._wake_one()  # our slot is free again
        self._backoff = 0.0
        self.links.add(link)
        self.stats.connects += 1
        self.stats.max_open_seen = max(self.stats.max_open_seen, len(self.links))
        self.server_version = link.facts.server_version
        self.last_connect_error = None
        self.stats.leases += 1
        if not self._first_link_done and self.on_first_link is not None:
            self._first_link_done = True
            try:
                await self.on_first_link(link)
            except Exception as e:  # noqa: BLE001 - facts are optional; the link is what matters
                self._first_link_done = False
                log.warning("pool %s: could not read server facts: %s", self.name, e)
        return link

    def _capacity_refused(self, e: ServerError) -> None:
        self.stats.capacity_refusals += 1
        new_cap = max(len(self.links) + self.opening, 0)
        if new_cap < self.effective_cap:
            log.warning(
                "pool %s: server refused a new link (%d %s); lowering the effective cap from %d to %d "
                "(other clients of the account hold the rest); clients stay queued",
                self.name, e.code, e.message, self.effective_cap, new_cap,
            )
            self.effective_cap = new_cap
        self._last_probe = time.monotonic()

    async def _back_off(self, deadline: float, e: BaseException) -> None:
        """Capped exponential backoff with jitter while the server cannot be reached."""
        if self._backoff == 0.0:
            log.warning("pool %s: cannot connect to the server: %s; retrying with backoff", self.name, e)
        self._backoff = min(self.cfg.reconnect_backoff_max, max(0.05, self._backoff * 2))
        delay = min(self._backoff * random.uniform(0.5, 1.0), max(0.0, deadline - time.monotonic()))
        if delay > 0:
            await asyncio.sleep(delay)
        if time.monotonic() >= deadline:
            self.stats.queue_timeouts += 1
            raise PoolTimeout(
                f"mysql-pool-proxy: pool '{self.name}' could not open a connection to the server within "
                f"queue_timeout ({self.cfg.queue_timeout:g}s): {self.last_connect_error}"
            )

    def _evict_other_key(self, key: bool) -> bool:
        """The pool is full, the idle links are of the other kind: close one to make room."""
        other = self.idle[not key]
        if other and not self.idle[key]:
            link = other.pop(0)
            self._drop(link)
            return True
        return False

    async def _wait(self, key: bool, deadline: float) -> BackendLink | None:
        fut: asyncio.Future[BackendLink | None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(key, fut)
        self.waiters.append(waiter)
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError
            return await asyncio.wait_for(asyncio.shield(fut), remaining)
        except asyncio.TimeoutError:
            if fut.done() and not fut.cancelled() and fut.result() is not None:
                return fut.result()  # handed over just as the timer fired
            self.stats.queue_timeouts += 1
            raise PoolTimeout(self._timeout_message()) from None
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.result() is not None:
                self.release(fut.result())  # type: ignore[arg-type]
            raise
        finally:
            try:
                self.waiters.remove(waiter)
            except ValueError:
                pass

    def _timeout_message(self) -> str:
        why = f"; last connect error: {self.last_connect_error}" if self.last_connect_error else ""
        cap = f"{self.effective_cap} of {self.cap}" if self.effective_cap < self.cap else f"{self.cap}"
        return (
            f"mysql-pool-proxy: pool '{self.name}' is busy: all {cap} server connections in use, "
            f"{len(self.waiters)} clients waiting; gave up after queue_timeout ({self.cfg.queue_timeout:g}s){why}"
        )

    # -- return -------------------------------------------------------------------

    def release(self, link: BackendLink) -> None:
        """A client is done with a link in a known, clean state."""
        if link in self.idle[link.found_rows]:
            log.error("link %d was given back twice; ignoring the second time", link.facts.thread_id)
            return
        if link.closed or link not in self.links:
            self._drop(link)
            return
        link.set_idle()
        if self.total > self.effective_cap or self._retire_due(link):
            self._drop(link)
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if waiter.future.done():
                continue
            if waiter.key == link.found_rows:
                self.stats.leases += 1
                waiter.future.set_result(link)
                return
            # First in line wants the other kind: make room for it.
            self._drop(link)
            waiter.future.set_result(None)
            return
        self.idle[link.found_rows].append(link)

    def discard(self, link: BackendLink) -> None:
        """A link in unknown state or dead: close it, never reuse it."""
        self._drop(link)

    def _drop(self, link: BackendLink) -> None:
        for idle in self.idle.values():
            if link in idle:
                idle.remove(link)
        if link in self.links:
            self.links.discard(link)
            link.close(quit_first=not link.closed)
            self._wake_one()
        elif not link.closed:
            link.close()

    def _idle_death(self, link: BackendLink) -> None:
        self.stats.links_died_idle += 1
        log.info("pool %s: idle link %d was closed by the server; removed", self.name, link.facts.thread_id)
        self._drop(link)

    def _wake_one(self) -> None:
        """A slot came free: the first waiter may open a link."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_result(None)
                return

    def _retire_due(self, link: BackendLink) -> bool:
        life = self.cfg.max_lifetime
        return bool(life) and time.monotonic() - link.created > life

    # -- maintenance (the janitor calls this about once a second) ---------------------

    def maintain(self) -> None:
        now = time.monotonic()
        idle_limit = self.cfg.idle_timeout
        for idle in self.idle.values():
            for link in list(idle):
                if (idle_limit and now - link.last_used > idle_limit) or self._retire_due(link):
                    log.debug("pool %s: retiring idle link %d", self.name, link.facts.thread_id)
                    self._drop(link)
        if self.effective_cap < self.cap and now - self._last_probe >= PROBE_INTERVAL:
            # Probe upward: maybe the account's other users left.
            self._last_probe = now
            self.effective_cap += 1
            log.info("pool %s: probing a higher cap: %d of %d", self.name, self.effective_cap, self.cap)
            self._wake_one()

    def resize(self, cfg: PoolConfig) -> None:
        """Apply a reloaded pool config. A lower cap closes idle links; leased ones close on return."""
        self.cfg = cfg
        self.effective_cap = cfg.max_connections
        self._connect_slots = asyncio.Semaphore(cfg.max_concurrent_connects)
        for idle in self.idle.values():
            while idle and self.total > self.effective_cap:
                self._drop(idle.pop(0))
        for _ in range(max(0, self.effective_cap - self.total)):
            self._wake_one()

    def resume(self) -> None:
        """End a PAUSE: queued clients go on."""
        self.paused = False
        for _ in range(len(self.waiters)):
            self._wake_one()

    def close_all(self) -> None:
        for link in list(self.links):
            self._drop(link)
        for waiter in self.waiters:
            if not waiter.future.done():
                waiter.future.cancel()
