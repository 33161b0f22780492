"""ResponseTracker against response streams captured from the private MariaDB.

Capturing must not depend on the tracker under test. ``capture`` sends the
command with a COM_PING right behind it: the server answers them in order and
every answer restarts the sequence id at 1, so the packets before the first
seq-1 packet that follows are exactly the command's response (and the ping's
OK after them proves nothing was left over). Each captured list is then fed
to a fresh tracker one packet at a time (MORE until exactly the last packet,
DONE on it) and once more the way the relay does it: framed, cut into chunks,
through a PacketScanner whose inspector is the tracker.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Sequence

import pytest
from conftest import APP_DB, APP_PASSWORD, APP_USER, SERVER, MariaDB
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.backend import BackendLink, open_link
from proxy.config import BackendConfig
from proxy.mysql.constants import MULTI_STATEMENTS_ON, Cap, Command, Status
from proxy.mysql.messages import parse_ok, parse_session_state, read_lenenc_int, read_lenenc_str
from proxy.mysql.packets import SKIM, SMALL_PACKET, PacketReader, PacketScanner, ProtocolError, frame
from proxy.mysql.responses import DONE, INFILE, MORE, TRACKED, ResponseTracker
from proxy.variables import NEVER_REPLAYED

TIMEOUT = 10.0
ER_UNKNOWN_COM_ERROR = 1047
MARIADB_ONLY_CACHING = pytest.mark.skipif(
    SERVER.mysql, reason="MariaDB only: MySQL has no metadata caching (MARIADB_CLIENT_CACHE_METADATA)")


@pytest.fixture
async def link(mariadb: MariaDB) -> AsyncIterator[BackendLink]:
    cfg = BackendConfig(host=mariadb.host, port=mariadb.port, user=APP_USER, password=APP_PASSWORD, database=APP_DB)
    lk = await open_link(cfg, kind=0, timeout=5)
    try:
        yield lk
    finally:
        lk.close()


async def capture(link: BackendLink, cmd: int, arg: bytes = b"") -> list[bytes]:
    """The payloads the server sends for one command, delimited by a trailing COM_PING."""
    link.write_packet(bytes((cmd,)) + arg, 0)
    link.write_packet(bytes((Command.PING,)), 0)
    out: list[bytes] = []
    while True:
        seq, payload = await asyncio.wait_for(link.read_packet(), TIMEOUT)
        if out and seq == 1:
            assert payload[:1] == b"\x00", f"the ping's answer is not an OK: {payload!r}"
            return out
        assert seq == (len(out) + 1) & 0xFF, "response out of sequence"
        out.append(payload)


async def run(link: BackendLink, sql: bytes) -> None:
    """Set-up statements, through the link's own exchange (success required)."""
    await link.exchange([(Command.QUERY, sql)])


def track(cmd: int, packets: Sequence[bytes], client_caps: int = Cap.SESSION_TRACK,
          cache_metadata: bool = False) -> ResponseTracker:
    """Feed ``packets`` one by one: MORE (or SKIM) for all but the last, DONE on the last.

    Also checks the relay path, where the scanner skims rows and column definitions:
    it must end at the same packet and leave the same verdict (row count, status ...).
    """
    tr = ResponseTracker(client_caps=client_caps, cache_metadata=cache_metadata)
    tr.start(cmd)
    for i, p in enumerate(packets):
        event, _ = tr.feed(len(p), memoryview(p))
        if i == len(packets) - 1:
            assert event == DONE, f"last packet ({p[:16]!r}): event {event}, expected DONE"
        else:
            assert event in (MORE, SKIM), f"packet {i} of {len(packets)} ({p[:16]!r}): event {event}, expected MORE"
    relay(cmd, packets, client_caps, tr, cache_metadata)
    return tr


def _verdict(tr: ResponseTracker) -> tuple[object, ...]:
    return (tr.rows, tr.status, tr.warnings, tr.error_code, tr.result_set, tr.affected_rows, tr.insert_id,
            tr.cursor_open, tr.state_blocks, tr.unexplained_change, tr.columns)


def relay(cmd: int, packets: Sequence[bytes], client_caps: int, reference: ResponseTracker,
          cache_metadata: bool = False) -> None:
    """As BackendLink relays: the scanner shows packet heads to the tracker and stops on its verdict."""
    stream = b"".join(frame(p, (i + 1) & 0xFF) for i, p in enumerate(packets))
    for size in (len(stream), 7, 1):
        if size == 1 and len(stream) > 5000:
            continue
        tr = ResponseTracker(client_caps=client_caps, cache_metadata=cache_metadata)
        tr.start(cmd)
        events: list[int] = []
        s = PacketScanner(tr.feed)
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        for n, chunk in enumerate(chunks):
            s.feed(chunk)
            if s.verdict:
                events.append(s.verdict)
                assert n == len(chunks) - 1, f"DONE before the end of the stream (chunk {n} of {len(chunks)})"
        assert events == [DONE]
        assert s.rest == b""
        assert _verdict(tr) == _verdict(reference), f"relayed in chunks of {size}"


