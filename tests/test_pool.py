"""The pool's hand-over of links, with in-memory transports (no server needed).

The relay tests run against a real server; these pin down orderings that a real
server makes hard to reproduce on demand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from proxy.backend import BackendLink
from proxy.config import PoolConfig
from proxy.mysql.constants import Cap
from proxy.pool import Pool, PoolTimeout


class MemoryTransport:
    def __init__(self) -> None:
        self.reading = True
        self.closed = False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed


async def never_connects(kind: int, on_idle_death: object, timeout: float) -> BackendLink:
    raise AssertionError("the pool must not open a link in these tests")


def pool_with_one_link() -> tuple[Pool, BackendLink, MemoryTransport]:
    pool = Pool(PoolConfig(max_connections=1, queue_timeout=5), never_connects)
    # As the pool's connector would make it: told to report its death while idle.
    link = BackendLink(kind=0, on_idle_death=pool._idle_death)
    transport = MemoryTransport()
    link.connection_made(transport)  # type: ignore[arg-type]
    pool.links.add(link)
    pool.release(link)
    return pool, link, transport


async def test_a_link_paused_for_a_slow_client_reads_again_when_handed_to_the_next_waiter() -> None:
    pool, link, transport = pool_with_one_link()
    assert pool.lease(0, lambda *_: None) is link
    link.pause_reading()  # its client reads slower than the server sends
    assert not transport.reading
    got: list[BackendLink | None] = []

    def on_lease(lent: BackendLink | None, error: PoolTimeout | None) -> None:
        assert error is None
        got.append(lent)
        assert transport.reading, "the next user was given a link that does not read"

    waiter = pool.lease(0, on_lease)
    assert not isinstance(waiter, BackendLink)  # the cap of 1 is taken: a Waiter
    pool.release(link)  # the response ended while the client was still behind
    assert got == [link]
    assert not link.reading_paused
    assert pool.total == 1 and not pool.waiters


async def test_a_paused_link_going_idle_reads_again() -> None:
    pool, link, transport = pool_with_one_link()
    assert pool.lease(0, lambda *_: None) is link
    link.pause_reading()
    pool.release(link)  # nobody waits: it goes to the idle list
    assert link.in_pool and transport.reading
    # An idle link that reads notices the server closing it (wait_timeout, KILL).
    link.data_received(b"\x01\x00\x00\x00\xff")
    assert link.closed and pool.total == 0


async def test_hand_over_is_first_come_first_served_and_counts_the_wait() -> None:
    pool, link, _transport = pool_with_one_link()
    assert pool.lease(0, lambda *_: None) is link
    order: list[str] = []
    first = pool.lease(0, lambda lent, error: order.append("first"))
    second = pool.lease(0, lambda lent, error: order.append("second"))
    assert not isinstance(first, BackendLink) and not isinstance(second, BackendLink)
    await asyncio.sleep(0.01)
    pool.release(link)
    assert order == ["first"]
    assert pool.stats.total_wait > 0
    pool.release(link)
    assert order == ["first", "second"]
    pool.close_all()


async def test_kinds_are_kept_apart_and_an_idle_link_of_another_kind_makes_room() -> None:
    async def connects(kind: int, on_idle_death: Callable[[BackendLink], None], timeout: float) -> BackendLink:
        link = BackendLink(kind=kind, on_idle_death=on_idle_death)
        link.connection_made(MemoryTransport())  # type: ignore[arg-type]
        return link

    def idle_in_lists() -> int:
        return sum(len(idle) for idle in pool.idle.values())

    pool = Pool(PoolConfig(max_connections=1, queue_timeout=5), connects)
    plain = await pool.acquire(0)
    pool.release(plain)
    assert pool.idle_total == idle_in_lists() == 1
    # A client of another kind, the cap reached: the idle link of the other kind is closed for it.
    caching = await pool.acquire(Cap.MARIADB_CACHE_METADATA)
    assert caching.kind == Cap.MARIADB_CACHE_METADATA and plain.closed
    assert pool.total == 1 and pool.idle_total == idle_in_lists() == 0
    pool.release(caching)
    assert pool.lease(Cap.MARIADB_CACHE_METADATA, lambda *_: None) is caching  # its own kind: lent at once
    pool.release(caching)
    assert pool.take_back(caching) is caching and pool.idle_total == idle_in_lists() == 0
    pool.release(caching)
    pool.close_all()
    assert pool.idle_total == idle_in_lists() == 0
