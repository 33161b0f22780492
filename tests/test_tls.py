"""TLS from the proxy to the server (backend.tls), against a private MariaDB that offers TLS.

The server here is a second private MariaDB, started with a certificate for 127.0.0.1 from a
throwaway CA (tests/tls_certs.py). The session's main server offers no TLS, which the
'required' test uses. Every check looks at what the server itself saw: its Ssl_cipher for the
link's session, and accounts created REQUIRE SSL / REQUIRE X509 that it refuses without.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
import yaml

import mariadb_server
from conftest import APP_DB, APP_PASSWORD, APP_USER, REPO_ROOT, MariaDB, ProxyFactory, recv_packet, run_cli
from tls_certs import TlsFiles, make_tls_files

from proxy.backend import LINK_FACTS, open_link
from proxy.config import BackendConfig
from proxy.mysql import auth
from proxy.mysql.constants import SERVER_CAPS, Cap, Status
from proxy.mysql.messages import (
    AUTH_MORE_DATA,
    OK,
    Handshake,
    HandshakeResponse,
    build_auth_switch,
    build_handshake,
    build_handshake_response,
    build_ok,
    build_result_set,
    parse_handshake,
    parse_handshake_response,
)
from proxy.mysql.packets import ProtocolError, frame
from proxy.tls import backend_context

SSL_USER, SSL_PASSWORD = "ssl_app", "ssl-secret"
X509_USER, X509_PASSWORD = "x509_app", "x509-secret"
POOL_BUSY = 9001


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tls_files: TlsFiles) -> Iterator[MariaDB]:
    """A private MariaDB that offers TLS, with three accounts: app (no TLS needed), ssl_app
    (REQUIRE SSL) and x509_app (REQUIRE X509: a client certificate its CA signed)."""
    try:
        db = MariaDB.launch(prefix="mpp-mariadb-tls-", hint=mariadb_server.INSTALL_HINT,
                            tls_files=(tls_files.ca, tls_files.server_cert, tls_files.server_key))
    except mariadb_server.ServerError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        # (@@have_ssl is gone from MySQL 8.4: a TLS session of root's own says it on every server)
        root = db.root_conn(host=db.host, ssl={"ca": tls_files.ca})
        try:
            assert _link_cipher(root), "the TLS test server does not offer TLS"
        finally:
            root.close()
        db.make_account(APP_USER, APP_PASSWORD, APP_DB)
        for user, password, require in ((SSL_USER, SSL_PASSWORD, "SSL"), (X509_USER, X509_PASSWORD, "X509")):
            db.create_user(user, password, APP_DB)
            db.sql(f"ALTER USER %s@'%%' REQUIRE {require}", (user,))
        yield db
    finally:
        db.remove()


def _backend(server: MariaDB, user: str = APP_USER, password: str = APP_PASSWORD, **tls: Any) -> dict[str, Any]:
    return {"backend": {"host": server.host, "port": server.port, "user": user, "password": password, **tls}}


def _link_cipher(conn: pymysql.connections.Connection) -> str:
    """The TLS cipher of the server session that ran this statement ('' without TLS)."""
    with conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        return str(cur.fetchone()[1])


def _query_error(proxy: Any, **kw: Any) -> pymysql.err.OperationalError:
    with pytest.raises(pymysql.err.OperationalError) as info:
        conn = proxy.connect(**kw)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    return info.value


def test_required_encrypts_every_link(tls_server: MariaDB, proxy_factory: ProxyFactory) -> None:
    p = proxy_factory(_backend(tls_server, SSL_USER, SSL_PASSWORD, tls="required") | {
        "users": [{"user": APP_USER, "password": APP_PASSWORD}],
        "pool": {"max_connections": 2, "queue_timeout": 10}})
    conns = [p.connect() for _ in range(4)]
    for conn in conns:
        assert _link_cipher(conn), "the server saw a link without TLS"
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone()[0] == f"{SSL_USER}@%"
    # The account is REQUIRE SSL, so every link the server holds for it is encrypted; and the cap holds.
    rows = tls_server.sql(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (SSL_USER,))
    assert 1 <= rows[0][0] <= 2


def test_verify_identity_with_the_right_ca(tls_server: MariaDB, tls_files: TlsFiles,
                                           proxy_factory: ProxyFactory) -> None:
    p = proxy_factory(_backend(tls_server, tls="verify_identity", tls_ca=tls_files.ca)
                      | {"admin": {"user": "admin", "password": "admin-pw"}})
    conn = p.connect()
    assert _link_cipher(conn)
    admin = p.connect(user="admin", password="admin-pw", database=None)
    with admin.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute("SHOW BACKENDS")
        backends = cur.fetchall()
        cur.execute("SHOW CONFIG")
        config = {r["key"]: r["value"] for r in cur.fetchall()}
    assert backends and all(int(b["tls"]) == 1 for b in backends)
    assert config["backend.tls_mode"] == "verify_identity"


def test_an_unknown_ca_is_refused_with_the_reason(tls_server: MariaDB, tls_files: TlsFiles,
                                                  proxy_factory: ProxyFactory) -> None:
    p = proxy_factory(_backend(tls_server, tls="verify_ca", tls_ca=tls_files.other_ca)
                      | {"pool": {"queue_timeout": 1.5, "max_connections": 2}})
    err = _query_error(p)
    assert err.args[0] == POOL_BUSY
    assert "certificate verify failed" in err.args[1]
    assert tls_server.sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s", (APP_USER,))[0][0] == 0
    log = p.wait_log("certificate verify failed")
    # Logged once, when the failures start; the retries that follow are not each logged.
    assert log.count("cannot connect to the server") == 1


def test_verify_identity_checks_the_host_name(tls_server: MariaDB, tls_files: TlsFiles,
                                              proxy_factory: ProxyFactory) -> None:
    # The certificate names 127.0.0.1 only; the same server reached as 'localhost' is not it.
    cfg = _backend(tls_server, tls="verify_identity", tls_ca=tls_files.ca)
    cfg["backend"]["host"] = "localhost"
    p = proxy_factory(cfg | {"pool": {"queue_timeout": 1.5}})
    err = _query_error(p)
    assert err.args[0] == POOL_BUSY
    assert "localhost" in err.args[1] and "certificate verify failed" in err.args[1]
    # verify_ca trusts the same chain without the name check.
    cfg["backend"]["tls"] = "verify_ca"
    assert _link_cipher(proxy_factory(cfg).connect())


def test_client_certificate_for_require_x509(tls_server: MariaDB, tls_files: TlsFiles,
                                             proxy_factory: ProxyFactory) -> None:
    users = {"users": [{"user": APP_USER, "password": APP_PASSWORD}], "pool": {"queue_timeout": 1.5}}
    without = proxy_factory(_backend(tls_server, X509_USER, X509_PASSWORD, tls="verify_ca", tls_ca=tls_files.ca) | users)
    err = _query_error(without)
    assert err.args[0] == POOL_BUSY and "1045" in err.args[1]  # the server's access denied, passed on
    with_cert = proxy_factory(_backend(tls_server, X509_USER, X509_PASSWORD, tls="verify_ca", tls_ca=tls_files.ca,
                                       tls_cert=tls_files.client_cert, tls_key=tls_files.client_key) | users)
    conn = with_cert.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone()[0] == f"{X509_USER}@%"
    assert _link_cipher(conn)


def test_loopback_defaults_to_plain_and_required_needs_a_tls_server(
        tls_server: MariaDB, mariadb: MariaDB, proxy_factory: ProxyFactory) -> None:
    # Unset on loopback: no TLS (it would cost CPU and protect nothing), even where it is offered.
    assert _link_cipher(proxy_factory(_backend(tls_server)).connect()) == ""
    # 'preferred' takes TLS where the server offers it ...
    assert _link_cipher(proxy_factory(_backend(tls_server, tls="preferred")).connect())
    # ... and goes on without it where it does not.
    assert _link_cipher(proxy_factory(_backend(mariadb, tls="preferred")).connect()) == ""
    # 'required' never falls back to plain text.
    p = proxy_factory(_backend(mariadb, tls="required") | {"pool": {"queue_timeout": 1.5}})
    err = _query_error(p)
    assert err.args[0] == POOL_BUSY and "does not offer TLS" in err.args[1]


def test_reload_applies_new_tls_settings(tls_server: MariaDB, proxy_factory: ProxyFactory) -> None:
    users = {"users": [{"user": APP_USER, "password": APP_PASSWORD}], "pool": {"queue_timeout": 1.5}}
    p = proxy_factory(_backend(tls_server, SSL_USER, SSL_PASSWORD) | users)
    err = _query_error(p)  # loopback default: plain text, which a REQUIRE SSL account is refused
    assert "1045" in err.args[1]
    p.rewrite_config({"backend": {"tls": "required"}})
    p.reload()
    p.wait_log("config reloaded")
    assert _link_cipher(p.connect())


def test_a_killed_idle_tls_link_is_replaced_unnoticed(tls_server: MariaDB, proxy_factory: ProxyFactory) -> None:
    # The idle watch over TLS: the server's goodbye arrives encrypted, and the link still goes at once.
    p = proxy_factory(_backend(tls_server, SSL_USER, SSL_PASSWORD, tls="required")
                      | {"users": [{"user": APP_USER, "password": APP_PASSWORD}], "pool": {"max_connections": 1}})
    conn = p.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")  # (the proxy's id for this client)
    assert tls_server.kill_user_connections(SSL_USER) >= 1  # (links of earlier tests may still be closing)
    p.wait_log("was closed by the server; removed")
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    assert _link_cipher(conn)


def test_mariadb_cli_through_a_tls_backend(tls_server: MariaDB, tls_files: TlsFiles,
                                           proxy_factory: ProxyFactory) -> None:
    p = proxy_factory(_backend(tls_server, SSL_USER, SSL_PASSWORD, tls="verify_identity", tls_ca=tls_files.ca)
                      | {"users": [{"user": APP_USER, "password": APP_PASSWORD}]})
    code, out, err = run_cli(p.port, APP_USER, APP_PASSWORD,
                             "SHOW SESSION STATUS LIKE 'Ssl_version'; SELECT CURRENT_USER()", APP_DB)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("Ssl_version\tTLSv1.")
    assert lines[1] == f"{SSL_USER}@%"


# -- configuration -------------------------------------------------------------------


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", "check", "-c", str(path)], capture_output=True,
                          text=True, timeout=30, cwd=REPO_ROOT)


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ({"tls": "on"}, "backend.tls: must be one of disabled, preferred, required, verify_ca, verify_identity"),
        ({"tls": "required", "tls_ca": "CA"}, "backend.tls_ca: only verify_ca and verify_identity check"),
        ({"tls": "required", "tls_cert": "CERT"}, "backend.tls_cert: give tls_cert and tls_key together"),
        ({"tls": "verify_ca", "tls_ca": "/nonexistent/ca.pem"}, "backend.tls_ca: cannot read /nonexistent/ca.pem"),
        ({"tls": "disabled", "tls_cert": "CERT", "tls_key": "KEY"}, "backend.tls_cert: set, but TLS to the server is disabled"),
        ({"tls": "verify_identity", "unix_socket": "/run/mysqld/mysqld.sock"}, "backend.tls: verify_identity checks"),
        ({"tls": "verify_ca", "tls_ca": "NOT_PEM"}, "backend.tls_ca: cannot load"),
    ],
)
def test_check_names_the_tls_key(tmp_path: Path, tls_files: TlsFiles, backend: dict[str, str], message: str) -> None:
    (tmp_path / "not.pem").write_text("not a certificate\n")
    files = {"CA": tls_files.ca, "CERT": tls_files.client_cert, "KEY": tls_files.client_key,
             "NOT_PEM": str(tmp_path / "not.pem")}
    backend = {k: files.get(v, v) for k, v in backend.items()}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"backend": {"user": "app", "password": "x", **backend}}))
    result = _check(cfg)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    ("backend", "mode"),
    [
        ({"host": "127.0.0.1"}, "disabled"),
        ({"host": "localhost"}, "disabled"),
        ({"unix_socket": "/run/mysqld/mysqld.sock"}, "disabled"),
        ({"host": "db.example.com"}, "preferred"),
        ({"host": "10.1.2.3"}, "preferred"),
        ({"host": "db.example.com", "tls_ca": "CA"}, "verify_ca"),
        ({"host": "127.0.0.1", "tls": "required"}, "required"),
    ],
)
def test_check_prints_the_tls_mode_in_force(tmp_path: Path, tls_files: TlsFiles, backend: dict[str, str], mode: str) -> None:
    backend = {k: tls_files.ca if v == "CA" else v for k, v in backend.items()}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"backend": {"user": "app", "password": "x", **backend}}))
    result = _check(cfg)
    assert result.returncode == 0, result.stderr
    assert f"(tls {mode})" in result.stdout


# -- password plugins that need TLS ------------------------------------------------------
# MariaDB has no caching_sha2_password and asks for a clear password only through PAM, so these
# run open_link against a small TLS server of the test's own that plays MySQL 8's part.

FAKE_PASSWORD = "pässword-1"
# What the fake server answers when the proxy reads a new link's facts (proxy/backend.py LINK_FACTS).
_FAKE_FACTS = {
    "character_set_client": "utf8mb4",
    "character_set_connection": "utf8mb4",
    "character_set_results": "utf8mb4",
    "collation_connection": "utf8mb4_general_ci",
    "wait_timeout": "28800",
    "max_allowed_packet": "67108864",
}


def _fake_mysql8(tls_files: TlsFiles | None, ask: str, seen: list[bytes]) -> tuple[int, threading.Thread]:
    """A one-connection server that asks for the password in the clear, on a thread of its own.

    With ``tls_files`` it offers TLS first and asks as MySQL 8 does: ``ask`` is 'full_auth'
    (caching_sha2_password with a cold cache) or 'clear_switch' (an auth switch to
    mysql_clear_password). Without, it switches to mysql_clear_password in plain text.
    ``seen`` gets what the client sent after the request (b"" if it closed instead)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        conn, _ = listener.accept()
        listener.close()
        conn.settimeout(10)
        sock: socket.socket | ssl.SSLSocket = conn
        caps = SERVER_CAPS | Cap.SESSION_TRACK | Cap.PLUGIN_AUTH | (Cap.SSL if tls_files else 0)
        plugin = auth.CACHING_SHA2 if tls_files else auth.NATIVE
        sock.sendall(frame(build_handshake(Handshake("8.0.36", 7, b"s" * 20, caps, 45, Status.AUTOCOMMIT, plugin)), 0))
        seq, payload = recv_packet(sock)
        if tls_files:
            assert seq == 1 and len(payload) == 32 and int.from_bytes(payload[:4], "little") & Cap.SSL
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls_files.server_cert, tls_files.server_key)
            sock = context.wrap_socket(conn, server_side=True)
            seq, payload = recv_packet(sock)
            assert seq == 2 and parse_handshake_response(payload).capabilities & Cap.SSL
        if ask == "full_auth":
            sock.sendall(frame(bytes((AUTH_MORE_DATA, auth.FULL_AUTH_NEEDED)), seq + 1))
        else:
            sock.sendall(frame(build_auth_switch(auth.CLEAR, b""), seq + 1))
        try:
            seq, password = recv_packet(sock)
        except ConnectionError:
            seen.append(b"")
            return
        seen.append(password)
        sock.sendall(frame(build_ok(OK(status=Status.AUTOCOMMIT), caps), seq + 1))
        # The link's setup: the tracker settings, then the facts it reads.
        recv_packet(sock)
        recv_packet(sock)
        sock.sendall(frame(build_ok(OK(status=Status.AUTOCOMMIT), caps), 1))
        asked = [name.decode() for name in re.findall(rb"@@(\w+)", LINK_FACTS)]
        row = [_FAKE_FACTS.get(name, "") for name in asked]  # whatever facts the proxy reads, in its order
        payloads = build_result_set([f"c{i}" for i in range(len(row))], [row], Status.AUTOCOMMIT, caps)
        sock.sendall(b"".join(frame(p, i + 1) for i, p in enumerate(payloads)))
        sock.recv(100)  # COM_QUIT, then the close
        sock.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


