"""Payload codecs (proxy.mysql.messages): round trips, captured server bytes, the live server.

The byte literals marked "captured" were read from MariaDB 10.11.19 (the server the
suite starts) on a link opened with CLIENT_SESSION_TRACK and
session_track_system_variables='*': they document the wire format as a real
server sends it. The ``live`` tests capture the same kind of packets from the
private server at run time, so a server upgrade that changes the format shows up.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import APP_DB, APP_PASSWORD, APP_USER, SERVER, MariaDB
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pymysql.protocol import EOFPacketWrapper, MysqlPacket, OKPacketWrapper

from proxy.backend import open_link
from proxy.config import BackendConfig
from proxy.mysql.auth import native_scramble
from proxy.mysql.constants import BACKEND_CAPS, SERVER_CAPS, Cap, Command, SessionTrack, Status
from proxy.mysql.messages import (
    ERR,
    OK,
    Handshake,
    HandshakeResponse,
    ServerError,
    SessionChanges,
    build_eof,
    build_err,
    build_handshake,
    build_handshake_response,
    build_ok,
    build_ssl_request,
    default_session_state,
    is_eof,
    lenenc_int,
    lenenc_str,
    parse_eof,
    parse_err,
    parse_handshake,
    parse_handshake_response,
    parse_ok,
    parse_session_state,
    read_lenenc_int,
    read_lenenc_str,
    read_nul_str,
    strip_session_track,
)
from proxy.mysql.packets import PacketReader, ProtocolError, frame
from proxy.mysql.stmt import bind_execute

FAST = settings(max_examples=200, deadline=None)

# --------------------------------------------------------------------------- captured bytes

# Initial handshake of MariaDB 10.11.19 (payload, header removed). MariaDB prefixes
# "5.5.5-" for old clients and keeps its own extended capabilities in the last 4 of
# the 10 "reserved" bytes (here 0x1d).
CAPTURED_GREETING = (
    b"\n5.5.5-10.11.19-MariaDB-0+deb12u1\x00\t\x00\x00\x00hiVS{67O\x00\xfe\xf7-\x02\x00\xff\x81\x15"
    b"\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00h>;MR6U)iZdh\x00mysql_native_password\x00"
)
# ERR for a wrong password (4.1 format: '#' + SQLSTATE).
CAPTURED_ERR_1045 = b"\xff\x15\x04#28000Access denied for user 'app'@'127.0.0.1' (using password: YES)"
# ERR in the middle of a result set (after two rows were sent).
CAPTURED_ERR_1242 = b"\xff\xda\x04#21000Subquery returns more than 1 row"
# EOF ending the rows of SELECT 1/0: one warning, status AUTOCOMMIT.
CAPTURED_EOF_WARNING = b"\xfe\x01\x00\x02\x00"

# OK packets with a session-state block:
# 00 | affected 00 | insert id 00 | status (LE16) | warnings (LE16) | info (lenenc) | state block (lenenc)
# and the block is a list of entries: type (1 byte) + lenenc data.
OK_TIME_ZONE = b"\x00\x00\x00\x02@\x00\x00\x00\x16\x00\x11\ttime_zone\x06+02:00\x02\x011"  # SET time_zone='+02:00'
OK_USE_DB = b"\x00\x00\x00\x02@\x00\x00\x00\x0b\x01\x06\x05appdb\x02\x011"  # USE appdb
OK_USER_VAR = b"\x00\x00\x00\x02@\x00\x00\x00\x03\x02\x011"  # SET @u=1 (and CREATE TEMPORARY TABLE)
OK_SET_NAMES = (  # SET NAMES latin1: three variables, the collation is not reported
    b"\x00\x00\x00\x02@\x00\x00\x00b\x00 \x18character_set_connection\x06latin1\x00\x1c\x14character_set_client"
    b"\x06latin1\x00\x1d\x15character_set_results\x06latin1\x02\x011"
)
OK_AUTOCOMMIT_OFF = b"\x00\x00\x00\x00@\x00\x00\x00\x14\x00\x0f\nautocommit\x03OFF\x02\x011"  # SET autocommit=0
OK_RESULTS_NULL = b"\x00\x00\x00\x02@\x00\x00\x00\x1c\x00\x17\x15character_set_results\x00\x02\x011"  # = NULL
OK_PREPARE = b"\x00\x00\x00\x02@\x00\x00\x12Statement prepared\x03\x02\x011"  # PREPARE s FROM ...: info + state
# START TRANSACTION READ ONLY with session_track_transaction_info='CHARACTERISTICS':
# TRANSACTION_STATE (5) and TRANSACTION_CHARACTERISTICS (4) entries, status IN_TRANS|IN_TRANS_READONLY|...
OK_TRX_INFO = b"\x00\x00\x00\x03`\x00\x00\x00*\x05\t\x08T_______\x04\x1d\x1cSTART TRANSACTION READ ONLY;"
# Plain OK for BEGIN: nothing after status and warnings.
OK_BEGIN = b"\x00\x00\x00\x01\x00\x00\x00"


def _cfg(db: MariaDB) -> BackendConfig:
    return BackendConfig(host=db.host, port=db.port, user=APP_USER, password=APP_PASSWORD, database=APP_DB)


class RawClient:
    """A blocking socket that speaks packets; for reading what the server really sends."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self._reader = PacketReader()
        self._queue: list[tuple[int, bytes]] = []

    def read(self) -> tuple[int, bytes]:
        while not self._queue:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self._queue += self._reader.feed(data)
        return self._queue.pop(0)

    def send(self, payload: bytes, seq: int) -> None:
        self.sock.sendall(frame(payload, seq))


