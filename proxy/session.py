"""One client's logical session: the state it expects, and the rules that pin it.

A backend link carries a ``LinkState`` too. When a session leases a link whose
state differs from the session's, ``replay_commands`` gives the commands that
make them equal (sent pipelined, one round trip). After each response,
``Session.after_response`` folds what the server reported into both states
and decides whether the session must keep its link (pin) and why.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field

from .mysql.constants import MULTI_STATEMENTS_OFF, MULTI_STATEMENTS_ON, Cap, Command, Status
from .mysql.messages import parse_session_state
from .mysql.responses import ResponseTracker
from .sql import PINNING, Classified, Kind
from .variables import NEVER_REPLAYED

log = logging.getLogger("proxy.session")

# The charset variables go first and in this order: setting a character set
# resets the matching collation, so the collation must follow it.
CHARSET_VARIABLES = ("character_set_client", "character_set_connection", "character_set_results", "collation_connection")
_ORDER = {name: i for i, name in enumerate(CHARSET_VARIABLES)}

# Variables whose "back to default" is not SET x = DEFAULT. On MySQL 8.0 and 9 (not MariaDB)
# SET foreign_key_checks = DEFAULT and unique_checks = DEFAULT turn the checks OFF: the next
# session on the link would write without them.
RESET_VALUES = {"last_insert_id": "0", "foreign_key_checks": "@@global.foreign_key_checks",
                "unique_checks": "@@global.unique_checks"}

# Tracked variables the proxy cannot replay safely: they drive the tracking
# itself or describe a single statement. A change to one pins the session.
NOT_REPLAYABLE = frozenset(
    {
        "session_track_system_variables",
        "session_track_schema",
        "session_track_state_change",
        "session_track_transaction_info",
        "insert_id",
        "pseudo_thread_id",
        "rand_seed1",
        "rand_seed2",
        "identity",
        "in_transaction",
        "warning_count",
        "error_count",
        "tx_read_only_next",
    }
)

# What the proxy itself sets on every link: a client (another proxy, say) setting the same is a no-op.
TRACKING_SETUP_VALUES = {
    "session_track_schema": "ON",
    "session_track_state_change": "ON",
    "session_track_system_variables": "*",
}

# Pin reasons. A reason names what the session holds; it ends as noted.
PIN_TRANSACTION = "transaction"  # until the server reports no open transaction (with autocommit off: until COMMIT / ROLLBACK)
PIN_TABLE_LOCK = "LOCK TABLES"  # until UNLOCK TABLES
PIN_NAMED_LOCK = "GET_LOCK"  # until every lock taken is released
PIN_SQL_PREPARE = "SQL PREPARE"  # until every named statement is deallocated
PIN_XA = "XA transaction"
PIN_HANDLER = "HANDLER"  # until the client leaves
PIN_CURSOR = "open cursor"
PIN_LONG_DATA = "COM_STMT_SEND_LONG_DATA"  # until the statement is executed or reset
PIN_STATE = "untracked session state"  # user variables, temporary tables, routines ...: until the client leaves
PIN_NEXT_STATEMENT = "diagnostics of the last statement"  # warnings, errors, FOUND_ROWS: until a statement that is not a question about them
PIN_NEXT_TRANSACTION = "SET TRANSACTION"  # characteristics of the next transaction


# IN_TRANS and AUTOCOMMIT of a status: only AUTOCOMMIT set means no transaction can be open.
_TRANSACTION_FLAGS = Status.IN_TRANS | Status.AUTOCOMMIT


@dataclass
class LinkState:
    """The replayable state of a link (or the state a session wants)."""

    schema: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    multi_statements: bool = False

    def same_as(self, other: LinkState) -> bool:
        # Compared on every lease: field by field, without the tuples the generated == builds,
        # and called as a method: the != operator on a class costs more than the comparison itself.
        return (self.schema == other.schema and self.multi_statements == other.multi_statements
                and self.variables == other.variables)

    def copy(self) -> LinkState:
        return LinkState(self.schema, dict(self.variables), self.multi_statements)


# A value the server gave as a plain number (not "0012", which a string variable may hold).
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?\Z")

# Variables the tracker reports as an empty string when they are NULL.
NULLABLE = frozenset({"character_set_results"})


def literal(value: str, name: str = "") -> str:
    """SQL literal for a variable value as the tracker reported it."""
    if not value and name in NULLABLE:
        return "NULL"
    if _NUMBER.match(value):
        return value
    if "\\" in value:
        # A hex string is read the same whatever NO_BACKSLASH_ESCAPES says.
        return "_utf8mb4 X'" + value.encode().hex() + "'"
    return "'" + value.replace("'", "''") + "'"


def replay_commands(want: LinkState, have: LinkState) -> list[tuple[int, bytes]]:
    """Commands that turn a link in state ``have`` into ``want``, in order."""
    out: list[tuple[int, bytes]] = []
    if want.schema != have.schema and want.schema:
        out.append((Command.INIT_DB, want.schema.encode()))
    assignments = []
    names = set(want.variables) | set(have.variables)
    names_clause = _names_clause(want.variables)
    if names_clause is not None and any(want.variables.get(n) != have.variables.get(n) for n in CHARSET_VARIABLES):
        # One SET NAMES sets all four, and the only way to give character_set_results the client's
        # collation: assigned one by one, result columns come back in the charset's default
        # collation (45 instead of 224 for a client that logged in with utf8mb4_unicode_ci).
        assignments.append(names_clause)
        names -= set(CHARSET_VARIABLES)
    for name in sorted(names, key=lambda n: (_ORDER.get(n, len(_ORDER)), n)):
        value = want.variables.get(name)
        if value == have.variables.get(name):
            continue
        if value is None:
            reset = RESET_VALUES.get(name)
            assignments.append(f"@@session.{name} = {reset if reset is not None else 'DEFAULT'}")
        else:
            assignments.append(f"@@session.{name} = {literal(value, name)}")
    if assignments:
        out.append((Command.QUERY, ("SET " + ", ".join(assignments)).encode()))
    if want.multi_statements != have.multi_statements:
        option = MULTI_STATEMENTS_ON if want.multi_statements else MULTI_STATEMENTS_OFF
        out.append((Command.SET_OPTION, option.to_bytes(2, "little")))
    return out


def _names_clause(variables: dict[str, str]) -> str | None:
    """``NAMES 'cs' COLLATE 'coll'`` when the wanted charset variables are what that sets."""
    client, connection, results, collation = (variables.get(n) for n in CHARSET_VARIABLES)
    if not client or client != connection or client != results or not collation:
        return None
    if collation != client and not collation.startswith(client + "_"):
        return None
    return f"NAMES {literal(client)} COLLATE {literal(collation)}"


def mark_replayed(want: LinkState, link: LinkState) -> None:
    """After the replay commands succeeded the link holds the wanted state."""
    if want.schema:
        link.schema = want.schema
    link.variables = dict(want.variables)
    link.multi_statements = want.multi_statements


@dataclass
class PreparedStatement:
    """A binary prepared statement as the client knows it (proxy-side id)."""

    sql: bytes
    num_params: int
    num_columns: int
    param_types: bytes | None = None  # from the last execute that bound them
    classified: Classified | None = None  # what its text may leave behind (None: nothing)
    # The column definitions the client last received for it (MariaDB's metadata caching: an
    # execute whose server leaves them out is decoded with these).
    columns: tuple[bytes, ...] = ()


@dataclass
class Session:
    """One client connection's logical session."""

    proxy_id: int
    user: str
    client_caps: int
    state: LinkState
    pins: dict[str, float] = field(default_factory=dict)  # reason -> since (monotonic)
    # Named locks held, by name; None counts locks whose name the lexer could not read (only
    # RELEASE_ALL_LOCKS() provably ends those).
    named_locks: Counter[bytes | None] = field(default_factory=Counter)
    # SQL-level prepared statements by name, with what their text does (None: unknown text).
    sql_prepared: dict[str, Classified | None] = field(default_factory=dict)
    # The server's status said autocommit is off after the last statement: every statement then
    # opens a transaction (the status's IN_TRANS may not say so: SAVEPOINT before any table).
    autocommit_off: bool = False
    # The link of an open transaction was lost: nothing of it committed. Every statement fails
    # until the client sends ROLLBACK (as the server would refuse to go on with half of it).
    transaction_lost: str = ""  # why ("" while nothing was lost)
    # The last statement's warnings, read from its link before that link went to others
    # (Level, Code, Message rows): SHOW WARNINGS is answered from them until the next statement.
    kept_warnings: list[list[str | None]] | None = None
    # An error the next statement gets, once: a stall's victim learns its transaction was rolled back.
    pending_error: tuple[int, str] | None = None
    # The session's sql_mode lets backslashes escape in strings; None: the server's default
    # (Upstream.backslash_escapes). The lexer reads '\'' by it.
    backslash_escapes: bool | None = None
    statements: dict[int, PreparedStatement] = field(default_factory=dict)
    last_statement_id: int = 0
    # The statement a MariaDB client means by id -1 (0xFFFFFFFF): the last one prepared, unless a
    # PREPARE failed since (0: none). Lets a client send PREPARE and EXECUTE in one round trip.
    last_prepared: int = 0
    # What ROW_COUNT() and FOUND_ROWS() would say about the last statement,
    # and the link it ran on (with that link's use count then).
    last_row_count: int = -1
    last_found_rows: int = 0
    last_link: object | None = None
    last_link_uses: int = 0
    multiplexed: int = 0  # times a link was given back between statements

    @property
    def pinned(self) -> bool:
        return bool(self.pins)

    def pin(self, reason: str) -> None:
        if reason not in self.pins:
            self.pins[reason] = time.monotonic()
            log.debug("client %d pinned: %s", self.proxy_id, reason)

    def unpin(self, reason: str) -> None:
        if self.pins.pop(reason, None) is not None:
            log.debug("client %d unpinned: %s", self.proxy_id, reason)

    def before_statement(self, stmt: Classified | None) -> None:
        """A new statement begins: unless it asks about the last one, that one's diagnostics may go."""
        if self.pins and (stmt is None or Kind.FOLLOW_UP not in stmt.kind):
            self.unpin(PIN_NEXT_STATEMENT)

    def after_response(self, command: int, response: ResponseTracker, stmt: Classified | None, link: LinkState) -> bool:
        """Fold one complete response into the session and its link, and update pins.

        True when the caller must read state back from the link: the server does
        not report the collation a character-set change brings, nor the value
        LAST_INSERT_ID(expr) set inside a result set.
        """
        status = response.status if response.status_known else None
        if (stmt is None and not self.pins and status is not None
                and status & _TRANSACTION_FLAGS == Status.AUTOCOMMIT and not self.autocommit_off
                and not response.state_blocks and not response.unexplained_change and not response.warnings
                and not response.error_code and not response.insert_id and not response.cursor_open
                and (command == Command.QUERY or command == Command.STMT_EXECUTE)):
            return False  # the common case: a plain statement that changed nothing
        error_code = response.error_code
        ok = not error_code
        warnings = response.warnings
        insert_id = response.insert_id
        cursor_open = response.cursor_open
        unexplained_change = response.unexplained_change
        state_blocks = response.state_blocks
        charset_changed = stmt is not None and bool(stmt.kind & Kind.SETS_LAST_INSERT_ID) and not error_code
        for block in state_blocks:
            changes = parse_session_state(block)
            if changes.schema is not None:
                self.state.schema = link.schema = changes.schema or None
            names = {name for name, _ in changes.variables} - NEVER_REPLAYED
            charset_changed = charset_changed or not names.isdisjoint(CHARSET_VARIABLES)
            for name, value in changes.variables:
                if TRACKING_SETUP_VALUES.get(name) == value or name in NEVER_REPLAYED:
                    continue
                link.variables[name] = value
                if name == "sql_mode":
                    self.backslash_escapes = "NO_BACKSLASH_ESCAPES" not in value.upper()
                if name in NOT_REPLAYABLE:
                    self.pin(PIN_STATE)
                else:
                    self.state.variables[name] = value
            explained = bool(names or changes.schema is not None or (
                stmt is not None and stmt.kind & (Kind.PREPARE | Kind.DEALLOCATE)
            ))
            if stmt is not None and stmt.kind & (Kind.USER_VARIABLE | Kind.TEMPORARY_TABLE):
                explained = False  # a variable change may ride along with these
            if changes.state_changed and not explained:
                unexplained_change = True
            if changes.other:
                unexplained_change = True
        if unexplained_change:
            self.pin(PIN_STATE)
        if insert_id and ok:
            # LAST_INSERT_ID() follows the link; replaying last_insert_id keeps it per session.
            self.state.variables["last_insert_id"] = link.variables["last_insert_id"] = str(insert_id)

        if status is None:
            pass  # the answer carried no status flags (COM_STMT_PREPARE): the transaction state stands
        else:
            was_off, self.autocommit_off = self.autocommit_off, not status & Status.AUTOCOMMIT
            ended = stmt is not None and Kind.TRANSACTION_END in stmt.kind and ok
            # With autocommit off the transaction began with the session's first statement, yet
            # the server says IN_TRANS only once a table is touched: a SAVEPOINT before that lives
            # in the transaction all the same, which then lasts until COMMIT / ROLLBACK.
            savepoint = stmt is not None and Kind.SAVEPOINT in stmt.kind and ok
            if status & Status.IN_TRANS or (self.autocommit_off and not ended and (
                    savepoint or (was_off and PIN_TRANSACTION in self.pins))):
                self.pin(PIN_TRANSACTION)
            else:
                self.unpin(PIN_TRANSACTION)
                if PIN_NEXT_TRANSACTION in self.pins and not (stmt and Kind.SET_TRANSACTION in stmt.kind):
                    self.unpin(PIN_NEXT_TRANSACTION)
        if stmt is not None and (command == Command.QUERY or command == Command.STMT_EXECUTE):
            self._statement_pins(stmt, ok)
        if cursor_open:
            self.pin(PIN_CURSOR)
        elif command in (Command.STMT_FETCH, Command.STMT_EXECUTE, Command.STMT_RESET):
            self.unpin(PIN_CURSOR)
        # The next statement may ask for these warnings / errors / found rows: keep the link for it.
        if warnings or error_code or (stmt is not None and Kind.CALC_FOUND_ROWS in stmt.kind):
            self.pin(PIN_NEXT_STATEMENT)
        return charset_changed

    def _statement_pins(self, stmt: Classified, ok: bool) -> None:
        """Pins the statement's text calls for. A failed statement may still have left what it
        took (a multi-statement runs up to its failing part), but it released nothing."""
        k = stmt.kind
        if k & PINNING:
            if Kind.LOCK_TABLES in k:
                self.pin(PIN_TABLE_LOCK)
            if Kind.GET_LOCK in k:
                self.named_locks.update(stmt.locks_taken)
            if Kind.PREPARE in k:
                self.sql_prepared.update(stmt.prepared)
            if Kind.SET_TRANSACTION in k:
                self.pin(PIN_NEXT_TRANSACTION)
            if Kind.XA_START in k:
                self.pin(PIN_XA)
            if Kind.HANDLER_OPEN in k:
                self.pin(PIN_HANDLER)
            if k & (Kind.TEMPORARY_TABLE | Kind.USER_VARIABLE_ASSIGNED | Kind.UNCERTAIN):
                # Temporary tables, SELECT ... INTO @v, @v := ..., routines, EXECUTE, forms the
                # lexer cannot read: nothing the proxy can see ends them.
                self.pin(PIN_STATE)
        if ok:
            if Kind.UNLOCK_TABLES in k:
                self.unpin(PIN_TABLE_LOCK)
            if Kind.RELEASE_LOCK in k:
                for name in stmt.locks_released:
                    if name is not None and self.named_locks[name] > 0:
                        self.named_locks[name] -= 1
                self.named_locks = +self.named_locks  # drop names at zero
            if Kind.RELEASE_ALL_LOCKS in k:
                self.named_locks.clear()
            if Kind.DEALLOCATE in k:
                for name in stmt.deallocated:
                    self.sql_prepared.pop(name, None)
            if Kind.XA_END in k:
                self.unpin(PIN_XA)
        if Kind.EXECUTE in k:
            for name in stmt.executed:
                prepared = self.sql_prepared.get(name)
                if prepared is None:
                    self.pin(PIN_STATE)  # text unknown (PREPARE ... FROM @var): it may do anything
                elif prepared.kind:
                    self._statement_pins(prepared, ok)
        if self.named_locks:
            self.pin(PIN_NAMED_LOCK)
        else:
            self.unpin(PIN_NAMED_LOCK)
        if self.sql_prepared:
            self.pin(PIN_SQL_PREPARE)
        else:
            self.unpin(PIN_SQL_PREPARE)

    def forget_link_state(self) -> None:
        """The link holding this session's state is gone (reset, died): so is that state."""
        self.pins.clear()
        self.named_locks.clear()
        self.sql_prepared.clear()
        self.autocommit_off = self.state.variables.get("autocommit", "ON").upper() in ("OFF", "0")

    def set_multi_statements(self, on: bool) -> None:
        self.state.multi_statements = on
        if on:
            self.client_caps |= Cap.MULTI_STATEMENTS
        else:
            self.client_caps &= ~Cap.MULTI_STATEMENTS