@pytest.mark.parametrize("ask", ["full_auth", "clear_switch"])
async def test_password_goes_in_the_clear_only_over_tls(tls_files: TlsFiles, ask: str) -> None:
    seen: list[bytes] = []
    port, thread = _fake_mysql8(tls_files, ask, seen)
    cfg = BackendConfig(host="127.0.0.1", port=port, user="app", password=FAKE_PASSWORD, tls="verify_identity",
                        tls_ca=tls_files.ca)
    link = await open_link(cfg, kind=0, timeout=10, tls=backend_context(cfg))
    assert link.tls and link.facts.wait_timeout == 28800
    link.close()
    await asyncio.to_thread(thread.join, 10)
    assert seen == [FAKE_PASSWORD.encode() + b"\x00"]


async def test_clear_password_is_refused_without_tls() -> None:
    seen: list[bytes] = []
    port, thread = _fake_mysql8(None, "clear_switch", seen)
    cfg = BackendConfig(host="127.0.0.1", port=port, user="app", password=FAKE_PASSWORD)
    with pytest.raises(ProtocolError, match="clear-text password; refused without TLS"):
        await open_link(cfg, kind=0, timeout=10, tls=backend_context(cfg))
    await asyncio.to_thread(thread.join, 10)
    assert seen == [b""]  # the link was closed; the password never went out