@contextmanager
def raw_client(db: MariaDB) -> Iterator[RawClient]:
    c = RawClient(db.host, db.port)
    try:
        yield c
    finally:
        c.sock.close()


# --------------------------------------------------------------------------- length-encoded values


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, b"\x00"),
        (0xFA, b"\xfa"),
        (0xFB, b"\xfc\xfb\x00"),
        (0xFFFF, b"\xfc\xff\xff"),
        (0x10000, b"\xfd\x00\x00\x01"),
        (0xFFFFFF, b"\xfd\xff\xff\xff"),
        (0x1000000, b"\xfe\x00\x00\x00\x01\x00\x00\x00\x00"),
        (2**64 - 1, b"\xfe" + b"\xff" * 8),
    ],
)
def test_lenenc_int_boundaries(n: int, encoded: bytes) -> None:
    assert lenenc_int(n) == encoded
    assert read_lenenc_int(b"xx" + encoded + b"yy", 2) == (n, 2 + len(encoded))


@FAST
@given(st.integers(0, 2**64 - 1), st.binary(max_size=4), st.binary(max_size=4))
def test_lenenc_int_round_trip(n: int, before: bytes, after: bytes) -> None:
    enc = lenenc_int(n)
    assert len(enc) == (1 if n < 0xFB else 3 if n < 2**16 else 4 if n < 2**24 else 9)
    assert read_lenenc_int(before + enc + after, len(before)) == (n, len(before) + len(enc))
    assert read_lenenc_int(memoryview(before + enc), len(before)) == (n, len(before) + len(enc))


@FAST
@given(st.one_of(st.binary(max_size=300), st.integers(0xF0, 0x10010).map(lambda n: b"s" * n)), st.binary(max_size=4))
def test_lenenc_str_round_trip(s: bytes, after: bytes) -> None:
    enc = lenenc_str(s)
    assert read_lenenc_str(enc + after, 0) == (s, len(enc))


def test_lenenc_null_and_invalid() -> None:
    assert read_lenenc_int(b"\xfb", 0) == (None, 1)  # SQL NULL in a row
    assert read_lenenc_str(b"\xfbrest", 0) == (b"", 1)
    for bad in (b"", b"\xff", b"\xfe\x01\x02", b"\x05abc", b"\xfc\x10\x00abc"):
        with pytest.raises(ProtocolError):
            read_lenenc_str(bad, 0)


def test_read_nul_str() -> None:
    assert read_nul_str(b"ab\x00cd\x00", 0) == (b"ab", 3)
    assert read_nul_str(b"ab\x00cd\x00", 3) == (b"cd", 6)
    with pytest.raises(ProtocolError):
        read_nul_str(b"abc", 0)


# --------------------------------------------------------------------------- handshake


def test_captured_greeting_parses() -> None:
    hs = parse_handshake(CAPTURED_GREETING)
    assert hs.server_version == "5.5.5-10.11.19-MariaDB-0+deb12u1"
    assert hs.connection_id == 9
    assert hs.scramble == b"hiVS{67Oh>;MR6U)iZdh"  # 8 + 12 bytes, the trailing NUL is not part of it
    assert hs.collation == 45
    assert hs.status == Status.AUTOCOMMIT
    assert hs.auth_plugin == "mysql_native_password"
    assert hs.capabilities == 0x1D_81FFF7FE  # MariaDB's extended ones (0x1d, metadata caching among them) in bits 32-63
    for cap in (Cap.PROTOCOL_41, Cap.SECURE_CONNECTION, Cap.PLUGIN_AUTH, Cap.SESSION_TRACK, Cap.MULTI_RESULTS):
        assert hs.capabilities & cap
    assert not hs.capabilities & Cap.LONG_PASSWORD  # MariaDB clears bit 0 to say "I am MariaDB"


