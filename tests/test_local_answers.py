"""SET NAMES and SET autocommit answered by the proxy: the server's own bytes, and the same session.

A PHP request sends `SET NAMES` (WordPress twice) and often `SET autocommit` before its first
query. The proxy answers those itself when the session holds no link, and the values reach a link
with the next replay that link needs, so each costs the server no round trip. These tests hold it
to what a direct connection gives: the OK packets byte for byte (with and without
CLIENT_SESSION_TRACK), and after each answer the character-set variables, @@autocommit and
non-ASCII text, while another client shares the single link in between and leaves it in another
state. The server's general log shows which statements reached it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import APP_USER, MariaDB
from test_ok_bytes import BASE_CAPS, Raw

from proxy.mysql.constants import Cap
from proxy.mysql.messages import build_ok, parse_ok, read_lenenc_str
from proxy.sql import SessionSet, session_set, variable_overwritten

CHECK = ("SELECT @@character_set_client, @@character_set_connection, @@character_set_results, "
         "@@collation_connection, @@autocommit, 'Grüße, 日本', v, CHARSET(v) FROM local_answers")

# Client A's statements: (statement, then the check, then client B's turn). B takes its turn
# only while A holds no link (the pool has one).
SCRIPT = [
    ("SET NAMES utf8mb4", True, True),
    ("SET NAMES latin1", True, True),
    ("SET NAMES utf8mb4", True, True),
    ("SET NAMES 'utf8mb4' COLLATE 'utf8mb4_unicode_520_ci'", True, True),
    ("SET NAMES `latin1` COLLATE latin1_bin", True, True),
    ("SET NAMES 'utf8mb4' COLLATE 'utf8mb4_unicode_520_ci'", True, True),
    ("SET NAMES nosuch", True, True),  # the server's error
    ("SET NAMES latin1 COLLATE utf8mb4_bin", True, True),  # the server's error
    ("SET NAMES utf8", False, False),  # a warning on MySQL (utf8mb3): never answered here there
    ("SHOW WARNINGS", True, True),
    ("SET autocommit=0", True, False),  # answered here; the check then opens a transaction
    ("INSERT INTO local_answers_log VALUES (1)", True, False),
    ("SET NAMES latin1", True, False),  # inside the transaction: sent to the server
    ("SET autocommit = 1", True, True),  # commits it: sent to the server
    ("SET @@session.autocommit = OFF", False, False),
    ("SET autocommit=1", True, True),  # no transaction was open: answered here
    ("SET SESSION autocommit=0", True, False),
    ("COMMIT", False, False),
    ("SET autocommit=1", True, True),  # after COMMIT nothing is open: answered here
    ("SET NAMES utf8mb4", True, True),
]
# The kinds of SET NAMES the server accepts; each reaches it once, then the proxy answers.
KINDS = ["SET NAMES utf8mb4", "SET NAMES latin1", "SET NAMES 'utf8mb4' COLLATE 'utf8mb4_unicode_520_ci'",
         "SET NAMES `latin1` COLLATE latin1_bin", "SET NAMES utf8"]

# Client B's turn on the same single link: another character set and autocommit off for a
# moment, so the link A comes back to is in another state.
NEIGHBOUR = [
    "SET NAMES latin1",
    "SELECT @@collation_connection, @@autocommit, 'é'",
    "SET autocommit=0",
    "SELECT COUNT(*) FROM local_answers_log",
    "COMMIT",
    "SET autocommit=1",
]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SET NAMES utf8mb4", SessionSet(b"utf8mb4")),
        ("set names 'UTF8MB4' collate \"utf8mb4_Unicode_520_ci\"", SessionSet(b"utf8mb4", b"utf8mb4_unicode_520_ci")),
        ("  SET\tNAMES `latin1`  ", SessionSet(b"latin1")),
        ("SET autocommit=0", SessionSet(autocommit=False)),
        ("SET @@session.AUTOCOMMIT = ON", SessionSet(autocommit=True)),
        ("SET LOCAL autocommit = true", SessionSet(autocommit=True)),
        ("SET @@autocommit=off", SessionSet(autocommit=False)),
        # Anything else goes to the server.
        ("SET NAMES DEFAULT", None),
        ("SET NAMES utf8mb4 COLLATE DEFAULT", None),
        ("SET NAMES utf8mb4;", None),
        ("SET NAMES utf8mb4; SET @x = 1", None),
        ("SET NAMES utf8mb4 /* a comment */", None),
        ("/*!40101 SET NAMES utf8mb4 */", None),
        ("SET NAMES 'utf8mb4", None),
        ("SET NAMES 'utf8mb4\"", None),
        ("SET NAMES utf8mb4, sql_mode = ''", None),
        ("SET CHARACTER SET latin1", None),  # the connection charset comes from the database's
        ("SET autocommit = 2", None),
        ("SET autocommit = @x", None),
        ("SET GLOBAL autocommit = 0", None),
        ("SET autocommit = 0, NAMES latin1", None),
        ("SELECT 1", None),
    ],
)
def test_session_set_reads_only_certain_statements(sql: str, expected: SessionSet | None) -> None:
    assert session_set(sql.encode()) == expected


@pytest.fixture
def tables(mariadb: MariaDB) -> Iterator[None]:
    mariadb.sql("DROP TABLE IF EXISTS appdb.local_answers, appdb.local_answers_log")
    mariadb.sql("CREATE TABLE appdb.local_answers (v VARCHAR(20) CHARACTER SET utf8mb4) ENGINE=InnoDB")
    mariadb.sql("INSERT INTO appdb.local_answers VALUES ('Grüße, 日本')")
    mariadb.sql("CREATE TABLE appdb.local_answers_log (id INT) ENGINE=InnoDB")
    yield
    mariadb.sql("DROP TABLE IF EXISTS appdb.local_answers, appdb.local_answers_log")


@pytest.fixture
def general_log(mariadb: MariaDB) -> Iterator[None]:
    """The server's general log into mysql.general_log, emptied first (restored after the test)."""
    mariadb.set_global("log_output", "TABLE")
    mariadb.set_global("general_log", 0)
    mariadb.sql("TRUNCATE TABLE mysql.general_log")
    mariadb.set_global("general_log", 1)
    yield
    mariadb.set_global("general_log", 0)