# -- TLS from clients to the proxy (listen.tls_cert) ------------------------------------------


def _listen_tls(tls_files: TlsFiles, **more: Any) -> dict[str, Any]:
    return {"listen": {"tls_cert": tls_files.server_cert, "tls_key": tls_files.server_key, **more}}


def _tls_client(p: Any, tls_files: TlsFiles, **kw: Any) -> pymysql.connections.Connection:
    return p.connect(ssl={"ca": tls_files.ca, "check_hostname": True}, **kw)


def test_clients_over_tls(tls_files: TlsFiles, proxy_factory: ProxyFactory) -> None:
    p = proxy_factory(_listen_tls(tls_files) | {"pool": {"max_connections": 2},
                                                 "admin": {"user": "admin", "password": "admin-pw"}})
    conns = [_tls_client(p, tls_files) for _ in range(6)]  # more clients than links: they share them
    for i, conn in enumerate(conns):
        assert conn._sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]
        with conn.cursor() as cur:
            cur.execute("SELECT %s, REPEAT('x', 100000)", (i,))
            n, big = cur.fetchone()
            assert n == i and big == "x" * 100000
    # A large result over TLS: many records, the relay's back-pressure in between.
    with conns[0].cursor() as cur:
        cur.execute("SELECT seq, REPEAT('y', 200) FROM seq_1_to_50000")
        rows = cur.fetchall()
    assert len(rows) == 50000 and rows[-1] == (50000, "y" * 200)
    # Plain-text clients are served alongside.
    plain = p.connect(ssl_disabled=True)
    with plain.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    admin = p.connect(user="admin", password="admin-pw", database=None, ssl_disabled=True)
    with admin.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute("SHOW CLIENTS")
        tls_by_client = sorted(int(r["tls"]) for r in cur.fetchall() if r["user"] == APP_USER)
    assert tls_by_client == [0] + [1] * 6


