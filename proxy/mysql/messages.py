"""Payload codecs: length-encoded values, handshake, OK / ERR / EOF, auth switch.

Pure functions over bytes; nothing here touches a socket.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .constants import SQLSTATE, Cap, Command, SessionTrack, Status
from .packets import ProtocolError

OK_HEADER = 0x00
EOF_HEADER = 0xFE
ERR_HEADER = 0xFF
LOCAL_INFILE_HEADER = 0xFB
AUTH_MORE_DATA = 0x01
AUTH_SWITCH = 0xFE


# -- length-encoded values ---------------------------------------------------


def lenenc_int(n: int) -> bytes:
    if n < 0xFB:
        return bytes((n,))
    if n < 1 << 16:
        return b"\xfc" + n.to_bytes(2, "little")
    if n < 1 << 24:
        return b"\xfd" + n.to_bytes(3, "little")
    return b"\xfe" + n.to_bytes(8, "little")


def lenenc_str(s: bytes) -> bytes:
    return lenenc_int(len(s)) + s


def read_lenenc_int(buf: bytes | memoryview, pos: int) -> tuple[int | None, int]:
    """Read a length-encoded integer at ``pos``; None stands for SQL NULL (0xFB)."""
    try:
        first = buf[pos]
        if first < 0xFB:
            return first, pos + 1
        if first == 0xFB:
            return None, pos + 1
        if first == 0xFC:
            return int.from_bytes(buf[pos + 1 : pos + 3], "little"), pos + 3
        if first == 0xFD:
            return int.from_bytes(buf[pos + 1 : pos + 4], "little"), pos + 4
        if first == 0xFE:
            if len(buf) < pos + 9:
                raise ProtocolError("truncated length-encoded integer")
            return int.from_bytes(buf[pos + 1 : pos + 9], "little"), pos + 9
    except IndexError:
        raise ProtocolError("truncated length-encoded integer") from None
    raise ProtocolError("invalid length-encoded integer (0xFF)")


def read_lenenc_str(buf: bytes | memoryview, pos: int) -> tuple[bytes, int]:
    n, pos = read_lenenc_int(buf, pos)
    n = n or 0
    if pos + n > len(buf):
        raise ProtocolError("truncated length-encoded string")
    return bytes(buf[pos : pos + n]), pos + n


def read_nul_str(buf: bytes | memoryview, pos: int) -> tuple[bytes, int]:
    data = bytes(buf)
    end = data.find(b"\x00", pos)
    if end < 0:
        raise ProtocolError("missing NUL terminator")
    return data[pos:end], end + 1


# -- handshake -----------------------------------------------------------------


@dataclass
class Handshake:
    """Initial handshake packet (protocol 10), server to client."""

    server_version: str
    connection_id: int
    scramble: bytes  # 20 bytes
    capabilities: int  # MariaDB's extended ones in bits 32-63 (when CLIENT_MYSQL is clear)
    collation: int
    status: int
    auth_plugin: str


def build_handshake(h: Handshake) -> bytes:
    caps = h.capabilities
    return b"".join(
        (
            b"\x0a",
            h.server_version.encode() + b"\x00",
            struct.pack("<I", h.connection_id & 0xFFFFFFFF),
            h.scramble[:8],
            b"\x00",
            struct.pack("<H", caps & 0xFFFF),
            bytes((h.collation & 0xFF,)),
            struct.pack("<H", h.status),
            struct.pack("<H", (caps >> 16) & 0xFFFF),
            bytes((len(h.scramble) + 1,)),
            b"\x00" * 6,
            struct.pack("<I", 0 if caps & Cap.CLIENT_MYSQL else caps >> 32),
            h.scramble[8:] + b"\x00",
            h.auth_plugin.encode() + b"\x00",
        )
    )


def parse_handshake(p: bytes) -> Handshake:
    if not p:
        raise ProtocolError("empty handshake")
    if p[0] == ERR_HEADER:
        err = parse_err(p, Cap.PROTOCOL_41)
        raise ServerError(err.code, err.message, err.sqlstate)
    if p[0] != 10:
        raise ProtocolError(f"unsupported protocol version {p[0]}")
    version, pos = read_nul_str(p, 1)
    if len(p) < pos + 4 + 8 + 1 + 2:
        raise ProtocolError("truncated handshake")
    conn_id = struct.unpack_from("<I", p, pos)[0]
    pos += 4
    part1 = p[pos : pos + 8]
    pos += 9
    caps = struct.unpack_from("<H", p, pos)[0]
    pos += 2
    collation = status = data_len = 0
    plugin = "mysql_native_password"
    part2 = b""
    if len(p) > pos:
        if len(p) < pos + 16:
            raise ProtocolError("truncated handshake")
        collation = p[pos]
        status, caps_hi = struct.unpack_from("<HH", p, pos + 1)
        caps |= caps_hi << 16
        data_len = p[pos + 5]
        if not caps & Cap.CLIENT_MYSQL:
            caps |= struct.unpack_from("<I", p, pos + 12)[0] << 32
        pos += 6 + 10
        if caps & Cap.SECURE_CONNECTION:
            n = max(13, data_len - 8)
            part2 = p[pos : pos + n].rstrip(b"\x00")
            pos += n
        if caps & Cap.PLUGIN_AUTH and pos < len(p):
            end = p.find(b"\x00", pos)
            plugin = p[pos : end if end >= 0 else len(p)].decode(errors="replace")
    return Handshake(version.decode(errors="replace"), conn_id, part1 + part2, caps, collation, status, plugin)


@dataclass
class HandshakeResponse:
    """Handshake response 41, client to server."""

    capabilities: int  # MariaDB's extended ones in bits 32-63 (when CLIENT_MYSQL is clear)
    max_packet: int
    collation: int
    user: str
    auth_response: bytes
    database: str | None = None
    auth_plugin: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)


SSL_REQUEST_SIZE = 32


def build_handshake_response(r: HandshakeResponse) -> bytes:
    caps = r.capabilities
    if r.database:
        caps |= Cap.CONNECT_WITH_DB
    else:
        caps &= ~Cap.CONNECT_WITH_DB
    out = [
        struct.pack("<IIB", caps & 0xFFFFFFFF, r.max_packet, r.collation),
        b"\x00" * 19,
        struct.pack("<I", 0 if caps & Cap.CLIENT_MYSQL else caps >> 32),
        r.user.encode() + b"\x00",
    ]
    if caps & Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA:
        out.append(lenenc_str(r.auth_response))
    else:
        out.append(bytes((len(r.auth_response),)) + r.auth_response)
    if r.database:
        out.append(r.database.encode() + b"\x00")
    if caps & Cap.PLUGIN_AUTH:
        out.append((r.auth_plugin or "").encode() + b"\x00")
    if caps & Cap.CONNECT_ATTRS:
        kv = b"".join(lenenc_str(k.encode()) + lenenc_str(v.encode()) for k, v in r.attrs.items())
        out.append(lenenc_str(kv))
    return b"".join(out)


def build_ssl_request(r: HandshakeResponse) -> bytes:
    """SSLRequest: the fixed head of the handshake response (``r`` has Cap.SSL); TLS starts after it."""
    return build_handshake_response(r)[:SSL_REQUEST_SIZE]


def parse_handshake_response(p: bytes) -> HandshakeResponse:
    if len(p) < SSL_REQUEST_SIZE:
        raise ProtocolError("handshake response too short", 1043)
    caps, max_packet, collation = struct.unpack_from("<IIB", p, 0)
    if not caps & Cap.PROTOCOL_41:
        raise ProtocolError("clients older than protocol 4.1 are not supported", 1043)
    if not caps & Cap.CLIENT_MYSQL:
        caps |= struct.unpack_from("<I", p, 28)[0] << 32
    user, pos = read_nul_str(p, SSL_REQUEST_SIZE)
    if caps & Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth, pos = read_lenenc_str(p, pos)
    elif caps & Cap.SECURE_CONNECTION:
        if pos >= len(p):
            raise ProtocolError("truncated handshake response", 1043)
        n = p[pos]
        auth = p[pos + 1 : pos + 1 + n]
        pos += 1 + n
    else:
        auth, pos = read_nul_str(p, pos)
    database = None
    if caps & Cap.CONNECT_WITH_DB and pos < len(p):
        db, pos = read_nul_str(p, pos)
        database = db.decode(errors="replace") or None
    plugin = None
    if caps & Cap.PLUGIN_AUTH and pos < len(p):
        name, pos = read_nul_str(p, pos)
        plugin = name.decode(errors="replace")
    attrs: dict[str, str] = {}
    if caps & Cap.CONNECT_ATTRS and pos < len(p):
        blob, pos = read_lenenc_str(p, pos)
        i = 0
        while i < len(blob):
            k, i = read_lenenc_str(blob, i)
            v, i = read_lenenc_str(blob, i)
            attrs[k.decode(errors="replace")] = v.decode(errors="replace")
    return HandshakeResponse(caps, max_packet, collation, user.decode(errors="replace"), bytes(auth), database, plugin, attrs)


@dataclass
class ChangeUser:
    """COM_CHANGE_USER, client to server."""

    user: str
    auth_response: bytes
    database: str | None
    collation: int  # 0 when the client sent none
    auth_plugin: str


def parse_change_user(p: bytes, caps: int) -> ChangeUser:
    try:
        user, pos = read_nul_str(p, 1)
        if caps & Cap.SECURE_CONNECTION:
            n = p[pos]
            response = p[pos + 1 : pos + 1 + n]
            pos += 1 + n
        else:
            response, pos = read_nul_str(p, pos)
        db, pos = read_nul_str(p, pos)
        collation = int.from_bytes(p[pos : pos + 2], "little") if len(p) >= pos + 2 else 0
        pos += 2
        plugin = b""
        if pos < len(p):
            plugin, pos = read_nul_str(p, pos)
    except IndexError:
        raise ProtocolError("truncated COM_CHANGE_USER", 1043) from None
    return ChangeUser(user.decode(errors="replace"), bytes(response), db.decode(errors="replace") or None,
                      collation, plugin.decode(errors="replace") or "mysql_native_password")


def build_change_user(c: ChangeUser) -> bytes:
    """COM_CHANGE_USER as the proxy sends it (PROTOCOL_41, SECURE_CONNECTION and PLUGIN_AUTH are always on)."""
    return (bytes((Command.CHANGE_USER,)) + c.user.encode() + b"\x00" + bytes((len(c.auth_response),))
            + c.auth_response + (c.database or "").encode() + b"\x00" + struct.pack("<H", c.collation)
            + c.auth_plugin.encode() + b"\x00")


def build_auth_switch(plugin: str, data: bytes) -> bytes:
    return bytes((AUTH_SWITCH,)) + plugin.encode() + b"\x00" + data + b"\x00"


def parse_auth_switch(p: bytes) -> tuple[str, bytes]:
    name, pos = read_nul_str(p, 1)
    return name.decode(errors="replace"), p[pos:].rstrip(b"\x00")


# -- OK / ERR / EOF ---------------------------------------------------------------


@dataclass
class OK:
    affected_rows: int = 0
    last_insert_id: int = 0
    status: int = Status.AUTOCOMMIT
    warnings: int = 0
    info: bytes = b""
    session_state: bytes = b""  # raw session-state-change block (without its length)


def build_ok(ok: OK, caps: int) -> bytes:
    """The server's exact bytes (its ``net_send_ok``): the info text is a length-encoded string for
    every client, sent when it is not empty; with SESSION_TRACK it is also sent (maybe empty) ahead
    of a session-state block. mysqlnd and libmysqlclient read it so."""
    head = (
        b"\x00"
        + lenenc_int(ok.affected_rows)
        + lenenc_int(ok.last_insert_id)
        + struct.pack("<HH", ok.status, ok.warnings)
    )
    if caps & Cap.SESSION_TRACK:
        if ok.status & Status.SESSION_STATE_CHANGED:
            return head + lenenc_str(ok.info) + lenenc_str(ok.session_state)
    return head + lenenc_str(ok.info) if ok.info else head


def parse_ok(p: bytes | memoryview, caps: int) -> OK:
    """Parse an OK packet (header 0x00, or 0xFE when it stands for EOF)."""
    affected, pos = read_lenenc_int(p, 1)
    insert_id, pos = read_lenenc_int(p, pos)
    if len(p) < pos + 4:
        raise ProtocolError("truncated OK packet")
    status, warnings = struct.unpack_from("<HH", p, pos)
    pos += 4
    info = state = b""
    if pos < len(p):
        info, pos = read_lenenc_str(p, pos)
        if caps & Cap.SESSION_TRACK and status & Status.SESSION_STATE_CHANGED and pos < len(p):
            state, pos = read_lenenc_str(p, pos)
    return OK(affected or 0, insert_id or 0, status, warnings, info, state)


def strip_session_track(p: bytes | memoryview) -> bytes:
    """Re-encode an OK packet received with SESSION_TRACK for a client without it."""
    ok = parse_ok(p, Cap.SESSION_TRACK)
    ok.status &= ~Status.SESSION_STATE_CHANGED
    ok.session_state = b""
    return build_ok(ok, 0)


# What the trackers report to a session with the server's default settings (MariaDB 10.2+ and
# MySQL 5.7+ alike): the schema and these variables, no state-change flag. A link changes only
# those trackers (backend.TRACKING_SETUP); entries of the others (GTIDs, transaction
# characteristics and state) reach a link as they reach any session of that server, and so the
# client: MySQL 9 reports the transaction state (BEGIN: "T_______") to every session even with
# session_track_transaction_info OFF.
DEFAULT_TRACKED_VARIABLES = frozenset(
    {b"autocommit", b"character_set_client", b"character_set_connection", b"character_set_results", b"time_zone"}
)
_NOT_SET_BY_LINKS = frozenset(
    {SessionTrack.SCHEMA, SessionTrack.GTIDS, SessionTrack.TRANSACTION_CHARACTERISTICS, SessionTrack.TRANSACTION_STATE}
)


def default_session_state(block: bytes) -> bytes:
    """The entries of a session-state block that a session with default tracker settings gets."""
    out = []
    pos = 0
    while pos < len(block):
        start = pos
        kind = block[pos]
        data, pos = read_lenenc_str(block, pos + 1)
        if kind in _NOT_SET_BY_LINKS:
            out.append(block[start:pos])
        elif kind == SessionTrack.SYSTEM_VARIABLES:
            name, _ = read_lenenc_str(data, 0)
            if name.lower() in DEFAULT_TRACKED_VARIABLES:
                out.append(block[start:pos])
    return b"".join(out)


def session_track_for_client(ok: OK) -> bytes | None:
    """An OK received on a link (which tracks everything, for the proxy) re-encoded for a client
    with SESSION_TRACK: only the entries its own session would get, and no SESSION_STATE_CHANGED
    flag when none is left. None when the packet is that already."""
    block = default_session_state(ok.session_state)
    if block == ok.session_state:
        return None
    ok.session_state = block
    if not block:
        ok.status &= ~Status.SESSION_STATE_CHANGED
    return build_ok(ok, Cap.SESSION_TRACK)


@dataclass
class SessionChanges:
    """What one OK packet's session-state block says changed."""

    variables: list[tuple[str, str]] = field(default_factory=list)
    schema: str | None = None
    state_changed: bool = False
    other: list[int] = field(default_factory=list)  # entry types we do not interpret
    # MySQL's transaction state / characteristics entries: a description of the transaction the
    # status flags already report (and of SET TRANSACTION, which the statement shows), not state.
    transaction_info: bool = False


