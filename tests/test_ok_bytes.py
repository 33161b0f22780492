"""OK, EOF and ERR packets through the proxy are the server's own bytes, for every client.

mysqlnd (PHP) and libmysqlclient read an OK packet strictly: the info text ("Rows matched: 1
Changed: 1 Warnings: 0") is a length-encoded string with or without CLIENT_SESSION_TRACK, and
an OK whose info is off by one byte breaks every UPDATE of a PHP site ("RSET_HEADER packet
additional data length is past ..." then 2014 for the rest of the request). PyMySQL reads the
rest of the packet and would not notice, so this test speaks the protocol itself: the same
statements, from a raw socket with a chosen capability set, direct and through the proxy, and
the response packets compared byte for byte (sequence ids aside).
"""

from __future__ import annotations

import socket

import pytest
from conftest import APP_DB, APP_PASSWORD, APP_USER, MariaDB

from proxy.mysql.auth import client_response
from proxy.mysql.constants import Cap, Command, Status
from proxy.mysql.messages import (
    HandshakeResponse,
    build_handshake_response,
    is_eof,
    parse_auth_switch,
    parse_eof,
    parse_handshake,
    parse_ok,
    read_lenenc_int,
)
from proxy.mysql.packets import PacketReader, frame

BASE_CAPS = (
    Cap.LONG_PASSWORD | Cap.LONG_FLAG | Cap.PROTOCOL_41 | Cap.TRANSACTIONS | Cap.SECURE_CONNECTION
    | Cap.PLUGIN_AUTH | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA | Cap.CONNECT_WITH_DB | Cap.LOCAL_FILES
)

# Capability sets a client may log in with; each changes how OK packets are encoded or what
# they count. (DEPRECATE_EOF is never offered by the proxy, so a client does not get it there.)
CAP_SETS = {
    "plain": BASE_CAPS,
    "session_track": BASE_CAPS | Cap.SESSION_TRACK,
    "multi_results": BASE_CAPS | Cap.MULTI_RESULTS | Cap.MULTI_STATEMENTS | Cap.PS_MULTI_RESULTS,
    "found_rows": BASE_CAPS | Cap.FOUND_ROWS | Cap.MULTI_RESULTS,
    "all": BASE_CAPS | Cap.SESSION_TRACK | Cap.MULTI_RESULTS | Cap.MULTI_STATEMENTS | Cap.FOUND_ROWS,
}

LOCAL_FILE = b"".join(b"%d\tfrom file %d\n" % (i, i) for i in range(100, 105)) + b"bad\n"

SETUP = [
    "DROP TABLE IF EXISTS ok_bytes, ok_bytes_copy",
    "CREATE TABLE ok_bytes (id INT PRIMARY KEY, v VARCHAR(8), n INT NOT NULL DEFAULT 0)",
    "CREATE TABLE ok_bytes_copy LIKE ok_bytes",
]

# Statements whose answer carries info text, warnings, affected rows or an error.
STATEMENTS = [
    "INSERT INTO ok_bytes (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')",  # "Records: 3  Duplicates: 0 ..."
    "INSERT INTO ok_bytes (id, v) VALUES (4, 'd')",  # no info
    "UPDATE ok_bytes SET n = n + 1 WHERE id <= 2",  # "Rows matched: 2  Changed: 2 ..."
    "UPDATE ok_bytes SET n = n WHERE id <= 3",  # matched 3, changed 0: FOUND_ROWS decides affected
    "INSERT INTO ok_bytes_copy SELECT * FROM ok_bytes",  # INSERT ... SELECT
    "INSERT IGNORE INTO ok_bytes (id, v) VALUES (1, 'dup'), (9, 'toolongvalue')",  # duplicates + warnings
    "INSERT INTO ok_bytes (id, v) VALUES (1, 'dup')",  # ERR 1062
    "INSERT INTO ok_bytes (id, v) VALUES (5, 'e') ON DUPLICATE KEY UPDATE n = 7",
    "REPLACE INTO ok_bytes (id, v) VALUES (2, 'B'), (6, 'f')",
    "LOAD DATA LOCAL INFILE 'ok_bytes.tsv' IGNORE INTO TABLE ok_bytes (id, v)",  # "Records: 6 ..." + warning
    "ALTER TABLE ok_bytes ADD COLUMN extra INT",  # "Records: 0  Duplicates: 0  Warnings: 0"
    "DELETE FROM ok_bytes WHERE id > 100",
    "SELECT 1/0",  # EOF with a warning
    "SELECT id, v FROM ok_bytes ORDER BY id",
    "SELECT * FROM no_such_table",  # ERR 1146
    "SELEKT 1",  # ERR 1064
    "DO 1",
    # MySQL reports the transaction's state to every session (tracker OFF or not): kept for the client.
    "BEGIN",
    "UPDATE ok_bytes SET n = n + 1 WHERE id = 1",
    "COMMIT",
]
MULTI = "UPDATE ok_bytes SET n = 0 WHERE id = 1; INSERT INTO ok_bytes (id) VALUES (50), (51); SELECT COUNT(*) FROM ok_bytes"