def test_reload_serves_a_renewed_certificate(tls_files: TlsFiles, proxy_factory: ProxyFactory,
                                             tmp_path: Path) -> None:
    p = proxy_factory(_listen_tls(tls_files))
    before = _tls_client(p, tls_files)
    renewed = make_tls_files(tmp_path / "renewed")  # another CA: tells the two certificates apart
    p.rewrite_config({"listen": {"tls_cert": renewed.server_cert, "tls_key": renewed.server_key}})
    p.reload()
    p.wait_log("config reloaded")
    with _tls_client(p, renewed).cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    with pytest.raises(pymysql.err.OperationalError):
        _tls_client(p, tls_files)  # the old CA does not vouch for the new certificate
    with before.cursor() as cur:  # a connection from before the reload carries on
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)


def test_require_tls_refuses_plain_text(tls_files: TlsFiles, proxy_factory: ProxyFactory) -> None:
    p = proxy_factory(_listen_tls(tls_files, require_tls=True))
    with pytest.raises(pymysql.err.OperationalError) as info:
        p.connect(ssl_disabled=True)  # PyMySQL takes TLS on its own when it is offered
    assert info.value.args[0] == 3159 and "insecure transport" in info.value.args[1]
    with _tls_client(p, tls_files).cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone()[0] == f"{APP_USER}@%"