@pytest.mark.skipif(SERVER.mysql, reason="MariaDB only: checks packets captured from MariaDB (its greeting, "
                    "its mysql_native_password account, its error and OK bytes)")
def test_live_greeting_scramble_is_complete(mariadb: MariaDB) -> None:
    """Parse the real greeting, then prove the scramble is right: the server accepts a login computed from it."""
    with raw_client(mariadb) as c:
        seq, greeting = c.read()
        assert seq == 0
        hs = parse_handshake(greeting)
        assert "MariaDB" in hs.server_version
        assert len(hs.scramble) == 20 and b"\x00" not in hs.scramble
        assert hs.auth_plugin == "mysql_native_password"
        assert hs.capabilities & Cap.SESSION_TRACK
        assert hs.capabilities & Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA
        assert hs.collation == 45  # --collation-server=utf8mb4_general_ci
        resp = HandshakeResponse(
            capabilities=BACKEND_CAPS & hs.capabilities,
            max_packet=1 << 24,
            collation=45,
            user=APP_USER,
            auth_response=native_scramble(APP_PASSWORD, hs.scramble),
            database=APP_DB,
            auth_plugin="mysql_native_password",
        )
        c.send(build_handshake_response(resp), 1)
        seq, reply = c.read()
        assert seq == 2
        assert reply[0] == 0x00, parse_err(reply)
        c.send(b"\x03SELECT CONNECTION_ID(), DATABASE()", 0)
        assert c.read()[1] == b"\x02"  # two columns
        for _ in range(2):
            c.read()
        assert is_eof(c.read()[1], 5)
        _seq, row = c.read()
        conn_id, pos = read_lenenc_str(row, 0)
        db, _ = read_lenenc_str(row, pos)
        assert int(conn_id) == hs.connection_id
        assert db == APP_DB.encode()


@pytest.mark.skipif(SERVER.mysql, reason="MariaDB only: checks packets captured from MariaDB (its greeting, "
                    "its mysql_native_password account, its error and OK bytes)")
def test_live_wrong_password_err(mariadb: MariaDB) -> None:
    with raw_client(mariadb) as c:
        _seq, greeting = c.read()
        hs = parse_handshake(greeting)
        resp = HandshakeResponse(BACKEND_CAPS & hs.capabilities, 1 << 24, 45, APP_USER,
                                 native_scramble("wrong", hs.scramble), None, "mysql_native_password")
        c.send(build_handshake_response(resp), 1)
        _seq, reply = c.read()
    err = parse_err(reply)
    assert (err.code, err.sqlstate) == (1045, "28000")
    assert err.message.startswith("Access denied for user 'app'@")
    assert reply == CAPTURED_ERR_1045  # the captured literal is exactly what this server sends


def test_handshake_build_known_bytes() -> None:
    hs = Handshake("5.7.99-x", 0x01020304, b"abcdefgh" + b"ijklmnopqrst", 0x000FA20F, 45, 2, "mysql_native_password")
    assert build_handshake(hs) == (
        b"\x0a5.7.99-x\x00\x04\x03\x02\x01abcdefgh\x00\x0f\xa2\x2d\x02\x00\x0f\x00\x15" + b"\x00" * 10
        + b"ijklmnopqrst\x00mysql_native_password\x00"
    )


@FAST
@given(
    version=st.text(st.characters(min_codepoint=1, max_codepoint=0x7F), min_size=1, max_size=40),
    conn_id=st.integers(0, 2**32 - 1),
    # No NUL in the scramble: the wire format ends part 2 with a NUL (real servers never send one).
    scramble=st.binary(min_size=20, max_size=20).filter(lambda s: s[-1] != 0),
    extra=st.integers(0, 2**32 - 1),
    ext=st.integers(0, 2**32 - 1),
    collation=st.integers(0, 255),
    status=st.integers(0, 0xFFFF),
    plugin=st.sampled_from(["mysql_native_password", "caching_sha2_password", "client_ed25519"]),
)
def test_handshake_round_trip(version: str, conn_id: int, scramble: bytes, extra: int, ext: int, collation: int,
                              status: int, plugin: str) -> None:
    caps = extra | Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH
    if not caps & Cap.CLIENT_MYSQL:
        caps |= ext << 32  # MariaDB's extended capabilities travel only without CLIENT_MYSQL
    hs = Handshake(version, conn_id, scramble, caps, collation, status, plugin)
    assert parse_handshake(build_handshake(hs)) == hs


