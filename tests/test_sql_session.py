"""The statement classifier (proxy.sql) and session state replay (proxy.session).

The important part is at the end: every SET that ``replay_commands`` builds is
run on the private MariaDB as the app user, and the session variables it leaves
must be the ones a connection that ran the client's own statements has. The
wanted state is built the way the proxy builds it: the statements run on a
tracked backend link and ``Session.after_response`` folds in what the server
reported (plus the character-set read-back the frontend does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pymysql
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from conftest import APP_DB, APP_PASSWORD, APP_USER, SERVER, MariaDB

from proxy.backend import CHARSET_FACTS, charset_values, open_link
from proxy.config import BackendConfig
from proxy.mysql.constants import MULTI_STATEMENTS_OFF, MULTI_STATEMENTS_ON, Cap, Command
from proxy.session import (
    CHARSET_VARIABLES,
    PIN_NAMED_LOCK,
    PIN_SQL_PREPARE,
    PIN_STATE,
    PIN_TABLE_LOCK,
    PIN_TRANSACTION,
    LinkState,
    Session,
    literal,
    mark_replayed,
    replay_commands,
)
from proxy.sql import Kind, classify, classify_all, rewrite_connection_id

# --------------------------------------------------------------------------- classify

K = Kind


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        (b"LOCK TABLES t WRITE", K.LOCK_TABLES),
        (b"lock table t read, u write", K.LOCK_TABLES),
        (b"/* app:42 */ LOCK TABLES t WRITE", K.LOCK_TABLES),
        (b"SELECT 1; LOCK TABLES t READ", K.LOCK_TABLES),
        (b"FLUSH TABLES WITH READ LOCK", K.LOCK_TABLES),
        (b"FLUSH TABLES t1, t2 WITH READ LOCK", K.LOCK_TABLES),
        (b"UNLOCK TABLES", K.UNLOCK_TABLES),
        (b"unlock table", K.UNLOCK_TABLES),
        (b"SELECT GET_LOCK('job', 10)", K.GET_LOCK),
        (b"SELECT get_lock ('job', 10) AS got", K.GET_LOCK),
        (b"SELECT RELEASE_LOCK('job')", K.RELEASE_LOCK),
        (b"SELECT RELEASE_ALL_LOCKS()", K.RELEASE_ALL_LOCKS),
        (b"SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 10", K.CALC_FOUND_ROWS),
        (b"SELECT FOUND_ROWS()", K.FOLLOW_UP),
        (b"SELECT ROW_COUNT()", K.FOLLOW_UP),
        (b"SHOW WARNINGS", K.FOLLOW_UP),
        (b"show errors limit 1", K.FOLLOW_UP),
        (b"SHOW COUNT(*) WARNINGS", K.FOLLOW_UP),
        (b"SELECT @@warning_count", K.FOLLOW_UP),  # @@ is a system variable, not a user variable
        (b"SELECT @@session.error_count", K.FOLLOW_UP),
        (b"GET DIAGNOSTICS @n = NUMBER", K.FOLLOW_UP | K.USER_VARIABLE | K.USER_VARIABLE_ASSIGNED),
        (b"XA START 'trx1'", K.XA_START),
        (b"xa begin 'trx1'", K.XA_START),
        (b"XA COMMIT 'trx1'", K.XA_END),
        (b"XA ROLLBACK 'trx1'", K.XA_END),
        (b"HANDLER t OPEN", K.HANDLER_OPEN),
        (b"SELECT CONNECTION_ID()", K.CONNECTION_ID),
        (b"SELECT IS_FREE_LOCK('a'), IS_USED_LOCK('a')", K.IS_USED_LOCK),  # answers a thread id: mapped
        (b"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", K.SET_TRANSACTION),
        (b"SET @u = 1", K.USER_VARIABLE | K.USER_VARIABLE_ASSIGNED),
        (b"SELECT 1 INTO @x", K.USER_VARIABLE | K.USER_VARIABLE_ASSIGNED),
        (b"SELECT @a := 1", K.USER_VARIABLE | K.USER_VARIABLE_ASSIGNED),
        (b"CREATE TEMPORARY TABLE tmp (a INT)", K.TEMPORARY_TABLE),
        (b"create or replace temporary table tmp (a int)", K.TEMPORARY_TABLE),
        (b"LOCK TABLES t WRITE; SELECT GET_LOCK('a', 0)", K.LOCK_TABLES | K.GET_LOCK),
        # CHARACTER SET is no SET clause, and '...' (a, b) is a column list, not a call.
        (b"LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE t CHARACTER SET utf8mb4 FIELDS TERMINATED BY ',' (a, b)",
         K.LOAD_LOCAL),
        (b"LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE t (a, @b) SET c = @b", K.LOAD_LOCAL | K.USER_VARIABLE
         | K.USER_VARIABLE_ASSIGNED),
    ],
)
def test_classify_kinds(sql: bytes, kind: Kind) -> None:
    c = classify(sql)
    assert c is not None
    assert c.kind == kind


@pytest.mark.parametrize(
    "sql",
    [
        b"SELECT * FROM orders WHERE id = 1",
        b"INSERT INTO t (a, b) VALUES (1, 'x')",
        b"UPDATE t SET a = a + 1 WHERE id = 2",
        b"DELETE FROM t WHERE id = 3",
        b"SELECT * FROM t WHERE id = 1 FOR UPDATE",
        b"SELECT * FROM t LOCK IN SHARE MODE",  # row locks end with the transaction, which is tracked
        b"SELECT * FROM transactions",
        b"SELECT `t`.`title` FROM `t` WHERE `t`.`title` IN ('a', 'b')",  # a quoted column before IN (
        b"SELECT deadlock_count, error_rate FROM stats",
        b"SELECT 'kill 5'",
        b"SET SESSION TRANSACTION READ ONLY",  # session-wide: the server reports it as a variable
        b"XA END 'trx1'",
        b"SELECT @@session.time_zone",
        b"BEGIN",
        b"",
    ],
)
def test_classify_plain_statements_need_nothing(sql: bytes) -> None:
    assert classify(sql) is None


def test_classify_prepare_and_deallocate_names() -> None:
    c = classify(b"PREPARE Stmt1 FROM 'SELECT ?'")
    assert c is not None and c.kind == K.PREPARE and c.names == ["stmt1"]
    c = classify(b"PREPARE s2 FROM @sql")
    assert c is not None and c.kind == K.PREPARE | K.USER_VARIABLE and c.names == ["s2"]
    # A quoted name: no DEALLOCATE can be matched to it, so the statement's state lasts.
    c = classify(b"PREPARE `s3` FROM @sql")
    assert c is not None and K.PREPARE in c.kind and K.UNCERTAIN in c.kind and c.names == []
    c = classify(b"DEALLOCATE PREPARE stmt1")
    assert c is not None and c.kind == K.DEALLOCATE and c.names == ["stmt1"]
    c = classify(b"DROP PREPARE S2")
    assert c is not None and c.kind == K.DEALLOCATE and c.names == ["s2"]


@pytest.mark.parametrize(
    ("sql", "kill_id", "query_only"),
    [
        (b"KILL 42", 42, False),
        (b"KILL QUERY 42", 42, True),
        (b"kill query 7;", 7, True),
        (b"KILL CONNECTION 9", 9, False),
        (b"KILL HARD QUERY 11", 11, True),
        (b"KILL SOFT 12", 12, False),
    ],
)
def test_classify_kill(sql: bytes, kill_id: int, query_only: bool) -> None:
    c = classify(sql)
    assert c is not None and c.kind == K.KILL
    assert (c.kill_id, c.kill_query_only) == (kill_id, query_only)


@pytest.mark.parametrize("sql", [b"-- refresh\nLOCK TABLES t WRITE", b"# refresh\nLOCK TABLES t WRITE"])
def test_classify_lock_tables_after_line_comment(sql: bytes) -> None:
    c = classify(sql)
    assert c is not None and K.LOCK_TABLES in c.kind


# Phrases that each match a rule, and noise, glued together at random: the fast path in
# classify() must never hide what the full reading finds.
_PHRASES = [
    "lock tables t write", "lock table t read", "flush tables with read lock", "flush tables a, b with read lock",
    "unlock tables", "select get_lock('a', 1)", "select release_lock('a')", "select release_all_locks()",
    "select sql_calc_found_rows * from t", "select found_rows()", "select row_count()", "show warnings",
    "show errors", "show count(*) warnings", "select @@warning_count", "select @@session.error_count",
    "get diagnostics @n = number", "get current diagnostics", "xa start 'x'", "xa begin 'x'", "xa commit 'x'",
    "xa rollback 'x'", "handler t open", "select connection_id()", "set transaction read only", "set @u = 1",
    "select 1 into @x", "select @a := 1", "call p(@v)", "create temporary table tmp (a int)",
    "create or replace temporary table tmp (a int)", "select last_insert_id(5)", "load data local infile 'f' into table t",
    "load xml concurrent local infile 'f' into table t", "prepare s from 'select 1'", "deallocate prepare s",
    "drop prepare s", "kill 42", "kill query 42", "kill hard connection 7", "select myfunc(1)", "select next value for s",
    "show processlist", "rollback", "commit", "execute s",
]
_NOISE = ["select a_b from t", "where id = 5", "/* c */", "-- c\n", "# c\n", "`x`", "'s'", "(", ")", "_", "x",
          "select 1", "update t set a = 1", "insert into t values", "'", "\\", "/*!", "*/", "@", ";"]


@pytest.mark.parametrize("phrase", _PHRASES)
def test_classify_phrase_is_found(phrase: str) -> None:
    sql = phrase.encode()
    assert classify_all(sql).kind  # the phrase does match a rule
    assert classify(sql) == classify_all(sql)
    assert classify(sql.upper()) == classify_all(sql)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_PHRASES + _NOISE), st.sampled_from([" ", "\n", "; ", ";"])), max_size=6))
def test_classify_fast_path_never_hides_a_rule(parts: list[tuple[str, str]]) -> None:
    sql = "".join(word + sep for word, sep in parts).encode()
    for text in (sql, sql.upper()):
        full = classify_all(text)
        assert classify(text) == (full if full.kind else None)


# --------------------------------------------------------------------------- rewrite_connection_id


def test_rewrite_leaves_other_sql_alone() -> None:
    for sql in (b"SELECT 1", b"SELECT my_connection_id() FROM t", b"SELECT connection_idx()"):
        assert rewrite_connection_id(sql, 5) == sql


@pytest.mark.parametrize(
    ("sql", "expected", "same_names"),
    [
        (b"SELECT CONNECTION_ID()", ((4242,),), True),
        (b"select connection_id();", ((4242,),), True),
        (b"SELECT  Connection_Id( ) ", ((4242,),), True),
        (b"SELECT CONNECTION_ID() AS id, 1 AS one", ((4242, 1),), True),
        (b"SELECT c FROM (SELECT CONNECTION_ID() AS c) t", ((4242,),), True),
        # An unaliased expression is named after its text, which the rewrite changes (documented limit).
        (b"SELECT CONNECTION_ID()+1", ((4243,),), False),
        (b"SELECT -CONNECTION_ID()", ((-4242,),), False),
    ],
)
def test_rewrite_connection_id_on_server(mariadb: MariaDB, sql: bytes, expected: tuple[tuple[int, ...], ...],
                                         same_names: bool) -> None:
    """The rewritten statement runs, answers the proxy's id and keeps the column names of the original."""
    conn = mariadb.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(sql.decode())
            original_names = [d[0] for d in cur.description]
            cur.execute(rewrite_connection_id(sql, 4242).decode())
            assert cur.fetchall() == expected
            if same_names:
                assert [d[0] for d in cur.description] == original_names
    finally:
        conn.close()


