"""No client ever sees another's session state: A sets, B probes, on a pool of one link.

Client A leaves state on its session in one of many shapes (temporary tables, user variables, named and
table locks, SQL PREPARE, HANDLER, XA, open transactions, next-transaction characteristics, session
variables), each spelled in the ways a classifier could miss: odd case, comments, executable comments,
70 KB prefixes, multi-statements, the binary protocol, stored routines. A stays connected and idle.
Client B (another connection, same account) then probes. With one link there are exactly two right
outcomes: B waits for the pool and gets error 9001 (A is pinned and holds the link), or B runs on a link
that shows none of A's state. Afterwards A must still see its own state (a proxy that "isolates" by
throwing A's state away fails too).

Every shape names what a leak looks like (``leak``); its probe fails exactly then, which
test_probe_can_fail shows on the server directly: each probe fails on the session holding the state
and passes on any other. State the proxy can replay (session variables) must not pin: there B must be
served, not queued.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pymysql
import pytest
from pymysql.constants import CLIENT

from conftest import APP_DB, SERVER, MariaDB, ProxyFactory, ProxyProcess

USER = "iso_app"
PASSWORD = "iso-secret"
POOL_BUSY = 9001
# One link, so B can only run on A's link or wait for it; 3 s of queueing is B's "waited" answer.
POOL_OF_ONE = {"pool": {"max_connections": 1, "queue_timeout": 3}}
PAD = "x" * 70_000  # past any classifier that reads only a statement's head (64 KB)

# Server error codes the probes expect or recognise.
ER_NO_SUCH_TABLE = 1146
ER_TABLE_NOT_LOCKED = 1100
ER_CANT_UPDATE_WITH_READLOCK = 1223
ER_LOCK_WAIT_TIMEOUT = 1205
ER_UNKNOWN_STMT_HANDLER = 1243
ER_UNKNOWN_TABLE_IN_HANDLER = 1109
ER_XAER_RMFAIL = 1399
ER_SP_DOES_NOT_EXIST = 1305  # also "SAVEPOINT ... does not exist"
ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION = 1792
ER_CANT_CHANGE_TX_CHARACTERISTICS = 1568


_SERVER: list[MariaDB] = []  # the session's server, set by the iso_server fixture


class PoolBusy(Exception):
    """B waited for the single link and got error 9001: A holds it (pinned)."""


class SqlError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- clients


@dataclass(frozen=True, slots=True)
class Binary:
    """A statement sent with COM_STMT_PREPARE + COM_STMT_EXECUTE (the binary protocol)."""

    sql: str
    params: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Root:
    """A statement the test runs as root on the server directly, in the middle of A's setup."""

    sql: str


Step = str | Binary | Root


