"""Authentication scrambles (proxy.mysql.auth) checked against PyMySQL, an independent client.

Three kinds of evidence: PyMySQL's own scramble functions computed on the same
inputs, a real PyMySQL login against a one-shot fake server whose greeting the
proxy built (the response it sends must verify), and the private MariaDB
accepting a response computed by the proxy.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from typing import Any

import pymysql
import pytest
from conftest import APP_DB, APP_PASSWORD, APP_USER, SERVER, MariaDB, ProxyFactory
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from pymysql import _auth as pymysql_auth

from proxy.mysql import auth
from proxy.mysql.constants import BACKEND_CAPS, SERVER_CAPS, Cap, Status
from proxy.mysql.messages import (
    Handshake,
    HandshakeResponse,
    build_err,
    build_handshake,
    build_handshake_response,
    parse_handshake,
    parse_handshake_response,
)
from proxy.mysql.packets import PacketReader, ProtocolError, frame

FAST = settings(max_examples=200, deadline=None)

SCRAMBLE = b"0123456789abcdefghij"  # 20 bytes, as servers send

_PASSWORDS = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)


# --------------------------------------------------------------------------- scrambles


def test_native_known_vector() -> None:
    # SHA1(pw) XOR SHA1(scramble + SHA1(SHA1(pw))), spelled out.
    stage1 = hashlib.sha1(b"secret").digest()
    stage2 = hashlib.sha1(stage1).digest()
    mask = hashlib.sha1(SCRAMBLE + stage2).digest()
    expected = bytes(a ^ b for a, b in zip(stage1, mask))
    assert auth.native_scramble("secret", SCRAMBLE) == expected
    assert expected == pymysql_auth.scramble_native_password(b"secret", SCRAMBLE)
    assert len(expected) == 20


def test_caching_sha2_known_vector() -> None:
    p1 = hashlib.sha256(b"secret").digest()
    p3 = hashlib.sha256(hashlib.sha256(p1).digest() + SCRAMBLE).digest()
    expected = bytes(a ^ b for a, b in zip(p1, p3))
    assert auth.sha2_scramble("secret", SCRAMBLE) == expected
    assert expected == pymysql_auth.scramble_caching_sha2(b"secret", SCRAMBLE)
    assert len(expected) == 32


@FAST
@given(_PASSWORDS, st.binary(min_size=20, max_size=20))
def test_scrambles_match_pymysql(password: str, scramble: bytes) -> None:
    pw = password.encode()
    assert auth.native_scramble(password, scramble) == pymysql_auth.scramble_native_password(pw, scramble)
    assert auth.sha2_scramble(password, scramble) == pymysql_auth.scramble_caching_sha2(pw, scramble)
    assert auth.client_response(auth.NATIVE, password, scramble) == auth.native_scramble(password, scramble)
    assert auth.client_response(auth.CACHING_SHA2, password, scramble) == auth.sha2_scramble(password, scramble)


def test_a_21st_byte_is_ignored() -> None:
    # The greeting's part 2 ends with a NUL some code keeps: it must not change the result.
    assert auth.native_scramble("pw", SCRAMBLE + b"\x00") == auth.native_scramble("pw", SCRAMBLE)
    assert auth.sha2_scramble("pw", SCRAMBLE + b"\x00") == auth.sha2_scramble("pw", SCRAMBLE)


def test_empty_password_sends_nothing() -> None:
    assert auth.native_scramble("", SCRAMBLE) == b""
    assert auth.sha2_scramble("", SCRAMBLE) == b""
    assert pymysql_auth.scramble_native_password(b"", SCRAMBLE) == b""


def test_clear_and_unknown_plugins() -> None:
    assert auth.client_response(auth.CLEAR, "pw", SCRAMBLE) == b"pw\x00"
    with pytest.raises(ValueError, match="client_ed25519"):
        auth.client_response("client_ed25519", "pw", SCRAMBLE)


# --------------------------------------------------------------------------- verify


@FAST
@given(_PASSWORDS, _PASSWORDS, st.binary(min_size=20, max_size=20), st.sampled_from([auth.NATIVE, auth.CACHING_SHA2]))
def test_verify_right_and_wrong(password: str, other: str, scramble: bytes, plugin: str) -> None:
    right = auth.client_response(plugin, password, scramble)
    assert auth.verify(plugin, password, scramble, right)
    assert auth.verify(plugin, other, scramble, right) == (other == password)
    assert not auth.verify(plugin, password, scramble, b"")
    assert not auth.verify(plugin, password, scramble, right[:-1])
    assert not auth.verify(plugin, password, bytes(x ^ 1 for x in scramble), right)  # bound to this scramble
    # The other plugin's answer never passes.
    wrong_plugin = auth.CACHING_SHA2 if plugin == auth.NATIVE else auth.NATIVE
    assert not auth.verify(wrong_plugin, password, scramble, right)


def test_verify_empty_password() -> None:
    for plugin in (auth.NATIVE, auth.CACHING_SHA2):
        assert auth.verify(plugin, "", SCRAMBLE, b"")
        assert auth.verify(plugin, "", SCRAMBLE, b"\x00")  # some clients send a lone NUL
        assert not auth.verify(plugin, "", SCRAMBLE, auth.native_scramble("x", SCRAMBLE))
        assert not auth.verify(plugin, "", SCRAMBLE, b"\x00\x00")
        assert not auth.verify(plugin, "x", SCRAMBLE, b"")  # a password is set: an empty answer is wrong
        assert not auth.verify(plugin, "x", SCRAMBLE, b"\x00")


def test_verify_unknown_plugin_is_refused() -> None:
    assert not auth.verify(auth.CLEAR, "pw", SCRAMBLE, b"pw\x00")
    assert not auth.verify("client_ed25519", "", SCRAMBLE, b"")


def test_new_scramble() -> None:
    seen = set()
    for _ in range(300):
        s = auth.new_scramble()
        assert len(s) == auth.SCRAMBLE_LEN == 20
        assert b"\x00" not in s and b"$" not in s
        assert all(b < 0x80 for b in s)
        seen.add(s)
    assert len(seen) == 300  # random, not a constant


# --------------------------------------------------------------------------- RSA (caching_sha2 full auth)


def test_rsa_encrypt_password_decrypts_to_password_xor_scramble() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    password = "a longer password than the 20-byte scramble"
    blob = auth.rsa_encrypt_password(password, SCRAMBLE, pem)
    plain = key.decrypt(blob, padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
    mask = (SCRAMBLE * 3)[: len(plain)]
    assert bytes(a ^ b for a, b in zip(plain, mask)) == password.encode() + b"\x00"
    # PyMySQL's implementation produces a blob the same key decrypts to the same bytes.
    theirs = pymysql_auth.sha2_rsa_encrypt(password.encode(), SCRAMBLE, pem)
    assert key.decrypt(theirs, padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)) == plain


def test_rsa_with_a_key_that_is_no_key_is_a_protocol_error() -> None:
    """A login that cannot be done is a ProtocolError (reported once by the pool), never a bare traceback."""
    with pytest.raises(ProtocolError, match="RSA public key"):
        auth.rsa_encrypt_password("pw", SCRAMBLE, b"-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")


@pytest.mark.skipif(not SERVER.mysql, reason="MySQL only: MariaDB has no caching_sha2_password accounts")
def test_backend_caching_sha2_full_auth_over_rsa(mariadb: MariaDB, proxy_factory: ProxyFactory) -> None:
    """A MySQL 9 account (caching_sha2_password) whose password the server has not cached: the
    proxy's link takes the full path, over RSA since the server offers no TLS here."""
    user = mariadb.make_user("sha2_full", "full-secret")
    assert mariadb.sql("SELECT plugin FROM mysql.user WHERE user = %s", (user,))[0][0] == auth.CACHING_SHA2
    assert mariadb.sql("SELECT @@tls_version")[0][0] == ""  # no TLS: the password can only travel RSA-encrypted
    mariadb.sql("FLUSH PRIVILEGES")  # empties the server's cache of verified passwords
    p = proxy_factory({"backend": {"user": user, "password": "full-secret"}})
    conn = p.connect(user=user, password="full-secret")
    with conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone() == (f"{user}@%",)