# --------------------------------------------------------------------------- literal and replay_commands


@pytest.mark.parametrize(
    ("value", "name", "sql"),
    [
        ("+02:00", "time_zone", "'+02:00'"),
        ("OFF", "autocommit", "'OFF'"),
        ("it's", "x", "'it''s'"),
        ("a'b'c", "x", "'a''b''c'"),
        ("C:\\dir", "x", "_utf8mb4 X'433a5c646972'"),  # independent of NO_BACKSLASH_ESCAPES
        ("7", "div_precision_increment", "7"),
        ("-1", "x", "-1"),
        ("2.500000", "long_query_time", "2.500000"),
        ("18446744073709551615", "max_join_size", "18446744073709551615"),
        ("", "character_set_results", "NULL"),  # the tracker reports NULL as ''
        ("", "sql_mode", "''"),
        ("1.2.3", "x", "'1.2.3'"),
    ],
)
def test_literal(value: str, name: str, sql: str) -> None:
    assert literal(value, name) == sql


def _sets(commands: list[tuple[int, bytes]]) -> list[str]:
    """The assignments of the (single) SET in ``commands``."""
    queries = [arg for cmd, arg in commands if cmd == Command.QUERY]
    assert len(queries) == 1, "the variables are applied in one statement"
    sql = queries[0].decode()
    assert sql.startswith("SET ")
    return sql[4:].split(", ")