def parse_session_state(block: bytes) -> SessionChanges:
    out = SessionChanges()
    pos = 0
    while pos < len(block):
        kind = block[pos]
        data, pos = read_lenenc_str(block, pos + 1)
        if kind == SessionTrack.SYSTEM_VARIABLES:
            name, i = read_lenenc_str(data, 0)
            value, _ = read_lenenc_str(data, i)
            out.variables.append((name.decode(errors="replace").lower(), value.decode(errors="replace")))
        elif kind == SessionTrack.SCHEMA:
            name, _ = read_lenenc_str(data, 0) if data else (b"", 0)
            out.schema = name.decode(errors="replace")
        elif kind == SessionTrack.STATE_CHANGE:
            # MariaDB sends the flag bare ("1"); the MySQL docs describe it length-encoded.
            out.state_changed = out.state_changed or data in (b"1", b"\x011")
        elif kind in (SessionTrack.TRANSACTION_STATE, SessionTrack.TRANSACTION_CHARACTERISTICS):
            out.transaction_info = True
        else:
            out.other.append(kind)
    return out


@dataclass
class ERR:
    code: int
    message: str
    sqlstate: str = "HY000"


class ServerError(Exception):
    """An ERR packet received where the proxy itself needed success."""

    def __init__(self, code: int, message: str, sqlstate: str = "HY000") -> None:
        super().__init__(f"({code}) {message}")
        self.code = code
        self.message = message
        self.sqlstate = sqlstate