# --------------------------------------------------------------------------- a real client


def pymysql_login_response(plugin: str, **connect: Any) -> tuple[bytes, bytes]:
    """Let PyMySQL log in to a one-shot fake server; returns (our greeting's scramble, its response payload)."""
    scramble = auth.new_scramble()
    greeting = build_handshake(Handshake("5.7.99-test", 77, scramble, SERVER_CAPS, 45, Status.AUTOCOMMIT, plugin))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(10)
            conn.sendall(frame(greeting, 0))
            reader = PacketReader()
            out: list[tuple[int, bytes]] = []
            while not out:
                data = conn.recv(65536)
                if not data:
                    return
                out = reader.feed(data)
            got.append(out[0][1])
            conn.sendall(frame(build_err(1045, "captured, not checked"), out[0][0] + 1))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with pytest.raises(pymysql.err.OperationalError) as ei:
            pymysql.connect(host="127.0.0.1", port=srv.getsockname()[1], connect_timeout=10, **connect)
        assert ei.value.args[0] == 1045
    finally:
        t.join(10)
        srv.close()
    assert got, "PyMySQL sent no handshake response"
    return scramble, got[0]


@pytest.mark.parametrize("plugin", [auth.NATIVE, auth.CACHING_SHA2])
def test_pymysql_login_verifies(plugin: str) -> None:
    # ASCII password: PyMySQL encodes a str password as latin-1, the proxy (like the server) as UTF-8.
    scramble, payload = pymysql_login_response(plugin, user="alice", password="s3cret!", database="shop")
    r = parse_handshake_response(payload)
    assert r.user == "alice"
    assert r.database == "shop"
    assert r.auth_plugin == plugin
    assert r.capabilities & Cap.PROTOCOL_41 and r.capabilities & Cap.CONNECT_WITH_DB
    assert r.attrs.get("_client_name") == "pymysql"  # connect attributes parsed
    assert auth.verify(plugin, "s3cret!", scramble, r.auth_response)
    assert not auth.verify(plugin, "s3cret", scramble, r.auth_response)