UTF8 = {"character_set_client": "utf8mb4", "character_set_connection": "utf8mb4",
        "character_set_results": "utf8mb4", "collation_connection": "utf8mb4_general_ci"}


def test_replay_nothing_when_equal() -> None:
    s = LinkState("appdb", dict(UTF8, time_zone="+02:00"), True)
    assert replay_commands(s, s.copy()) == []


def test_replay_only_the_difference() -> None:
    want = LinkState("appdb", dict(UTF8, time_zone="+02:00", sql_mode="ANSI"))
    have = LinkState("appdb", dict(UTF8, time_zone="+02:00", sql_mode=""))
    assert replay_commands(want, have) == [(Command.QUERY, b"SET @@session.sql_mode = 'ANSI'")]


def test_replay_schema_first_and_only_when_named() -> None:
    cmds = replay_commands(LinkState("shop", {"time_zone": "UTC"}), LinkState("appdb", {}))
    assert cmds == [(Command.INIT_DB, b"shop"), (Command.QUERY, b"SET @@session.time_zone = 'UTC'")]
    # A session without a schema cannot "unselect" the link's: nothing to do.
    assert replay_commands(LinkState(None, {}), LinkState("appdb", {})) == []


def test_replay_charset_variables_first_in_order() -> None:
    want = LinkState(None, {"time_zone": "+01:00", "autocommit": "OFF", "character_set_results": "latin1",
                            "collation_connection": "latin1_swedish_ci", "character_set_client": "latin1",
                            "character_set_connection": "latin1"})
    have = LinkState(None, dict(UTF8))
    # One SET NAMES ... COLLATE first (the only way to give character_set_results a collation), then the rest.
    assert _sets(replay_commands(want, have)) == [
        "NAMES 'latin1' COLLATE 'latin1_swedish_ci'", "@@session.autocommit = 'OFF'", "@@session.time_zone = '+01:00'"]
    # The collation alone differs: SET NAMES with it (utf8mb4_bin's columns then come back as utf8mb4_bin).
    want = LinkState(None, dict(UTF8, collation_connection="utf8mb4_bin"))
    assert _sets(replay_commands(want, LinkState(None, dict(UTF8)))) == ["NAMES 'utf8mb4' COLLATE 'utf8mb4_bin'"]
    # Results in another charset than the client's: SET NAMES cannot say that, so one by one.
    want = LinkState(None, dict(UTF8, character_set_results="latin1"))
    assert _sets(replay_commands(want, LinkState(None, dict(UTF8)))) == ["@@session.character_set_results = 'latin1'"]