def build_err(code: int, message: str, sqlstate: str | None = None) -> bytes:
    """The one place error packets are made (always in the 4.1 format)."""
    state = (sqlstate or SQLSTATE.get(code, "HY000")).encode()[:5]
    return b"\xff" + struct.pack("<H", code) + b"#" + state + message.encode("utf-8", "replace")[:512]


def parse_err(p: bytes | memoryview, caps: int = Cap.PROTOCOL_41) -> ERR:
    if len(p) < 3:
        raise ProtocolError("truncated ERR packet")
    code = struct.unpack_from("<H", p, 1)[0]
    pos = 3
    state = "HY000"
    if len(p) > 3 and p[3] == ord("#"):
        state = bytes(p[4:9]).decode(errors="replace")
        pos = 9
    return ERR(code, bytes(p[pos:]).decode("utf-8", errors="replace"), state)


def build_eof(status: int, warnings: int = 0) -> bytes:
    return b"\xfe" + struct.pack("<HH", warnings, status)


def is_eof(p: bytes | memoryview, length: int) -> bool:
    """An EOF packet (not a row that starts with 0xFE, which is always 9+ bytes)."""
    return length < 9 and p[0] == EOF_HEADER


def parse_eof(p: bytes | memoryview) -> tuple[int, int]:
    """(warnings, status) of an EOF packet."""
    if len(p) < 5:
        return 0, 0
    warnings, status = struct.unpack_from("<HH", p, 1)
    return warnings, status


