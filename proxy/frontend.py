"""One client connection: greeting, authentication, the command loop, lease / pin / release.

The common command runs without a single await: an idle link is taken from the
pool, the command written, the response relayed by the link's protocol
callbacks, and the link given back when the response ends. Only the slow
paths (queueing for a link, replaying session state, retrying on a dead link,
resetting a link a departed client pinned) run as tasks.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections import Counter, deque
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .backend import CHARSET_FACTS, BackendLink, LinkLost, charset_values, clear_schema, reset_link
from .compressed import ClientCompression
from .config import Config
from .login import Accepted, Login, Refused, Send, StartTls, Step
from .mysql.constants import KIND_CAPS, SERVER_VERSION, Cap, Command, Err, SessionTrack, Status
from .mysql.messages import (
    OK,
    ServerError,
    build_eof,
    build_err,
    build_ok,
    build_result_set,
    default_session_state,
    lenenc_str,
)
from .mysql.packets import PacketReader, ProtocolError, frame
from .mysql.responses import DONE, INFILE, NO_RESPONSE, TRACKED
from .pool import Pool, PoolTimeout, Waiter
from .mysql.stmt import LAST_PREPARED, bind_execute, statement_id, with_statement_id
from .session import (
    CHARSET_VARIABLES,
    PIN_CURSOR,
    PIN_LONG_DATA,
    PIN_NEXT_STATEMENT,
    PIN_NEXT_TRANSACTION,
    PIN_TRANSACTION,
    LinkState,
    PreparedStatement,
    Session,
    mark_replayed,
    replay_commands,
)
from .sql import (
    Classified,
    Kind,
    classify,
    is_retryable_read,
    needs_no_schema,
    rewrite_call,
    rewrite_connection_id,
    rewrite_is_used_lock,
    rewrite_processlist_table,
    session_set,
    variable_overwritten,
)
from .tls import ClientTls
from .upstream import CharsetAnswer, Upstream

log = logging.getLogger("proxy.client")

POOL_BUSY = 9001  # queue_timeout reached: the pool could not lend a link in time
ER_LOCAL_INFILE_DISABLED = 4166
_LOCAL_INFILE_MESSAGE = "The used command is not allowed because the MariaDB server or client has disabled the local infile capability"
ER_STMT_HAS_NO_OPEN_CURSOR = 1421
# Commands a client may still send after its transaction was lost (they hold no statement of it).
_AFTER_LOST_TRANSACTION = frozenset({Command.QUIT, Command.PING, Command.STMT_CLOSE, Command.RESET_CONNECTION,
                                     Command.CHANGE_USER, Command.STMT_RESET})
# Only a statement that reads a table clears the server's warning list (SELECT 1 and DO 0 do not).
CLEAR_DIAGNOSTICS = b"DO (SELECT COUNT(*) FROM (SELECT 1) AS t)"
READ_BACK = CHARSET_FACTS + b", LAST_INSERT_ID()"
# Commands naming a binary statement by the id the proxy gave the client.
_BY_STATEMENT = frozenset({Command.STMT_EXECUTE, Command.STMT_FETCH, Command.STMT_RESET,
                           Command.STMT_SEND_LONG_DATA, Command.STMT_CLOSE})
# Commands that run a statement: ROW_COUNT() and FOUND_ROWS() describe their results.
_STATEMENTS = frozenset({Command.QUERY, Command.STMT_EXECUTE})
# Errors after which the server closes the link.
_LINK_CLOSING = frozenset({Err.CONNECTION_KILLED, Err.SERVER_LOST})
_LOGIN, _COMMAND, _INFILE, _CLOSED = range(4)
MAX_PIPELINED = 16  # commands queued from one client before its socket is paused
# Bytes a client may send before it has logged in: a handshake response with connection
# attributes, or an auth switch answer, is a few KB. A client announcing more is refused at the
# packet header, before the bytes arrive (40 such clients sending 8 MB each grew the proxy by 320 MB).
LOGIN_MAX_PAYLOAD = 64 * 1024
# Connections that have not logged in yet, at most: they do not count against
# max_client_connections (silent sockets must not lock logins and the admin console out), and
# handshake_timeout closes each.
MAX_PENDING_LOGINS = 1024
# What _kept_warnings_answer answers: SHOW [COUNT(*)] WARNINGS | ERRORS, alone.
_SHOW_DIAGNOSTICS = re.compile(rb"\s*show\s+(count\s*\(\s*\*\s*\)\s+)?(warnings|errors)\s*;?\s*\Z", re.I)
# A stall's victim holding only these is rolled back and goes on (1213); holding more, it is closed.
STALL_VICTIM_PINS = frozenset({PIN_TRANSACTION, PIN_NEXT_STATEMENT, PIN_NEXT_TRANSACTION})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Session variables that change what SET NAMES <charset> (with no COLLATE) picks, or which
# character set a name means: a SET NAMES answer learned in one context holds only in the same.
_CHARSET_CONTEXT = ("character_set_collations", "default_collation_for_utf8mb4", "old_mode")
# The session-state block of SET autocommit's OK for a client with default trackers (MariaDB and MySQL alike).
_AUTOCOMMIT_BLOCKS = {
    value: bytes((SessionTrack.SYSTEM_VARIABLES,)) + lenenc_str(lenenc_str(b"autocommit") + lenenc_str(value))
    for value in (b"ON", b"OFF")
}


def printable(text: str) -> str:
    """A client-supplied name for a log line: control characters escaped, so none can forge a line."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)

# How many client statements (prepared, not yet closed) name each SQL text, per pool (by id):
# a server copy no client holds any more is closed at once where it can be (_statements_closed).
_statement_users: dict[int, Counter[bytes]] = {}


# Per pool: how many times a statement lost its last client. A link busy at that moment closes
# its copy when it next goes back to the pool (_sweep_statements), once per change of this count.
_closed_generation: dict[int, int] = {}


def _sweep_statements(pool: Pool, link: BackendLink) -> None:
    """Close the link's copies of statements no client holds any more."""
    link.swept = _closed_generation.get(id(pool), 0)
    users = _statement_users.get(id(pool), Counter())
    for sql in [sql for sql in link.prepared if sql not in users]:
        prepared = link.prepared.pop(sql)
        if not link.closed:
            link.write_packet(bytes((Command.STMT_CLOSE,)) + prepared.id.to_bytes(4, "little"), 0)


def _statements_opened(pool: Pool, sql: bytes) -> None:
    users = _statement_users.setdefault(id(pool), Counter())
    users[sql] += 1


def _statements_closed(pool: Pool, sqls: Iterable[bytes], held: BackendLink | None) -> None:
    """Clients let these statements go. Where no client holds one any more, its server copies are
    closed (COM_STMT_CLOSE has no answer) on the links free to take a command now: the idle ones
    and ``held``, the one the closing session keeps. A busy link keeps its copy until its cache
    (backend.STATEMENT_CACHE) lets it go, or until a later close finds it idle. Without this every
    link kept up to 256 statements, against the server's global max_prepared_stmt_count."""
    users = _statement_users.get(id(pool))
    if users is None:
        return
    gone = []
    for sql in sqls:
        if sql not in users:
            continue  # opened before a reload moved the client to this pool, say
        left = users[sql] - 1
        if left > 0:
            users[sql] = left
        else:
            del users[sql]
            gone.append(sql)
    if not gone:
        return
    _closed_generation[id(pool)] = _closed_generation.get(id(pool), 0) + 1
    links = [link for idle in pool.idle.values() for link in idle]
    if held is not None:
        links.append(held)
    for link in links:
        for sql in gone:
            prepared = link.prepared.pop(sql, None)
            if prepared is not None and not link.closed:
                link.write_packet(bytes((Command.STMT_CLOSE,)) + prepared.id.to_bytes(4, "little"), 0)