def _logged(mariadb: MariaDB) -> list[tuple[str, str]]:
    """(command, text) of what the app account's sessions sent, in order."""
    rows = mariadb.sql("SELECT command_type, CONVERT(argument USING utf8mb4) FROM mysql.general_log "
                       "WHERE user_host LIKE %s ORDER BY event_time", (f"{APP_USER}[%",))
    return [(str(c), str(a)) for c, a in rows]


def _session(host: str, port: int, caps: int) -> list[list[list[bytes]]]:
    """Every answer client A and client B got, step by step."""
    a, b = Raw(host, port, caps), Raw(host, port, caps)
    out = []
    try:
        for sql, check, neighbour in SCRIPT:
            step = [a.query(sql)]
            if check:
                step.append(a.query(CHECK))
            if neighbour:
                step += [b.query(s) for s in NEIGHBOUR]
            out.append(step)
    finally:
        a.close()
        b.close()
    return out


def _entries_sorted(answers: list[list[bytes]]) -> list[list[bytes]]:
    """OK packets with their session-state entries in one order: MariaDB lists them in an order
    of its own per server process, another for the link's trackers ('*') than for a client's."""
    out = []
    for answer in answers:
        packets = []
        for p in answer:
            if p[:1] == b"\x00" and len(p) > 7:
                ok = parse_ok(p, Cap.SESSION_TRACK)
                block, pos, entries = bytes(ok.session_state), 0, []
                while pos < len(block):
                    _, end = read_lenenc_str(block, pos + 1)
                    entries.append(block[pos:end])
                    pos = end
                ok.session_state = b"".join(sorted(entries))
                p = build_ok(ok, Cap.SESSION_TRACK)
            packets.append(p)
        out.append(packets)
    return out