def test_mariadb_cli_over_tls(tls_files: TlsFiles, proxy_factory: ProxyFactory) -> None:
    p = proxy_factory(_listen_tls(tls_files, require_tls=True))
    code, out, err = run_cli(p.port, APP_USER, APP_PASSWORD, "status", APP_DB,
                             extra_args=["--ssl", f"--ssl-ca={tls_files.ca}", "--ssl-verify-server-cert"])
    assert code == 0, err
    assert re.search(r"SSL:\s+Cipher in use is \S+", out), out
    code, _out, err = run_cli(p.port, APP_USER, APP_PASSWORD, "SELECT 1", APP_DB, extra_args=["--skip-ssl"])
    assert code != 0 and "3159" in err


def _ssl_request() -> bytes:
    return frame(struct.pack("<IIB", int(Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.SSL), 1 << 24, 45) + bytes(23), 1)


def test_tls_handshake_in_the_same_read_as_the_ssl_request(tls_files: TlsFiles, proxy_factory: ProxyFactory) -> None:
    """A client may send its ClientHello right behind the SSLRequest, in one segment: those bytes
    must reach TLS, not the packet reader (here both go out in one sendall)."""
    p = proxy_factory(_listen_tls(tls_files))
    context = ssl.create_default_context(cafile=tls_files.ca)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection((p.host, p.port), timeout=10) as sock:
        _seq, greeting = recv_packet(sock)
        hs = parse_handshake(greeting)
        assert hs.capabilities & Cap.SSL
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        sock.sendall(_ssl_request() + outgoing.read())  # the SSLRequest and the ClientHello together
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        sock.sendall(outgoing.read())
        # The login, over TLS: sequence id 2 after the SSLRequest's 1.
        caps = int(Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH | Cap.SSL)
        response = HandshakeResponse(caps, 1 << 24, 45, APP_USER, auth.native_scramble(APP_PASSWORD, hs.scramble),
                                     None, auth.NATIVE)
        tls.write(frame(build_handshake_response(response), 2))
        sock.sendall(outgoing.read())
        reply = b""
        while len(reply) < 4 or len(reply) < 4 + int.from_bytes(reply[:3], "little"):
            try:
                reply += tls.read(65536)
            except ssl.SSLWantReadError:
                incoming.write(sock.recv(65536))
    assert reply[3] == 3 and reply[4] == 0x00, reply  # OK, sequence id 3