class Raw:
    """A blocking socket that logs in with exactly ``caps`` (those the server offers) and records answers."""

    def __init__(self, host: str, port: int, caps: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=20)
        self.reader = PacketReader()
        self.queue: list[tuple[int, bytes]] = []
        _, greeting = self.read()
        hs = parse_handshake(greeting)
        self.caps = caps & (hs.capabilities & 0xFFFFFFFF)
        resp = HandshakeResponse(self.caps, 1 << 24, 45, APP_USER,
                                 client_response(hs.auth_plugin, APP_PASSWORD, hs.scramble), APP_DB, hs.auth_plugin)
        self.sock.sendall(frame(build_handshake_response(resp), 1))
        while True:
            seq, p = self.read()
            if p[0] == 0xFE:  # auth switch
                plugin, scramble = parse_auth_switch(p)
                self.sock.sendall(frame(client_response(plugin, APP_PASSWORD, scramble), seq + 1))
            elif p[0] == 0x01 and p[1:] == b"\x03":  # caching_sha2 fast auth success: the OK follows
                continue
            elif p[0] == 0x00:
                return
            else:
                raise AssertionError(f"login failed: {p!r}")

    def read(self) -> tuple[int, bytes]:
        while not self.queue:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.queue += self.reader.feed(data)
        return self.queue.pop(0)

    def query(self, sql: str) -> list[bytes]:
        """Every packet of the response, in order, with a LOCAL INFILE request answered."""
        self.sock.sendall(frame(bytes((Command.QUERY,)) + sql.encode(), 0))
        out: list[bytes] = []
        while True:  # one result per turn
            seq, p = self.read()
            out.append(p)
            if p[0] == 0xFB:  # LOCAL INFILE: the file, then an empty packet; an OK / ERR follows
                self.sock.sendall(frame(LOCAL_FILE, seq + 1) + frame(b"", seq + 2))
                seq, p = self.read()
                out.append(p)
            if p[0] == 0xFF:
                return out
            if p[0] == 0x00:
                status = parse_ok(p, self.caps).status
            else:  # a result set: column definitions, EOF, rows, EOF
                n, _ = read_lenenc_int(p, 0)
                for _ in range(n or 0):
                    out.append(self.read()[1])
                out.append(self.read()[1])  # EOF after the definitions
                while True:
                    _, row = self.read()
                    out.append(row)
                    if row[0] == 0xFF:
                        return out
                    if is_eof(row, len(row)):
                        status = parse_eof(row)[1]
                        break
            if not status & Status.MORE_RESULTS_EXISTS:
                return out

    def close(self) -> None:
        self.sock.close()


def _script(host: str, port: int, caps: int) -> list[list[bytes]]:
    c = Raw(host, port, caps)
    try:
        for sql in SETUP:
            c.query(sql)
        answers = [c.query(sql) for sql in STATEMENTS]
        if c.caps & Cap.MULTI_STATEMENTS:
            answers.append(c.query(MULTI))
        return answers
    finally:
        c.close()


@pytest.fixture
def proxy_1(proxy_factory) -> tuple[str, int]:
    p = proxy_factory({"pool": {"max_connections": 2}})
    return p.host, p.port


@pytest.mark.parametrize("caps_name", list(CAP_SETS))
def test_ok_eof_err_bytes_match_the_server(caps_name: str, mariadb: MariaDB, proxy_1: tuple[str, int]) -> None:
    caps = CAP_SETS[caps_name]
    direct = _script(mariadb.host, mariadb.port, caps)
    through = _script(*proxy_1, caps)
    assert len(direct) == len(through)
    # The statements did what they were meant to: info texts, warnings and errors are there to compare.
    flat = [p for answer in direct for p in answer]
    assert any(b"Rows matched: 2" in p for p in flat) and any(b"Records: 3" in p for p in flat)
    assert any(p[:3] == b"\xff\x26\x04" for p in flat)  # 1062 duplicate entry
    assert any(p[0] == 0x00 and parse_ok(p, caps).warnings for p in flat)
    for sql, d, t in zip(STATEMENTS + [MULTI], direct, through):
        assert t == d, f"{caps_name}: {sql!r}\n direct: {d!r}\n  proxy: {t!r}"
    if caps & Cap.MULTI_STATEMENTS:
        assert len(direct[-1]) > 2  # the multi-statement gave several results


def test_ok_info_is_length_encoded_for_every_client(mariadb: MariaDB, proxy_1: tuple[str, int]) -> None:
    """What mysqlnd checks: the byte after the warnings is the info's length, and the packet ends there."""
    for caps in (BASE_CAPS, BASE_CAPS | Cap.SESSION_TRACK):
        c = Raw(*proxy_1, caps)
        try:
            for sql in SETUP:
                c.query(sql)
            c.query("INSERT INTO ok_bytes (id) VALUES (1), (2)")
            [ok] = c.query("UPDATE ok_bytes SET n = 1")
        finally:
            c.close()
        info = b"Rows matched: 2  Changed: 2  Warnings: 0"
        assert ok[7] == len(info) and ok[8:] == info, ok