# -- result sets the proxy builds itself (admin console, answers kept by the proxy) ----

FIELD_TYPE_LONGLONG = 0x08
FIELD_TYPE_VAR_STRING = 0xFD
UTF8_GENERAL_CI = 33
BINARY_COLLATION = 63


def build_column_def(name: str, numeric: bool = False, extended: bool = False) -> bytes:
    """``extended``: for a client with MariaDB's extended metadata, which then reads a (here
    empty) block of type information after the names."""
    encoded = name.encode()
    return b"".join(
        (
            lenenc_str(b"def"),
            lenenc_str(b""),
            lenenc_str(b""),
            lenenc_str(b""),
            lenenc_str(encoded),
            lenenc_str(encoded),
            b"\x00" if extended else b"",
            b"\x0c",
            struct.pack("<HIBHB", BINARY_COLLATION if numeric else UTF8_GENERAL_CI, 21 if numeric else 1024,
                        FIELD_TYPE_LONGLONG if numeric else FIELD_TYPE_VAR_STRING, 0x81 if numeric else 0, 0),
            b"\x00\x00",
        )
    )


def build_text_row(values: list[object]) -> bytes:
    return b"".join(b"\xfb" if v is None else lenenc_str(str(v).encode()) for v in values)


def build_result_set(columns: list[str], rows: list[list[object]], status: int, caps: int = 0,
                     numeric: set[str] | None = None) -> list[bytes]:
    """Payloads of a complete text result set for a client with ``caps`` (sequence ids are the framer's job)."""
    numeric = numeric or set()
    # With MariaDB's metadata caching the column count says whether definitions follow: they do.
    out = [lenenc_int(len(columns)) + (b"\x01" if caps & Cap.MARIADB_CACHE_METADATA else b"")]
    extended = bool(caps & Cap.MARIADB_EXTENDED_METADATA)
    out += [build_column_def(c, c in numeric, extended) for c in columns]
    out.append(build_eof(status))
    out += [build_text_row(r) for r in rows]
    out.append(build_eof(status))
    return out
