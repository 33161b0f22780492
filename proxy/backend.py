"""One backend link: connect, authenticate, run the proxy's own commands, relay responses.

A link has three modes. While the proxy talks to the server itself (connect,
ping, reset, state replay) it reads whole packets (``PacketReader``). While it
serves a client command it is a relay: received chunks go through the
``PacketScanner`` and the ``ResponseTracker`` straight to the client's
transport, with no await per packet. While it sits idle in the pool any byte
or EOF from the server means the link is dead (wait_timeout, KILL, shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .config import BackendConfig
from .mysql import auth
from .mysql.constants import BACKEND_CAPS, KIND_CAPS, Cap, Command
from .mysql.messages import (
    AUTH_MORE_DATA,
    AUTH_SWITCH,
    ERR_HEADER,
    OK_HEADER,
    ChangeUser,
    HandshakeResponse,
    ServerError,
    build_change_user,
    build_handshake_response,
    build_ssl_request,
    parse_auth_switch,
    parse_err,
    parse_handshake,
    read_lenenc_int,
    read_lenenc_str,
)
from .mysql.packets import PacketReader, PacketScanner, ProtocolError, frame
from .mysql.responses import DONE, INFILE, ResponseTracker
from .session import CHARSET_VARIABLES, LinkState

log = logging.getLogger("proxy.backend")

# What every link asks the server to report in its OK packets.
TRACKING_SETUP = (
    b"SET session_track_schema=ON, session_track_state_change=ON, session_track_system_variables='*'"
)
CHARSET_FACTS = (
    b"SELECT @@character_set_client, @@character_set_connection, @@character_set_results, @@collation_connection"
)
LINK_FACTS = CHARSET_FACTS + b", @@wait_timeout, @@max_allowed_packet, @@sql_mode"


# Prepared statements a link keeps for reuse (the server's max_prepared_stmt_count is global).
STATEMENT_CACHE = 256


class LinkLost(Exception):
    """The server closed the link or sent something the proxy cannot follow."""


class RelaySink(Protocol):
    """The side a relayed response goes to (a client connection)."""

    def relay_chunks(self, chunks: Sequence[bytes | memoryview]) -> None: ...
    # DONE (the response ended) or INFILE; ``chunks``: the bytes up to there, not yet relayed.
    def relay_done(self, link: BackendLink, event: int, chunks: Sequence[bytes | memoryview]) -> None: ...
    # LOCAL INFILE back-pressure: stop (True) or go on (False) reading the client's file.
    def hold_client_input(self, hold: bool) -> None: ...
    # ``sent``: the command was written to the link, so the server may have run it.
    def relay_failed(self, link: BackendLink, error: Exception, received_any: bool, sent: bool = True) -> None: ...


# _SUPPLY: a relay that also puts back column definitions the server left out (see start_relay).
_IDLE, _EXCHANGE, _RELAY, _HELD, _SUPPLY = range(5)


@dataclass
class Reply:
    """A response the proxy read for itself: the tracker's verdict and every payload."""

    tracker: ResponseTracker
    packets: list[bytes]

    def rows(self) -> list[list[str | None]]:
        """The text-protocol rows of a result set (column count, definitions, EOF, rows, EOF)."""
        if not self.tracker.result_set:
            return []
        ncols = self.packets[0][0]
        out: list[list[str | None]] = []
        for p in self.packets[ncols + 2 : -1]:
            pos = 0
            row: list[str | None] = []
            for _ in range(ncols):
                if p[pos] == 0xFB:
                    row.append(None)
                    pos += 1
                else:
                    v, pos = read_lenenc_str(p, pos)
                    row.append(v.decode(errors="replace"))
            out.append(row)
        return out


@dataclass(slots=True)
class ServerStatement:
    """A binary statement prepared on one link."""

    id: int  # the server's statement id
    num_params: int
    # The column definitions the server last sent for it on this link (in the PREPARE answer or
    # an execute's): with MariaDB's metadata caching it sends them again only when they change.
    columns: tuple[bytes, ...] = ()
    bound_types: bytes | None = None  # parameter types of its last execute (None: unknown)


