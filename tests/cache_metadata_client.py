"""A minimal MariaDB client that keeps prepared statements' column definitions, as Connector/C does.

It asks for MARIADB_CLIENT_CACHE_METADATA; an execute whose server leaves the definitions out is
taken to have the ones the client holds (from the PREPARE answer or the last execute that sent
them). The drivers in the test environment either do not ask for it or prepare a statement again
for every execute, so this is the client that shows what a long-lived statement sees. Kept apart
from ``proxy/`` on purpose: it must not share the code it checks.
"""

from __future__ import annotations

import hashlib
import socket
import struct

CLIENT_MYSQL = 1
PROTOCOL_41, TRANSACTIONS, SECURE_CONNECTION = 1 << 9, 1 << 13, 1 << 15
MULTI_RESULTS, PS_MULTI_RESULTS, PLUGIN_AUTH, CONNECT_WITH_DB = 1 << 17, 1 << 18, 1 << 19, 1 << 3
CACHE_METADATA_EXT = 1 << 4  # of the extended capabilities (bit 36 of all)
LAST = 0xFFFFFFFF  # MariaDB's statement id for "the one prepared last"


def _scramble(password: str, salt: bytes) -> bytes:
    if not password:
        return b""
    h1 = hashlib.sha1(password.encode()).digest()
    h2 = hashlib.sha1(h1).digest()
    h3 = hashlib.sha1(salt + h2).digest()
    return bytes(a ^ b for a, b in zip(h1, h3))


def read_lenenc(buf: bytes, pos: int) -> tuple[int, int]:
    """A length-encoded integer at ``pos``: (value, position after it)."""
    first = buf[pos]
    if first < 0xFB:
        return first, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}[first]
    return int.from_bytes(buf[pos + 1 : pos + 1 + size], "little"), pos + 1 + size


def _column_name(coldef: bytes) -> str:
    pos = 0
    for _ in range(4):  # catalog, schema, table, original table
        n, pos = read_lenenc(coldef, pos)
        pos += n
    n, pos = read_lenenc(coldef, pos)
    return coldef[pos : pos + n].decode()


class ServerError(Exception):
    def __init__(self, payload: bytes) -> None:
        self.code = struct.unpack_from("<H", payload, 1)[0]
        super().__init__(f"({self.code}) {payload[9:].decode(errors='replace')}")


