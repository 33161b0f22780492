"""The cap: leases, a FIFO queue of waiters, the idle set, reconnects, the adaptive cap.

Invariant: ``len(self.links) + self.opening <= self.effective_cap <= self.cap``
(a lowered cap is reached as leased links come back), whatever interleaving of
leases, releases, deaths and reloads happens. A slot is counted before its
connect starts, so openers cannot overshoot.

Leasing is callback-based, like PgBouncer's pooler: ``lease`` hands over an
idle link at once or queues the caller's callback. Openers are tasks that
belong to the pool, not to a client: they open a link and give it to the first
waiter, retrying with capped backoff while the server is down and anyone
waits. A waiter whose ``queue_timeout`` passes gets a PoolTimeout through its
callback. So a queued command costs one deque entry: no task, no timer of its own.

The pool knows nothing of SQL. Links are partitioned by ``kind``: the client
capabilities a link was opened with that change what the server answers
(KIND_CAPS: CLIENT_FOUND_ROWS, MariaDB's metadata caching); the cap is shared by all kinds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .backend import BackendLink, LinkLost
from .config import PoolConfig
from .mysql.constants import CAPACITY_ERRORS, Command
from .mysql.messages import ServerError
from .mysql.packets import ProtocolError

log = logging.getLogger("proxy.pool")

Connector = Callable[[int, Callable[[BackendLink], None], float], Awaitable[BackendLink]]
# Called once per lease that had to wait: (link, None) or (None, PoolTimeout).
LeaseCallback = Callable[["BackendLink | None", "PoolTimeout | None"], None]

# Seconds between upward probes after the server said the account is full.
PROBE_INTERVAL = 1.0


class PoolTimeout(Exception):
    """No link could be had within queue_timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# A queued lease: (kind, callback, since), ``since`` in event-loop time. A plain tuple: one
# is made for every command that queues, and an instance of a class costs several times more.
# A client has one waiter at a time, so no two queued waiters are equal.
Waiter = tuple[int, LeaseCallback, float]


@dataclass
class PoolStats:
    connects: int = 0
    connect_failures: int = 0
    capacity_refusals: int = 0
    links_died_idle: int = 0
    leases: int = 0
    queued_leases: int = 0
    queue_timeouts: int = 0
    max_open_seen: int = 0
    stalls_broken: int = 0  # every link held by an idle pinned client while others waited: a victim was chosen
    total_wait: float = 0.0  # of requests served from the queue and of those that timed out there