def as_a_default_client_gets_it(ok: bytes) -> bytes | None:
    """The OK a client with the default trackers gets for ``ok`` read on a link (which tracks every variable).

    None (the server's bytes pass as they are) when ``ok`` carries no state block, as on MariaDB.
    MySQL reports its read-only statement_id with every statement, which no default tracker
    includes: the client gets the bytes up to the info, without the block and its status flag.
    """
    parsed = parse_ok(ok, Cap.SESSION_TRACK)
    if not parsed.status & Status.SESSION_STATE_CHANGED:
        return None
    assert SERVER.mysql, "a state block where MariaDB sends none"
    assert [n for n, _v in parse_session_state(parsed.session_state).variables] == ["statement_id"]
    pos = 1
    for _ in range(2):  # affected rows, last insert id
        _n, pos = read_lenenc_int(ok, pos)
    (status,) = struct.unpack_from("<H", ok, pos)
    info = parsed.info
    assert len(info) < 251
    return (ok[:pos] + struct.pack("<H", status & ~Status.SESSION_STATE_CHANGED) + ok[pos + 2 : pos + 4]
            + (bytes((len(info),)) + info if info else b""))


def column_type(coldef: bytes) -> int:
    """The type byte of a ColumnDefinition41 payload."""
    pos = 0
    for _ in range(6):  # catalog, schema, table, org_table, name, org_name
        _s, pos = read_lenenc_str(coldef, pos)
    return coldef[pos + 1 + 2 + 4]  # after the 0x0c length, charset and column length


def is_eof(p: bytes) -> bool:
    return p[:1] == b"\xfe" and len(p) < 9


def eof_status(p: bytes) -> int:
    return int(struct.unpack_from("<H", p, 3)[0])


# --------------------------------------------------------------------------- text protocol


async def test_text_result_set(link: BackendLink) -> None:
    pk = await capture(link, Command.QUERY, b"SELECT 1 AS a, 'x' AS b UNION ALL SELECT 2, 'y'")
    assert len(pk) == 1 + 2 + 1 + 2 + 1  # count, 2 column defs, EOF, 2 rows, EOF
    assert pk[0] == b"\x02" and is_eof(pk[3]) and is_eof(pk[-1])
    tr = track(Command.QUERY, pk)
    assert tr.rows == 2
    assert tr.status & Status.AUTOCOMMIT and not tr.status & Status.IN_TRANS
    assert tr.error_code == 0


async def test_empty_result_set(link: BackendLink) -> None:
    pk = await capture(link, Command.QUERY, b"SELECT 1 AS a FROM DUAL WHERE 0")
    assert len(pk) == 4 and is_eof(pk[2]) and is_eof(pk[3])
    assert track(Command.QUERY, pk).rows == 0


async def test_multi_result_procedure(link: BackendLink) -> None:
    await run(link, b"DROP PROCEDURE IF EXISTS resp_two")
    await run(link, b"CREATE PROCEDURE resp_two() BEGIN SELECT 1 AS a; SELECT 2 AS b, 3 AS c; END")
    pk = await capture(link, Command.QUERY, b"CALL resp_two()")
    # Result 1 (5 packets), result 2 (6 packets), then the CALL's OK.
    assert len(pk) == 5 + 6 + 1
    assert eof_status(pk[4]) & Status.MORE_RESULTS_EXISTS and eof_status(pk[10]) & Status.MORE_RESULTS_EXISTS
    assert pk[-1][0] == 0x00
    tr = track(Command.QUERY, pk)
    assert not tr.status & Status.MORE_RESULTS_EXISTS


async def test_multi_statement_ok_then_result(link: BackendLink) -> None:
    await link.exchange([(Command.SET_OPTION, MULTI_STATEMENTS_ON.to_bytes(2, "little"))])
    pk = await capture(link, Command.QUERY, b"SET @m = 5; SELECT @m AS m, 2 AS n; DO 1")
    assert pk[0][0] == 0x00 and parse_ok(pk[0], Cap.SESSION_TRACK).status & Status.MORE_RESULTS_EXISTS
    assert len(pk) == 1 + 6 + 1
    tr = track(Command.QUERY, pk)
    assert tr.state_blocks  # the SET's state change was kept though more results followed