@pytest.mark.parametrize("caps_name", ["plain", "session_track"])
def test_local_answers_are_the_servers_bytes_and_state(caps_name: str, mariadb: MariaDB, proxy_factory,
                                                       tables: None, general_log: None) -> None:
    caps = BASE_CAPS | (Cap.SESSION_TRACK if caps_name == "session_track" else 0)
    proxy = proxy_factory({"pool": {"max_connections": 1}})
    direct = _session(mariadb.host, mariadb.port, caps)
    mariadb.sql("DELETE FROM appdb.local_answers_log")

    # The first of each kind reaches the server, which the proxy asks once more how a client's
    # own trackers report it, and reads back the collation; the next are answered here.
    mariadb.sql("TRUNCATE TABLE mysql.general_log")
    warm = Raw(proxy.host, proxy.port, caps)
    try:
        for sql in KINDS * 2:
            warm.query(sql)
    finally:
        warm.close()
    warm_up = [text for command, text in _logged(mariadb) if command == "Query"]
    learned = 0 if mariadb.is_mysql else 1  # MySQL warns about utf8: never answered here
    # Each kind the client's and the proxy's second run (utf8 on MySQL: the client's two), then
    # nothing; on MySQL the statement after utf8's warning too (the session keeps its link for
    # SHOW WARNINGS, and a session that holds a link sends its SET NAMES to the server).
    assert sum(q in KINDS for q in warm_up) == 2 * len(KINDS) + (1 - learned), "\n".join(warm_up)
    assert sum(q == "SET session_track_system_variables = DEFAULT" for q in warm_up) == len(KINDS) - 1 + learned

    mariadb.sql("TRUNCATE TABLE mysql.general_log")
    through = _session(proxy.host, proxy.port, caps)
    queries = [text for command, text in _logged(mariadb) if command == "Query"]
    assert len(direct) == len(through) == len(SCRIPT)
    for (sql, _, _), d, t in zip(SCRIPT, direct, through):
        if sql == "SET NAMES latin1" and d[0] != t[0]:
            # Inside a transaction the server answers: the link's trackers order the entries otherwise.
            assert _entries_sorted(t) == _entries_sorted(d), f"{caps_name}: after {sql!r}"
            t = [d[0], *t[1:]]
        assert t == d, f"{caps_name}: after {sql!r}\n direct: {d!r}\n  proxy: {t!r}"
    # The statements did what the script means: text converted, errors, another collation.
    flat = [p for step in direct for answer in step for p in answer]
    assert any(b"Unknown character set: 'nosuch'" in p for p in flat)
    assert any(b"utf8mb4_unicode_520_ci" in p for p in flat) and any(b"latin1_bin" in p for p in flat)
    assert any("Grüße, 日本".encode("latin1", "replace") in p for p in flat)
    assert any("Grüße, 日本".encode() in p for p in flat)

    # What reached the server: of the SET NAMES the server accepts, the one inside the transaction
    # and, on MySQL, which warns about it, utf8; no read-back (the proxy knows what each does; it
    # would clear the warning before SHOW WARNINGS); of SET autocommit, the one that committed.
    client_sets = {s for s, _, _ in SCRIPT} | set(NEIGHBOUR)
    names = [q for q in queries if q in client_sets and q.upper().startswith("SET NAMES") and q in KINDS]
    read_backs = [q for q in queries if q.startswith("SELECT @@character_set_client") and "LAST_INSERT_ID" in q]
    assert names == ["SET NAMES utf8", "SET NAMES latin1"] if mariadb.is_mysql else ["SET NAMES latin1"], queries
    assert not read_backs, queries
    assert [q for q in queries if q in client_sets and q.upper().startswith("SET") and "autocommit" in q.lower()] == [
        "SET autocommit = 1"], queries


def test_row_count_after_a_local_answer(mariadb: MariaDB, proxy_factory, tables: None) -> None:
    """ROW_COUNT() after an answered SET says what it says after the server's own SET."""
    proxy = proxy_factory({"pool": {"max_connections": 1}})
    script = ["SET NAMES latin1", "INSERT INTO local_answers_log VALUES (1), (2)", "SET NAMES latin1",
              "SELECT ROW_COUNT()", "INSERT INTO local_answers_log VALUES (3), (4)", "SET autocommit = 1",
              "SELECT ROW_COUNT()"]
    answers = []
    for conn in (mariadb.connect(), proxy.connect()):
        with conn, conn.cursor() as cur:
            out = []
            for sql in script:
                cur.execute(sql)
                out.append(cur.fetchall())
            answers.append(out)
    assert answers[0] == answers[1]
    assert answers[0][3] == ((0,),) or answers[0][3] == ((-1,),)