@dataclass(eq=False)
class Pool:
    cfg: PoolConfig
    _connector: Connector
    links: set[BackendLink] = field(default_factory=set)  # open links, idle or leased
    opening: int = 0
    idle: dict[int, list[BackendLink]] = field(default_factory=dict)  # by kind
    # Links in the idle lists, counted where ``link.in_pool`` changes: a queued lease asks
    # whether there are any, and summing the lists each time costs more than the lease.
    idle_total: int = 0
    waiters: deque[Waiter] = field(default_factory=deque)
    stats: PoolStats = field(default_factory=PoolStats)
    last_connect_error: str | None = None
    server_version: str | None = None
    server_caps: int = 0  # the server's capabilities, as its last greeting offered them
    server_collation: int = 0  # its default collation, as its last greeting named it (0: not known yet)
    paused: bool = False
    on_first_link: Callable[[BackendLink], Awaitable[None]] | None = None
    effective_cap: int = 0
    _backoff: float = 0.0
    _last_probe: float = 0.0
    _first_link_done: bool = False
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    # One timer for the queue's head: every waiter has the same queue_timeout, so
    # deadlines grow along the FIFO and the head's is always the next to fire.
    _timer: asyncio.TimerHandle | None = None
    # The loop the pool lives in, looked up once: asyncio.get_running_loop() costs a
    # getpid() system call on Python 3.11, twice per queued lease otherwise.
    _loop: asyncio.AbstractEventLoop | None = None

    def __post_init__(self) -> None:
        self.effective_cap = self.cfg.max_connections

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    # -- numbers ---------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def cap(self) -> int:
        return self.cfg.max_connections

    @property
    def total(self) -> int:
        return len(self.links) + self.opening


    def snapshot(self) -> dict[str, int | float | str | None]:
        return {
            "pool": self.name,
            "cap": self.cap,
            "effective_cap": self.effective_cap,
            "open": len(self.links),
            "opening": self.opening,
            "idle": self.idle_total,
            "in_use": len(self.links) - self.idle_total,
            "waiting": len(self.waiters),
            "connects": self.stats.connects,
            "connect_failures": self.stats.connect_failures,
            "capacity_refusals": self.stats.capacity_refusals,
            "stalls_broken": self.stats.stalls_broken,
            "links_died_idle": self.stats.links_died_idle,
            "leases": self.stats.leases,
            "queued_leases": self.stats.queued_leases,
            "queue_timeouts": self.stats.queue_timeouts,
            "max_open_seen": self.stats.max_open_seen,
            "last_connect_error": self.last_connect_error,
        }

    # -- lease ---------------------------------------------------------------------

    def lease(self, kind: int, callback: LeaseCallback) -> BackendLink | Waiter:
        """An idle link of ``kind`` now, or a Waiter whose callback gets one (or a timeout) later."""
        if not self.waiters and not self.paused:
            idle = self.idle.get(kind)
            if idle:
                link = idle[-1]
                ping_after = self.cfg.ping_after_idle
                if not ping_after or time.monotonic() - link.last_used <= ping_after:
                    idle.pop()
                    link.in_pool = False
                    self.idle_total -= 1
                    self.stats.leases += 1
                    return link
        loop = self._loop or self.loop
        since = loop.time()
        waiter = (kind, callback, since)
        self.waiters.append(waiter)
        self.stats.queued_leases += 1
        if self._timer is None:
            self._timer = loop.call_at(since + self.cfg.queue_timeout, self._expire_due)
        # The usual queued case (every link busy, none opening room) has nothing to start.
        if self.idle_total or len(self.links) + self.opening < self.effective_cap:
            self._kick()
        return waiter

    async def acquire(self, kind: int) -> BackendLink:
        """``lease`` for the proxy's own slow paths: await a link or PoolTimeout."""
        fut: asyncio.Future[BackendLink] = asyncio.get_running_loop().create_future()

        def done(link: BackendLink | None, error: PoolTimeout | None) -> None:
            if fut.done():
                if link is not None:
                    self.release(link)
            elif link is not None:
                fut.set_result(link)
            else:
                fut.set_exception(error or PoolTimeout("no link"))

        got = self.lease(kind, done)
        if isinstance(got, BackendLink):
            return got
        try:
            return await fut
        except asyncio.CancelledError:
            self.cancel(got)
            raise

    def cancel(self, waiter: Waiter) -> None:
        """The waiting client left (a waiter already called back is no longer queued)."""
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass

    def take_back(self, link: BackendLink) -> BackendLink | None:
        """The given link, if it is idle (a session wants the link its last statement ran on)."""
        if self.waiters or self.paused or link.closed or not link.in_pool:
            return None
        self.idle[link.kind].remove(link)
        link.in_pool = False
        self.idle_total -= 1
        self.stats.leases += 1
        return link

    def _expire_due(self) -> None:
        """queue_timeout passed for the waiters at the head of the queue."""
        self._timer = None
        loop = self.loop
        now = loop.time()
        timeout = self.cfg.queue_timeout
        while self.waiters and self.waiters[0][2] + timeout <= now:
            _kind, callback, since = self.waiters.popleft()
            self.stats.queue_timeouts += 1
            self.stats.total_wait += now - since
            callback(None, PoolTimeout(self._timeout_message()))
        if self.waiters:
            self._timer = loop.call_at(self.waiters[0][2] + timeout, self._expire_due)

    def _timeout_message(self) -> str:
        why = f"; last connect error: {self.last_connect_error}" if self.last_connect_error else ""
        cap = f"{self.effective_cap} of {self.cap}" if self.effective_cap < self.cap else f"{self.cap}"
        return (
            f"mysql-pool-proxy: pool '{self.name}' is busy: all {cap} server connections in use, "
            f"{len(self.waiters) + 1} clients waiting; gave up after queue_timeout ({self.cfg.queue_timeout:g}s){why}"
        )

    # -- making links for waiters -----------------------------------------------------

    def _kick(self) -> None:
        """Start whatever async work serves the queue: pings of stale idle links, new links."""
        if self.paused or not self.waiters:
            return
        kind = self.waiters[0][0]
        idle = self.idle.get(kind)
        if idle:
            link = idle.pop()
            link.in_pool = False
            self.idle_total -= 1
            self._spawn(self._ping_then_hand_over(link))
            return
        if self.total >= self.effective_cap:
            # Full, and the idle links (if any) are of other kinds: close one to make room.
            for other in self.idle.values():
                if other:
                    self._drop(other[0])
                    return
        wanted = min(len(self.waiters), self.cfg.max_concurrent_connects) - self.opening
        while wanted > 0 and self.total < self.effective_cap:
            self.opening += 1
            self._spawn(self._open(kind))
            wanted -= 1

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ping_then_hand_over(self, link: BackendLink) -> None:
        try:
            link.set_held()
            await link.exchange([(Command.PING, b"")])
        except (LinkLost, ServerError, OSError, ProtocolError) as e:
            log.info("pool %s: idle link %d failed its ping (%s); replacing it", self.name, link.facts.thread_id, e)
            self._drop(link)
            return
        self.release(link)

    async def _open(self, kind: int) -> None:
        """Open a link (slot already counted) and give it to the queue, retrying while anyone waits."""
        link = None
        try:
            while self.waiters and not self.paused:
                try:
                    link = await self._connector(kind, self._idle_death, self.cfg.connect_timeout)
                    break
                except ServerError as e:
                    self.stats.connect_failures += 1
                    self.last_connect_error = f"({e.code}) {e.message}"
                    if e.code in CAPACITY_ERRORS:
                        self._capacity_refused(e)
                        return
                    await self._back_off(e)
                except (OSError, LinkLost, asyncio.TimeoutError, ProtocolError) as e:
                    self.stats.connect_failures += 1
                    self.last_connect_error = str(e) or type(e).__name__
                    await self._back_off(e)
        finally:
            self.opening -= 1
        if link is None:
            return
        self._backoff = 0.0
        self.links.add(link)
        self.stats.connects += 1
        self.stats.max_open_seen = max(self.stats.max_open_seen, len(self.links))
        self.server_version = link.facts.server_version
        self.server_caps = link.facts.server_caps
        self.server_collation = link.facts.server_collation
        self.last_connect_error = None
        if not self._first_link_done and self.on_first_link is not None:
            self._first_link_done = True
            try:
                await self.on_first_link(link)
            except Exception as e:  # noqa: BLE001 - facts are optional; the link is what matters
                self._first_link_done = False
                log.warning("pool %s: could not read server facts: %s", self.name, e)
        self.release(link)

    def _capacity_refused(self, e: ServerError) -> None:
        self.stats.capacity_refusals += 1
        new_cap = self.total - 1  # what we hold, without the slot that was refused
        if new_cap < self.effective_cap:
            log.warning(
                "pool %s: server refused a new link (%d %s); lowering the effective cap from %d to %d "
                "(other clients of the account hold the rest); clients stay queued",
                self.name, e.code, e.message, self.effective_cap, max(new_cap, 0),
            )
            self.effective_cap = max(new_cap, 0)
        self._last_probe = time.monotonic()

    async def _back_off(self, e: BaseException) -> None:
        """Capped exponential backoff with jitter while the server cannot be reached."""
        if self._backoff == 0.0:
            log.warning("pool %s: cannot connect to the server: %s; retrying with backoff", self.name, e)
        self._backoff = min(self.cfg.reconnect_backoff_max, max(0.05, self._backoff * 2))
        await asyncio.sleep(self._backoff * random.uniform(0.5, 1.0))

    # -- return -------------------------------------------------------------------

    def release(self, link: BackendLink) -> None:
        """A client is done with a link in a known, clean state."""
        if link.in_pool:
            log.error("link %d was given back twice; ignoring the second time", link.facts.thread_id)
            return
        if link.closed or link not in self.links:
            self._drop(link)
            return
        if link.retiring or len(self.links) + self.opening > self.effective_cap:
            self._drop(link)
            return
        if link.reading_paused:
            # A slow client paused it after the response's last bytes: whoever has it
            # next (a waiter, or the idle list watching for the server closing it) needs it reading.
            link.resume_reading()
        # Straight to the first waiter when there is one: no idle bookkeeping in between.
        # (Inline, not a method of its own: this runs once per statement while clients queue.)
        waiters = self.waiters
        if waiters and not self.paused:
            kind, callback, since = waiters[0]
            if kind != link.kind:
                # First in line wants the other kind: make room for it.
                self._drop(link)
                return
            waiters.popleft()
            stats = self.stats
            stats.leases += 1
            stats.total_wait += (self._loop or self.loop).time() - since
            link.leased_by = None
            callback(link, None)
            return
        link.set_idle()
        link.in_pool = True
        self.idle_total += 1
        self.idle.setdefault(link.kind, []).append(link)

    def discard(self, link: BackendLink) -> None:
        """A link in unknown state or dead: close it, never reuse it."""
        self._drop(link)

    def _drop(self, link: BackendLink) -> None:
        if link.in_pool:
            self.idle[link.kind].remove(link)
            link.in_pool = False
            self.idle_total -= 1
        if link in self.links:
            self.links.discard(link)
            link.close(quit_first=not link.closed)
            self._kick()  # a slot came free
        elif not link.closed:
            link.close()

    def _idle_death(self, link: BackendLink) -> None:
        self.stats.links_died_idle += 1
        log.info("pool %s: idle link %d was closed by the server; removed", self.name, link.facts.thread_id)
        self._drop(link)

    # -- maintenance (the janitor calls this about twice a second) ----------------------

    def maintain(self) -> None:
        now = time.monotonic()
        life = self.cfg.max_lifetime
        if life:
            # Marked here, not checked on every release: the clock stays off the hot path.
            for link in self.links:
                if now - link.created > life:
                    link.retiring = True
        idle_limit = self.cfg.idle_timeout
        for idle in self.idle.values():
            for link in list(idle):
                if (idle_limit and now - link.last_used > idle_limit) or link.retiring:
                    log.debug("pool %s: retiring idle link %d", self.name, link.facts.thread_id)
                    self._drop(link)
        if self.effective_cap < self.cap and now - self._last_probe >= PROBE_INTERVAL:
            # Probe upward: maybe the account's other users left.
            self._last_probe = now
            self.effective_cap += 1
            log.info("pool %s: probing a higher cap: %d of %d", self.name, self.effective_cap, self.cap)
        self._kick()

    def resize(self, cfg: PoolConfig) -> None:
        """Apply a reloaded pool config. A lower cap closes idle links; leased ones close on return."""
        self.cfg = cfg
        self.effective_cap = cfg.max_connections
        for idle in self.idle.values():
            while idle and self.total > self.effective_cap:
                self._drop(idle[0])
        self._kick()

    def resume(self) -> None:
        """End a PAUSE: queued clients go on."""
        self.paused = False
        for idle in self.idle.values():
            while idle and self.waiters:
                link = idle.pop()
                link.in_pool = False
                self.idle_total -= 1
                self.release(link)
        self._kick()

    def retire_all(self) -> int:
        """Replace every link: idle ones close now, leased ones when they come back.

        For a new server address or account (reload) and RECONNECT: a link lent out at that
        moment, even one pinned by a transaction, finishes its client's work first and is
        never lent again. Returns how many links were open.
        """
        count = len(self.links)
        for link in self.links:
            link.retiring = True
        for idle in self.idle.values():
            for link in list(idle):
                self._drop(link)
        self._kick()
        return count

    def close_all(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for link in list(self.links):
            self._drop(link)
        for waiter in list(self.waiters):
            self.cancel(waiter)
        for task in list(self._tasks):
            task.cancel()