async def test_error(link: BackendLink) -> None:
    pk = await capture(link, Command.QUERY, b"SELECT * FROM no_such_table_here")
    assert len(pk) == 1 and pk[0][0] == 0xFF
    assert track(Command.QUERY, pk).error_code == 1146


async def test_error_after_rows(link: BackendLink) -> None:
    # Rows 1 and 2 are sent before row 3's scalar subquery fails.
    pk = await capture(link, Command.QUERY, b"SELECT seq, (SELECT 1 UNION ALL SELECT 2 FROM DUAL WHERE seq > 2) FROM seq_1_to_5")
    assert len(pk) == 1 + 2 + 1 + 2 + 1 and pk[-1][0] == 0xFF
    tr = track(Command.QUERY, pk)
    assert tr.error_code == 1242 and tr.rows == 2


async def test_status_flags_insert_id_and_state(link: BackendLink) -> None:
    await run(link, b"DROP TABLE IF EXISTS resp_ai")
    await run(link, b"CREATE TABLE resp_ai (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
    tr = track(Command.QUERY, await capture(link, Command.QUERY, b"BEGIN"))
    assert tr.status & Status.IN_TRANS
    tr = track(Command.QUERY, await capture(link, Command.QUERY, b"INSERT INTO resp_ai (v) VALUES (1), (2)"))
    assert tr.status & Status.IN_TRANS
    assert (tr.affected_rows, tr.insert_id) == (2, 1)  # the first id of a multi-row insert
    tr = track(Command.QUERY, await capture(link, Command.QUERY, b"INSERT INTO resp_ai (v) VALUES (3)"))
    assert tr.insert_id == 3
    tr = track(Command.QUERY, await capture(link, Command.QUERY, b"COMMIT"))
    assert not tr.status & Status.IN_TRANS
    tr = track(Command.QUERY, await capture(link, Command.QUERY, b"SET time_zone='+02:00'"))
    assert len(tr.state_blocks) == 1
    variables = parse_session_state(tr.state_blocks[0]).variables
    # MySQL 8+ reports its read-only statement_id along with any change (proxy/variables.py).
    assert [(n, v) for n, v in variables if n not in NEVER_REPLAYED] == [("time_zone", "+02:00")]
    assert not tr.unexplained_change


async def test_warnings(link: BackendLink) -> None:
    tr = track(Command.QUERY, await capture(link, Command.QUERY, b"SELECT 1/0"))  # from the final EOF
    assert tr.warnings == 1
    tr = track(Command.QUERY, await capture(link, Command.QUERY, b"DO 1/0, 1/0"))  # from an OK
    assert tr.warnings == 2


async def test_ok_reencoded_for_client_without_session_track(link: BackendLink) -> None:
    await run(link, b"DROP TABLE IF EXISTS resp_upd")
    await run(link, b"CREATE TABLE resp_upd (a INT)")
    await run(link, b"INSERT INTO resp_upd VALUES (1), (2)")
    pk = await capture(link, Command.QUERY, b"UPDATE resp_upd SET a = a + 1")
    info = b"Rows matched: 2  Changed: 2  Warnings: 0"
    ok = parse_ok(pk[0], Cap.SESSION_TRACK)
    assert ok.info == info
    # The info is length-encoded for every client (tests/test_ok_bytes.py): an OK without a
    # state block passes untouched, with or without SESSION_TRACK.
    expected = as_a_default_client_gets_it(pk[0])  # MariaDB: None, the server's bytes pass as they are
    for caps in (0, Cap.SESSION_TRACK):
        tr = ResponseTracker(client_caps=caps)
        tr.start(Command.QUERY)
        assert tr.feed(len(pk[0]), memoryview(pk[0])) == (DONE, expected)
    # A state-change OK loses its block for a client without SESSION_TRACK; one with it keeps only
    # what default trackers report (time_zone, not the link's state-change entry).
    pk = await capture(link, Command.QUERY, b"SET time_zone='+03:00'")
    tr = ResponseTracker(client_caps=0)
    tr.start(Command.QUERY)
    assert tr.feed(len(pk[0]), memoryview(pk[0])) == (DONE, b"\x00\x00\x00\x02\x00\x00\x00")
    tr = ResponseTracker(client_caps=Cap.SESSION_TRACK)
    tr.start(Command.QUERY)
    event, replacement = tr.feed(len(pk[0]), memoryview(pk[0]))
    assert event == DONE and replacement is not None
    ok = parse_ok(replacement, Cap.SESSION_TRACK)
    assert ok.status & Status.SESSION_STATE_CHANGED
    changes = parse_session_state(ok.session_state)
    assert changes.variables == [("time_zone", "+03:00")] and not changes.state_changed
    assert parse_session_state(tr.state_blocks[0]).state_changed  # the proxy itself still saw it all
    pk = await capture(link, Command.QUERY, b"DO 1")
    tr.start(Command.QUERY)
    assert tr.feed(len(pk[0]), memoryview(pk[0])) == (DONE, as_a_default_client_gets_it(pk[0]))


async def test_big_row_is_tracked_from_its_prefix(link: BackendLink) -> None:
    pk = await capture(link, Command.QUERY, b"SELECT REPEAT('x', 100000) AS big, 1 AS small")
    assert len(pk) == 6 and len(pk[4]) > SMALL_PACKET
    assert track(Command.QUERY, pk).rows == 1


async def test_local_infile_request(link: BackendLink) -> None:
    await run(link, b"DROP TABLE IF EXISTS resp_infile")
    await run(link, b"CREATE TABLE resp_infile (a INT, b VARCHAR(10))")
    tr = ResponseTracker(client_caps=Cap.SESSION_TRACK)
    tr.start(Command.QUERY)
    link.write_packet(b"\x03LOAD DATA LOCAL INFILE 'rows.txt' INTO TABLE resp_infile", 0)
    seq, request = await asyncio.wait_for(link.read_packet(), TIMEOUT)
    assert (seq, request) == (1, b"\xfbrows.txt")
    assert tr.feed(len(request), memoryview(request)) == (INFILE, None)
    # The client's file, then an empty packet; the server answers with OK.
    link.write_packet(b"1\tone\n2\ttwo\n", 2)
    link.write_packet(b"", 3)
    seq, answer = await asyncio.wait_for(link.read_packet(), TIMEOUT)
    assert seq == 4 and answer[0] == 0x00
    assert tr.feed(len(answer), memoryview(answer)) == (DONE, as_a_default_client_gets_it(answer))
    assert tr.affected_rows == 2
    pk = await capture(link, Command.QUERY, b"SELECT COUNT(*) FROM resp_infile")
    assert pk[3] == b"\x012"


# --------------------------------------------------------------------------- other commands


async def test_ping_init_db_statistics_set_option(link: BackendLink) -> None:
    pk = await capture(link, Command.PING)
    assert len(pk) == 1 and pk[0][0] == 0x00
    track(Command.PING, pk)
    pk = await capture(link, Command.INIT_DB, APP_DB.encode())
    assert len(pk) == 1 and pk[0][0] == 0x00
    tr = track(Command.INIT_DB, pk)
    assert [parse_session_state(b).schema for b in tr.state_blocks] == [APP_DB]
    pk = await capture(link, Command.INIT_DB, b"no_such_db_here")
    assert track(Command.INIT_DB, pk).error_code in (1044, 1049)
    pk = await capture(link, Command.STATISTICS)
    assert len(pk) == 1 and pk[0].startswith(b"Uptime:")
    track(Command.STATISTICS, pk)
    pk = await capture(link, Command.SET_OPTION, MULTI_STATEMENTS_ON.to_bytes(2, "little"))
    assert len(pk) == 1 and is_eof(pk[0])  # answered with an EOF, not an OK
    track(Command.SET_OPTION, pk)


async def test_field_list(link: BackendLink) -> None:
    await run(link, b"DROP TABLE IF EXISTS resp_fl")
    await run(link, b"CREATE TABLE resp_fl (a INT, b VARCHAR(10), c DATE)")
    pk = await capture(link, Command.FIELD_LIST, b"resp_fl\x00")
    assert len(pk) == 3 + 1 and is_eof(pk[-1])
    track(Command.FIELD_LIST, pk)
    pk = await capture(link, Command.FIELD_LIST, b"resp_no_such\x00")
    assert len(pk) == 1
    assert track(Command.FIELD_LIST, pk).error_code == 1146


async def test_process_info(link: BackendLink) -> None:
    pk = await capture(link, Command.PROCESS_INFO)
    if SERVER.mysql:  # MySQL 8.0 removed COM_PROCESS_INFO: the answer is an error, tracked as one
        assert len(pk) == 1 and track(Command.PROCESS_INFO, pk).error_code == ER_UNKNOWN_COM_ERROR
        return
    assert len(pk) > 5 and pk[0] == b"\x09"  # 9 columns (Id, User, Host, db, Command, Time, State, Info, Progress)
    track(Command.PROCESS_INFO, pk)


# --------------------------------------------------------------------------- binary protocol


async def test_prepare_with_params_and_columns(link: BackendLink) -> None:
    pk = await capture(link, Command.STMT_PREPARE, b"SELECT ? + 1 AS x, ? AS y")
    assert len(pk) == 1 + 2 + 1 + 2 + 1  # OK, 2 param defs, EOF, 2 column defs, EOF
    stmt_id, cols, params = struct.unpack_from("<IHH", pk[0], 1)
    tr = track(Command.STMT_PREPARE, pk)
    assert tr.prepare is not None
    assert (tr.prepare.statement_id, tr.prepare.num_columns, tr.prepare.num_params) == (stmt_id, 2, 2)


@pytest.mark.parametrize(
    ("sql", "count", "columns", "params"),
    [
        (b"INSERT INTO resp_ps VALUES (?, ?)", 1 + 2 + 1, 0, 2),  # params only
        (b"SELECT a FROM resp_ps", 1 + 1 + 1, 1, 0),  # columns only
        (b"DO 1", 1, 0, 0),  # neither: the OK alone
    ],
)
async def test_prepare_shapes(link: BackendLink, sql: bytes, count: int, columns: int, params: int) -> None:
    await run(link, b"DROP TABLE IF EXISTS resp_ps")
    await run(link, b"CREATE TABLE resp_ps (a INT, b INT)")
    pk = await capture(link, Command.STMT_PREPARE, sql)
    assert len(pk) == count
    tr = track(Command.STMT_PREPARE, pk)
    assert tr.prepare is not None and (tr.prepare.num_columns, tr.prepare.num_params) == (columns, params)


async def test_prepare_error(link: BackendLink) -> None:
    pk = await capture(link, Command.STMT_PREPARE, b"SELEKT 1")
    assert len(pk) == 1
    tr = track(Command.STMT_PREPARE, pk)
    assert tr.error_code == 1064 and tr.prepare is None


def execute_packet(stmt_id: int, flags: int, params: Sequence[tuple[int, bytes]]) -> bytes:
    """COM_STMT_EXECUTE arguments: id, flags, iteration count 1, then (with params) null bitmap,
    new-params-bound 1, the types (type, unsigned flag) and the values."""
    out = struct.pack("<IBI", stmt_id, flags, 1)
    if params:
        out += bytes((len(params) + 7) // 8) + b"\x01"
        out += b"".join(bytes((t, 0)) for t, _v in params)
        out += b"".join(v for _t, v in params)
    return out


async def test_execute_binary_rows(link: BackendLink) -> None:
    (prep,) = await link.exchange([(Command.STMT_PREPARE, b"SELECT ? + 1 AS x, ? AS y")])
    assert prep.tracker.prepare is not None
    stmt_id = prep.tracker.prepare.statement_id
    # MYSQL_TYPE_LONGLONG 41 and MYSQL_TYPE_VAR_STRING 'hi'
    arg = execute_packet(stmt_id, 0, [(0x08, struct.pack("<q", 41)), (0xFD, b"\x02hi")])
    pk = await capture(link, Command.STMT_EXECUTE, arg)
    assert len(pk) == 1 + 2 + 1 + 1 + 1
    row = pk[4]
    # Binary row: 0x00, null bitmap of (2 + 2 + 7) // 8 bytes, then the values.
    assert row[0] == 0x00 and row[1] == 0x00
    x_type = column_type(pk[1])
    size = {0x08: 8, 0x03: 4}[x_type]
    assert int.from_bytes(row[2 : 2 + size], "little", signed=True) == 42
    assert read_lenenc_str(row, 2 + size) == (b"hi", len(row))
    tr = track(Command.STMT_EXECUTE, pk)
    assert tr.rows == 1 and not tr.cursor_open
    # Without a result: an OK.
    (prep,) = await link.exchange([(Command.STMT_PREPARE, b"DO ?")])
    assert prep.tracker.prepare is not None
    pk = await capture(link, Command.STMT_EXECUTE, execute_packet(prep.tracker.prepare.statement_id, 0,
                                                                  [(0x08, struct.pack("<q", 1))]))
    assert len(pk) == 1 and pk[0][0] == 0x00
    track(Command.STMT_EXECUTE, pk)
    pk = await capture(link, Command.STMT_RESET, struct.pack("<I", stmt_id))
    assert len(pk) == 1 and pk[0][0] == 0x00
    track(Command.STMT_RESET, pk)


async def test_execute_with_cursor_then_fetch(link: BackendLink) -> None:
    (prep,) = await link.exchange([(Command.STMT_PREPARE, b"SELECT seq FROM seq_1_to_3")])
    assert prep.tracker.prepare is not None
    stmt_id = prep.tracker.prepare.statement_id
    pk = await capture(link, Command.STMT_EXECUTE, execute_packet(stmt_id, 1, []))  # CURSOR_TYPE_READ_ONLY
    assert len(pk) == 3 and eof_status(pk[-1]) & Status.CURSOR_EXISTS  # no rows until fetched
    tr = track(Command.STMT_EXECUTE, pk)
    assert tr.cursor_open
    pk = await capture(link, Command.STMT_FETCH, struct.pack("<II", stmt_id, 2))
    assert len(pk) == 3
    tr = track(Command.STMT_FETCH, pk)
    assert tr.rows == 2 and tr.cursor_open
    pk = await capture(link, Command.STMT_FETCH, struct.pack("<II", stmt_id, 5))
    assert len(pk) == 2 and eof_status(pk[-1]) & Status.LAST_ROW_SENT
    tr = track(Command.STMT_FETCH, pk)
    assert tr.rows == 1 and not tr.cursor_open


# --------------------------------------------------------------------------- malformed input


# --------------------------------------------------------------------------- MariaDB metadata caching


@pytest.fixture
async def caching_link(mariadb: MariaDB) -> AsyncIterator[BackendLink]:
    cfg = BackendConfig(host=mariadb.host, port=mariadb.port, user=APP_USER, password=APP_PASSWORD, database=APP_DB)
    lk = await open_link(cfg, kind=Cap.MARIADB_CACHE_METADATA, timeout=5)
    try:
        yield lk
    finally:
        lk.close()


@MARIADB_ONLY_CACHING
async def test_metadata_caching_column_count_flag_and_captured_definitions(caching_link: BackendLink) -> None:
    link = caching_link
    assert link.tracker.cache_metadata, "MariaDB 10.6+ offers metadata caching; the link asked for it"
    await run(link, b"DROP TABLE IF EXISTS resp_meta")
    await run(link, b"CREATE TABLE resp_meta (a INT, b INT)")
    await run(link, b"INSERT INTO resp_meta VALUES (1, 2)")
    # Text results: the column count's flag says definitions follow; nothing is kept.
    pk = await capture(link, Command.QUERY, b"SELECT a, b FROM resp_meta")
    assert pk[0] == b"\x02\x01" and len(pk) == 1 + 2 + 1 + 1 + 1
    tr = track(Command.QUERY, pk, cache_metadata=True)
    assert tr.rows == 1 and tr.columns == []
    # A PREPARE answer's column definitions are kept (its parameters' are not).
    (prep,) = await link.exchange([(Command.STMT_PREPARE, b"SELECT * FROM resp_meta WHERE a >= ?")])
    assert prep.tracker.prepare is not None
    assert prep.tracker.columns == prep.packets[3:5]  # OK, 1 param def, EOF, then the 2 column defs
    arg = execute_packet(prep.tracker.prepare.statement_id, 0, [(0x08, struct.pack("<q", 0))])
    # The first execute: definitions left out (the PREPARE answer had them), the EOF still sent.
    pk = await capture(link, Command.STMT_EXECUTE, arg)
    assert pk[0] == b"\x02\x00" and len(pk) == 1 + 1 + 1 + 1 and is_eof(pk[1])
    tr = track(Command.STMT_EXECUTE, pk, cache_metadata=True)
    assert tr.rows == 1 and tr.columns == [] and tr.result_set
    # The table changed: the server sends the new definitions, and they are kept.
    await run(link, b"ALTER TABLE resp_meta ADD COLUMN c INT DEFAULT 3")
    pk = await capture(link, Command.STMT_EXECUTE, arg)
    assert pk[0] == b"\x03\x01" and len(pk) == 1 + 3 + 1 + 1 + 1
    tr = track(Command.STMT_EXECUTE, pk, cache_metadata=True)
    assert tr.rows == 1 and tr.columns == pk[1:4]


class _Sink:
    """Where a relayed response goes: the bytes, and how it ended."""

    def __init__(self) -> None:
        self.data = b""
        self.done = 0
        self.failed: Exception | None = None

    def relay_chunks(self, chunks: Sequence[bytes | memoryview]) -> None:
        self.data += b"".join(bytes(c) for c in chunks)

    def relay_done(self, link: BackendLink, event: int, chunks: Sequence[bytes | memoryview]) -> None:
        self.relay_chunks(chunks)
        self.done += 1

    def relay_failed(self, link: BackendLink, error: Exception, received_any: bool) -> None:
        self.failed = error


class _Wire:
    """The link's transport: what the proxy sends the server is not looked at here."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    abort = close


def _packets(stream: bytes) -> list[tuple[int, bytes]]:
    return PacketReader().feed(stream)  # (the reader has round-trip tests of its own in test_packets.py)


def _supplied(response: list[bytes], supply: tuple[bytes, ...], chunk: int) -> tuple[_Sink, BackendLink]:
    link = BackendLink(kind=Cap.MARIADB_CACHE_METADATA)
    link.connection_made(_Wire())  # type: ignore[arg-type]
    link.tracker.cache_metadata = True
    sink = _Sink()
    link.start_relay(b"\x17", 0, Command.STMT_EXECUTE, sink, Cap.SESSION_TRACK, supply=supply)  # type: ignore[arg-type]
    stream = b"".join(frame(p, i + 1) for i, p in enumerate(response))
    for i in range(0, len(stream), chunk):
        link.data_received(stream[i : i + chunk])
    return sink, link


@MARIADB_ONLY_CACHING
async def test_supply_mode_puts_definitions_in_and_renumbers(caching_link: BackendLink) -> None:
    """An execute whose server left out definitions the client lacks reaches it as if they had been sent."""
    link = caching_link
    await run(link, b"DROP TABLE IF EXISTS resp_supply")
    await run(link, b"CREATE TABLE resp_supply (a INT, b VARCHAR(5))")
    await run(link, b"INSERT INTO resp_supply VALUES (1, 'x'), (2, NULL)")
    (prep,) = await link.exchange([(Command.STMT_PREPARE, b"SELECT * FROM resp_supply")])
    assert prep.tracker.prepare is not None
    defs = tuple(prep.tracker.columns)
    skipped = await capture(link, Command.STMT_EXECUTE, execute_packet(prep.tracker.prepare.statement_id, 0, []))
    assert skipped[0] == b"\x02\x00" and len(skipped) == 1 + 1 + 2 + 1  # count, EOF, 2 rows, EOF
    for chunk in (1, 7, 4096):
        sink, relay_link = _supplied(skipped, defs, chunk)
        assert sink.failed is None and sink.done == 1
        got = _packets(sink.data)
        assert [seq for seq, _p in got] == list(range(1, 1 + len(skipped) + 2))  # renumbered, no gap
        assert [p for _s, p in got] == [b"\x02\x01", *defs, *skipped[1:]]
        assert relay_link.tracker.columns == list(defs) and relay_link.tracker.rows == 2
    # The server sent definitions itself, or an error: passed on as they are.
    with_defs = [b"\x02\x01", *defs, *skipped[1:]]
    for response in (with_defs, [bytes.fromhex("ff7a04") + b"#42S02no such table"]):
        sink, _ = _supplied(response, defs, 4096)
        assert sink.done == 1 and [p for _s, p in _packets(sink.data)] == response
    # A count that does not match the definitions the link sent: an error, never a wrong answer.
    sink, _ = _supplied(skipped, defs[:1], 4096)
    assert isinstance(sink.failed, ProtocolError) and sink.done == 0


async def test_a_caching_client_on_a_link_without_caching_still_gets_the_flag(link: BackendLink) -> None:
    """A server that no longer offers metadata caching (reload, downgrade) under a client that was promised it."""
    assert not link.tracker.cache_metadata
    await run(link, b"DROP TABLE IF EXISTS resp_flag")
    await run(link, b"CREATE TABLE resp_flag (a INT)")
    await run(link, b"INSERT INTO resp_flag VALUES (7)")
    pk = await capture(link, Command.QUERY, b"SELECT a FROM resp_flag")
    assert pk[0] == b"\x01"
    tr = ResponseTracker(client_caps=Cap.SESSION_TRACK | Cap.MARIADB_CACHE_METADATA, flag_without_caching=True)
    tr.start(Command.QUERY)
    assert tr.feed(len(pk[0]), pk[0]) == (SKIM, b"\x01\x01")  # definitions follow, as they do
    # Relayed: only the column count changes.
    tr.start(Command.QUERY)
    scanner = PacketScanner(tr.feed)
    stream = b"".join(frame(p, i + 1) for i, p in enumerate(pk))
    out = b"".join(bytes(c) for c in scanner.feed(stream))
    assert scanner.verdict == DONE
    assert [p for _s, p in _packets(out)] == [b"\x01\x01", *pk[1:]]


class _RecordingWire(_Wire):
    def __init__(self) -> None:
        self.sent = b""

    def write(self, data: bytes) -> None:
        self.sent += data


@pytest.mark.parametrize("server_has_it", [True, False])
async def test_a_caching_link_asks_for_metadata_caching_only_where_the_server_offers_it(server_has_it: bool) -> None:
    from proxy.backend import _authenticate
    from proxy.mysql.messages import Handshake, build_handshake, parse_handshake_response

    link = BackendLink(kind=Cap.MARIADB_CACHE_METADATA)
    wire = _RecordingWire()
    link.connection_made(wire)  # type: ignore[arg-type]
    caps = Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH | Cap.SESSION_TRACK | Cap.TRANSACTIONS
    # A MariaDB 10.6+ greeting (no CLIENT_MYSQL, extended capabilities), or a MySQL one.
    caps |= Cap.MARIADB_CACHE_METADATA if server_has_it else Cap.CLIENT_MYSQL
    cfg = BackendConfig(host="127.0.0.1", port=1, user="u", password="p")
    task = asyncio.ensure_future(_authenticate(link, cfg))
    link.data_received(frame(build_handshake(Handshake("v", 1, b"s" * 20, caps, 45, 2, "mysql_native_password")), 0))
    await asyncio.sleep(0)
    link.data_received(frame(b"\x00\x00\x00\x02\x00\x00\x00", 2))  # OK
    await asyncio.wait_for(task, 5)
    sent = parse_handshake_response(wire.sent[4:])
    assert bool(sent.capabilities & Cap.MARIADB_CACHE_METADATA) == server_has_it
    assert bool(sent.capabilities & Cap.CLIENT_MYSQL) != server_has_it  # extended capabilities only without it
    assert link.tracker.cache_metadata == server_has_it
    # Its clients were promised the flag: without the server's, the tracker adds it.
    assert link.tracker.flag_without_caching == (not server_has_it)


def test_metadata_caching_column_count_without_its_flag_is_protocol_error() -> None:
    tr = ResponseTracker(cache_metadata=True)
    tr.start(Command.STMT_EXECUTE)
    with pytest.raises(ProtocolError):
        tr.feed(1, b"\x02")


def test_short_eof_after_column_definitions_reference() -> None:
    # The well-formed case next to the bug below: a 5-byte EOF ends the column definitions.
    tr = ResponseTracker()
    tr.start(Command.QUERY)
    assert [tr.feed(len(p), memoryview(p))[0] for p in (b"\x01", b"\x03def", b"\xfe\x00\x00\x02\x00")] == [SKIM] * 3


def test_short_eof_after_column_definitions_is_protocol_error() -> None:
    tr = ResponseTracker()
    tr.start(Command.QUERY)
    tr.feed(1, memoryview(b"\x01"))
    tr.feed(4, memoryview(b"\x03def"))
    with pytest.raises(ProtocolError):
        tr.feed(1, memoryview(b"\xfe"))


_FIRST_BYTES = st.sampled_from([0x00, 0x01, 0x02, 0x03, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF])
_PACKET = st.one_of(
    st.binary(max_size=24),
    st.tuples(_FIRST_BYTES, st.binary(max_size=14)).map(lambda t: bytes((t[0],)) + t[1]),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(TRACKED)), st.lists(st.tuples(_PACKET, st.booleans()), max_size=14), st.integers(0, 3))
@example(Command.STMT_PREPARE, [(b"\x00\x01\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00", False), (b"p", False),
                                (b"\xfe", False)], 1)
@example(Command.QUERY, [(b"\xfc\x01", False), (b"c", False), (b"\xfe\x00\x00\x02\x00\x00", False), (b"\xfb", False)], 0)
@example(Command.QUERY, [(b"\x00\x00\x00\x02@\x00\x00\x00\x16\x00", True)], 0)
# A big packet led by 0xFE where the EOF after the column definitions belongs: not an EOF.
@example(Command.QUERY, [(b"\x02", False), (b"", False), (b"", False), (b"\xfe", True)], 0)
# A column count shown as the prefix of a big packet, on a link with metadata caching: no flag byte in view.
@example(Command.STMT_EXECUTE, [(b"\x02", True)], 2)
def test_garbage_gives_events_or_protocol_error(cmd: int, packets: list[tuple[bytes, bool]], with_track: int) -> None:
    """Random packets (some shown as the prefix of a big packet, as the scanner does) never crash the tracker.

    ``with_track``: bit 0, the client has SESSION_TRACK; bit 1, the link has metadata caching.
    """
    tr = ResponseTracker(client_caps=Cap.SESSION_TRACK if with_track & 1 else 0, cache_metadata=bool(with_track & 2))
    tr.start(cmd)
    for p, big in packets:
        length = len(p) + SMALL_PACKET if big and p else len(p)
        try:
            event, replacement = tr.feed(length, memoryview(p))
        except ProtocolError:
            return
        assert event in (MORE, SKIM, DONE, INFILE)
        assert replacement is None or isinstance(replacement, bytes)
        if event != MORE and event != SKIM:
            return