def test_replay_default_for_variables_the_session_never_set() -> None:
    want = LinkState(None, dict(UTF8))
    have = LinkState(None, dict(UTF8, time_zone="+02:00", sql_mode="ANSI", last_insert_id="17"))
    assert _sets(replay_commands(want, have)) == [
        "@@session.last_insert_id = 0",  # not SET ... = DEFAULT, which the server refuses for it
        "@@session.sql_mode = DEFAULT",
        "@@session.time_zone = DEFAULT",
    ]


def test_replay_multi_statements_option_last() -> None:
    on = replay_commands(LinkState(None, {"time_zone": "UTC"}, True), LinkState(None, {}, False))
    assert on[-1] == (Command.SET_OPTION, MULTI_STATEMENTS_ON.to_bytes(2, "little"))
    off = replay_commands(LinkState(None, {}, False), LinkState(None, {}, True))
    assert off == [(Command.SET_OPTION, MULTI_STATEMENTS_OFF.to_bytes(2, "little"))]
    assert MULTI_STATEMENTS_ON.to_bytes(2, "little") == b"\x00\x00"


def test_mark_replayed() -> None:
    want = LinkState("shop", dict(UTF8, time_zone="UTC"), True)
    link = LinkState("appdb", dict(UTF8, sql_mode="ANSI"), False)
    mark_replayed(want, link)
    assert link == want
    link.variables["x"] = "1"
    assert "x" not in want.variables  # a copy, not the session's own dict
    kept = LinkState("appdb", {})
    mark_replayed(LinkState(None, {}), kept)
    assert kept.schema == "appdb"  # no INIT_DB was sent, so the link kept its schema