class Client:
    """One client connection (through the proxy, or direct): rows of the first result set, errors as SqlError.

    PyMySQL for text statements (with CLIENT_MULTI_STATEMENTS when asked); mysql-connector-python
    (pure) when the shape needs COM_STMT_PREPARE / COM_STMT_EXECUTE, which PyMySQL cannot send.
    """

    def __init__(self, host: str, port: int, *, binary: bool = False, multi: bool = False) -> None:
        self.binary = binary
        if binary:
            import mysql.connector

            self._errors: tuple[type[BaseException], ...] = (mysql.connector.Error,)
            self.conn: Any = mysql.connector.connect(
                host=host, port=port, user=USER, password=PASSWORD, database=APP_DB,
                use_pure=True, autocommit=True, connection_timeout=10,
            )
        else:
            self._errors = (pymysql.MySQLError,)
            try:  # PyMySQL sends SET NAMES while connecting: that statement may already wait for the link
                self.conn = pymysql.connect(
                    host=host, port=port, user=USER, password=PASSWORD, database=APP_DB, autocommit=True,
                    connect_timeout=10, read_timeout=60, write_timeout=60,
                    client_flag=CLIENT.MULTI_STATEMENTS if multi else 0,
                )
            except pymysql.MySQLError as e:
                if e.args[0] == POOL_BUSY:
                    raise PoolBusy(str(e.args[1])) from e
                raise

    def _code(self, e: BaseException) -> tuple[int, str]:
        if self.binary:
            return int(getattr(e, "errno", -1) or -1), str(getattr(e, "msg", e))
        return int(e.args[0]), str(e.args[1] if len(e.args) > 1 else e)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of the first result set (later ones, of a multi-statement, are read and dropped)."""
        try:
            if self.binary:
                cur = self.conn.cursor(buffered=True)
                cur.execute(sql)
                out = [tuple(r) for r in cur.fetchall()] if cur.with_rows else []
                cur.close()
                return out
            with self.conn.cursor() as cur:
                cur.execute(sql)
                out = [tuple(r) for r in cur.fetchall()]
                while cur.nextset():
                    cur.fetchall()
                return out
        except self._errors as e:
            code, message = self._code(e)
            if code == POOL_BUSY:
                raise PoolBusy(message) from e
            raise SqlError(code, message) from e

    def prepared(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """COM_STMT_PREPARE + COM_STMT_EXECUTE, even without parameters."""
        assert self.binary, "a binary statement needs the mysql-connector client"
        try:
            cur = self.conn.cursor(prepared=True)
            cur.execute(sql, tuple(params))
            out = [tuple(r) for r in cur.fetchall()] if cur.with_rows else []
            cur.close()
            return out
        except self._errors as e:
            code, message = self._code(e)
            if code == POOL_BUSY:
                raise PoolBusy(message) from e
            raise SqlError(code, message) from e

    def value(self, sql: str) -> Any:
        rows = self.rows(sql)
        assert len(rows) == 1 and len(rows[0]) == 1, f"{sql!r} gave {rows!r}"
        return rows[0][0]

    def error_of(self, sql: str) -> int | None:
        """The error code ``sql`` fails with, None when it succeeds (PoolBusy still propagates)."""
        try:
            self.rows(sql)
        except SqlError as e:
            return e.code
        return None

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - a connection the proxy already closed
            pass


# --------------------------------------------------------------------------- shapes

Probe = Callable[[Client], None]


@dataclass(frozen=True, slots=True)
class Shape:
    id: str
    setup: tuple[Step, ...]
    probe: Probe  # on B: raises AssertionError when B sees A's state (PoolBusy when B waited)
    check: Probe  # on A, after B left: raises AssertionError when A lost its own state
    leak: str  # what B would see if the proxy leaked A's state
    binary: bool = False  # A uses the binary protocol client
    multi: bool = False  # A's connection has CLIENT_MULTI_STATEMENTS
    shares: bool = False  # replayable state: B must get the link, not wait for it
    mariadb_only: bool = False  # MariaDB syntax (CREATE OR REPLACE, /*M! */)


def temp_table(name: str, expect: list[tuple[Any, ...]]) -> tuple[Probe, Probe]:
    def probe(b: Client) -> None:
        assert b.error_of(f"SELECT * FROM {name}") == ER_NO_SUCH_TABLE

    def check(a: Client) -> None:
        assert a.rows(f"SELECT * FROM {name}") == expect

    return probe, check


def user_vars(**values: Any) -> tuple[Probe, Probe]:
    """Names may hold spaces: they are quoted with backticks."""

    def probe(b: Client) -> None:
        for name in values:
            assert b.value(f"SELECT @`{name}`") is None, f"B sees @`{name}`"

    def check(a: Client) -> None:
        for name, want in values.items():
            assert a.value(f"SELECT @`{name}`") == want, f"A lost @`{name}`"

    return probe, check


def named_lock(name: str) -> tuple[Probe, Probe]:
    # RELEASE_LOCK answers 1 only to the connection holding the lock: B releasing A's lock is the leak.
    def probe(b: Client) -> None:
        assert b.value(f"SELECT RELEASE_LOCK('{name}')") != 1, "B holds (and released) A's lock"

    def check(a: Client) -> None:
        assert a.value(f"SELECT RELEASE_LOCK('{name}')") == 1, "A no longer holds its lock"

    return probe, check


def table_lock() -> tuple[Probe, Probe]:
    # Under LOCK TABLES a session may use only the tables it locked: 1100 for any other one. Another link
    # is not blocked reading iso_plain (A locked iso_locked only), so 1100 means "B runs on A's link".
    def probe(b: Client) -> None:
        assert b.error_of("SELECT COUNT(*) FROM iso_plain") != ER_TABLE_NOT_LOCKED, "B runs inside A's LOCK TABLES"

    def check(a: Client) -> None:
        assert a.error_of("SELECT COUNT(*) FROM iso_plain") == ER_TABLE_NOT_LOCKED, "A's LOCK TABLES is gone"
        a.rows("UNLOCK TABLES")

    return probe, check


def global_read_lock() -> tuple[Probe, Probe]:
    # The session holding FLUSH TABLES WITH READ LOCK gets 1223 at once for a write; another link would
    # wait and get 1205 after lock_wait_timeout (1 s here), never 1223.
    write = "INSERT INTO iso_scratch (who) VALUES ('{}')"

    def probe(b: Client) -> None:
        b.rows("SET SESSION lock_wait_timeout = 1")
        assert b.error_of(write.format("B")) != ER_CANT_UPDATE_WITH_READLOCK, "B runs on the link holding A's read lock"

    def check(a: Client) -> None:
        assert a.error_of(write.format("A")) == ER_CANT_UPDATE_WITH_READLOCK, "A's read lock is gone"
        a.rows("UNLOCK TABLES")

    return probe, check


def sql_prepared(name: str, value: int) -> tuple[Probe, Probe]:
    def probe(b: Client) -> None:
        assert b.error_of(f"EXECUTE {name}") == ER_UNKNOWN_STMT_HANDLER, f"B can EXECUTE A's {name}"

    def check(a: Client) -> None:
        assert a.rows(f"EXECUTE {name}") == [(value,)], f"A lost its prepared {name}"

    return probe, check


def handler(alias: str) -> tuple[Probe, Probe]:
    def probe(b: Client) -> None:
        assert b.error_of(f"HANDLER {alias} READ FIRST") == ER_UNKNOWN_TABLE_IN_HANDLER, f"B reads A's HANDLER {alias}"

    def check(a: Client) -> None:
        assert a.rows(f"HANDLER {alias} READ FIRST") == [(1,)], f"A's HANDLER {alias} is gone"
        a.rows(f"HANDLER {alias} CLOSE")

    return probe, check


def xa(xid: str) -> tuple[Probe, Probe]:
    # A session inside an XA transaction cannot start another one (1399).
    def probe(b: Client) -> None:
        code = b.error_of("XA START 'iso_probe'")
        assert code != ER_XAER_RMFAIL, "B runs inside A's XA transaction"
        if code is None:
            b.rows("XA END 'iso_probe'")
            b.rows("XA ROLLBACK 'iso_probe'")

    def check(a: Client) -> None:
        a.rows(f"XA END '{xid}'")  # 1397 (XAER_NOTA) when A's XA transaction is gone
        a.rows(f"XA ROLLBACK '{xid}'")

    return probe, check


def in_transaction(c: Client) -> bool:
    """MariaDB says so in @@in_transaction; MySQL has no such variable but refuses to change the
    next transaction's characteristics inside one (1568): outside one, that SET only touches the
    next transaction of a session the test ends anyway."""
    if not SERVER.mysql:
        return bool(c.value("SELECT @@in_transaction"))
    return c.error_of("SET TRANSACTION READ WRITE") == ER_CANT_CHANGE_TX_CHARACTERISTICS


def open_transaction(row: int, *, uncommitted: bool) -> tuple[Probe, Probe]:
    """``uncommitted``: A inserted ``row`` in its transaction. Otherwise root committed ``row`` after A's
    snapshot was taken, so A must not see it and a fresh session must."""

    def probe(b: Client) -> None:
        assert not in_transaction(b), "B is inside A's transaction"
        seen = b.value(f"SELECT COUNT(*) FROM iso_tx WHERE id = {row}")
        assert seen == (0 if uncommitted else 1), "B reads through A's transaction (its rows or its snapshot)"

    def check(a: Client) -> None:
        assert in_transaction(a), "A's transaction is gone"
        seen = a.value(f"SELECT COUNT(*) FROM iso_tx WHERE id = {row}")
        assert seen == (1 if uncommitted else 0), "A's transaction lost its rows or its snapshot"
        a.rows("ROLLBACK")

    return probe, check


def read_only_transaction(*, started: bool) -> tuple[Probe, Probe]:
    """START TRANSACTION READ ONLY (``started``) or SET TRANSACTION READ ONLY (the next one only)."""
    write = "INSERT INTO iso_scratch (who) VALUES ('{}')"

    def probe(b: Client) -> None:
        if not started:
            b.rows("START TRANSACTION")
        code = b.error_of(write.format("B"))
        if not started:
            b.rows("ROLLBACK")
        assert code != ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION, "B's write runs in A's read-only transaction"

    def check(a: Client) -> None:
        if not started:
            a.rows("START TRANSACTION")
        assert a.error_of(write.format("A")) == ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION, "A's READ ONLY is gone"
        a.rows("ROLLBACK")

    return probe, check


def serializable_next() -> tuple[Probe, Probe]:
    # In SERIALIZABLE a plain SELECT inside a transaction takes a shared lock: root's UPDATE of that row
    # then times out (1205). In the default REPEATABLE READ it does not.
    def root_update_blocked() -> bool:
        root = _SERVER[0].root_conn()  # the server is known once the fixture ran
        try:
            with root.cursor() as cur:
                cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
                cur.execute("UPDATE appdb.iso_tx SET n = n + 1 WHERE id = 1")
        except pymysql.MySQLError as e:
            if e.args[0] == ER_LOCK_WAIT_TIMEOUT:
                return True
            raise
        finally:
            root.close()
        return False

    def probe(b: Client) -> None:
        b.rows("START TRANSACTION")
        b.rows("SELECT n FROM iso_tx WHERE id = 1")
        blocked = root_update_blocked()
        b.rows("ROLLBACK")
        assert not blocked, "B's transaction runs at A's next-transaction SERIALIZABLE level"

    def check(a: Client) -> None:
        a.rows("START TRANSACTION")
        a.rows("SELECT n FROM iso_tx WHERE id = 1")
        blocked = root_update_blocked()
        a.rows("ROLLBACK")
        assert blocked, "A's SET TRANSACTION ISOLATION LEVEL SERIALIZABLE was lost"

    return probe, check


def savepoint(name: str) -> tuple[Probe, Probe]:
    def probe(b: Client) -> None:
        assert b.value("SELECT @@autocommit") == 1, "B runs with A's autocommit=0"
        assert b.error_of(f"ROLLBACK TO SAVEPOINT {name}") == ER_SP_DOES_NOT_EXIST, f"B can roll back to A's {name}"

    def check(a: Client) -> None:
        assert a.value("SELECT @@autocommit") == 0, "A lost autocommit=0"
        a.rows(f"ROLLBACK TO SAVEPOINT {name}")  # 1305 when A's savepoint is gone
        a.rows("ROLLBACK")

    return probe, check


def autocommit_off_snapshot(row: int) -> tuple[Probe, Probe]:
    """autocommit=0 and a read: A is inside a transaction with a snapshot taken before root added ``row``."""
    in_tx_probe, in_tx_check = open_transaction(row, uncommitted=False)

    def probe(b: Client) -> None:
        assert b.value("SELECT @@autocommit") == 1, "B runs with A's autocommit=0"
        in_tx_probe(b)

    def check(a: Client) -> None:
        assert a.value("SELECT @@autocommit") == 0, "A lost autocommit=0"
        in_tx_check(a)

    return probe, check


def session_variable(name: str, default: Callable[[], Any], wanted: Any) -> tuple[Probe, Probe]:
    def probe(b: Client) -> None:
        assert b.value(f"SELECT @@session.{name}") == default(), f"B sees A's {name}"

    def check(a: Client) -> None:
        assert a.value(f"SELECT @@session.{name}") == wanted, f"A lost its {name}"

    return probe, check


def select_limit() -> tuple[Probe, Probe]:
    def probe(b: Client) -> None:
        assert len(b.rows("SELECT id FROM iso_three")) == 3, "B's SELECT is cut by A's sql_select_limit"

    def check(a: Client) -> None:
        assert len(a.rows("SELECT id FROM iso_three")) == 1, "A lost its sql_select_limit"

    return probe, check


@dataclass(slots=True)
class Defaults:
    """What a fresh session of the account sees, read on a direct connection."""

    values: dict[str, Any] = field(default_factory=dict)

    def of(self, name: str) -> Callable[[], Any]:
        return lambda: self.values[name]


DEFAULTS = Defaults()


def _shapes() -> list[Shape]:
    s: list[Shape] = []

    def add(id: str, setup: Sequence[Step] | Step, pc: tuple[Probe, Probe], leak: str, **kw: Any) -> None:
        steps = (setup,) if isinstance(setup, (str, Binary, Root)) else tuple(setup)
        s.append(Shape(id, steps, pc[0], pc[1], leak, **kw))

    seven = [(7,)]
    # ---- temporary tables: B must get 1146 for A's table
    add("tmp_create_columns", ["CREATE TEMPORARY TABLE iso_t1 (id INT)", "INSERT INTO iso_t1 VALUES (7)"],
        temp_table("iso_t1", seven), "B reads A's temporary table iso_t1")
    add("tmp_as_select", "CREATE TEMPORARY TABLE iso_t2 AS SELECT 7 AS id", temp_table("iso_t2", seven),
        "B reads iso_t2, made by CREATE TEMPORARY TABLE ... AS SELECT")
    add("tmp_select_without_as", "CREATE TEMPORARY TABLE iso_t3 SELECT 7 AS id", temp_table("iso_t3", seven),
        "B reads iso_t3, made by CREATE TEMPORARY TABLE ... SELECT")
    add("tmp_or_replace", "CREATE OR REPLACE TEMPORARY TABLE iso_t4 (id INT) SELECT 7 AS id",
        temp_table("iso_t4", seven), "B reads iso_t4, made by CREATE OR REPLACE TEMPORARY TABLE", mariadb_only=True)
    add("tmp_like", "CREATE TEMPORARY TABLE iso_t5 LIKE iso_plain", temp_table("iso_t5", []),
        "B reads iso_t5, made by CREATE TEMPORARY TABLE ... LIKE")
    add("tmp_executable_comment", "/*!CREATE*/ TEMPORARY TABLE iso_t6 SELECT 7 AS id", temp_table("iso_t6", seven),
        "B reads iso_t6, whose CREATE sits in a /*! */ comment")
    add("tmp_mariadb_comment", "/*M!100000 CREATE TEMPORARY TABLE iso_t7 SELECT 7 AS id */",
        temp_table("iso_t7", seven), "B reads iso_t7, created inside a /*M! */ comment",
        mariadb_only=True)
    add("tmp_odd_case_comments", "cReAtE/**/temporary/* x */TABLE\n\tiso_t8 (id int) sElEcT 7 AS id",
        temp_table("iso_t8", seven), "B reads iso_t8, made by a CREATE spelled with odd case and comments")
    add("tmp_70kb_prefix", f"/* {PAD} */ CREATE TEMPORARY TABLE iso_t9 SELECT 7 AS id", temp_table("iso_t9", seven),
        "B reads iso_t9, created after a 70 KB comment")
    add("tmp_in_procedure", "CALL iso_make_temp()", temp_table("iso_t_proc", seven),
        "B reads iso_t_proc, created inside a stored procedure")
    add("tmp_multi_statement", "SELECT 1; CREATE TEMPORARY TABLE iso_t10 SELECT 7 AS id",
        temp_table("iso_t10", seven), "B reads iso_t10, created by the 2nd statement of a multi-statement",
        multi=True)
    add("tmp_binary", Binary("CREATE TEMPORARY TABLE iso_t11 SELECT 7 AS id"), temp_table("iso_t11", seven),
        "B reads iso_t11, created by a binary prepared statement", binary=True)

    # ---- user variables: B must see NULL
    add("uv_set", "SET @iso_v1 = 11", user_vars(iso_v1=11), "B sees @iso_v1 = 11 (SET)")
    add("uv_select_assign", "SELECT @iso_v2 := 12", user_vars(iso_v2=12), "B sees @iso_v2 = 12 (SELECT @v := ...)")
    add("uv_select_into", "SELECT 13 INTO @iso_v3", user_vars(iso_v3=13), "B sees @iso_v3 = 13 (SELECT ... INTO @v)")
    add("uv_select_into_two", "SELECT 14, 15 INTO @iso_v4a, @iso_v4b", user_vars(iso_v4a=14, iso_v4b=15),
        "B sees @iso_v4a/@iso_v4b (SELECT ... INTO @a, @b)")
    add("uv_set_odd_name", "SET @`iso odd set` = 16", user_vars(**{"iso odd set": 16}),
        "B sees @`iso odd set` (a quoted name with a space)")
    add("uv_assign_odd_name", "SELECT @`iso odd assign` := 17", user_vars(**{"iso odd assign": 17}),
        "B sees @`iso odd assign` := 17 (a quoted name with a space)")
    add("uv_assign_quoted_name", "SELECT @'iso_quoted' := 18", user_vars(iso_quoted=18),
        "B sees @'iso_quoted' (a name in single quotes)")
    add("uv_into_after_comment", "SELECT 19 INTO/**/@iso_v5", user_vars(iso_v5=19),
        "B sees @iso_v5 (INTO/**/@v)")
    add("uv_call_out_param", "CALL iso_out(@iso_v6)", user_vars(iso_v6=42),
        "B sees @iso_v6, set by a procedure's OUT parameter")
    add("uv_set_inside_procedure", "CALL iso_set_var()", user_vars(iso_inner=43),
        "B sees @iso_inner, set inside a procedure (no @ in the statement)")
    add("uv_set_inside_function", "SELECT iso_set_var_fn()", user_vars(iso_fn_var=44),
        "B sees @iso_fn_var, set inside a stored function")
    add("uv_multi_statement", "SELECT 1; SET @iso_v7 = 20", user_vars(iso_v7=20),
        "B sees @iso_v7, set by the 2nd statement of a multi-statement", multi=True)
    add("uv_into_multi_statement", "SELECT 1; SELECT 2 INTO @iso_v8", user_vars(iso_v8=2),
        "B sees @iso_v8, set by SELECT INTO in a multi-statement", multi=True)
    add("uv_assign_70kb_prefix", f"SELECT LENGTH('{PAD}'), @iso_v9 := 22", user_vars(iso_v9=22),
        "B sees @iso_v9, assigned after a 70 KB literal")
    add("uv_into_70kb_prefix", f"SELECT '{PAD}', 21 INTO @iso_pad, @iso_v10", user_vars(iso_v10=21),
        "B sees @iso_v10, set by INTO after a 70 KB literal")
    add("uv_executable_comment", "SELECT /*! @iso_v11 := */ 25", user_vars(iso_v11=25),
        "B sees @iso_v11, assigned inside a /*! */ comment")
    add("uv_binary_set", Binary("SET @iso_v12 = ?", (23,)), user_vars(iso_v12=23),
        "B sees @iso_v12, set by a binary prepared SET", binary=True)
    add("uv_binary_select_into", Binary("SELECT ? INTO @iso_v13", (24,)), user_vars(iso_v13=24),
        "B sees @iso_v13, set by a binary prepared SELECT INTO", binary=True)
    add("uv_binary_call_out", Binary("CALL iso_out(@iso_v14)"), user_vars(iso_v14=42),
        "B sees @iso_v14, set by a binary prepared CALL's OUT parameter", binary=True)

    # ---- named locks: B must not hold (and be able to release) A's lock
    add("lock_get_lock", "SELECT GET_LOCK('iso_l1', 0)", named_lock("iso_l1"), "B releases A's lock iso_l1")
    add("lock_70kb_prefix", f"SELECT '{PAD}', GET_LOCK('iso_l2', 0)", named_lock("iso_l2"),
        "B releases iso_l2, taken after a 70 KB literal")
    add("lock_binary_do", Binary("DO GET_LOCK('iso_l3', 0)"), named_lock("iso_l3"),
        "B releases iso_l3, taken by a binary prepared DO", binary=True)
    add("lock_multi_statement", "SELECT 1; DO GET_LOCK('iso_l4', 0)", named_lock("iso_l4"),
        "B releases iso_l4, taken by the 2nd statement of a multi-statement", multi=True)
    add("lock_executable_comment", "SELECT /*! GET_LOCK('iso_l5', 0) */", named_lock("iso_l5"),
        "B releases iso_l5, taken inside a /*! */ comment")
    add("lock_comment_before_paren", "SELECT GET_LOCK/**/('iso_l6', 0)", named_lock("iso_l6"),
        "B releases iso_l6 (GET_LOCK/**/(...))")
    add("lock_in_function", "SELECT iso_lock_fn()", named_lock("iso_l_fn"),
        "B releases iso_l_fn, taken inside a stored function")
    add("lock_in_procedure", "CALL iso_lock_proc()", named_lock("iso_l_proc"),
        "B releases iso_l_proc, taken inside a stored procedure")

    # ---- table locks: B must not run on the link that holds them
    add("lock_tables", "LOCK TABLES iso_locked WRITE", table_lock(), "B gets 1100: it runs inside A's LOCK TABLES")
    add("lock_tables_comments", "/* x */ LOCK /* y */ TABLES iso_locked READ", table_lock(),
        "B gets 1100 after LOCK /**/ TABLES")
    add("lock_tables_multi_statement", "SELECT 1; LOCK TABLES iso_locked WRITE", table_lock(),
        "B gets 1100 after LOCK TABLES in a multi-statement", multi=True)
    add("lock_tables_70kb_prefix", f"/* {PAD} */ LOCK TABLES iso_locked WRITE", table_lock(),
        "B gets 1100 after LOCK TABLES behind a 70 KB comment")
    add("flush_tables_read_lock", "FLUSH TABLES WITH READ LOCK", global_read_lock(),
        "B's write gets 1223: it runs on the link holding A's global read lock")
    add("flush_tables_read_lock_comment", "FLUSH /**/ TABLES WITH READ LOCK", global_read_lock(),
        "B's write gets 1223 after FLUSH /**/ TABLES WITH READ LOCK")

    # ---- SQL-level PREPARE: B must not EXECUTE A's statement
    add("sql_prepare", "PREPARE iso_ps1 FROM 'SELECT 31'", sql_prepared("iso_ps1", 31), "B can EXECUTE iso_ps1")
    add("sql_prepare_comment", "PREPARE /**/ iso_ps2 FROM 'SELECT 32'", sql_prepared("iso_ps2", 32),
        "B can EXECUTE iso_ps2 (PREPARE /**/ name)")
    add("sql_prepare_multi_statement", "SELECT 1; PREPARE iso_ps3 FROM 'SELECT 33'", sql_prepared("iso_ps3", 33),
        "B can EXECUTE iso_ps3, prepared in a multi-statement", multi=True)
    add("sql_prepare_70kb_prefix", f"/* {PAD} */ PREPARE iso_ps4 FROM 'SELECT 34'", sql_prepared("iso_ps4", 34),
        "B can EXECUTE iso_ps4, prepared behind a 70 KB comment")
    add("sql_prepare_in_procedure", "CALL iso_prepare_proc()", sql_prepared("iso_ps_proc", 35),
        "B can EXECUTE iso_ps_proc, prepared inside a procedure")

    # ---- HANDLER: B must not read through A's open handler
    add("handler_open", "HANDLER iso_plain OPEN AS iso_h1", handler("iso_h1"), "B reads through A's HANDLER iso_h1")
    add("handler_open_comment", "HANDLER /**/ iso_plain OPEN AS iso_h2", handler("iso_h2"),
        "B reads through iso_h2 (HANDLER /**/ t OPEN)")
    add("handler_open_70kb_prefix", f"/* {PAD} */ HANDLER iso_plain OPEN AS iso_h3", handler("iso_h3"),
        "B reads through iso_h3, opened behind a 70 KB comment")

    # ---- XA: B must not be inside A's XA transaction
    add("xa_start", "XA START 'iso_x1'", xa("iso_x1"), "B's XA START gets 1399: it is inside A's XA transaction")
    add("xa_begin_comment", "XA /**/ BEGIN 'iso_x2'", xa("iso_x2"), "B is inside A's XA /**/ BEGIN transaction")
    add("xa_start_70kb_prefix", f"/* {PAD} */ XA START 'iso_x3'", xa("iso_x3"),
        "B is inside A's XA transaction, started behind a 70 KB comment")

    # ---- transactions
    add("tx_begin_insert", ["BEGIN", "INSERT INTO iso_tx (id) VALUES (101)"], open_transaction(101, uncommitted=True),
        "B is inside A's transaction and sees its uncommitted row 101")
    add("tx_begin_only", "BEGIN", open_transaction(102, uncommitted=True)[0:1] + (_begin_only_check,),
        "B is inside A's (empty) transaction")
    add("tx_consistent_snapshot", ["START TRANSACTION WITH CONSISTENT SNAPSHOT",
                                   Root("INSERT INTO appdb.iso_tx (id) VALUES (103)")],
        open_transaction(103, uncommitted=False), "B reads through A's snapshot (does not see row 103) or is in it")
    add("tx_multi_statement", "SELECT 1; START TRANSACTION; INSERT INTO iso_tx (id) VALUES (104)",
        open_transaction(104, uncommitted=True), "B sees row 104 of A's multi-statement transaction", multi=True)
    add("tx_in_procedure", ["CALL iso_begin()", "INSERT INTO iso_tx (id) VALUES (105)"],
        open_transaction(105, uncommitted=True), "B is inside the transaction A's procedure started")
    add("tx_autocommit_off_savepoint", ["SET autocommit = 0", "SAVEPOINT iso_sp"], savepoint("iso_sp"),
        "B runs with autocommit=0 or can roll back to A's savepoint iso_sp")
    add("tx_autocommit_off_select", ["SET autocommit = 0", "SELECT COUNT(*) FROM iso_tx",
                                     Root("INSERT INTO appdb.iso_tx (id) VALUES (106)")],
        autocommit_off_snapshot(106), "B runs with autocommit=0 / in A's snapshot (misses row 106)")
    add("tx_start_read_only", "START TRANSACTION READ ONLY", read_only_transaction(started=True),
        "B's write gets 1792: it runs in A's read-only transaction")
    add("tx_start_read_only_70kb_prefix", f"/* {PAD} */ START TRANSACTION READ ONLY",
        read_only_transaction(started=True), "B's write gets 1792 (read-only transaction behind a 70 KB comment)")
    add("set_transaction_read_only", "SET TRANSACTION READ ONLY", read_only_transaction(started=False),
        "B's next transaction is read-only (1792): A's SET TRANSACTION reached B")
    add("set_transaction_comment", "SET /**/ TRANSACTION READ ONLY", read_only_transaction(started=False),
        "B's next transaction is read-only (SET /**/ TRANSACTION)")
    add("set_transaction_isolation", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", serializable_next(),
        "B's next transaction is SERIALIZABLE (its read blocks root's UPDATE)")

    # ---- replayable session variables: B is served, with its own defaults; A keeps its values
    add("var_sql_mode", "SET sql_mode = 'ANSI_QUOTES'",
        session_variable("sql_mode", DEFAULTS.of("sql_mode"), "ANSI_QUOTES"), "B runs with A's sql_mode",
        shares=True)
    add("var_time_zone", "SET time_zone = '+05:00'",
        session_variable("time_zone", DEFAULTS.of("time_zone"), "+05:00"), "B runs with A's time_zone", shares=True)
    add("var_time_zone_70kb", f"SET time_zone = CONCAT('+06:00', LEFT('{PAD}', 0))",
        session_variable("time_zone", DEFAULTS.of("time_zone"), "+06:00"),
        "B runs with A's time_zone, set by a 70 KB statement", shares=True)
    add("var_sql_select_limit", "SET SESSION sql_select_limit = 1", select_limit(),
        "B's SELECT returns 1 row of 3 under A's sql_select_limit", shares=True)
    add("var_multi_statement", "SELECT 1; SET time_zone = '+07:00'",
        session_variable("time_zone", DEFAULTS.of("time_zone"), "+07:00"),
        "B runs with A's time_zone, set in a multi-statement", multi=True)
    return s


def _begin_only_check(a: Client) -> None:
    assert in_transaction(a), "A's transaction is gone"
    a.rows("ROLLBACK")


SHAPES = _shapes()
# MySQL reads /*M! */ as a plain comment and has no CREATE OR REPLACE: those shapes are MariaDB's own.
PARAMS = [pytest.param(s, id=s.id, marks=pytest.mark.skipif(s.mariadb_only and SERVER.mysql, reason="MariaDB only: MySQL has no CREATE OR REPLACE and reads /*M! */ as a comment"))
          for s in SHAPES]


# --------------------------------------------------------------------------- fixtures

_ROUTINES = {
    "iso_out": "CREATE PROCEDURE appdb.iso_out(OUT x INT) SET x = 42",
    "iso_set_var": "CREATE PROCEDURE appdb.iso_set_var() SET @iso_inner = 43",
    "iso_make_temp": "CREATE PROCEDURE appdb.iso_make_temp() CREATE TEMPORARY TABLE iso_t_proc SELECT 7 AS id",
    "iso_lock_proc": "CREATE PROCEDURE appdb.iso_lock_proc() DO GET_LOCK('iso_l_proc', 0)",
    "iso_prepare_proc": "CREATE PROCEDURE appdb.iso_prepare_proc() PREPARE iso_ps_proc FROM 'SELECT 35'",
    "iso_begin": "CREATE PROCEDURE appdb.iso_begin() START TRANSACTION",
}
_FUNCTIONS = {
    "iso_set_var_fn": "CREATE FUNCTION appdb.iso_set_var_fn() RETURNS INT NOT DETERMINISTIC "
                      "BEGIN SET @iso_fn_var = 44; RETURN 1; END",
    "iso_lock_fn": "CREATE FUNCTION appdb.iso_lock_fn() RETURNS INT NOT DETERMINISTIC RETURN GET_LOCK('iso_l_fn', 0)",
}


@pytest.fixture(scope="module")
def iso_server(mariadb: MariaDB) -> Iterator[MariaDB]:
    """An account of its own (FLUSH TABLES WITH READ LOCK needs RELOAD), its tables and routines."""
    mariadb.create_user(USER, PASSWORD, APP_DB)
    mariadb.sql("GRANT RELOAD ON *.* TO %s@'%%'", (USER,))
    for name, columns in (("iso_plain", "id INT PRIMARY KEY"), ("iso_three", "id INT PRIMARY KEY"),
                          ("iso_locked", "id INT PRIMARY KEY"),
                          ("iso_scratch", "id INT AUTO_INCREMENT PRIMARY KEY, who VARCHAR(8)"),
                          ("iso_tx", "id INT PRIMARY KEY, n INT NOT NULL DEFAULT 0")):
        mariadb.sql(f"DROP TABLE IF EXISTS appdb.{name}")
        mariadb.sql(f"CREATE TABLE appdb.{name} ({columns})")
    mariadb.sql("INSERT INTO appdb.iso_plain VALUES (1)")
    mariadb.sql("INSERT INTO appdb.iso_three VALUES (1), (2), (3)")
    for name, stmt in _ROUTINES.items():
        mariadb.sql(f"DROP PROCEDURE IF EXISTS appdb.{name}")
        mariadb.sql(stmt)
    for name, stmt in _FUNCTIONS.items():
        mariadb.sql(f"DROP FUNCTION IF EXISTS appdb.{name}")
        mariadb.sql(stmt)
    direct = mariadb.connect(user=USER, password=PASSWORD)
    with direct.cursor() as cur:
        cur.execute("SELECT @@session.sql_mode, @@session.time_zone")
        DEFAULTS.values["sql_mode"], DEFAULTS.values["time_zone"] = cur.fetchone()
    direct.close()
    _SERVER[:] = [mariadb]
    yield mariadb
    mariadb.sql("DROP USER IF EXISTS %s@'%%'", (USER,))


def _fresh_rows(server: MariaDB) -> None:
    server.sql("DELETE FROM appdb.iso_tx")
    server.sql("INSERT INTO appdb.iso_tx (id) VALUES (1)")


@pytest.fixture
def iso_proxy(iso_server: MariaDB, proxy_factory: ProxyFactory) -> ProxyProcess:
    # Each shape starts from a clean table of rows and a fresh proxy (a leaked lock must not spill over).
    _fresh_rows(iso_server)
    return proxy_factory({**POOL_OF_ONE, "backend": {"user": USER, "password": PASSWORD}})


# --------------------------------------------------------------------------- the test


def _run_setup(a: Client, steps: Sequence[Step], server: MariaDB) -> None:
    for step in steps:
        if isinstance(step, Root):
            server.sql(step.sql)
        elif isinstance(step, Binary):
            a.prepared(step.sql, step.params)
        else:
            a.rows(step)


def _outcome(step: Probe, client: Client) -> tuple[str, str]:
    """('ok' | 'waited' | 'failed', detail): what one probe or check found."""
    try:
        step(client)
    except PoolBusy as e:
        return "waited", str(e)
    except AssertionError as e:
        return "failed", str(e).splitlines()[0]
    except SqlError as e:  # an error the probe did not expect: the session is not what it should be
        return "failed", f"error {e.code}: {e.message}"
    return "ok", ""


@pytest.mark.parametrize("shape", PARAMS)
def test_b_never_sees_a_state(shape: Shape, iso_server: MariaDB, iso_proxy: ProxyProcess) -> None:
    at = (iso_proxy.host, iso_proxy.port)
    a = Client(*at, binary=shape.binary, multi=shape.multi)
    _run_setup(a, shape.setup, iso_server)
    b: Client | None = None
    try:
        b = Client(*at)
        seen, detail = _outcome(shape.probe, b)
    except PoolBusy:
        seen, detail = "waited", "while connecting"  # PyMySQL's SET NAMES waited for the link
    finally:
        if b is not None:
            b.close()  # a B that pinned itself (an error's diagnostics) must not hold the link for A's check
    # "waited": A is pinned and holds the only link, so B never got near A's state.
    assert seen != "failed", f"leak: {shape.leak} ({detail})"
    assert not (shape.shares and seen == "waited"), f"replayable state pinned A: B waited for the pool ({detail})"
    kept, detail = _outcome(shape.check, a)
    a.close()
    assert kept == "ok", f"A lost its own state ({kept}: {detail})"


@pytest.mark.parametrize("shape", PARAMS)
def test_probe_can_fail(shape: Shape, iso_server: MariaDB) -> None:
    """On the server directly: each probe fails on the session holding the state and passes on another
    one, and each check passes on the session holding it. A probe that cannot fail proves nothing."""
    at = (iso_server.host, iso_server.port)
    _fresh_rows(iso_server)
    holder = Client(*at, binary=shape.binary, multi=shape.multi)
    _run_setup(holder, shape.setup, iso_server)
    other = Client(*at)
    clean, detail = _outcome(shape.probe, other)
    other.close()
    assert clean == "ok", f"the probe fails on a session without the state: {detail}"
    caught, _ = _outcome(shape.probe, holder)
    holder.close()  # its state (locks, transactions) goes with it
    assert caught == "failed", f"the probe does not see the state on the session holding it ({shape.leak})"
    _fresh_rows(iso_server)
    holder = Client(*at, binary=shape.binary, multi=shape.multi)
    _run_setup(holder, shape.setup, iso_server)
    kept, detail = _outcome(shape.check, holder)
    holder.close()
    assert kept == "ok", f"the check fails on the session holding the state: {detail}"


def test_shapes_cover_the_issue() -> None:
    """At least 30 shapes, each with its own probe, and the kinds the issue lists."""
    assert len(SHAPES) >= 30
    assert len({s.id for s in SHAPES}) == len(SHAPES)
    kinds = {s.id.split("_")[0] for s in SHAPES}
    assert {"tmp", "uv", "lock", "flush", "sql", "handler", "xa", "tx", "set", "var"} <= kinds
    assert any(s.binary for s in SHAPES) and any(s.multi for s in SHAPES)
    assert sum(PAD in str(step) for s in SHAPES for step in s.setup) >= 5