def test_handshake_extended_capabilities_known_bytes() -> None:
    # As a MariaDB 10.11 greeting lays them out: no CLIENT_MYSQL, then the 4 bytes after 6 of filler.
    caps = (0x000FA20F & ~Cap.CLIENT_MYSQL) | Cap.MARIADB_CACHE_METADATA
    hs = Handshake("5.7.99-x", 1, b"abcdefgh" + b"ijklmnopqrst", caps, 45, 2, "mysql_native_password")
    raw = build_handshake(hs)
    assert raw[raw.index(b"\x15") + 1 :].startswith(b"\x00" * 6 + b"\x10\x00\x00\x00" + b"ijklmnopqrst\x00")
    assert parse_handshake(raw).capabilities == caps
    # With CLIENT_MYSQL set those bytes are filler: whatever is there is not read.
    mysql_style = bytearray(build_handshake(Handshake("8.0.1", 1, b"a" * 20, 0x000FA20F, 45, 2, "x")))
    at = mysql_style.index(b"\x15") + 7
    mysql_style[at : at + 4] = b"\xff\xff\xff\xff"
    assert parse_handshake(bytes(mysql_style)).capabilities == 0x000FA20F


def test_handshake_err_and_bad_version() -> None:
    with pytest.raises(ServerError) as ei:
        parse_handshake(build_err(1040, "Too many connections"))
    assert ei.value.code == 1040
    with pytest.raises(ProtocolError):
        parse_handshake(b"\x09old")
    with pytest.raises(ProtocolError):
        parse_handshake(b"")
    with pytest.raises(ProtocolError):
        parse_handshake(b"\x0a5.7\x00\x01\x02")  # truncated before the scramble


@pytest.mark.parametrize("keep", [1, 4, 5])
def test_truncated_greeting_is_a_protocol_error(keep: int) -> None:
    full = build_handshake(Handshake("5.7", 1, b"a" * 20, SERVER_CAPS, 45, 2, "mysql_native_password"))
    head = 1 + 4 + 4 + 8 + 1 + 2  # protocol, "5.7\0", conn id, scramble part 1, filler, caps low
    with pytest.raises(ProtocolError):
        parse_handshake(full[: head + keep])


# --------------------------------------------------------------------------- handshake response


_NAME = st.text(st.characters(min_codepoint=1, max_codepoint=0x2FFF, exclude_categories=("Cs",)), max_size=20)


@FAST
@given(
    lenenc=st.booleans(),
    plugin_auth=st.booleans(),
    attrs_cap=st.booleans(),
    max_packet=st.integers(0, 2**32 - 1),
    collation=st.integers(0, 255),
    user=_NAME,
    auth=st.binary(max_size=300),
    database=st.one_of(st.none(), _NAME),
    plugin=st.sampled_from(["mysql_native_password", "caching_sha2_password"]),
    attrs=st.dictionaries(_NAME, _NAME, max_size=4),
    ext=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)
def test_handshake_response_round_trip(lenenc: bool, plugin_auth: bool, attrs_cap: bool, max_packet: int,
                                       collation: int, user: str, auth: bytes, database: str | None, plugin: str,
                                       attrs: dict[str, str], ext: int | None) -> None:
    # A MariaDB client drops CLIENT_MYSQL (LONG_PASSWORD) and sends extended capabilities instead.
    caps = Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | (Cap.LONG_PASSWORD if ext is None else ext << 32)
    if lenenc:
        caps |= Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA
    else:
        auth = auth[:255]  # one length byte without PLUGIN_AUTH_LENENC_CLIENT_DATA
    if plugin_auth:
        caps |= Cap.PLUGIN_AUTH
    if attrs_cap:
        caps |= Cap.CONNECT_ATTRS
    r = HandshakeResponse(caps, max_packet, collation, user, auth, database, plugin, attrs)
    back = parse_handshake_response(build_handshake_response(r))
    assert back.user == user
    assert back.auth_response == auth
    assert back.max_packet == max_packet and back.collation == collation
    assert back.database == (database or None)
    assert bool(back.capabilities & Cap.CONNECT_WITH_DB) == bool(database)
    assert back.auth_plugin == (plugin if plugin_auth else None)
    assert back.attrs == (attrs if attrs_cap else {})
    assert back.capabilities >> 32 == (ext or 0)


