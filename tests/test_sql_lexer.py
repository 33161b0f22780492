"""Property tests of the SQL lexer (proxy/sql.py) against the pin decision.

Generated statement shapes: each phrase that leaves state on a link (a named lock, a user
variable, a temporary table ...) is cut into tokens, glued with random spacing and comments,
put in random case, hidden after long literals or inside a multi-statement or an executable
comment. Whatever the shape, the lexer must report the phrase's kind, or UNCERTAIN (which pins
as well): never nothing. The same phrase inside a string literal or a comment is no code and
must not be reported. Timing is left to bench/ (bench/classify.py), not asserted here.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.sql import PINNING, Kind, classify, classify_all, is_retryable_read, rewrite_connection_id

K = Kind

# (tokens, the kind that must be found). Every one of these pins a session.
STATE_PHRASES: list[tuple[list[str], Kind]] = [
    (["select", "get_lock", "(", "'l'", ",", "0", ")"], K.GET_LOCK),
    (["do", "get_lock", "(", "'l'", ",", "0", ")"], K.GET_LOCK),
    (["select", "1", "from", "t", "where", "get_lock", "(", "'l'", ",", "0", ")"], K.GET_LOCK),
    (["set", "@v", "=", "1"], K.USER_VARIABLE_ASSIGNED),
    (["set", "@`odd name`", ":=", "1"], K.USER_VARIABLE_ASSIGNED),
    (["select", "@v", ":=", "1"], K.USER_VARIABLE_ASSIGNED),
    (["select", "1", "into", "@v"], K.USER_VARIABLE_ASSIGNED),
    (["select", "1", ",", "2", "into", "@a", ",", "@b"], K.USER_VARIABLE_ASSIGNED),
    (["create", "temporary", "table", "tt", "(", "a", "int", ")"], K.TEMPORARY_TABLE),
    (["create", "temporary", "table", "tt", "as", "select", "1"], K.TEMPORARY_TABLE),
    (["create", "or", "replace", "temporary", "table", "tt", "select", "1"], K.TEMPORARY_TABLE),
    (["lock", "tables", "t", "write"], K.LOCK_TABLES),
    (["flush", "tables", "with", "read", "lock"], K.LOCK_TABLES),
    (["prepare", "s", "from", "'select 1'"], K.PREPARE),
    (["handler", "t", "open"], K.HANDLER_OPEN),
    (["xa", "start", "'x'"], K.XA_START),
    (["call", "p", "(", ")"], K.UNCERTAIN),
    (["select", "my_stored_function", "(", "1", ")"], K.UNCERTAIN),
    (["select", "db", ".", "f", "(", "1", ")"], K.UNCERTAIN),
    (["execute", "s"], K.EXECUTE),
    (["select", "next", "value", "for", "seq"], K.UNCERTAIN),
    (["begin", "not", "atomic", "set", "@v", "=", "1", ";", "end"], K.UNCERTAIN),
    (["set", "role", "r"], K.UNCERTAIN),
    (["some_new_statement", "x"], K.UNCERTAIN),
]
PHRASE_IDS = ["-".join(t[:4]) for t, _ in STATE_PHRASES]

SEPARATORS = [" ", "  ", "\n", "\t", " /* c */ ", "/**/", " -- c\n", " # c\n"]
# Noise that is complete on its own (no open literal or comment) and leaves nothing.
CLEAN = ["select 1", "select 'a;b'", "select \"x\"", "select `t`.`c` from `t`", "update t set a = 1",
         "insert into t (a, b) values (1, 'x')", "select count(*) from t where id in (1, 2)", "do 1",
         "select 'it''s'", "select '/*'", "select '--'", "select concat('a', \"b\")", "select now()",
         "select * from t where a = 'get_lock(' or b = 'set @v = 1'"]


def _join(tokens: list[str], seps: list[str], cases: list[bool]) -> str:
    out = []
    for i, token in enumerate(tokens):
        if i:
            out.append(seps[i % len(seps)])
        out.append(token.upper() if cases[i % len(cases)] else token)
    return "".join(out)


@settings(max_examples=60, deadline=None)
@given(
    index=st.integers(0, len(STATE_PHRASES) - 1),
    seps=st.lists(st.sampled_from(SEPARATORS), min_size=1, max_size=8),
    cases=st.lists(st.booleans(), min_size=1, max_size=8),
    before=st.lists(st.sampled_from(CLEAN), max_size=3),
    after=st.lists(st.sampled_from(CLEAN), max_size=3),
    wrap=st.sampled_from(["plain", "executable", "mariadb-executable", "after-70k-literal", "parenthesised"]),
    escapes=st.sampled_from([True, False, None]),
)
def test_state_is_always_found(index: int, seps: list[str], cases: list[bool], before: list[str], after: list[str],
                               wrap: str, escapes: bool | None) -> None:
    tokens, kind = STATE_PHRASES[index]
    phrase = _join(tokens, seps, cases)
    if wrap == "executable":
        phrase = f"/*!{phrase} */"
    elif wrap == "mariadb-executable":
        phrase = f"/*M!100100 {phrase} */"
    elif wrap == "after-70k-literal" and tokens[0] in ("select", "do"):
        phrase = phrase.replace(tokens[0], tokens[0] + " '" + "x" * 70_000 + "',", 1) if tokens[0] in phrase else phrase
    elif wrap == "parenthesised" and tokens[0] == "select":
        phrase = f"({phrase})"
    sql = "; ".join(before + [phrase] + after).encode()
    found = classify_all(sql, escapes)
    assert found.kind & (kind | K.UNCERTAIN), (sql[:300], found.kind)
    assert found.kind & PINNING or kind in (K.EXECUTE,), found.kind  # it pins (EXECUTE: by its prepared text)
    assert not found.read_only  # and it is never sent twice
    # The hot path agrees with the full reading.
    assert classify(sql, escapes) == found


@pytest.mark.parametrize(("tokens", "kind"), STATE_PHRASES, ids=PHRASE_IDS)
@pytest.mark.parametrize("hide", ["single-quoted", "double-quoted", "block-comment", "line-comment", "hash-comment"])
def test_state_inside_literals_and_comments_is_no_code(tokens: list[str], kind: Kind, hide: str) -> None:
    phrase = " ".join(tokens).replace("'", "''" if hide == "single-quoted" else "'")
    if hide == "double-quoted":
        phrase = phrase.replace('"', '""')
    text = {
        "single-quoted": f"SELECT '{phrase}' AS x",
        "double-quoted": f'SELECT "{phrase}" AS x',
        "block-comment": f"SELECT 1 /* {phrase.replace('*/', '')} */",
        "line-comment": f"SELECT 1 -- {phrase}\n",
        "hash-comment": f"SELECT 1 # {phrase}\n",
    }[hide]
    if "\n" in phrase and hide in ("line-comment", "hash-comment"):
        pytest.skip("the phrase itself has a line break")  # pragma: no cover - none does today
    assert classify(text.encode()) is None, text


@pytest.mark.parametrize(
    ("sql", "escapes", "pins"),
    [
        # With backslash escapes, \' does not end the literal: the GET_LOCK is inside it.
        (rb"SELECT 'a\', GET_LOCK(1, 0), '", True, False),
        # Under NO_BACKSLASH_ESCAPES the same text runs GET_LOCK.
        (rb"SELECT 'a\', GET_LOCK(1, 0), '", False, True),
        # Not knowing the mode, both readings count: it pins.
        (rb"SELECT 'a\', GET_LOCK(1, 0), '", None, True),
        # A driver's escaped quote, in a session whose sql_mode is known: nothing to pin.
        (rb"INSERT INTO t VALUES ('O\'Brien')", True, False),
        # Before the proxy knows the mode (no link yet), the two readings differ: it pins.
        (rb"INSERT INTO t VALUES ('O\'Brien')", None, True),
    ],
)
def test_backslashes_follow_the_sessions_sql_mode(sql: bytes, escapes: bool | None, pins: bool) -> None:
    found = classify_all(sql, escapes)
    assert bool(found.kind & PINNING) is pins, found.kind


@pytest.mark.parametrize(
    ("sql", "names_taken", "names_released"),
    [
        (b"SELECT GET_LOCK('a', 0), RELEASE_LOCK('b')", [b"a"], [b"b"]),
        (b"SELECT RELEASE_LOCK('a'), RELEASE_LOCK('b')", [], [b"a", b"b"]),
        (b"SELECT GET_LOCK(CONCAT('a', 'b'), 0)", [None], []),  # an expression: never seen released
        (b"SELECT GET_LOCK(@name, 0)", [None], []),
        (b"SELECT GET_LOCK('It''s', 0)", [b"it's"], []),
        (b"SELECT 'GET_LOCK(''x'', 0)', RELEASE_LOCK('q')", [], [b"q"]),  # the first is a literal
        (b"/*!SELECT GET_LOCK('e', 1) */", [b"e"], []),
    ],
)
def test_named_lock_names(sql: bytes, names_taken: list[bytes | None], names_released: list[bytes | None]) -> None:
    found = classify_all(sql)
    assert found.locks_taken == names_taken and found.locks_released == names_released


@pytest.mark.parametrize(
    ("sql", "read_only"),
    [
        (b"SELECT * FROM t WHERE id = 1", True),
        (b"SELECT COUNT(*), NOW() FROM t", True),
        (b"SHOW TABLES", True),
        (b"SELECT * FROM t FOR UPDATE", False),
        (b"SELECT 1 INTO @x", False),
        (b"SELECT f(1)", False),  # a stored function may write
        (b"SELECT GET_LOCK('a', 0)", False),
        (b"INSERT INTO t VALUES (1)", False),
        (b"SELECT 1; INSERT INTO t VALUES (1)", False),
        (b"WITH d AS (SELECT 1) DELETE FROM t", False),
        (b"EXPLAIN ANALYZE SELECT 1", False),
        (b"SELECT 'unterminated", False),
        (b"SELECT NEXT VALUE FOR s", False),
        (b"SELECT LAST_INSERT_ID()", False),
    ],
)
def test_only_plain_reads_may_be_sent_twice(sql: bytes, read_only: bool) -> None:
    assert is_retryable_read(sql) is read_only


@pytest.mark.parametrize(
    ("sql", "kill_id", "query_only"),
    [
        (b"KILL 5", 5, False),
        (b"KILL /* c */ QUERY 5", 5, True),
        (b"kill\nconnection\t7", 7, False),
        (b"KILL QUERY ID 8", 8, True),
        (b"/*!KILL 9 */", 9, False),
        (b"SELECT 1; KILL 5", None, False),  # inside a multi-statement: refused, never translated
        (b"KILL USER app", None, False),
        (b"KILL (SELECT 5)", None, False),
    ],
)
def test_kill_in_every_form(sql: bytes, kill_id: int | None, query_only: bool) -> None:
    found = classify(sql)
    assert found is not None and K.KILL in found.kind
    assert (found.kill_id, found.kill_query_only) == (kill_id, query_only)


def test_connection_id_rewritten_only_in_code() -> None:
    sql = b"SELECT 'connection_id()', CONNECTION_ID() /* connection_id() */, \"connection_id()\" /*!, connection_id() */"
    assert rewrite_connection_id(sql, 7) == (
        b"SELECT 'connection_id()', (7) /* connection_id() */, \"connection_id()\" /*!, (7) */")


def test_prepared_text_decides_what_execute_pins() -> None:
    plain = classify_all(b"PREPARE s FROM 'SELECT 1'")
    assert plain.prepared["s"] is not None and not plain.prepared["s"].kind
    locking = classify_all(b"PREPARE s FROM 'SELECT GET_LOCK(''a'', 0)'")
    assert locking.prepared["s"] is not None and K.GET_LOCK in locking.prepared["s"].kind
    assert classify_all(b"PREPARE s FROM @text").prepared == {"s": None}  # unknown text: EXECUTE pins
    assert classify_all(b"EXECUTE s USING @a").executed == ["s"]