def test_tls_handshake_garbage_is_one_client_closed(tls_files: TlsFiles, proxy_factory: ProxyFactory) -> None:
    p = proxy_factory(_listen_tls(tls_files))
    other = p.connect()
    for garbage in (b"\x16\x03\x01\x00\x05hello", b"not tls at all, just bytes" * 10, b""):
        with socket.create_connection((p.host, p.port), timeout=10) as sock:
            recv_packet(sock)  # the greeting
            sock.sendall(_ssl_request() + garbage)
            if not garbage:
                sock.shutdown(socket.SHUT_WR)
            assert sock.recv(4096) is not None  # a TLS alert or nothing, then the close
            sock.settimeout(10)
            while sock.recv(4096):
                pass
    with other.cursor() as cur:
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
    log = p.log()
    assert "client TLS error" in log


def test_a_client_that_stops_mid_tls_handshake_is_timed_out(tls_files: TlsFiles, proxy_factory: ProxyFactory) -> None:
    p = proxy_factory(_listen_tls(tls_files, handshake_timeout=0.5))
    with socket.create_connection((p.host, p.port), timeout=10) as sock:
        recv_packet(sock)
        sock.sendall(_ssl_request())  # and no TLS handshake after it
        assert sock.recv(4096) == b""  # closed at handshake_timeout; no plain-text error inside TLS
    log = p.wait_log("no login within handshake_timeout")
    assert "client TLS error" not in log  # one event, one line: the timeout, not a TLS failure