def test_handshake_response_known_bytes_lenenc_and_plain() -> None:
    base = Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH
    auth = bytes(range(20))
    r = HandshakeResponse(base | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA, 1 << 24, 45, "u", auth, "db", "mysql_native_password")
    p = build_handshake_response(r)
    caps = base | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA | Cap.CONNECT_WITH_DB
    assert p == (struct.pack("<IIB", caps, 1 << 24, 45) + bytes(23) + b"u\x00" + b"\x14" + auth + b"db\x00"
                 + b"mysql_native_password\x00")
    # Without a database the flag is cleared and no schema is sent.
    r2 = HandshakeResponse(base, 1 << 24, 45, "u", auth, None, "mysql_native_password")
    p2 = build_handshake_response(r2)
    assert struct.unpack_from("<I", p2)[0] == base
    assert p2.endswith(b"u\x00\x14" + auth + b"mysql_native_password\x00")
    # A 300-byte auth response needs the lenenc form (0xfc + 2 bytes).
    r3 = HandshakeResponse(base | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA, 0, 45, "u", b"z" * 300, None, "x")
    assert b"u\x00\xfc\x2c\x01" + b"z" * 300 in build_handshake_response(r3)
    assert parse_handshake_response(build_handshake_response(r3)).auth_response == b"z" * 300


def test_ssl_request_is_the_fixed_head_of_the_response() -> None:
    # 32 bytes: capabilities (with SSL), max packet, collation, filler, MariaDB's extended capabilities.
    caps = Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH | Cap.SSL | Cap.MARIADB_CACHE_METADATA
    r = HandshakeResponse(caps, 1 << 30, 45, "user", bytes(20), "db", "mysql_native_password")
    request = build_ssl_request(r)
    assert request == build_handshake_response(r)[:32]
    flags, max_packet, collation = struct.unpack_from("<IIB", request)
    assert flags == (caps | Cap.CONNECT_WITH_DB) & 0xFFFFFFFF and max_packet == 1 << 30 and collation == 45
    assert request[9:28] == bytes(19) and struct.unpack_from("<I", request, 28)[0] == caps >> 32


def test_handshake_response_rejects_short_and_pre41() -> None:
    with pytest.raises(ProtocolError) as ei:
        parse_handshake_response(b"\x00" * 31)
    assert ei.value.code == 1043
    old = struct.pack("<IIB", Cap.SECURE_CONNECTION, 0, 8) + bytes(23) + b"u\x00\x00"
    with pytest.raises(ProtocolError) as ei:
        parse_handshake_response(old)
    assert ei.value.code == 1043


# --------------------------------------------------------------------------- OK / ERR / EOF


@FAST
@given(
    affected=st.integers(0, 2**64 - 1),
    insert_id=st.integers(0, 2**64 - 1),
    status=st.integers(0, 0xFFFF),
    warnings=st.integers(0, 0xFFFF),
    info=st.binary(max_size=80),
    state=st.binary(max_size=80),
)
def test_ok_round_trip(affected: int, insert_id: int, status: int, warnings: int, info: bytes, state: bytes) -> None:
    changed = bool(status & Status.SESSION_STATE_CHANGED)
    ok = OK(affected, insert_id, status, warnings, info, state)
    with_track = parse_ok(build_ok(ok, Cap.SESSION_TRACK), Cap.SESSION_TRACK)
    assert with_track == OK(affected, insert_id, status, warnings, info, state if changed else b"")
    plain = build_ok(ok, Cap.PROTOCOL_41)
    assert parse_ok(plain, 0) == OK(affected, insert_id, status, warnings, info, b"")
    # An independent parser reads the plain form the same way.
    # An independent parser reads the plain form the same way (PyMySQL keeps the info's length byte).
    w = OKPacketWrapper(MysqlPacket(plain, "utf8"))
    assert (w.affected_rows, w.insert_id, w.server_status, w.warning_count, w.message) == (
        affected, insert_id, status, warnings, lenenc_str(info) if info else b"")


def test_ok_known_bytes() -> None:
    assert build_ok(OK(), 0) == b"\x00\x00\x00\x02\x00\x00\x00"
    assert build_ok(OK(), Cap.SESSION_TRACK) == b"\x00\x00\x00\x02\x00\x00\x00"
    assert build_ok(OK(1, 300, Status.IN_TRANS, 2, b"hi"), Cap.SESSION_TRACK) == (
        b"\x00\x01\xfc\x2c\x01\x01\x00\x02\x00\x02hi")
    # The info text is length-encoded without SESSION_TRACK too (the server's net_send_ok; mysqlnd
    # rejects the packet otherwise: "RSET_HEADER packet additional data length is past ...").
    assert build_ok(OK(1, 300, Status.IN_TRANS, 2, b"hi"), 0) == b"\x00\x01\xfc\x2c\x01\x01\x00\x02\x00\x02hi"