# --------------------------------------------------------------------------- the real server

# A session variable that takes any text, to replay quotes and backslashes through: MariaDB's
# default_master_connection; MySQL 9 has external_table_secondary_storage_engine (not checked
# against the engines there are). Isolation is tx_isolation on MariaDB 10.11, transaction_isolation
# on MySQL 8+ and MariaDB 11.1+.
FREE_TEXT = "external_table_secondary_storage_engine" if SERVER.mysql else "default_master_connection"
ISOLATION = "tx_isolation" if SERVER.name == "mariadb-10.11" else "transaction_isolation"
SESSION_VARIABLES = [
    "time_zone", "sql_mode", "autocommit", ISOLATION, "lc_time_names", "div_precision_increment",
    "long_query_time", "max_join_size", FREE_TEXT, *CHARSET_VARIABLES,
]


def _cfg(db: MariaDB) -> BackendConfig:
    return BackendConfig(host=db.host, port=db.port, user=APP_USER, password=APP_PASSWORD, database=APP_DB)


async def tracked(db: MariaDB, statements: Sequence[bytes]) -> tuple[Session, LinkState, LinkState]:
    """Run ``statements`` on a backend link as the proxy does; returns (session, link state after, fresh state)."""
    link = await open_link(_cfg(db), kind=0, timeout=5)
    try:
        fresh = link.state.copy()
        session = Session(proxy_id=1, user=APP_USER, client_caps=Cap.SESSION_TRACK, state=link.state.copy())
        for sql in statements:
            (reply,) = await link.exchange([(Command.QUERY, sql)])
            charset_changed = session.after_response(Command.QUERY, reply.tracker, classify(sql), link.state)
            if charset_changed:  # what the frontend does: read the collation back
                (facts,) = await link.exchange([(Command.QUERY, CHARSET_FACTS)])
                values = charset_values(facts.rows()[0])
                session.state.variables.update(values)
                link.state.variables.update(values)
        return session, link.state.copy(), fresh
    finally:
        link.close()


def like_a_link(db: MariaDB, fresh: LinkState) -> pymysql.connections.Connection:
    """A client connection that starts with the collation a fresh link of the proxy has.

    PyMySQL sends ``SET NAMES utf8mb4`` on connect, which picks the server's default collation for
    utf8mb4 (utf8mb4_0900_ai_ci on MySQL, utf8mb4_uca1400_ai_ci on MariaDB 11.8), while the proxy's
    link keeps the one its handshake named; the replay is tested from the same starting point.
    """
    return db.connect(collation=fresh.variables["collation_connection"])