def test_departing_transaction_is_rolled_back_without_a_reset(mariadb: MariaDB, proxy_factory, tables: None,
                                                             general_log: None) -> None:
    """A client leaving with only an open transaction costs one ROLLBACK, not a reset and a setup;
    what it wrote is gone, and the next session on the link finds autocommit as it expects."""
    proxy = proxy_factory({"pool": {"max_connections": 1}})
    with proxy.connect() as c, c.cursor() as cur:
        cur.execute("SET autocommit=0")
        cur.execute("INSERT INTO local_answers_log VALUES (7)")
    with proxy.connect() as c, c.cursor() as cur:
        cur.execute("SELECT @@autocommit, (SELECT COUNT(*) FROM local_answers_log)")
        got = cur.fetchone()
    commands = _logged(mariadb)
    assert got == (1, 0), commands
    assert ("Query", "ROLLBACK") in commands, commands
    assert not any(command in ("Reset connection", "Change user") for command, _ in commands), commands


@pytest.mark.parametrize(
    ("sql", "name"),
    [
        ("SET SESSION sql_mode='NO_ZERO_IN_DATE,STRICT_TRANS_TABLES'", "sql_mode"),
        ("set @@session.time_zone = '+01:00'", "time_zone"),
        ("SET wait_timeout=30", "wait_timeout"),
        ("SET sql_mode = 'a\\\\b'", None),  # a backslash: read differently under NO_BACKSLASH_ESCAPES
        ('SET sql_mode = "ANSI"', None),  # an identifier under ANSI_QUOTES
        ("SET sql_mode = CONCAT(@@sql_mode, ',ANSI')", None),  # depends on the value before
        ("SET sql_mode = '', time_zone = '+00:00'", None),
        ("SET GLOBAL sql_mode = ''", None),
        ("SET @v = 1", None),
        ("SET NAMES latin1", None),
    ],
)
def test_variable_overwritten(sql: str, name: str | None) -> None:
    assert variable_overwritten(sql.encode()) == name


def test_no_replay_of_a_variable_the_statement_sets(mariadb: MariaDB, proxy_factory, general_log: None) -> None:
    """WordPress's SET SESSION sql_mode on a link another session left in its own sql_mode: the
    link is not first set back to the default, and the session ends as a direct one does, also
    when the statement fails."""
    proxy = proxy_factory({"pool": {"max_connections": 1}})
    script = ["SET SESSION sql_mode='NO_ZERO_IN_DATE,STRICT_TRANS_TABLES'", "SELECT @@sql_mode, @@time_zone",
              "SET SESSION sql_mode='NO_SUCH_MODE'", "SELECT @@sql_mode", "SET time_zone = '+01:00'",
              "SELECT @@sql_mode, @@time_zone"]
    answers = []
    for host, port in ((mariadb.host, mariadb.port), (proxy.host, proxy.port)):
        mariadb.sql("TRUNCATE TABLE mysql.general_log")
        other = mariadb.connect(host=host, port=port)
        with other, other.cursor() as cur:  # leaves the single link in another sql_mode and time_zone
            cur.execute("SET SESSION sql_mode='ANSI_QUOTES'")
            cur.execute("SET time_zone = '+02:00'")
            cur.execute("SELECT 1")
        conn, out = mariadb.connect(host=host, port=port), []
        with conn, conn.cursor() as cur:
            for sql in script:
                try:
                    cur.execute(sql)
                    out.append(cur.fetchall())
                except Exception as e:  # noqa: BLE001 - the server's error is part of the answer
                    out.append(repr(e))
        answers.append(out)
    replays = [text for command, text in _logged(mariadb) if text.startswith("SET @@session.")]
    assert answers[0] == answers[1]
    assert "1231" in answers[0][2]  # the bad mode was refused, and the session kept its sql_mode
    # The one replay the proxy needed: time_zone back to the default before the first SELECT.
    assert replays == ["SET @@session.time_zone = DEFAULT"], replays