@pytest.mark.parametrize(
    ("packet", "status", "variables", "schema", "changed", "other"),
    [
        (OK_TIME_ZONE, 0x4002, [("time_zone", "+02:00")], None, True, []),
        (OK_USE_DB, 0x4002, [], "appdb", True, []),
        (OK_USER_VAR, 0x4002, [], None, True, []),
        (OK_SET_NAMES, 0x4002, [("character_set_connection", "latin1"), ("character_set_client", "latin1"),
                                ("character_set_results", "latin1")], None, True, []),
        (OK_AUTOCOMMIT_OFF, 0x4000, [("autocommit", "OFF")], None, True, []),
        (OK_RESULTS_NULL, 0x4002, [("character_set_results", "")], None, True, []),
        (OK_PREPARE, 0x4002, [], None, True, []),
        # Transaction state and characteristics describe what the status flags and the statement
        # already say: read as information, never as an unexplained change of state.
        (OK_TRX_INFO, 0x6003, [], None, False, []),
    ],
    ids=["time_zone", "use_db", "user_var", "set_names", "autocommit", "results_null", "prepare", "trx_info"],
)
def test_captured_ok_session_state(packet: bytes, status: int, variables: list[tuple[str, str]], schema: str | None,
                                   changed: bool, other: list[int]) -> None:
    ok = parse_ok(packet, Cap.SESSION_TRACK)
    assert ok.status == status
    assert ok.status & Status.SESSION_STATE_CHANGED
    assert (ok.affected_rows, ok.last_insert_id, ok.warnings) == (0, 0, 0)
    c = parse_session_state(ok.session_state)
    assert c.variables == variables
    assert c.schema == schema
    assert c.state_changed is changed
    assert c.other == other
    assert c.transaction_info is (packet == OK_TRX_INFO)
    # Re-encoding gives the same bytes: build_ok is the inverse of parse_ok on real packets.
    assert build_ok(ok, Cap.SESSION_TRACK) == packet


def test_captured_ok_details() -> None:
    assert parse_ok(OK_PREPARE, Cap.SESSION_TRACK).info == b"Statement prepared"
    begin = parse_ok(OK_BEGIN, Cap.SESSION_TRACK)
    assert begin.status == Status.IN_TRANS and begin.session_state == b"" and begin.info == b""


def test_strip_session_track_on_captured_packets() -> None:
    # What a client without CLIENT_SESSION_TRACK must get instead.
    assert strip_session_track(OK_TIME_ZONE) == b"\x00\x00\x00\x02\x00\x00\x00"
    assert strip_session_track(OK_AUTOCOMMIT_OFF) == b"\x00\x00\x00\x00\x00\x00\x00"
    stripped = strip_session_track(OK_PREPARE)
    assert stripped == b"\x00\x00\x00\x02\x00\x00\x00\x12Statement prepared"  # info length-encoded, as the server sends it
    w = OKPacketWrapper(MysqlPacket(stripped, "utf8"))
    assert w.message == b"\x12Statement prepared" and w.server_status == Status.AUTOCOMMIT
    assert strip_session_track(memoryview(OK_BEGIN)) == OK_BEGIN


def test_default_session_state_keeps_what_links_do_not_ask_for() -> None:
    """A link asks for every variable and the state-change flag; a client with default trackers
    gets the schema and five variables of those, and every GTID or transaction entry as it is:
    the server sends those to any session (MySQL 9 the transaction state, with the tracker OFF)."""
    state = parse_ok(OK_SET_NAMES, Cap.SESSION_TRACK).session_state
    assert parse_session_state(default_session_state(state)).variables == [
        ("character_set_connection", "latin1"), ("character_set_client", "latin1"), ("character_set_results", "latin1")]
    assert not parse_session_state(default_session_state(state)).state_changed
    trx = parse_ok(OK_TRX_INFO, Cap.SESSION_TRACK).session_state
    assert default_session_state(trx) == trx
    assert default_session_state(parse_ok(OK_USER_VAR, Cap.SESSION_TRACK).session_state) == b""


def test_parse_session_state_formats() -> None:
    # MySQL documents STATE_CHANGE data as a lenenc "1"; MariaDB sends the bare "1".
    assert parse_session_state(b"\x02\x02\x011").state_changed
    assert parse_session_state(b"\x02\x011").state_changed
    assert not parse_session_state(b"\x02\x010").state_changed
    # Names are folded to lower case; entries accumulate in order.
    block = b"\x00\x0a\x08SQL_MODE\x00" + b"\x00\x07\x04a_b_\x01x" + b"\x01\x03\x02db"
    c = parse_session_state(block)
    assert c.variables == [("sql_mode", ""), ("a_b_", "x")]
    assert c.schema == "db"
    assert parse_session_state(b"\x01\x00").schema == ""
    assert parse_session_state(b"\x03\x02ab").other == [SessionTrack.GTIDS]
    assert parse_session_state(b"") == SessionChanges()
    with pytest.raises(ProtocolError):
        parse_session_state(b"\x00\x05\x01")  # entry longer than the block