def apply(conn: pymysql.connections.Connection, commands: Sequence[tuple[int, bytes]]) -> None:
    """Send replay commands as a client would; any server error fails the test."""
    for cmd, arg in commands:
        if cmd == Command.INIT_DB:
            conn.select_db(arg.decode())
        elif cmd == Command.QUERY:
            with conn.cursor() as cur:
                cur.execute(arg.decode())
        elif cmd == Command.SET_OPTION:
            conn._execute_command(cmd, arg)
            answer = conn._read_packet()  # raises on ERR
            assert answer.is_eof_packet() or answer.is_ok_packet()
        else:
            raise AssertionError(f"unexpected replay command {cmd}")


def session_values(conn: pymysql.connections.Connection, names: Sequence[str]) -> dict[str, Any]:
    with conn.cursor() as cur:
        cur.execute("SELECT " + ", ".join(f"@@session.{n}" for n in names))
        row = cur.fetchone()
    assert row is not None
    return dict(zip(names, row))


def run_sql(conn: pymysql.connections.Connection, statements: Sequence[bytes]) -> None:
    with conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql.decode())


SCENARIOS = [
    pytest.param([b"SET time_zone='+02:00'", b"SET sql_mode='ANSI'", b"SET lc_time_names='de_DE'",
                  b"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", b"SET div_precision_increment=7",
                  b"SET long_query_time=2.5", b"SET max_join_size=1000000", b"SET autocommit=0"], id="variables"),
    pytest.param([b"SET sql_mode=''", b"SET time_zone='SYSTEM'"], id="empty_and_default_values"),
    pytest.param([b"SET NAMES latin1"], id="set_names"),
    pytest.param([b"SET NAMES utf8mb4 COLLATE utf8mb4_bin"], id="set_names_collate"),
    pytest.param([b"SET CHARACTER SET latin1"], id="set_character_set"),
    pytest.param([b"SET character_set_connection=latin1"], id="charset_connection_only"),
    pytest.param([b"SET collation_connection='utf8mb4_unicode_ci'"], id="collation_only"),
    pytest.param([b"SET NAMES latin1", b"SET character_set_results=NULL"], id="results_null"),
    pytest.param([b"SET " + FREE_TEXT.encode() + b"='it''s a \\\\ path'"], id="quote_and_backslash"),
    pytest.param([b"SET " + FREE_TEXT.encode() + b"='0012'"], id="numeric_looking_string"),
]


@pytest.mark.parametrize("statements", SCENARIOS)
async def test_replay_to_a_fresh_connection(mariadb: MariaDB, statements: list[bytes]) -> None:
    """A fresh connection given the replay commands ends with the variables of one that ran the statements."""
    session, _link_after, fresh = await tracked(mariadb, statements)
    assert PIN_STATE not in session.pins  # replayable state: the proxy would multiplex this session
    direct = like_a_link(mariadb, fresh)
    target = like_a_link(mariadb, fresh)
    try:
        run_sql(direct, statements)
        # The fresh link and a fresh client connection start from the same state.
        assert session_values(target, CHARSET_VARIABLES) == {
            n: v or None for n, v in fresh.variables.items() if n in CHARSET_VARIABLES}
        commands = replay_commands(session.state, fresh)
        assert commands, "the statements changed nothing the proxy knows of"
        apply(target, commands)
        assert session_values(target, SESSION_VARIABLES) == session_values(direct, SESSION_VARIABLES)
    finally:
        direct.close()
        target.close()


@pytest.mark.parametrize("statements", [p for p in SCENARIOS if p.id != "numeric_looking_string"])
async def test_replay_back_to_defaults(mariadb: MariaDB, statements: list[bytes]) -> None:
    """A link another session changed is brought back to what a fresh connection has (DEFAULT and friends)."""
    _session, link_after, fresh = await tracked(mariadb, statements)
    used = like_a_link(mariadb, fresh)
    clean = like_a_link(mariadb, fresh)
    try:
        run_sql(used, statements)
        apply(used, replay_commands(fresh, link_after))
        assert session_values(used, SESSION_VARIABLES) == session_values(clean, SESSION_VARIABLES)
    finally:
        used.close()
        clean.close()