@dataclass
class ClientStats:
    """Counts over every client connection, those that have left included (SHOW STATS, metrics)."""

    statements_of_departed: int = 0  # the live ones count their own (ClientConnection.statements)
    errors: Counter[int] = field(default_factory=Counter)  # error packets sent to clients, by code

    def statements_total(self, clients: Iterable[ClientConnection]) -> int:
        """Commands sent by every client since start: those that left and ``clients``, the live ones."""
        return self.statements_of_departed + sum(c.statements for c in clients)


class ClientContext(Protocol):
    """What a client connection uses of the proxy around it; ProxyServer (server.py) is the one.

    Named here, not imported, so the frontend depends on nothing above it.
    """

    config: Config
    clients: dict[int, ClientConnection]
    pending_logins: int  # connections in ``clients`` that have not logged in yet
    client_stats: ClientStats
    listen_tls: ssl.SSLContext | None  # offered to clients when set (listen.tls_cert)

    def next_client_id(self) -> int: ...

    def route(self, user: str) -> Upstream | None: ...

    def first_upstream(self) -> Upstream: ...

    def greeting_facts(self) -> tuple[str | None, int, int]: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    def admin_statement(self, sql: str, caps: int) -> list[bytes]: ...


class ClientConnection(asyncio.Protocol):
    # At most 29 instance attributes: from 30 on, CPython 3.11 stops sharing the class's key
    # table and every attribute access on the hot path becomes a dict lookup (3% of the relay's
    # Python per query when this class had 33; tests/test_hot_classes.py).
    def __init__(self, server: ClientContext) -> None:
        self.server = server
        # The pool this client's login picks (_finish_login); until then the first one's.
        self.upstream = server.first_upstream()
        self.pool = self.upstream.pool
        self.proxy_id = server.next_client_id()
        self.peer = "?"
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.link: BackendLink | None = None  # held while a command runs or while pinned
        self.busy = False
        self.connected_at = time.monotonic()
        self.idle_since = self.connected_at
        self._phase = _LOGIN
        self._reader = PacketReader(max_payload=LOGIN_MAX_PAYLOAD)  # max_allowed_packet once logged in
        self._pending: deque[tuple[int, bytes]] = deque()
        self._login: Login | None = None  # made once the peer is known
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._current: tuple[int, bytes, int, Classified | None] | None = None  # seq, payload, cmd, stmt
        # The statement a COM_STMT_* command in _current names, looked up once when it arrived.
        # The session's statements cannot change before it is sent: later commands queue behind it.
        self._statement: PreparedStatement | None = None
        self._retried = False
        self._fresh_link = False
        self._follow_up = False
        self._paused_reading = False
        self._waiter: Waiter | None = None  # queued in the pool for a link
        self._pool_kind = 0
        self._paused_link: BackendLink | None = None  # a link paused for this client's back-pressure
        self.write_stalled_since = 0.0  # when the client stopped reading (0: it reads); client_write_timeout
        self.statements = 0
        self.is_admin = False

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        # Over listen.unix_socket there is no address: the server calls such a client 'localhost'.
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "localhost"
        self.server.clients[self.proxy_id] = self
        if self.server.pending_logins >= MAX_PENDING_LOGINS:
            self._fatal(Err.CON_COUNT, "Too many connections (mysql-pool-proxy: too many clients still logging in)", seq=0)
            return
        listen = self.server.config.listen
        loop = asyncio.get_running_loop()
        self._handshake_timer = loop.call_later(listen.handshake_timeout, self._handshake_expired)
        self.server.pending_logins += 1  # while the timer runs (_login_ended)
        # A unix socket client is local: TLS would protect nothing, so it is never required.
        self._login = Login(listen.auth_plugin, self._password_of, self.peer.rsplit(":", 1)[0],
                            offer_tls=self.server.listen_tls is not None,
                            require_tls=listen.require_tls and isinstance(peer, tuple))
        version, caps, collation = self.server.greeting_facts()
        self._write(self._login.greeting(version or SERVER_VERSION, self.proxy_id, caps, collation))

    def data_received(self, data: bytes) -> None:
        try:
            if self._phase == _CLOSED:
                return
            pending = self._pending
            for seq, payload in self._reader.feed(data):
                phase = self._phase
                if phase == _COMMAND:
                    if seq != 0:
                        raise ProtocolError(f"Got packets out of order (a command with sequence id {seq})", Err.NET_PACKETS_OUT_OF_ORDER)
                    if self.busy or pending:
                        pending.append((seq, payload))
                    else:
                        self._command(seq, payload)  # the usual case: one command, nothing queued
                elif phase == _INFILE:
                    self._infile_packet(seq, payload)
                elif phase == _LOGIN:
                    self._login_packet(seq, payload)
                else:
                    return
            if pending:
                if not self.busy:
                    self._run_pending()
                if len(pending) > MAX_PIPELINED and not self._paused_reading and self.transport:
                    self._paused_reading = True
                    self.transport.pause_reading()
        except ProtocolError as e:
            log.warning("client %d (%s): %s; closing", self.proxy_id, self.peer, printable(str(e)))
            self._fatal(e.code, str(e), seq=0)
        except Exception:  # noqa: BLE001 - one bad client must never take the daemon down
            log.exception("client %d (%s): internal error; closing this client", self.proxy_id, self.peer)
            self._fatal(Err.NET_READ_ERROR, "mysql-pool-proxy internal error; connection closed", seq=0)

    def _login_ended(self) -> None:
        """The login finished or failed: no longer counted among the pending ones."""
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
            self.server.pending_logins -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = _CLOSED
        self._login_ended()
        if self.session is not None and self.session.statements:
            _statements_closed(self.pool, [ps.sql for ps in self.session.statements.values()], None)
        if self.server.clients.pop(self.proxy_id, None) is not None:
            self.server.client_stats.statements_of_departed += self.statements
        if self._waiter is not None:
            self.pool.cancel(self._waiter)
            self._waiter = None
        link, self.link = self.link, None
        if link is None:
            return
        if self.busy and self._current is not None:
            # Mid-response: the link's state is unknown. Never reuse it.
            self.pool.discard(link)
        elif self.session is not None and self.session.pinned:
            held = set(self.session.pins) - {PIN_NEXT_STATEMENT}  # the link's warnings: cleared when asked for
            if not held:
                self.pool.release(link)
            elif held == {PIN_TRANSACTION}:
                # All it holds is a transaction: a ROLLBACK ends it, one statement where a reset
                # and the tracker setup after it take three. Its replayable state stays on the
                # link, which the next session's replay changes only where it differs.
                self.server.spawn(self._roll_back_and_release(link))
            else:
                log.info("client %d left while pinned (%s); its link is reset before reuse",
                         self.proxy_id, ", ".join(self.session.pins))
                self.server.spawn(self._reset_and_release(link))
        else:
            self.pool.release(link)

    def pause_writing(self) -> None:
        # The client reads slower than the server sends: stop reading the server.
        self.write_stalled_since = time.monotonic()
        if self.link is not None:
            self._paused_link = self.link
            self.link.pause_reading()

    def resume_writing(self) -> None:
        self.write_stalled_since = 0.0
        # The paused link may have gone back to the pool meanwhile (the pool resumes it then).
        link, self._paused_link = self._paused_link, None
        if link is not None and link.leased_by == self.proxy_id:
            link.resume_reading()

    # -- output -----------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_error(self, code: int, message: str, seq: int) -> None:
        self.server.client_stats.errors[code] += 1
        self._write(frame(build_err(code, message), seq))

    def _fatal(self, code: int, message: str, seq: int) -> None:
        """Tell the client why, then close its connection."""
        self.send_error(code, message, seq)
        self._phase = _CLOSED
        if self.transport is not None:
            self.transport.close()

    def _handshake_expired(self) -> None:
        if self._phase == _LOGIN:
            log.info("client %d (%s): no login within handshake_timeout; closing", self.proxy_id, self.peer)
            self._fatal(Err.HANDSHAKE, "Bad handshake: timed out", seq=0)

    # -- login ------------------------------------------------------------------------

    def _password_of(self, user: str) -> str | None:
        # Looked up when the password is checked: a reload's new passwords apply to logins and
        # COM_CHANGE_USER from then on, also on connections opened before it.
        return self.server.config.client_password(user)

    def _login_packet(self, seq: int, payload: bytes) -> None:
        assert self._login is not None
        try:
            step = self._login.receive(seq, payload)
        except ProtocolError as e:
            log.warning("client %d (%s): bad handshake: %s", self.proxy_id, self.peer, printable(str(e)))
            self._fatal(Err.HANDSHAKE, f"Bad handshake: {e}", seq + 1)
            return
        self._login_step(step)

    def _login_step(self, step: Step) -> None:
        if type(step) is Send:
            self._write(step.data)
        elif type(step) is Refused:
            assert self._login is not None
            log.warning("client %d (%s): %s for user '%s'", self.proxy_id, self.peer,
                        "access denied" if step.code == Err.ACCESS_DENIED else printable(step.message),
                        printable(self._login.user))
            self._fatal(step.code, step.message, step.seq)
        elif type(step) is StartTls:
            # Whatever the reader holds behind the SSLRequest is the start of the TLS handshake.
            assert self.transport is not None and self.server.listen_tls is not None
            self.transport = ClientTls(self.transport, self, self.server.listen_tls, self._reader.take_rest())
        else:
            assert type(step) is Accepted
            self._write(step.data)
            self._phase = _COMMAND  # commands that arrive while the login finishes are queued
            self.busy = True
            self.server.spawn(self._finish_login(step))

    async def _finish_login(self, login: Accepted) -> None:
        """Create the session; check the schema the client named exists (as the server would)."""
        seq = login.ok_seq
        admin_user = self.server.config.admin.user
        self.is_admin = bool(admin_user) and login.user == admin_user
        upstream = self.server.first_upstream() if self.is_admin else self.server.route(login.user)
        if upstream is None:
            # A reload removed the user's pool between the password check and now.
            log.warning("client %d (%s): user '%s' has no pool since the last reload", self.proxy_id, self.peer,
                        printable(login.user))
            self._fatal(Err.ACCESS_DENIED, f"Access denied for user '{login.user}'", seq)
            return
        self.upstream = upstream
        self.pool = upstream.pool
        db = login.database or upstream.spec.backend.database
        self.session = Session(
            proxy_id=self.proxy_id,
            user=login.user,
            client_caps=login.caps,
            state=LinkState(schema=db, multi_statements=bool(login.caps & Cap.MULTI_STATEMENTS)),
        )
        self.session.state.variables.update(upstream.charset_variables(login.collation))
        # Links opened with CLIENT_FOUND_ROWS or metadata caching answer differently: the pool keeps them apart.
        self._pool_kind = login.caps & KIND_CAPS
        self._login_ended()
        self._reader.max_payload = self.server.config.max_allowed_packet
        # Logged-in clients count against max_client_connections (the admin console never does,
        # as the server keeps a connection for SUPER).
        logged_in = len(self.server.clients) - self.server.pending_logins
        if not self.is_admin and logged_in > self.server.config.listen.max_client_connections:
            self._fatal(Err.CON_COUNT, "Too many connections (mysql-pool-proxy max_client_connections reached)", seq)
            return
        if login.database and login.database not in upstream.known_schemas and not self.is_admin:
            try:
                link = await self.pool.acquire(self._pool_kind)
            except PoolTimeout as e:
                self._fatal(POOL_BUSY, e.message, seq)
                return
            try:
                await link.exchange([(Command.INIT_DB, login.database.encode())])
                link.state.schema = login.database
                upstream.known_schemas.add(login.database)
            except ServerError as e:
                self.pool.release(link)
                self._fatal(e.code, e.message, seq)
                return
            except (LinkLost, OSError) as e:
                self.pool.discard(link)
                self._fatal(Err.SERVER_LOST, f"Lost connection to MySQL server at 'handshake' ({e})", seq)
                return
            self.pool.release(link)
        if self._phase == _CLOSED:
            return
        log.debug("client %d (%s) logged in as %s", self.proxy_id, self.peer, printable(login.user))
        self._write(frame(build_ok(OK(status=Status.AUTOCOMMIT), login.caps), seq))
        if login.caps & Cap.COMPRESS and type(self.transport) is not ClientCompression:
            # Everything after the login's OK is compressed, a COM_CHANGE_USER's answers too.
            assert self.transport is not None
            self.transport = ClientCompression(self.transport, self)
        self._done()

    # -- the command loop ---------------------------------------------------------------

    def _run_pending(self) -> None:
        while self._pending and not self.busy and self._phase == _COMMAND:
            seq, payload = self._pending.popleft()
            self._command(seq, payload)
        if self._paused_reading and len(self._pending) <= MAX_PIPELINED // 2 and self.transport:
            self._paused_reading = False
            self.transport.resume_reading()

    def _done(self) -> None:
        """The current command is answered; go on with the next."""
        self.busy = False
        self._current = None
        if self.session is not None and self.session.pins:
            # Only a pinned session's idle time matters (idle_transaction_timeout).
            self.idle_since = time.monotonic()
        if self._pending:
            self._run_pending()

    def _command(self, seq: int, payload: bytes) -> None:
        session = self.session
        assert session is not None
        if not payload:
            self._fatal(Err.NET_READ_ERROR, "Got an empty command packet", seq + 1)
            return
        cmd = payload[0]
        if session.kept_warnings is not None:
            if cmd == Command.QUERY and self._kept_warnings_answer(seq, payload):
                return
            if cmd == Command.STMT_EXECUTE or cmd == Command.STMT_PREPARE:
                session.kept_warnings = None  # a new statement: they are no longer the last one's
        if session.pending_error is not None and (cmd == Command.QUERY or cmd == Command.STMT_EXECUTE):
            code, message = session.pending_error
            session.pending_error = None
            self.send_error(code, message, seq + 1)
            return
        stmt = None
        if cmd == Command.QUERY and not self.is_admin:
            escapes = session.backslash_escapes
            stmt = classify(payload[1:], self.upstream.backslash_escapes if escapes is None else escapes)
            if stmt is not None:
                if session.transaction_lost and self._after_lost_transaction(seq, cmd, stmt):
                    return
                if (stmt.kind == Kind.SESSION_SET and not session.pins and self.link is None
                        and self._set_here(seq, payload)):
                    return  # SET NAMES / SET autocommit from a session that holds no link
                if Kind.KILL in stmt.kind:
                    self._kill(seq, stmt)
                    return
                if Kind.PREPARE in stmt.kind and any(
                        p is not None and p.kind & (Kind.KILL | Kind.PROCESSLIST) for p in stmt.prepared.values()):
                    # Executed later, it would name the server's threads: refused like KILL in a multi-statement.
                    self.send_error(Err.UNSUPPORTED_PS, "mysql-pool-proxy does not prepare KILL or SHOW PROCESSLIST; "
                                    "send them as plain statements", seq + 1)
                    return
                if Kind.PROCESSLIST in stmt.kind:
                    self._processlist(seq, payload[1:])
                    return
                if Kind.CONNECTION_ID in stmt.kind:
                    payload = bytes((Command.QUERY,)) + rewrite_connection_id(payload[1:], self.proxy_id)
                if Kind.IS_USED_LOCK in stmt.kind:
                    payload = bytes((Command.QUERY,)) + rewrite_is_used_lock(payload[1:], self._thread_ids())
                if Kind.LOAD_LOCAL in stmt.kind and not session.client_caps & Cap.LOCAL_FILES:
                    # The server would refuse it for this client; our link could not (it has LOCAL_FILES).
                    self.send_error(ER_LOCAL_INFILE_DISABLED, _LOCAL_INFILE_MESSAGE, seq + 1)
                    return
            elif session.transaction_lost and self._after_lost_transaction(seq, cmd, stmt):
                return
        elif (cmd == Command.STMT_EXECUTE and not self.is_admin
              and (ps := session.statements.get(statement_id(payload))) is not None):
            # The usual binary command: a statement this client prepared, nothing to answer here.
            # Its text decides its pins as a COM_QUERY's would (DO GET_LOCK(?, 0) holds a lock).
            if session.transaction_lost and self._after_lost_transaction(seq, cmd, None):
                return
            self._statement = ps
            stmt = ps.classified
        elif session.transaction_lost and self._after_lost_transaction(seq, cmd, None):
            return
        elif cmd == Command.STMT_PREPARE and not self.is_admin:
            stmt = classify(payload[1:], self._backslash_escapes(session))
            if stmt is not None:
                if Kind.KILL in stmt.kind or Kind.PROCESSLIST in stmt.kind:
                    self.send_error(Err.UNSUPPORTED_PS, "This command is not supported in the prepared statement "
                                    "protocol through mysql-pool-proxy; send it as a plain statement", seq + 1)
                    return
                if Kind.CONNECTION_ID in stmt.kind:
                    payload = bytes((Command.STMT_PREPARE,)) + rewrite_connection_id(payload[1:], self.proxy_id)
        elif self._answered_here(seq, cmd, payload):
            return
        if session.pins:
            session.before_statement(stmt)
        self.statements += 1
        self.busy = True
        self._retried = False
        self._current = (seq, payload, cmd, stmt)
        self._follow_up = follow_up = stmt is not None and Kind.FOLLOW_UP in stmt.kind
        link = self.link
        if link is not None:
            self._fresh_link = False
            if link.state.multi_statements != session.state.multi_statements:
                # COM_SET_OPTION is answered here: a link the session keeps learns it before the statement.
                self.server.spawn(self._replay_and_send(link, False))
                return
            self._send(link)
            return
        link = self._follow_up_link() if follow_up else None
        if link is None:
            self._lease()
        else:
            self._leased(link, own_diagnostics=True)

    def _backslash_escapes(self, session: Session) -> bool | None:
        """How the server reads '\\' in this session's strings (None: not known yet)."""
        escapes = session.backslash_escapes
        return self.upstream.backslash_escapes if escapes is None else escapes

    def _charset_key(self, charset: bytes, collation: bytes | None) -> tuple[object, ...]:
        variables = self.session.state.variables  # type: ignore[union-attr]
        return (charset, collation, *(variables.get(name) for name in _CHARSET_CONTEXT))

    def _set_here(self, seq: int, payload: bytes) -> bool:
        """SET NAMES / SET autocommit answered by the proxy with the OK the server would send
        this client; True when it did. The values reach a link with the next replay that link
        needs (none when it has them already).

        Only for a session that holds no link, so no transaction is open (SET autocommit = 1
        would commit it) and no link must learn it now. A SET NAMES is answered only with what
        this server did for the same statement before (the variables it set, what a client's
        trackers got, no warning): the first one of each kind goes to the server, so do names
        it refuses or warns about (MySQL's utf8mb3), and its errors stay its own."""
        change = session_set(payload[1:])
        session = self.session
        if change is None or session is None:
            return False
        if change.autocommit is None:
            answer = self.upstream.charset_answers.get(self._charset_key(change.charset, change.collation))
            if answer is None:
                return False
            session.state.variables.update(answer.values)
            block = answer.block
        else:
            value = b"ON" if change.autocommit else b"OFF"
            session.state.variables["autocommit"] = value.decode()
            session.autocommit_off = not change.autocommit
            block = _AUTOCOMMIT_BLOCKS[value]
        # What ROW_COUNT() says after a SET; a later follow-up question finds no link to ask.
        session.last_row_count = 0
        session.last_link = None
        self.statements += 1
        status = self._status()
        if session.client_caps & Cap.SESSION_TRACK and block:
            status |= Status.SESSION_STATE_CHANGED
        self._write(frame(build_ok(OK(status=status, session_state=block), session.client_caps), seq + 1))
        return True

    def _answered_here(self, seq: int, cmd: int, payload: bytes) -> bool:
        """Commands other than COM_QUERY: True when the proxy answered (or dropped) it itself."""
        session = self.session
        assert session is not None
        if cmd == Command.QUIT:
            self._phase = _CLOSED
            if self.transport:
                self.transport.close()
            return True
        if self.is_admin:
            self._admin_command(seq, cmd, payload)
            return True
        if cmd == Command.PING:
            self._write(frame(build_ok(OK(status=self._status()), session.client_caps), seq + 1))
            return True
        if cmd == Command.PROCESS_KILL:
            # mysql_kill(), PHP's mysqli::kill(): the id is one a greeting of this proxy gave.
            target = int.from_bytes(payload[1:5], "little") if len(payload) >= 5 else None
            self._kill(seq, Classified(kind=Kind.KILL, kill_id=target, statements=1))
            return True
        if cmd == Command.SET_OPTION and len(payload) >= 3:
            # Applied to whichever link serves the next statement (COM_SET_OPTION on lease).
            session.set_multi_statements(int.from_bytes(payload[1:3], "little") == 0)
            self._write(frame(build_eof(self._status()), seq + 1))
            return True
        if cmd == Command.RESET_CONNECTION:
            self.busy = True
            self.server.spawn(self._reset_session(seq))
            return True
        if cmd == Command.CHANGE_USER:
            self.busy = True
            self.server.spawn(self._change_user(seq, payload))
            return True
        if cmd in _BY_STATEMENT:
            return not self._statement_command(seq, cmd, payload)
        if cmd not in TRACKED:
            self.send_error(Err.UNKNOWN_COM, f"Unknown command {cmd} (not supported through mysql-pool-proxy)", seq + 1)
            return True
        return False

    def _lease(self) -> None:
        """A link for the current command: now, or when the pool calls back."""
        got = self.pool.lease(self._pool_kind, self._on_lease)
        if isinstance(got, BackendLink):
            self._leased(got)
        else:
            self._waiter = got  # queued: _on_lease gets the link

    def _on_lease(self, link: BackendLink | None, error: PoolTimeout | None) -> None:
        self._waiter = None
        if link is None:
            message = error.message if error else "no link"
            log.warning("client %d: %s", self.proxy_id, message)
            self._answer_error(POOL_BUSY, message)
            return
        if self._phase == _CLOSED:
            self.pool.release(link)
            return
        self._leased(link)

    def _leased(self, link: BackendLink, own_diagnostics: bool = False) -> None:
        """``own_diagnostics``: the link is the one the session's last statement ran on, untouched since."""
        self.link = link
        link.leased_by = self.proxy_id
        self._fresh_link = True
        # The link must first be brought to the session's state, and must not answer
        # a follow-up question with another session's warnings (but must with the session's own:
        # clearing them would also reset FOUND_ROWS() and ROW_COUNT()).
        clear = self._follow_up and link.diagnostics_dirty and not own_diagnostics
        if clear or not link.state.same_as(self.session.state):  # type: ignore[union-attr]
            self.server.spawn(self._replay_and_send(link, clear))
        else:
            self._send(link)

    def _follow_up_link(self) -> BackendLink | None:
        """A statement about the previous one (ROW_COUNT(), SHOW WARNINGS ...): its link, if untouched.

        Otherwise the values the proxy kept stand in for ROW_COUNT() and FOUND_ROWS().
        """
        session = self.session
        assert session is not None and self._current is not None
        last = session.last_link
        if isinstance(last, BackendLink) and last.uses == session.last_link_uses:
            link = self.pool.take_back(last)
            if link is not None:
                return link
        seq, payload, cmd, stmt = self._current
        sql = rewrite_call(payload[1:], "row_count", session.last_row_count)
        sql = rewrite_call(sql, "found_rows", session.last_found_rows)
        self._current = (seq, payload[:1] + sql, cmd, stmt)
        return None

    def _send(self, link: BackendLink) -> None:
        session = self.session
        assert self._current is not None and session is not None
        seq, payload, cmd, stmt = self._current
        alias = 0
        supply = None
        if stmt is not None and Kind.PROCESSLIST_TABLE in stmt.kind and cmd == Command.QUERY:
            # Mapped here, with this client's own link known: its row is in the answer.
            payload = bytes((Command.QUERY,)) + rewrite_processlist_table(
                payload[1:], self.upstream.processlist_columns, self._thread_ids(same_account=True))
        if cmd == Command.STMT_PREPARE:
            session.last_statement_id += 1
            alias = session.last_statement_id
        elif cmd in _BY_STATEMENT:
            ps = self._statement
            assert ps is not None
            prepared = link.prepared.get(ps.sql)
            if prepared is None:
                # This link never saw the statement: prepare it here first.
                self.server.spawn(self._prepare_and_send(link, ps))
                return
            if cmd == Command.STMT_EXECUTE:
                try:
                    payload, ps.param_types = bind_execute(payload, prepared.id, ps.num_params, ps.param_types,
                                                           prepared.bound_types)
                except ProtocolError as e:
                    # Nothing was sent: the link is as clean as it was. (This may run in a task,
                    # where a raise would leave the client waiting with the link.)
                    self._give_back(link)
                    self._answer_error(e.code, f"Malformed COM_STMT_EXECUTE: {e}")
                    return
                prepared.bound_types = ps.param_types
                if prepared.columns is not ps.columns and link.tracker.cache_metadata:
                    # Metadata caching: this link's server leaves out definitions it sent before,
                    # and the client must hold the same ones (a table may have changed in between).
                    if prepared.columns == ps.columns:
                        ps.columns = prepared.columns  # the same: compared by identity from now on
                    else:
                        supply = prepared.columns
                        log.debug("client %d: the link may leave out column definitions the client lacks; "
                                  "putting them in", self.proxy_id)
            else:
                payload = with_statement_id(payload, prepared.id)
            if cmd == Command.STMT_SEND_LONG_DATA:
                # No answer comes; the link stays with the session until the execute.
                link.write_packet(payload, seq)
                link.set_held()
                session.pin(PIN_LONG_DATA)
                self._done()
                return
        link.start_relay(payload, seq, cmd, self, session.client_caps, alias, supply)

    async def _prepare_and_send(self, link: BackendLink, ps: PreparedStatement) -> None:
        try:
            link.set_held()
            (reply,) = await link.exchange([(Command.STMT_PREPARE, ps.sql)])
        except ServerError as e:
            self._give_back(link)
            self._answer_error(e.code, e.message)
            return
        except (LinkLost, OSError) as e:
            self.relay_failed(link, e, received_any=False, sent=False)  # only the PREPARE was sent
            return
        prepared = reply.tracker.prepare
        assert prepared is not None
        link.remember_statement(ps.sql, prepared.statement_id, prepared.num_params, tuple(reply.tracker.columns))
        if self._phase == _CLOSED:
            self._give_back(link)
            return
        self._send(link)

    def _give_back(self, link: BackendLink) -> None:
        """Return the link unless the session must keep it."""
        if self.session is not None and self.session.pinned:
            return
        self.link = None
        self.pool.release(link)

    def _statement_command(self, seq: int, cmd: int, payload: bytes) -> bool:
        """Checks for commands naming a binary statement. False: answered (or nothing to do) here."""
        session = self.session
        assert session is not None
        pid = statement_id(payload)
        ps = session.statements.get(pid)
        if ps is None and pid == LAST_PREPARED and cmd != Command.STMT_CLOSE:
            ps = session.statements.get(session.last_prepared)
        if cmd == Command.STMT_CLOSE:
            closed = session.statements.pop(pid, None)
            if ps is not None and self.link is not None and PIN_CURSOR in session.pins:
                # Closing the statement closes its cursor: the server copy goes too.
                prepared = self.link.prepared.pop(ps.sql, None)
                if prepared is not None:
                    self.link.write_packet(with_statement_id(payload, prepared.id), seq)
                session.unpin(PIN_CURSOR)
                if self.link is not None:
                    self._give_back(self.link)
            if closed is not None:
                _statements_closed(self.pool, (closed.sql,), self.link)
            return False
        if ps is None:
            if cmd != Command.STMT_SEND_LONG_DATA:  # that one never gets an answer
                self.send_error(Err.UNKNOWN_STMT_HANDLER, f"Unknown prepared statement handler ({pid}) given to mysqld_stmt_execute", seq + 1)
            return False
        if cmd == Command.STMT_FETCH and (self.link is None or PIN_CURSOR not in session.pins):
            self.send_error(ER_STMT_HAS_NO_OPEN_CURSOR, f"The statement ({pid}) has no open cursor.", seq + 1)
            return False
        if cmd == Command.STMT_RESET and self.link is None:
            # Nothing of it lives on a link: no long data, no cursor. Reset is a no-op.
            self._write(frame(build_ok(OK(status=self._status()), session.client_caps), seq + 1))
            return False
        self._statement = ps
        return True

    async def _replay_and_send(self, link: BackendLink, clear_diagnostics: bool) -> None:
        """Bring the link to the session's state (one pipelined round trip), then send."""
        assert self.session is not None
        try:
            if (self.session.state.schema is None and link.state.schema is not None
                    and not self._needs_no_schema()):
                # A session with no database must not run on one ("No database selected", 1046).
                await clear_schema(link, self.upstream.spec.backend)
                clear_diagnostics = False  # the change of user cleared them
            want = self._replay_target(link)
            commands = replay_commands(want, link.state)
            if clear_diagnostics:
                # Another session's warnings must not answer this session's SHOW WARNINGS.
                commands.append((Command.QUERY, CLEAR_DIAGNOSTICS))
            if commands:
                link.set_held()
                await link.exchange(commands)
            if clear_diagnostics:
                link.diagnostics_dirty = False
            mark_replayed(want, link.state)
        except (ServerError, ProtocolError) as e:
            # Part of the state may be applied: the link's state is unknown now.
            self.link = None
            self.pool.discard(link)
            log.warning("client %d: restoring session state failed: %s", self.proxy_id, e)
            if isinstance(e, ServerError):
                self._answer_error(e.code, e.message)
            else:
                self._answer_error(Err.SERVER_LOST, f"Lost connection to MySQL server: {e}")
            return
        except (LinkLost, OSError) as e:
            self.relay_failed(link, e, received_any=False, sent=False)  # only the replay was sent
            return
        if self._phase == _CLOSED:
            self.link = None
            self.pool.release(link)
            return
        self._send(link)

    def _replay_target(self, link: BackendLink) -> LinkState:
        """The state to replay: the session's, less a variable the statement itself sets to a
        constant (WordPress's SET SESSION sql_mode = '...' on a link with another sql_mode), which
        the link keeps as it is: the statement overwrites it, and should it fail, the link holds
        what the proxy knows it holds, so a later replay sets it."""
        state = self.session.state  # type: ignore[union-attr]
        assert self._current is not None
        _seq, payload, cmd, _stmt = self._current
        name = variable_overwritten(payload[1:]) if cmd == Command.QUERY else None
        if name is None or name in CHARSET_VARIABLES or name == "autocommit":
            return state
        have = link.state.variables.get(name)
        if state.variables.get(name) == have:
            return state
        want = state.copy()
        if have is None:
            del want.variables[name]
        else:
            want.variables[name] = have
        return want

    def _needs_no_schema(self) -> bool:
        """The current command reads nothing of the default database (mysqli's SET NAMES, SET
        sql_mode, SELECT @@x before it selects one): a link that has one serves it as it is, with no
        COM_CHANGE_USER, which on MySQL counts as a new connection against the account's limit."""
        assert self._current is not None
        _seq, payload, cmd, _stmt = self._current
        return cmd == Command.INIT_DB or (cmd == Command.QUERY and needs_no_schema(payload[1:]))

    def _answer_error(self, code: int, message: str) -> None:
        """Answer the current command with an error and go on."""
        if self._current is not None:
            self.send_error(code, message, self._current[0] + 1)
        self._done()

    def _admin_command(self, seq: int, cmd: int, payload: bytes) -> None:
        caps = self.session.client_caps if self.session else 0
        if cmd == Command.QUERY:
            replies = self.server.admin_statement(payload[1:].decode(errors="replace"), caps)
            self._write(b"".join(frame(p, seq + 1 + i) for i, p in enumerate(replies)))
        elif cmd in (Command.PING, Command.INIT_DB):
            self._write(frame(build_ok(OK(), caps), seq + 1))
        else:
            self.send_error(Err.UNKNOWN_COM, "admin console: only text statements are supported", seq + 1)

    # -- relay callbacks (called by the link's protocol) ---------------------------------

    def relay_chunks(self, chunks: Sequence[bytes | memoryview]) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            # Whole bytes, not memoryviews: the event loop sends bytes without an extra buffering step.
            t.write(chunks[0] if len(chunks) == 1 and type(chunks[0]) is bytes else b"".join(chunks))

    def relay_done(self, link: BackendLink, event: int, chunks: Sequence[bytes | memoryview]) -> None:
        if event == INFILE:
            self.relay_chunks(chunks)
            self._start_infile(link)
            return
        assert event == DONE and self._current is not None and self.session is not None
        _seq, payload, cmd, stmt = self._current
        tr = link.tracker
        session = self.session
        # A PREPARE runs nothing: its text's classification is for the executes.
        read_back = session.after_response(cmd, tr, None if cmd == Command.STMT_PREPARE else stmt, link.state)
        if cmd in _STATEMENTS:
            session.last_row_count = -1 if tr.result_set or tr.error_code else tr.affected_rows
            if tr.result_set:
                session.last_found_rows = tr.rows
            session.last_link, session.last_link_uses = link, link.uses
        if cmd == Command.STMT_PREPARE:
            if tr.prepare is not None:
                sql = payload[1:]
                columns = tuple(tr.columns)
                session.statements[tr.statement_alias] = PreparedStatement(
                    sql, tr.prepare.num_params, tr.prepare.num_columns, columns=columns, classified=stmt)
                link.remember_statement(sql, tr.prepare.statement_id, tr.prepare.num_params, columns)
                _statements_opened(self.pool, sql)
                session.last_prepared = tr.statement_alias
            else:
                session.last_prepared = 0  # it failed: id -1 names no statement now
        elif session.pins and (cmd == Command.STMT_EXECUTE or cmd == Command.STMT_RESET):
            session.unpin(PIN_LONG_DATA)
        if tr.columns and cmd == Command.STMT_EXECUTE and self._statement is not None:
            # Metadata caching: the client got (new) definitions, which this link's server now holds as sent.
            self._statement.columns = columns = tuple(tr.columns)
            if (prepared := link.prepared.get(self._statement.sql)) is not None:
                prepared.columns = columns
        if cmd == Command.STMT_RESET or (tr.error_code and cmd == Command.STMT_EXECUTE):
            link.forget_bound_types()  # what the server keeps bound is no longer certain
        if read_back:
            names = self._set_names_answer(cmd, payload, link) if cmd == Command.QUERY else None
            known = self.upstream.charset_answers.get(names[0]) if names is not None else None
            if known is None:
                known = self._warned_set_names(cmd, payload, link)
            if known is None:
                self.relay_chunks(chunks)
                link.set_held()
                self.server.spawn(self._read_back_then_finish(link, names))
                return
            # A SET NAMES whose collation is known: no read-back.
            session.state.variables.update(known.values)
            link.state.variables.update(known.values)
        self._finish(link, chunks)

    def _warned_set_names(self, cmd: int, payload: bytes, link: BackendLink) -> CharsetAnswer | None:
        """A SET NAMES the server warned about (MySQL's utf8, utf8mb3): its collation without a
        read-back, which would clear the warning before the client's SHOW WARNINGS (None: not one)."""
        tr = link.tracker
        change = session_set(payload[1:]) if cmd == Command.QUERY and tr.warnings and not tr.error_code else None
        if change is None or change.autocommit is not None:
            return None
        charset = link.state.variables.get("character_set_connection", "")
        collation = change.collation.decode() if change.collation else self.upstream.default_collations.get(charset)
        return CharsetAnswer({"collation_connection": collation}, b"") if collation else None

    def _set_names_answer(self, cmd: int, payload: bytes, link: BackendLink) -> tuple[tuple[object, ...], bytes] | None:
        """For a SET NAMES the server just ran without error or warning: the key of its answer,
        and the statement (None: not such a statement)."""
        tr = link.tracker
        if tr.error_code or tr.warnings:
            return None
        change = session_set(payload[1:])
        if change is None or change.autocommit is not None:
            return None
        return self._charset_key(change.charset, change.collation), payload[1:]

    async def _read_back_then_finish(self, link: BackendLink,
                                     names: tuple[tuple[object, ...], bytes] | None = None) -> None:
        """Read back state the server does not report (collation, LAST_INSERT_ID(expr)): one round trip.

        ``names``: the statement was a SET NAMES (``_set_names_answer``). What it did is kept, so
        the same statement is answered without the server from then on. The OK a client gets
        comes from the statement run once more with the server's default trackers, as a client's
        own session has them: MariaDB lists the variables in an order of its own per server
        process, and for all of them ('*', the link's) in another."""
        assert self.session is not None
        commands = [(Command.QUERY, READ_BACK)]
        if names is not None:
            commands[:0] = [(Command.QUERY, b"SET session_track_system_variables = DEFAULT"), (Command.QUERY, names[1]),
                            (Command.QUERY, b"SET session_track_system_variables = '*'")]
        try:
            *replies, reply = await link.exchange(commands)
        except (ServerError, LinkLost, OSError) as e:
            log.info("client %d: could not read session state back (%s); closing that link", self.proxy_id, e)
            self.link = None
            self.pool.discard(link)
            self.session.forget_link_state()
            self._done()
            return
        row = reply.rows()[0]
        values = charset_values(row)
        if names is not None:
            again = replies[1].tracker
            if not again.warnings and len(again.state_blocks) <= 1:
                block = default_session_state(bytes(again.state_blocks[0])) if again.state_blocks else b""
                self.upstream.learn_charset_answer(names[0], CharsetAnswer(dict(values), block))
        last_insert_id = row[4] or "0"
        if last_insert_id != "0" or "last_insert_id" in self.session.state.variables:
            values["last_insert_id"] = last_insert_id  # 0 is what a session that never set it has
        self.session.state.variables.update(values)
        link.state.variables.update(values)
        self._finish(link)

    def _finish(self, link: BackendLink, chunks: Sequence[bytes | memoryview] = ()) -> None:
        """The response is complete: keep the link if the session must, else give it back.

        ``chunks``, the response's last bytes, are written after the link went on to
        the next queued command: the links are what clients queue for, so the server
        gets its next statement before this client (woken by the write) competes for the CPU.
        """
        session = self.session
        assert session is not None
        error = link.tracker.error_code
        if error:
            self.server.client_stats.errors[error] += 1
        if error in _LINK_CLOSING:
            # The server is closing this link; it will not serve another statement.
            self.link = None
            self.pool.discard(link)
        elif session.pins:
            link.set_held()
        else:
            self.link = None
            session.multiplexed += 1
            if link.swept != _closed_generation.get(id(self.pool), 0):
                _sweep_statements(self.pool, link)
            self.pool.release(link)
        if chunks:
            self.relay_chunks(chunks)
        self._done()

    def relay_failed(self, link: BackendLink, error: Exception, received_any: bool, sent: bool = True) -> None:
        """The link died under the current command (also when the proxy itself was using it for the client).

        ``sent``: the command was written to the link (the server may have run it)."""
        self.link = None
        self.pool.discard(link)
        if self._phase != _CLOSED:
            self._retry_or_fail(received_any, sent)

    def _retry_or_fail(self, received_any: bool, sent: bool) -> None:
        """A link died under a command. Send it again only when it provably did not run.

        "No answer came" does not mean "it did not run": the server may have run and committed
        it, then died, or the answer may have been cut on its way back. So a command goes again
        only when it never reached the server (the link was dead before the write; only the
        proxy's own replay was sent), or when it is a plain read. Dead idle links are found
        before lending (the EOF watch, a ping after long idleness): that keeps them invisible."""
        session = self.session
        assert session is not None and self._current is not None
        _seq, payload, cmd, stmt = self._current
        in_transaction = PIN_TRANSACTION in session.pins
        if (not received_any and self._fresh_link and not session.pinned and not self._retried
                and (not sent or (cmd == Command.QUERY and is_retryable_read(payload[1:], self._backslash_escapes(session))))):
            self._retried = True
            log.info("client %d: link died before answering a statement that %s; sending it again on a new link",
                     self.proxy_id, "it never reached" if not sent else "only reads")
            self._lease()
            return
        ends_transaction = stmt is not None and Kind.TRANSACTION_END in stmt.kind
        if in_transaction and not ends_transaction:
            what = "the open transaction was rolled back and nothing of it was committed; send ROLLBACK to go on"
        elif in_transaction:
            what = "the transaction may or may not have been committed"
        else:
            what = "the statement may or may not have run"
        lost_state = ", ".join(session.pins) or "none"
        log.warning("client %d: link lost mid-command (%s; pinned for: %s)", self.proxy_id, what, lost_state)
        session.forget_link_state()
        if in_transaction and not ends_transaction:
            session.transaction_lost = "its server connection was lost"
        self._answer_error(Err.SERVER_LOST, f"Lost connection to MySQL server during query: the server closed the link; {what}")

    def _after_lost_transaction(self, seq: int, cmd: int, stmt: Classified | None) -> bool:
        """The client's transaction was lost with its link. True: the command was answered here.

        Until the client says ROLLBACK, every statement fails (COMMIT too): run on a new link
        in autocommit, they would commit the second half of a transaction whose first half is gone.
        """
        session = self.session
        assert session is not None
        if cmd in _AFTER_LOST_TRANSACTION:
            return False
        if stmt is not None and Kind.ROLLBACK in stmt.kind and stmt.statements == 1:
            session.transaction_lost = ""
            log.info("client %d: ROLLBACK after a lost transaction; going on", self.proxy_id)
            self._write(frame(build_ok(OK(status=self._status()), session.client_caps), seq + 1))
            return True
        self.send_error(Err.CONNECTION_KILLED, f"The transaction was rolled back: {session.transaction_lost}. Nothing "
                        "of it was committed; send ROLLBACK before the next statement", seq + 1)
        return True

    # -- LOCAL INFILE ------------------------------------------------------------------------

    def hold_client_input(self, hold: bool) -> None:
        """The link's send buffer is full (or drained again) while it takes this client's file."""
        t = self.transport
        if t is None or t.is_closing() or self._paused_reading:
            return  # paused for pipelining already: _run_pending resumes it
        if hold:
            t.pause_reading()
        else:
            t.resume_reading()

    def _start_infile(self, link: BackendLink) -> None:
        assert self.session is not None
        if not self.session.client_caps & Cap.LOCAL_FILES:
            # The client cannot send files: answer the server with none; the response goes on.
            link.write_packet(b"", 2)
            return
        self._phase = _INFILE

    def _infile_packet(self, seq: int, payload: bytes) -> None:
        link = self.link
        if link is None:
            return
        link.continue_relay(frame(payload, seq))
        if not payload:
            self._phase = _COMMAND  # the server answers next; the relay is still on

    # -- status and session commands -------------------------------------------------------

    def _status(self) -> int:
        s = Status.AUTOCOMMIT
        if self.session is not None:
            if self.session.state.variables.get("autocommit", "ON").upper() in ("OFF", "0"):
                s = 0
            if PIN_TRANSACTION in self.session.pins:
                s |= Status.IN_TRANS
            # Drivers escape strings by this flag of the last OK: without it they write \' for a
            # quote, and under NO_BACKSLASH_ESCAPES that quote ends the string.
            s |= Status.NO_BACKSLASH_ESCAPES if self._backslash_escapes(self.session) is False else 0
        return s

    async def _roll_back_and_release(self, link: BackendLink) -> None:
        try:
            link.set_held()
            await link.exchange([(Command.QUERY, b"ROLLBACK")])
        except (ServerError, LinkLost, OSError, ProtocolError) as e:
            log.info("link %d: the transaction of a departed client could not be rolled back (%s); closing the link",
                     link.facts.thread_id, e)
            self.pool.discard(link)
            return
        self.pool.release(link)

    async def _reset_and_release(self, link: BackendLink) -> None:
        try:
            await reset_link(link)
        except (ServerError, LinkLost, OSError, ProtocolError) as e:
            log.info("link %d could not be reset (%s); closing it", link.facts.thread_id, e)
            self.pool.discard(link)
            return
        self.pool.release(link)

    async def _drop_link_state(self) -> None:
        """Forget everything the session held on its link (reset it, give it back)."""
        link, self.link = self.link, None
        if link is not None:
            await self._reset_and_release(link)

    async def _reset_session(self, seq: int, refused: Refused | None = None) -> None:
        """COM_RESET_CONNECTION, or a COM_CHANGE_USER with a wrong password (``refused``), which the
        server answers with the error while it keeps the connection as before, its session reset."""
        session = self.session
        assert session is not None
        await self._drop_link_state()
        schema = session.state.schema
        session.state = LinkState(schema=schema, multi_statements=session.state.multi_statements)
        assert self._login is not None
        session.state.variables.update(self.upstream.charset_variables(self._login.collation))
        session.forget_link_state()
        _statements_closed(self.pool, [ps.sql for ps in session.statements.values()], None)
        session.statements.clear()
        if refused is not None:
            self.send_error(refused.code, refused.message, refused.seq)
        else:
            self._write(frame(build_ok(OK(status=Status.AUTOCOMMIT), session.client_caps), seq + 1))
        self._done()

    async def _change_user(self, seq: int, payload: bytes) -> None:
        """COM_CHANGE_USER: authenticate again, then start a fresh session."""
        login = self._login
        assert login is not None
        before = (login.user, login.database, login.collation)
        try:
            step = login.change_user(seq, payload)
        except ProtocolError:
            self._fatal(Err.HANDSHAKE, "Bad COM_CHANGE_USER packet", seq + 1)
            return
        if type(step) is Refused and self.session is not None:
            log.warning("client %d (%s): COM_CHANGE_USER to '%s' refused", self.proxy_id, self.peer, printable(login.user))
            login.user, login.database, login.collation = before
            await self._reset_session(seq, step)
            return
        await self._drop_link_state()
        if self.session is not None:
            _statements_closed(self.pool, [ps.sql for ps in self.session.statements.values()], None)
        self.session = None
        self._phase = _LOGIN
        self._login_step(step)

    # -- KILL ---------------------------------------------------------------------------------

    def _kill(self, seq: int, stmt: Classified) -> None:
        """KILL [QUERY] <proxy id>: act on the link serving that client.

        Only the ids this proxy gave are known to clients; a KILL the proxy cannot translate
        (inside a multi-statement, of an expression, KILL USER) is refused, never sent: it would
        name the server's threads, which serve other clients."""
        if stmt.kill_id is None:
            self.send_error(Err.NOT_SUPPORTED_YET, "mysql-pool-proxy translates only KILL [CONNECTION | QUERY] <id> "
                            "sent alone, with the id of a connection to this proxy", seq + 1)
            return
        target = self.server.clients.get(stmt.kill_id)
        if target is None or target.session is None:
            self.send_error(Err.UNKNOWN_THREAD, f"Unknown thread id: {stmt.kill_id}", seq + 1)
            return
        if target.upstream is not self.upstream or target.session.user != self.session.user:  # type: ignore[union-attr]
            # Another account's connection: the server refuses that without SUPER, and so does the proxy.
            self.send_error(Err.NOT_THREAD_OWNER, f"You are not owner of thread {stmt.kill_id}", seq + 1)
            return
        link = target.link
        if link is None or not target.busy:
            if not stmt.kill_query_only:
                self.server.spawn(target.kill_connection())
        self._write(frame(build_ok(OK(status=self._status()), self.session.client_caps if self.session else 0), seq + 1))
        if link is not None and (target.busy or not stmt.kill_query_only):
            self.server.spawn(self.upstream.kill_backend_thread(link.facts.thread_id, stmt.kill_query_only))

    def _thread_ids(self, same_account: bool = False) -> dict[int, int]:
        """Server thread id -> proxy id, for this pool's clients that hold a link now (a client
        holding a named lock is pinned, so it holds the link whose thread owns the lock), or only
        those of this client's own account."""
        me = self.session.user if self.session is not None else None
        return {c.link.facts.thread_id: c.proxy_id for c in self.server.clients.values()
                if c.link is not None and c.upstream is self.upstream
                and (not same_account or (c.session is not None and c.session.user == me))}

    def _processlist(self, seq: int, sql: bytes) -> None:
        """SHOW [FULL] PROCESSLIST: this account's connections to the proxy, under the ids they know.

        The server's own list would show its thread ids (which serve every client in turn) and,
        with the PROCESS privilege, other accounts' sessions."""
        session = self.session
        assert session is not None
        full = b"full" in sql.lower()
        now = time.monotonic()
        rows = []
        for client in list(self.server.clients.values()):
            other = client.session
            if other is None or client.upstream is not self.upstream or other.user != session.user:
                continue
            running = client is self or client.busy
            current = client._current
            info = None
            if client is self:
                info = sql.decode(errors="replace")
            elif running and current is not None and current[2] == Command.QUERY:
                info = current[1][1:].decode(errors="replace")
            if info is not None and not full:
                info = info[:100]
            host = client.peer
            rows.append([client.proxy_id, other.user, host, other.state.schema, "Query" if running else "Sleep",
                         int(now - (client.idle_since if not running else now)), "" if not running else "executing", info])
        columns = ["Id", "User", "Host", "db", "Command", "Time", "State", "Info"]
        packets = build_result_set(columns, rows, self._status(), session.client_caps, numeric={"Id", "Time"})
        self._write(b"".join(frame(pk, seq + 1 + i) for i, pk in enumerate(packets)))

    async def kill_connection(self) -> None:
        """Another client killed this one (KILL <our proxy id>): closed without a word, as the server does."""
        self._phase = _CLOSED
        if self.transport is not None:
            self.transport.close()

    # -- janitor hooks ------------------------------------------------------------------------

    def close_stalled_reader(self) -> None:
        """client_write_timeout: the client read nothing of its response for too long. Its link,
        mid-response, is closed (never reused); the pool opens another for the clients waiting."""
        log.warning("client %d (%s): read nothing of its result for over %gs (client_write_timeout); closing it",
                    self.proxy_id, self.peer, self.upstream.spec.pool.client_write_timeout)
        self.write_stalled_since = 0.0
        if self.transport is not None:
            self.transport.abort()  # an error packet would only queue behind what it does not read

    def close_idle_pinned(self) -> None:
        """pinned_idle_timeout: idle too long while holding a link. The link is reset (an open
        transaction rolls back) and goes back to the pool; the client learns why, then is closed."""
        session = self.session
        reasons = ", ".join(session.pins) if session else ""
        log.warning("client %d (%s): idle for over %gs while holding a server connection (pinned for %s; "
                    "pinned_idle_timeout); closing it", self.proxy_id, self.peer,
                    self.upstream.spec.pool.pinned_idle_timeout, reasons)
        self._fatal(Err.CONNECTION_KILLED, "Connection closed by mysql-pool-proxy: idle longer than pinned_idle_timeout "
                    f"while holding a server connection ({reasons}); an open transaction was rolled back", seq=0)

    async def be_stall_victim(self, others_waiting: int) -> None:
        """Every link is held by an idle pinned client and others wait: this one gives its link up.

        Holding only a transaction, it is rolled back (the link is reset) and its next statement
        gets 1213, as a server's deadlock victim does: apps and ORMs retry on it. Nothing of it is
        committed or run again. Holding more (a named lock, a temporary table ...), which the
        proxy cannot keep for it, it is closed with an error that says so."""
        session = self.session
        if self.busy or session is None or self.link is None:
            return
        pins = ", ".join(session.pins)
        if set(session.pins) <= STALL_VICTIM_PINS:
            log.warning("client %d (%s): all server connections held by idle clients while %d waited; rolling back "
                        "this client's idle transaction (its next statement gets 1213)", self.proxy_id, self.peer,
                        others_waiting)
            self.busy = True
            session.pins.clear()
            session.pending_error = (Err.LOCK_DEADLOCK, "Deadlock found when trying to get lock; try restarting "
                                     "transaction (mysql-pool-proxy: every server connection was held by an idle "
                                     "transaction while other clients waited; this one was rolled back)")
            await self._drop_link_state()
            self._done()
            return
        log.warning("client %d (%s): all server connections held by idle clients while %d waited; closing this "
                    "client, which holds state the proxy cannot keep without its link (%s)", self.proxy_id,
                    self.peer, others_waiting, pins)
        self._fatal(Err.LOCK_DEADLOCK, "Deadlock found when trying to get lock: every server connection was held by "
                    f"an idle client while others waited; this connection held {pins} and was closed "
                    "(an open transaction was rolled back)", seq=0)

    async def give_up_diagnostics(self) -> None:
        """Others wait for a link this idle client keeps only for questions about its last
        statement's warnings: read them (one round trip), keep them for SHOW WARNINGS, and let the
        link go."""
        session, link = self.session, self.link
        if self.busy or session is None or link is None or set(session.pins) != {PIN_NEXT_STATEMENT}:
            return
        self.busy = True
        try:
            (reply,) = await link.exchange([(Command.QUERY, b"SHOW WARNINGS")])
            session.kept_warnings = reply.rows()
        except (ServerError, LinkLost, OSError) as e:
            log.info("client %d: could not read its warnings before giving its link up (%s)", self.proxy_id, e)
            session.kept_warnings = None
        session.unpin(PIN_NEXT_STATEMENT)
        if self.link is link:
            self.link = None
            if link.closed:
                self.pool.discard(link)
            else:
                self.pool.release(link)
        self._done()

    def _kept_warnings_answer(self, seq: int, payload: bytes) -> bool:
        """SHOW WARNINGS / SHOW ERRORS / SHOW COUNT(*) WARNINGS answered from the kept warnings."""
        session = self.session
        assert session is not None and session.kept_warnings is not None
        m = _SHOW_DIAGNOSTICS.match(payload, 1)
        if m is None:
            session.kept_warnings = None  # a new statement: those warnings are no longer the last
            return False
        rows = session.kept_warnings
        if m.group(2).lower() == b"errors":
            rows = [r for r in rows if (r[0] or "").lower() == "error"]
        if m.group(1):
            columns, rows = [f"@@session.{m.group(2).decode().lower()[:-1]}_count"], [[len(rows)]]
            numeric = set(columns)
        else:
            columns, numeric = ["Level", "Code", "Message"], {"Code"}
        packets = build_result_set(columns, rows, self._status(), session.client_caps, numeric=numeric)
        self._write(b"".join(frame(p, seq + 1 + i) for i, p in enumerate(packets)))
        return True

    async def end_idle_transaction(self) -> None:
        """idle_transaction_timeout: roll the transaction back and give the link to others."""
        session = self.session
        if self.busy or session is None or self.link is None:
            return
        log.warning("client %d: idle in transaction for over %gs; rolling back", self.proxy_id,
                    self.upstream.spec.pool.idle_transaction_timeout)
        self.busy = True
        session.pins.clear()
        # Its next statements fail until ROLLBACK: none of them may autocommit.
        session.transaction_lost = "it was idle longer than mysql-pool-proxy's idle_transaction_timeout"
        await self._drop_link_state()
        self._done()