@FAST
@given(code=st.integers(0, 0xFFFF), message=st.text(max_size=120), state=st.text("0123456789ABCDEFHYS", min_size=5, max_size=5))
def test_err_round_trip(code: int, message: str, state: str) -> None:
    p = build_err(code, message, state)
    assert p[:4] == b"\xff" + struct.pack("<H", code) + b"#"
    err = parse_err(p)
    assert err == ERR(code, message, state)


def test_err_details() -> None:
    assert parse_err(build_err(1045, "denied")).sqlstate == "28000"  # from the SQLSTATE table
    assert parse_err(build_err(4242, "x")).sqlstate == "HY000"
    assert len(build_err(1, "x" * 2000)) == 9 + 512
    # Pre-4.1 form (no '#'): the message starts right after the code.
    assert parse_err(b"\xff\x10\x04Too many connections") == ERR(1040, "Too many connections", "HY000")
    assert parse_err(CAPTURED_ERR_1242) == ERR(1242, "Subquery returns more than 1 row", "21000")
    with pytest.raises(ProtocolError):
        parse_err(b"\xff\x01")


@FAST
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_eof_round_trip(status: int, warnings: int) -> None:
    p = build_eof(status, warnings)
    assert len(p) == 5 and is_eof(p, len(p))
    assert parse_eof(p) == (warnings, status)
    w = EOFPacketWrapper(MysqlPacket(p, "utf8"))
    assert (w.warning_count & 0xFFFF, w.server_status & 0xFFFF) == (warnings, status)


def test_eof_captured_and_rows_that_start_with_fe() -> None:
    assert parse_eof(CAPTURED_EOF_WARNING) == (1, Status.AUTOCOMMIT)
    assert build_eof(Status.AUTOCOMMIT, 1) == CAPTURED_EOF_WARNING
    # A text row whose first value is a lenenc string >= 2**24 bytes starts with 0xfe but is 9+ bytes long.
    assert not is_eof(b"\xfe" + bytes(8), 9)
    assert is_eof(b"\xfe", 1)
    assert parse_eof(b"\xfe") == (0, 0)  # pre-4.1 EOF: no flags


# --------------------------------------------------------------------------- live server


@pytest.mark.skipif(SERVER.mysql, reason="MariaDB only: checks packets captured from MariaDB (its greeting, "
                    "its mysql_native_password account, its error and OK bytes)")
async def test_live_ok_packets_session_state(mariadb: MariaDB) -> None:
    link = await open_link(_cfg(mariadb), kind=0, timeout=5)
    try:
        async def ok_for(sql: bytes) -> OK:
            [reply] = await link.exchange([(Command.QUERY, sql)])
            assert len(reply.packets) == 1 and reply.packets[0][0] == 0x00
            return parse_ok(reply.packets[0], Cap.SESSION_TRACK)

        ok = await ok_for(b"SET time_zone='+02:00'")
        assert ok.status & Status.SESSION_STATE_CHANGED
        c = parse_session_state(ok.session_state)
        assert (c.variables, c.schema, c.state_changed) == ([("time_zone", "+02:00")], None, True)

        c = parse_session_state((await ok_for(b"USE appdb")).session_state)
        assert (c.variables, c.schema, c.state_changed) == ([], "appdb", True)

        c = parse_session_state((await ok_for(b"SET @u=1")).session_state)
        assert (c.variables, c.schema, c.state_changed) == ([], None, True)  # a user variable: state change only

        c = parse_session_state((await ok_for(b"SET NAMES latin1")).session_state)
        assert sorted(c.variables) == [("character_set_client", "latin1"), ("character_set_connection", "latin1"),
                                       ("character_set_results", "latin1")]
        assert c.state_changed

        c = parse_session_state((await ok_for(b"CREATE TEMPORARY TABLE tmp_messages (a INT)")).session_state)
        assert (c.variables, c.schema, c.state_changed) == ([], None, True)

        ok = await ok_for(b"SET autocommit=0")
        assert not ok.status & Status.AUTOCOMMIT
        c = parse_session_state(ok.session_state)
        assert (c.variables, c.state_changed) == ([("autocommit", "OFF")], True)

        # Only SET reports a user variable: SELECT ... INTO @x assigns one and says nothing
        # (the session layer must not rely on the tracker for these; see test_sql_session.py).
        ok = await ok_for(b"SELECT 1 INTO @x")
        assert not ok.status & Status.SESSION_STATE_CHANGED and ok.session_state == b""
    finally:
        link.close()