@dataclass
class LinkFacts:
    server_version: str = ""
    server_caps: int = 0  # what the server's greeting offered
    server_collation: int = 0  # the greeting's character set: the server's default collation
    thread_id: int = 0
    # The greeting's scramble and the plugin the link logged in with: a COM_CHANGE_USER answers with them.
    scramble: bytes = b""
    auth_plugin: str = ""
    wait_timeout: int = 0
    max_allowed_packet: int = 0
    sql_mode: str | None = None  # a new session's (the server's default): do backslashes escape?


class BackendLink(asyncio.Protocol):
    """A connection from the proxy to the server."""

    def __init__(self, kind: int, on_idle_death: Callable[[BackendLink], None] | None = None) -> None:
        self.kind = kind  # the client capabilities of KIND_CAPS it asks the server for
        self.facts = LinkFacts()
        self.state = LinkState()
        self.created = time.monotonic()
        self.last_used = self.created
        self.leased_by: int | None = None  # proxy id of the client holding it
        # The frontend's count of statements that lost their last client when it last closed
        # this link's copies of such statements (frontend._sweep_statements).
        self.swept = 0
        self.in_pool = False  # in the pool's idle list
        self.reading_paused = False  # back-pressure from the client it relays to
        self.closed = False
        self.retiring = False  # past the pool's max_lifetime: closed when it comes back
        self.uses = 0  # statements served; tells whether a link was touched since a session used it
        # The last statement on the link left warnings or an error (SHOW WARNINGS would show them).
        self.diagnostics_dirty = False
        self.tracker = ResponseTracker()
        # Binary statements prepared on this link, by SQL.
        self.prepared: dict[bytes, ServerStatement] = {}
        self.transport: asyncio.Transport | None = None
        self.tls = False  # encrypted (backend.tls)
        self._on_idle_death = on_idle_death
        self._mode = _EXCHANGE
        self._reader = PacketReader()
        self._packets: deque[tuple[int, bytes]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        # The tracker is the scanner's inspector: its verdict (DONE, INFILE) stops the scan.
        self._scanner = PacketScanner(self.tracker.feed)
        self._sink: RelaySink | None = None
        self._received_any = False
        self._lost: Exception | None = None
        self._supply: tuple[bytes, ...] = ()  # _SUPPLY: the definitions to put back
        self._shift = 0  # _SUPPLY: packets put in so far (later sequence ids move up by as many)

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        mode = self._mode
        if mode == _RELAY:
            self._received_any = True
            scanner = self._scanner
            try:
                chunks = scanner.feed(data)
            except ProtocolError as e:
                self._relay_error(e)
                return
            verdict = scanner.verdict
            if not verdict:
                if chunks:
                    self._sink.relay_chunks(chunks)  # type: ignore[union-attr]
            elif verdict == DONE and not scanner.held:
                # The usual end of a response. Its last bytes go with the event: the sink hands
                # the link on to the next queued command before it writes them to its client.
                self._mode = _HELD
                tracker = self.tracker
                if tracker.warnings or tracker.error_code:
                    self.diagnostics_dirty = True
                sink, self._sink = self._sink, None
                sink.relay_done(self, DONE, chunks)  # type: ignore[union-attr]
            else:
                self._relay_event(verdict, chunks)
        elif mode == _SUPPLY:
            self._received_any = True
            try:
                self._relay_supplying(data)
            except ProtocolError as e:
                self._relay_error(e)
        elif mode == _EXCHANGE:
            try:
                self._packets.extend(self._reader.feed(data))
            except ProtocolError as e:
                self._fail(e)
                return
            self._wake()
        else:
            # Bytes while nobody asked: an error packet before the server closes
            # an idle link (wait_timeout, KILL), or garbage. Either way it is done.
            self._fail(LinkLost("server sent data on an idle link"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(LinkLost(f"server closed the link ({exc})" if exc else "server closed the link"))

    def pause_writing(self) -> None:
        # The server reads slower than a client sends (LOCAL INFILE): stop reading that client,
        # so the file waits in its socket, not in the proxy's memory.
        if self._sink is not None:
            self._sink.hold_client_input(True)

    def resume_writing(self) -> None:
        if self._sink is not None:
            self._sink.hold_client_input(False)

    # -- lifecycle ----------------------------------------------------------------

    def _fail(self, error: Exception) -> None:
        if self.closed:
            return
        self.closed = True
        self._lost = error
        if self.transport is not None:
            self.transport.abort()
        mode = self._mode
        if (mode == _RELAY or mode == _SUPPLY) and self._sink is not None:
            sink, self._sink = self._sink, None
            sink.relay_failed(self, error, self._received_any)
        elif mode in (_IDLE, _HELD) and self._on_idle_death is not None:
            # Idle in the pool, or held by a pinned client between statements:
            # free its slot now; a pinned client learns at its next statement.
            self._on_idle_death(self)
        self._wake()

    def close(self, quit_first: bool = True) -> None:
        """Close the link (politely with COM_QUIT when it is in a known state)."""
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            if quit_first:
                self.transport.write(frame(bytes((Command.QUIT,)), 0))
                self.transport.close()
            else:
                self.transport.abort()
        self._wake()

    def pause_reading(self) -> None:
        """Back-pressure: the client this link relays to reads slower than the server sends."""
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def set_idle(self) -> None:
        """The link went back to the pool: from now any byte from the server means it died."""
        self._mode = _IDLE
        self.leased_by = None
        self.last_used = time.monotonic()

    def set_held(self) -> None:
        self._mode = _HELD

    # -- packets for the proxy itself ---------------------------------------------

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def read_packet(self) -> tuple[int, bytes]:
        while not self._packets:
            if self.closed:
                raise self._lost or LinkLost("link closed")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._packets.popleft()

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        """Encrypt the link from here on (after the SSLRequest); raises ssl.SSLError / OSError."""
        assert self.transport is not None
        tls = await asyncio.get_running_loop().start_tls(self.transport, self, context, server_hostname=server_hostname)
        if tls is None:  # the server closed the link during the handshake
            raise self._lost or LinkLost("server closed the link during the TLS handshake")
        self.transport = tls  # type: ignore[assignment]
        self.tls = True

    def ask(self, payload: bytes) -> None:
        """Send one command whose answer the proxy reads itself (read_packet), packet by packet."""
        self._mode = _EXCHANGE
        self.uses += 1
        self.write_packet(payload, 0)

    def write_packet(self, payload: bytes, seq: int) -> None:
        if self.closed or self.transport is None:
            raise self._lost or LinkLost("link closed")
        self.transport.write(frame(payload, seq))

    async def exchange(self, commands: Sequence[tuple[int, bytes]]) -> list[Reply]:
        """Send commands pipelined (one round trip) and read each response.

        Raises ServerError for the first ERR answer (the link stays usable) and LinkLost when
        the link died or sent what the proxy cannot follow (the link is closed then): callers
        catch these two, and nothing else can leave a link half-used.
        """
        try:
            return await self._exchange(commands)
        except ProtocolError as e:
            self._fail(e)
            raise LinkLost(f"the server sent what the proxy cannot follow: {e}") from e

    async def _exchange(self, commands: Sequence[tuple[int, bytes]]) -> list[Reply]:
        self._mode = _EXCHANGE
        if self.closed or self.transport is None:
            raise self._lost or LinkLost("link closed")
        self.uses += 1  # per-statement values (ROW_COUNT() ...) are no longer the last client's
        self.transport.write(b"".join(frame(bytes((cmd,)) + arg, 0) for cmd, arg in commands))
        results = []
        error: ServerError | None = None
        for cmd, _arg in commands:
            tracker = ResponseTracker(client_caps=Cap.SESSION_TRACK, cache_metadata=self.tracker.cache_metadata)
            tracker.start(cmd)
            reply = Reply(tracker, [])
            while True:
                _seq, payload = await self.read_packet()
                reply.packets.append(payload)
                event, _ = tracker.feed(len(payload), payload)
                if event == DONE:
                    break
                if event == INFILE:
                    self.write_packet(b"", 2)  # the proxy never sends files of its own
            if tracker.error_code and error is None:
                err = parse_err(reply.packets[-1])
                error = ServerError(err.code, err.message, err.sqlstate)
            results.append(reply)
            # Warnings stay on the server until a statement reads a table: the flag sticks.
            self.diagnostics_dirty |= bool(tracker.warnings or tracker.error_code)
        if error is not None:
            raise error
        return results

    # -- relay --------------------------------------------------------------------

    def start_relay(self, payload: bytes, seq: int, command: int, sink: RelaySink, client_caps: int,
                    statement_alias: int = 0, supply: tuple[bytes, ...] | None = None) -> None:
        """Send a client's command and relay the response to ``sink``.

        ``supply``: column definitions the client lacks for this execute (metadata caching: it holds
        others, from another link). Should the server leave them out, they are put back in.
        """
        self._sink = sink
        if supply is None:
            self._mode = _RELAY
        else:
            self._mode = _SUPPLY
            self._supply = supply
            self._shift = 0
        self._received_any = False
        self._scanner.reset()
        tracker = self.tracker
        tracker.client_caps = client_caps
        tracker.start(command, statement_alias)
        self.uses += 1
        if self.closed or self.transport is None:
            err = self._lost or LinkLost("link closed")
            self._sink = None
            sink.relay_failed(self, err, False, sent=False)  # seen dead before the write
            return
        self.transport.write(frame(payload, seq))

    def remember_statement(self, sql: bytes, server_id: int, num_params: int, columns: tuple[bytes, ...]) -> None:
        """Cache a prepared statement; close the one it replaces and the oldest past the limit."""
        old = self.prepared.pop(sql, None)
        if old is not None and old.id != server_id:
            self.write_packet(bytes((Command.STMT_CLOSE,)) + old.id.to_bytes(4, "little"), 0)
        self.prepared[sql] = ServerStatement(server_id, num_params, columns)
        if len(self.prepared) > STATEMENT_CACHE:
            oldest = self.prepared.pop(next(iter(self.prepared)))
            self.write_packet(bytes((Command.STMT_CLOSE,)) + oldest.id.to_bytes(4, "little"), 0)

    def forget_bound_types(self) -> None:
        """After a failed execute or a reset, send parameter types again (never trust a guess)."""
        for statement in self.prepared.values():
            statement.bound_types = None

    def continue_relay(self, data: bytes) -> None:
        """Pass bytes from the client through unchanged (LOCAL INFILE contents)."""
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def _relay_supplying(self, data: bytes) -> None:
        """_SUPPLY's relay: whole packets, renumbered after the definitions put in. A rare path."""
        tracker = self.tracker
        out: list[bytes | memoryview] = []
        for seq, payload in self._reader.feed(data):
            was_waiting_for_columns = not tracker.result_set
            verdict, replacement = tracker.feed(len(payload), payload, 0, 0)
            if was_waiting_for_columns and tracker.result_set and payload[-1] == 0 and not self._shift:
                # The column count, and the server left the definitions out: put them in.
                if read_lenenc_int(payload, 0)[0] != len(self._supply):
                    raise ProtocolError("the server's column count differs from the definitions it sent this link")
                out.append(frame(payload[:-1] + b"\x01", seq))
                for column in self._supply:
                    self._shift += 1
                    out.append(frame(column, seq + self._shift))
                tracker.columns = list(self._supply)  # what the client now holds
                continue
            out.append(frame(payload if replacement is None else replacement, seq + self._shift))
            if verdict == DONE:
                if self._reader.pending:
                    raise ProtocolError("server sent bytes after the end of a response")
                self._mode = _HELD
                if tracker.warnings or tracker.error_code:
                    self.diagnostics_dirty = True
                sink, self._sink = self._sink, None
                sink.relay_done(self, DONE, out)  # type: ignore[union-attr]
                return
        if out:
            self._sink.relay_chunks(out)  # type: ignore[union-attr]

    def _relay_event(self, event: int, chunks: list[bytes | memoryview]) -> None:
        """The relay stopped other than at a clean end: LOCAL INFILE, or bytes past the end."""
        sink = self._sink
        assert sink is not None
        if event == DONE:
            if chunks:
                sink.relay_chunks(chunks)
            self._relay_error(ProtocolError("server sent bytes after the end of a response"))
            return
        sink.relay_done(self, event, chunks)

    def _relay_error(self, error: Exception) -> None:
        log.warning("link %d: %s; closing it", self.facts.thread_id, error)
        self._fail(error)


async def open_link(cfg: BackendConfig, *, kind: int, timeout: float, tls: ssl.SSLContext | None = None,
                    on_idle_death: Callable[[BackendLink], None] | None = None) -> BackendLink:
    """Connect, authenticate and set up session tracking. Raises ServerError / OSError / LinkLost.

    ``tls``: the context for backend.tls (proxy/tls.py), None when TLS is disabled.
    """
    loop = asyncio.get_running_loop()

    def factory() -> BackendLink:
        return BackendLink(kind, on_idle_death)

    async def connect() -> BackendLink:
        if cfg.unix_socket:
            _t, link = await loop.create_unix_connection(factory, cfg.unix_socket)
        else:
            _t, link = await loop.create_connection(factory, cfg.host, cfg.port)
        try:
            await _authenticate(link, cfg, tls)
            await _setup(link)
        except BaseException:
            link.close(quit_first=False)
            raise
        return link

    return await asyncio.wait_for(connect(), timeout)


async def _authenticate(link: BackendLink, cfg: BackendConfig, tls: ssl.SSLContext | None = None) -> None:
    _seq, payload = await link.read_packet()
    hs = parse_handshake(payload)
    link.facts.server_version = hs.server_version
    link.facts.thread_id = hs.connection_id
    link.facts.server_caps = hs.capabilities
    link.facts.server_collation = hs.collation
    caps = BACKEND_CAPS | (link.kind & KIND_CAPS)
    caps &= hs.capabilities | Cap.LONG_PASSWORD | Cap.FOUND_ROWS
    if caps >> 32:
        caps &= ~Cap.CLIENT_MYSQL  # the server reads MariaDB's extended capabilities only then
    link.tracker.cache_metadata = bool(caps & Cap.MARIADB_CACHE_METADATA)
    link.tracker.flag_without_caching = bool(link.kind & Cap.MARIADB_CACHE_METADATA) and not link.tracker.cache_metadata
    if not hs.capabilities & Cap.SESSION_TRACK:
        raise ProtocolError("the server does not support CLIENT_SESSION_TRACK (MySQL 5.7+ / MariaDB 10.2+ needed)")
    plugin = hs.auth_plugin if hs.auth_plugin in auth.SCRAMBLE_PLUGINS else auth.NATIVE
    scramble = link.facts.scramble = hs.scramble
    link.facts.auth_plugin = plugin
    response = HandshakeResponse(
        capabilities=caps,
        max_packet=1 << 30,
        collation=cfg.collation,
        user=cfg.user,
        auth_response=auth.client_response(plugin, cfg.password, scramble),
        database=cfg.database,
        auth_plugin=plugin,
    )
    seq = 1
    if tls is not None and hs.capabilities & Cap.SSL:
        response.capabilities |= Cap.SSL
        link.write_packet(build_ssl_request(response), seq)
        await link.start_tls(tls, None if cfg.unix_socket else cfg.host)
        seq += 1
    elif tls is not None and cfg.tls_mode != "preferred":
        raise ProtocolError(f"the server does not offer TLS (backend.tls is {cfg.tls_mode})")
    link.write_packet(build_handshake_response(response), seq)
    link.state.schema = cfg.database
    await _auth_replies(link, cfg, plugin, scramble)


async def _auth_replies(link: BackendLink, cfg: BackendConfig, plugin: str, scramble: bytes) -> None:
    """Answer the server until it says OK (or raise): auth switches, caching_sha2 fast and full auth."""
    while True:
        seq, p = await link.read_packet()
        if not p:
            raise ProtocolError("empty packet during authentication")
        head = p[0]
        if head == OK_HEADER:
            return
        if head == ERR_HEADER:
            err = parse_err(p)
            raise ServerError(err.code, err.message, err.sqlstate)
        if head == AUTH_SWITCH:
            plugin, scramble = parse_auth_switch(p)
            if plugin == auth.CLEAR and not link.tls:
                raise ProtocolError("the server asks for a clear-text password; refused without TLS (backend.tls)")
            link.write_packet(auth.client_response(plugin, cfg.password, scramble), seq + 1)
        elif head == AUTH_MORE_DATA and plugin == auth.CACHING_SHA2:
            if p[1:2] == bytes((auth.FAST_AUTH_OK,)):
                continue  # OK follows
            if p[1:2] == bytes((auth.FULL_AUTH_NEEDED,)) and link.tls:
                link.write_packet(auth.client_response(auth.CLEAR, cfg.password, scramble), seq + 1)
            elif p[1:2] == bytes((auth.FULL_AUTH_NEEDED,)):
                link.write_packet(bytes((auth.REQUEST_PUBLIC_KEY,)), seq + 1)
                seq, key = await link.read_packet()
                if not key or key[0] != AUTH_MORE_DATA:
                    raise ProtocolError("expected the server's public key")
                link.write_packet(auth.rsa_encrypt_password(cfg.password, scramble, key[1:]), seq + 1)
            else:
                raise ProtocolError("unexpected caching_sha2_password message")
        else:
            raise ProtocolError(f"unexpected packet 0x{head:02x} during authentication")


async def clear_schema(link: BackendLink, cfg: BackendConfig) -> None:
    """Leave the link with no default database, for a session that never selected one.

    No statement unselects a database; COM_CHANGE_USER naming none does. Like
    COM_RESET_CONNECTION it also resets the session, so the trackers are set up again and
    the caller replays the session's state onto the fresh link.
    """
    plugin, scramble = link.facts.auth_plugin or auth.NATIVE, link.facts.scramble
    link.ask(build_change_user(ChangeUser(cfg.user, auth.client_response(plugin, cfg.password, scramble),
                                          None, cfg.collation, plugin)))
    await _auth_replies(link, cfg, plugin, scramble)
    link.prepared.clear()  # the server closed them
    link.state = LinkState()
    link.diagnostics_dirty = False
    await _setup(link)


async def _setup(link: BackendLink) -> None:
    _setup_result, facts = await link.exchange([(Command.QUERY, TRACKING_SETUP), (Command.QUERY, LINK_FACTS)])
    values = facts.rows()[0]
    link.state.variables.update(charset_values(values))
    link.facts.wait_timeout = int(values[4] or 0)
    link.facts.max_allowed_packet = int(values[5] or 0)
    link.facts.sql_mode = values[6] or ""


def charset_values(row: list[str | None]) -> dict[str, str]:
    """The charset variables from a CHARSET_FACTS row, as the tracker would name them (NULL -> "")."""
    return {name: value or "" for name, value in zip(CHARSET_VARIABLES, row)}


async def reset_link(link: BackendLink) -> None:
    """Give a link back its connect-time state (a client that pinned it has left).

    COM_RESET_CONNECTION rolls back, drops temporary tables, releases locks and
    resets variables, including the session trackers, which are set up again.
    """
    link.set_held()
    await link.exchange([(Command.RESET_CONNECTION, b"")])
    link.prepared.clear()  # the reset closed them
    schema = link.state.schema
    # The multi-statements option (COM_SET_OPTION) outlives COM_RESET_CONNECTION.
    link.state = LinkState(schema=schema, multi_statements=link.state.multi_statements)
    await _setup(link)