def test_tls_not_offered_without_a_certificate(proxy_factory: ProxyFactory) -> None:
    p = proxy_factory()
    with socket.create_connection((p.host, p.port), timeout=10) as sock:
        _seq, greeting = recv_packet(sock)
        assert not parse_handshake(greeting).capabilities & Cap.SSL
        sock.sendall(_ssl_request())
        seq, err = recv_packet(sock)
    assert seq == 2 and err[0] == 0xFF and b"TLS is not offered by this proxy" in err
    with p.connect(ssl_disabled=True).cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_mutual_tls_needs_a_client_certificate_from_the_ca(tls_files: TlsFiles, proxy_factory: ProxyFactory,
                                                          tmp_path: Path) -> None:
    p = proxy_factory(_listen_tls(tls_files, tls_ca=tls_files.ca, require_tls=True))
    with_cert = {"ca": tls_files.ca, "cert": tls_files.client_cert, "key": tls_files.client_key, "check_hostname": True}
    with p.connect(ssl=with_cert).cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone()[0] == f"{APP_USER}@%"
    stranger = make_tls_files(tmp_path / "stranger")  # a client certificate from a CA the proxy does not trust
    for ssl_options in ({"ca": tls_files.ca, "check_hostname": True},
                        {**with_cert, "cert": stranger.client_cert, "key": stranger.client_key}):
        with pytest.raises(pymysql.err.OperationalError):
            conn = p.connect(ssl=ssl_options)
            conn.ping()  # over TLS 1.3 the refusal may come only after the client's side of the handshake
    p.wait_log("client TLS error")
    code, out, err = run_cli(p.port, APP_USER, APP_PASSWORD, "SELECT 7", APP_DB,
                             extra_args=["--ssl", f"--ssl-ca={tls_files.ca}", f"--ssl-cert={tls_files.client_cert}",
                                         f"--ssl-key={tls_files.client_key}", "--ssl-verify-server-cert"])
    assert (code, out.strip()) == (0, "7"), err
    code, _out, err = run_cli(p.port, APP_USER, APP_PASSWORD, "SELECT 7", APP_DB,
                              extra_args=["--ssl", f"--ssl-ca={tls_files.ca}"])
    assert code != 0, "a client without a certificate was let in"


def test_listen_tls_ca_needs_the_proxys_own_certificate(tls_files: TlsFiles) -> None:
    from proxy import config as config_mod

    with pytest.raises(config_mod.ConfigError, match=r"^listen\.tls_ca: needs listen\.tls_cert"):
        config_mod.parse({"listen": {"tls_ca": tls_files.ca}, "backend": {"user": "app"}})
    with pytest.raises(config_mod.ConfigError, match=r"^listen\.tls_ca: cannot read"):
        config_mod.parse({"listen": {"tls_cert": tls_files.server_cert, "tls_key": tls_files.server_key,
                                     "tls_ca": "/nonexistent/ca.pem"}, "backend": {"user": "app"}})