@pytest.mark.skipif(SERVER.mysql, reason="MariaDB only: checks packets captured from MariaDB (its greeting, "
                    "its mysql_native_password account, its error and OK bytes)")
async def test_live_captured_literals_match(mariadb: MariaDB) -> None:
    """The OK literals in this file are what the private server sends today."""
    link = await open_link(_cfg(mariadb), kind=0, timeout=5)
    try:
        replies = await link.exchange([
            (Command.QUERY, b"SET time_zone='+02:00'"),
            (Command.QUERY, b"USE appdb"),
            (Command.QUERY, b"SET @u=1"),
            (Command.QUERY, b"SET character_set_results=NULL"),
        ])
        assert [r.packets for r in replies] == [[OK_TIME_ZONE], [OK_USE_DB], [OK_USER_VAR], [OK_RESULTS_NULL]]
    finally:
        link.close()


# --------------------------------------------------------------------------- no crash on garbage


@FAST
@given(st.binary(max_size=120))
@example(b"\x00" * 32)
@example(struct.pack("<IIB", Cap.PROTOCOL_41 | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA | Cap.CONNECT_ATTRS, 0, 8) + bytes(23)
         + b"u\x00\x00\xfc\xff\xff")
@example(struct.pack("<IIB", Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.CONNECT_WITH_DB, 0, 8) + bytes(23)
         + b"u\x00\x30")
def test_client_handshake_response_garbage_is_protocol_error(data: bytes) -> None:
    """The one parser that reads bytes from untrusted clients: ProtocolError or a value, nothing else."""
    try:
        parse_handshake_response(data)
    except ProtocolError:
        pass
    # With a valid fixed part in front, the variable part is what gets parsed.
    head = struct.pack("<IIB", 0xFFFFFFFF & ~Cap.SSL, 0, 8) + bytes(23)
    try:
        parse_handshake_response(head + data)
    except ProtocolError:
        pass


@FAST
@given(st.binary(max_size=60))
def test_ok_err_state_garbage_is_protocol_error(data: bytes) -> None:
    for parse in (
        lambda d: parse_ok(b"\x00" + d, Cap.SESSION_TRACK),
        lambda d: parse_ok(b"\x00" + d, 0),
        lambda d: strip_session_track(b"\x00" + d),
        lambda d: parse_err(b"\xff" + d),
        parse_session_state,
        lambda d: read_lenenc_str(d, 0),
    ):
        try:
            parse(data)
        except ProtocolError:
            pass


# --------------------------------------------------------------------------- COM_STMT_EXECUTE binding

def _execute(client_id: int, bound: bool, types: bytes, values: bytes) -> bytes:
    """COM_STMT_EXECUTE of a one-parameter statement: id, no cursor, 1 iteration, null bitmap 0."""
    head = bytes((0x17,)) + client_id.to_bytes(4, "little") + b"\x00" + (1).to_bytes(4, "little") + b"\x00"
    return head + (b"\x01" + types if bound else b"\x00") + values


LONGLONG, VAR_STRING = b"\x08\x00", b"\xfd\x00"


def test_bind_execute_keeps_the_clients_types_and_swaps_the_id() -> None:
    payload, types = bind_execute(_execute(7, True, LONGLONG, b"\x2a" + b"\x00" * 7), 99, 1, None, None)
    assert payload == _execute(99, True, LONGLONG, b"\x2a" + b"\x00" * 7)
    assert types == LONGLONG


def test_bind_execute_adds_types_the_server_statement_lacks() -> None:
    unbound = _execute(7, False, b"", b"\x01x")
    # Never executed on this link, or last bound there by a client with other types: send them.
    for server_types in (None, LONGLONG):
        payload, types = bind_execute(unbound, 99, 1, VAR_STRING, server_types)
        assert payload == _execute(99, True, VAR_STRING, b"\x01x")
        assert types == VAR_STRING


def test_bind_execute_leaves_types_out_when_the_server_has_them() -> None:
    payload, types = bind_execute(_execute(7, False, b"", b"\x01x"), 99, 1, VAR_STRING, VAR_STRING)
    assert payload == _execute(99, False, b"", b"\x01x")
    assert types == VAR_STRING


def test_bind_execute_refuses_a_statement_never_bound() -> None:
    with pytest.raises(ProtocolError):
        bind_execute(_execute(7, False, b"", b"\x01x"), 99, 1, None, None)
    with pytest.raises(ProtocolError):
        bind_execute(_execute(7, True, b"\x08", b""), 99, 1, None, None)  # types cut short