class CachingClient:
    def __init__(self, host: str, port: int, user: str, password: str, database: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.columns: dict[int, list[str]] = {}  # statement id -> the column names it holds
        self.cache_metadata = False
        self._login(user, password, database)

    # -- packets ---------------------------------------------------------------------

    def _read_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("server closed the connection")
            out += chunk
        return out

    def read(self) -> bytes:
        head = self._read_exact(4)
        self.seq = head[3] + 1
        return self._read_exact(int.from_bytes(head[:3], "little"))

    @staticmethod
    def _packet(payload: bytes, seq: int) -> bytes:
        return len(payload).to_bytes(3, "little") + bytes((seq & 0xFF,)) + payload

    def write(self, payload: bytes, seq: int) -> None:
        self.sock.sendall(self._packet(payload, seq))

    # -- login ----------------------------------------------------------------------

    def _login(self, user: str, password: str, database: str) -> None:
        g = self.read()
        pos = g.index(b"\x00", 1) + 1 + 4
        salt = g[pos : pos + 8]
        pos += 9
        caps = struct.unpack_from("<H", g, pos)[0] | struct.unpack_from("<H", g, pos + 5)[0] << 16
        ext = struct.unpack_from("<I", g, pos + 14)[0] if not caps & CLIENT_MYSQL else 0
        pos += 18
        salt += g[pos : pos + 12]
        self.cache_metadata = bool(ext & CACHE_METADATA_EXT)
        mine = PROTOCOL_41 | TRANSACTIONS | SECURE_CONNECTION | MULTI_RESULTS | PS_MULTI_RESULTS | PLUGIN_AUTH | CONNECT_WITH_DB
        auth = _scramble(password, salt)
        payload = (struct.pack("<IIB", mine, 1 << 24, 45) + b"\x00" * 19
                   + struct.pack("<I", CACHE_METADATA_EXT if self.cache_metadata else 0)
                   + user.encode() + b"\x00" + bytes((len(auth),)) + auth + database.encode() + b"\x00"
                   + b"mysql_native_password\x00")
        self.write(payload, self.seq)
        answer = self.read()
        if answer[:1] == b"\xfe":  # auth switch
            plugin_end = answer.index(b"\x00", 1)
            self.write(_scramble(password, answer[plugin_end + 1 : plugin_end + 21]), self.seq)
            answer = self.read()
        if answer[:1] == b"\xff":
            raise ServerError(answer)

    # -- commands --------------------------------------------------------------------

    def query(self, sql: str) -> list[bytes]:
        """A text-protocol statement: its rows' raw bytes (none for an OK)."""
        self.write(b"\x03" + sql.encode(), 0)
        return self._read_result(None)

    def prepare(self, sql: str) -> int:
        self.write(b"\x16" + sql.encode(), 0)
        return self._read_prepare_answer()

    def _read_prepare_answer(self) -> int:
        ok = self.read()
        if ok[:1] == b"\xff":
            raise ServerError(ok)
        stmt_id, ncols, nparams = struct.unpack_from("<IHH", ok, 1)
        if nparams:
            for _ in range(nparams):
                self.read()
            self.read()  # EOF
        names = []
        if ncols:
            names = [_column_name(self.read()) for _ in range(ncols)]
            self.read()  # EOF
        self.columns[stmt_id] = names
        return stmt_id

    def prepare_and_execute(self, sql: str, *params: int) -> tuple[list[str], list[bytes]] | tuple[int, int]:
        """COM_STMT_PREPARE and COM_STMT_EXECUTE for id -1 in one write, as mariadb_stmt_execute_direct()
        does; then both answers: (names, rows), or when the PREPARE failed, both error codes."""
        self.sock.sendall(self._packet(b"\x16" + sql.encode(), 0) + self._packet(self._execute_payload(LAST, params), 0))
        try:
            stmt_id = self._read_prepare_answer()
        except ServerError as prepare_error:
            try:
                self._read_result(None)
            except ServerError as execute_error:
                return prepare_error.code, execute_error.code
            raise AssertionError("the execute after a failed PREPARE did not fail") from prepare_error
        self.columns[LAST] = self.columns[stmt_id]
        rows = self._read_result(LAST)
        self.columns[stmt_id] = self.columns.pop(LAST)
        return list(self.columns[stmt_id]), rows

    def execute(self, stmt_id: int, *params: int) -> tuple[list[str], list[bytes]]:
        """Column names as the client takes them to be, and each row's raw bytes."""
        self.write(self._execute_payload(stmt_id, params), 0)
        rows = self._read_result(stmt_id)
        return list(self.columns[stmt_id]), rows

    @staticmethod
    def _execute_payload(stmt_id: int, params: tuple[int, ...]) -> bytes:
        out = b"\x17" + struct.pack("<IBI", stmt_id, 0, 1)
        if params:
            out += b"\x00" * ((len(params) + 7) // 8) + b"\x01" + b"\x08\x00" * len(params)
            out += b"".join(struct.pack("<q", p) for p in params)
        return out

    def _read_result(self, stmt_id: int | None) -> list[bytes]:
        first = self.read()
        if first[:1] == b"\xff":
            raise ServerError(first)
        if first[:1] == b"\x00":
            return []
        n, pos = read_lenenc(first, 0)
        follows = first[pos] if self.cache_metadata else 1
        if follows:
            names = [_column_name(self.read()) for _ in range(n)]
            if stmt_id is not None:
                self.columns[stmt_id] = names
        elif stmt_id is None or len(self.columns[stmt_id]) != n:
            raise AssertionError(f"definitions left out, but the client holds {self.columns.get(stmt_id or -1)} for {n} columns")
        self.read()  # EOF after the definitions
        rows = []
        while True:
            p = self.read()
            if p[:1] == b"\xfe" and len(p) < 9:
                return rows
            if p[:1] == b"\xff":
                raise ServerError(p)
            rows.append(p)

    def close(self) -> None:
        try:
            self.write(b"\x01", 0)
        finally:
            self.sock.close()