def test_pymysql_login_without_password_or_database() -> None:
    scramble, payload = pymysql_login_response(auth.NATIVE, user="bob", password="")
    r = parse_handshake_response(payload)
    assert (r.user, r.database, r.auth_response) == ("bob", None, b"")
    assert auth.verify(auth.NATIVE, "", scramble, r.auth_response)
    assert not auth.verify(auth.NATIVE, "pw", scramble, r.auth_response)


def _login(db: MariaDB, password: str) -> bytes:
    """Raw login to the private server with a response the proxy computed; returns the reply payload."""
    with socket.create_connection((db.host, db.port), timeout=10) as s:
        reader = PacketReader()
        got: list[tuple[int, bytes]] = []

        def read() -> bytes:
            while not got:
                got.extend(reader.feed(s.recv(65536)))
            return got.pop(0)[1]

        hs = parse_handshake(read())
        resp = HandshakeResponse(BACKEND_CAPS & hs.capabilities, 1 << 24, 45, APP_USER,
                                 auth.client_response(hs.auth_plugin, password, hs.scramble), APP_DB, hs.auth_plugin)
        s.sendall(frame(build_handshake_response(resp), 1))
        return read()


@pytest.mark.skipif(SERVER.mysql, reason="MySQL 9 has no mysql_native_password accounts; "
                    "test_backend_caching_sha2_full_auth_over_rsa covers its login")
def test_real_server_accepts_native_scramble(mariadb: MariaDB) -> None:
    assert _login(mariadb, APP_PASSWORD)[0] == 0x00  # OK
    reply = _login(mariadb, APP_PASSWORD + "x")
    assert reply[0] == 0xFF and int.from_bytes(reply[1:3], "little") == 1045