async def test_replay_last_insert_id(mariadb: MariaDB) -> None:
    mariadb.sql(f"DROP TABLE IF EXISTS `{APP_DB}`.sqls_ai")
    mariadb.sql(f"CREATE TABLE `{APP_DB}`.sqls_ai (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
    mariadb.sql(f"INSERT INTO `{APP_DB}`.sqls_ai (v) VALUES (0), (0), (0)")
    session, link_after, fresh = await tracked(mariadb, [b"INSERT INTO sqls_ai (v) VALUES (1)"])
    insert_id = int(session.state.variables["last_insert_id"])
    assert insert_id == 4
    conn = mariadb.connect()
    try:
        apply(conn, replay_commands(session.state, fresh))
        assert session_values(conn, ["last_insert_id"]) == {"last_insert_id": insert_id}
        with conn.cursor() as cur:
            cur.execute("SELECT LAST_INSERT_ID()")
            assert cur.fetchone() == (insert_id,)
        apply(conn, replay_commands(fresh, link_after))
        assert session_values(conn, ["last_insert_id"]) == {"last_insert_id": 0}
    finally:
        conn.close()


async def test_replay_schema_and_multi_statements(mariadb: MariaDB) -> None:
    conn = mariadb.connect(database=None)
    try:
        apply(conn, replay_commands(LinkState(APP_DB, {}, True), LinkState(None, {}, False)))
        with conn.cursor() as cur:
            cur.execute("SELECT DATABASE(); SELECT 2")  # two statements: multi-statements is on
            assert cur.fetchone() == (APP_DB,)
            assert cur.nextset() and cur.fetchone() == (2,)
        apply(conn, replay_commands(LinkState(APP_DB, {}, False), LinkState(APP_DB, {}, True)))
        with conn.cursor() as cur, pytest.raises(pymysql.err.ProgrammingError) as ei:
            cur.execute("SELECT 1; SELECT 2")
        assert ei.value.args[0] == 1064
    finally:
        conn.close()


# --------------------------------------------------------------------------- pins from real responses


async def test_session_pins_from_real_responses(mariadb: MariaDB) -> None:
    session, _after, _fresh = await tracked(mariadb, [b"SET time_zone='+02:00'", b"USE appdb"])
    assert not session.pinned
    assert session.state.variables["time_zone"] == "+02:00" and session.state.schema == APP_DB

    for statements, reason in [
        ([b"SET @u = 1"], PIN_STATE),
        ([b"CREATE TEMPORARY TABLE sqls_tmp (a INT)"], PIN_STATE),
        ([b"BEGIN"], PIN_TRANSACTION),
        ([b"SELECT GET_LOCK('sqls_lock', 0)"], PIN_NAMED_LOCK),
        ([b"CREATE TABLE IF NOT EXISTS sqls_lt (a INT)", b"LOCK TABLES sqls_lt WRITE"], PIN_TABLE_LOCK),
        ([b"PREPARE sqls_s FROM 'SELECT 1'"], PIN_SQL_PREPARE),
    ]:
        session, _after, _fresh = await tracked(mariadb, statements)
        assert list(session.pins) == [reason], statements

    for statements in (
        [b"BEGIN", b"COMMIT"],
        [b"SELECT GET_LOCK('sqls_lock', 0)", b"SELECT RELEASE_LOCK('sqls_lock')"],
        [b"LOCK TABLES sqls_lt WRITE", b"UNLOCK TABLES"],
        [b"PREPARE sqls_s FROM 'SELECT 1'", b"DEALLOCATE PREPARE sqls_s"],  # the server's state change is explained
    ):
        session, _after, _fresh = await tracked(mariadb, statements)
        assert not session.pinned, statements


@pytest.mark.parametrize("sql", [b"SELECT 41 INTO @x", b"SELECT @x := 41", b"DO @x := 41"])
async def test_user_variable_assigned_outside_set_pins(mariadb: MariaDB, sql: bytes) -> None:
    session, _after, _fresh = await tracked(mariadb, [sql])
    assert PIN_STATE in session.pins
