"""A client's login, sans I/O: the client's packets in, what to answer out.

Covers the greeting, an SSLRequest, the handshake response, the auth switch for a
plugin the proxy does not speak, the caching_sha2_password fast path and COM_CHANGE_USER.
The frontend feeds it packets and acts on each answer (``Send``, ``Accepted``,
``Refused``, ``StartTls``); it never touches a socket, the pool or the config file, so every
branch can be tested with bytes alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .mysql import auth
from .mysql.constants import DEFAULT_COLLATION, SERVER_CAPS, Cap, Err, Status
from .mysql.messages import Handshake, build_auth_switch, build_handshake, parse_change_user, parse_handshake_response
from .mysql.packets import ProtocolError, frame


@dataclass(frozen=True)
class Send:
    """Write these packets; the login goes on (an auth switch request)."""

    data: bytes


@dataclass(frozen=True)
class Accepted:
    """The password was right. Write ``data`` now (caching_sha2's fast-auth answer, or nothing),
    then, once the session is set up, the OK that ends the login with sequence id ``ok_seq``."""

    user: str
    database: str | None
    collation: int
    caps: int  # the client's capabilities, limited to what the proxy offers
    data: bytes
    ok_seq: int


@dataclass(frozen=True)
class Refused:
    """Send this error with sequence id ``seq`` and close the connection."""

    code: int
    message: str
    seq: int


@dataclass(frozen=True)
class StartTls:
    """The client sent an SSLRequest: encrypt the connection; its handshake response follows over TLS."""


Step = Send | Accepted | Refused | StartTls


def offered_caps(server_caps: int) -> int:
    """What the greeting offers: SERVER_CAPS, and MariaDB's metadata caching and extended
    metadata when the server has them (links are opened with them per client, KIND_CAPS).

    Like a MariaDB server, the greeting then leaves out CLIENT_MYSQL: that is how a client
    learns to read (and send) the extended capabilities.
    """
    extended = server_caps & (Cap.MARIADB_CACHE_METADATA | Cap.MARIADB_EXTENDED_METADATA)
    if extended:
        return (SERVER_CAPS & ~Cap.CLIENT_MYSQL) | extended
    return SERVER_CAPS

_ANSWER, _SWITCHED, _OVER = range(3)


class Login:
    """One connection's logins: the first one, and each COM_CHANGE_USER after it."""

    def __init__(self, plugin: str, password_of: Callable[[str], str | None], client_host: str,
                 offer_tls: bool = False, require_tls: bool = False) -> None:
        self.scramble = auth.new_scramble()  # a COM_CHANGE_USER is checked against it too
        self.plugin = plugin  # the plugin offered; the one a switch asks for
        self.user = ""
        self.database: str | None = None
        self.collation = DEFAULT_COLLATION
        self.caps = 0
        self.offered = SERVER_CAPS  # what the greeting offered
        self._password_of = password_of
        self._host = client_host  # for "Access denied for user 'u'@'host'", as the server words it
        self._phase = _ANSWER
        self._expect_seq = 1  # the sequence id of the client's next packet
        self._offer_tls = offer_tls
        self._require_tls = require_tls
        self.tls = False  # the client asked for TLS (SSLRequest) and got it

    def greeting(self, server_version: str, connection_id: int, server_caps: int = 0, collation: int = 0) -> bytes:
        """``server_caps``, ``collation``: the backend server's capabilities and default collation,
        as far as known (0 before any link was opened: the greeting then names utf8mb4_general_ci)."""
        self.offered = offered_caps(server_caps) | (Cap.SSL if self._offer_tls else 0)
        hs = Handshake(
            server_version=server_version,
            connection_id=connection_id,
            scramble=self.scramble,
            capabilities=self.offered,
            collation=collation or DEFAULT_COLLATION,
            status=Status.AUTOCOMMIT,
            auth_plugin=self.plugin,
        )
        return frame(build_handshake(hs), 0)

    def receive(self, seq: int, payload: bytes) -> Step:
        """The client's next login packet. Raises ProtocolError for one that is malformed or out of turn."""
        if self._phase == _OVER:
            raise ProtocolError("no login in progress")
        if seq != self._expect_seq:
            raise ProtocolError(f"packets out of order (sequence id {seq}, expected {self._expect_seq})")
        if self._phase == _SWITCHED:
            return self._check(seq, payload, self.plugin)
        if len(payload) == 32 and int.from_bytes(payload[:4], "little") & Cap.SSL:
            if not self._offer_tls or self.tls:
                raise ProtocolError("TLS is not offered by this proxy" if not self._offer_tls else "a second SSLRequest")
            self.tls = True
            self._expect_seq = seq + 1
            return StartTls()
        resp = parse_handshake_response(payload)
        if self._require_tls and not self.tls:
            self._phase = _OVER
            return Refused(Err.SECURE_TRANSPORT_REQUIRED, "Connections using insecure transport are prohibited "
                           "(mysql-pool-proxy listen.require_tls)", seq + 1)
        self.user, self.database, self.collation = resp.user, resp.database, resp.collation
        self.caps = resp.capabilities & self.offered
        plugin = resp.auth_plugin or auth.NATIVE
        # A client that names no plugin scrambled for the one offered (or sent no password at all).
        if plugin in auth.SCRAMBLE_PLUGINS and (resp.auth_plugin or not resp.auth_response or plugin == self.plugin):
            self.plugin = plugin
            return self._check(seq, resp.auth_response, plugin)
        return self._switch(seq)

    def change_user(self, seq: int, payload: bytes) -> Step:
        """COM_CHANGE_USER with sequence id ``seq``: log in again. Raises ProtocolError for a malformed one."""
        change = parse_change_user(payload, self.caps or Cap.SECURE_CONNECTION)
        self.user, self.database = change.user, change.database
        self.collation = change.collation or self.collation
        self._phase = _ANSWER
        if change.auth_plugin not in auth.SCRAMBLE_PLUGINS:
            return self._switch(seq)
        self.plugin = change.auth_plugin
        return self._check(seq, change.auth_response, change.auth_plugin)

    def _switch(self, seq: int) -> Send:
        self._phase = _SWITCHED
        self._expect_seq = seq + 2
        return Send(frame(build_auth_switch(self.plugin, self.scramble), seq + 1))

    def _check(self, seq: int, response: bytes, plugin: str) -> Accepted | Refused:
        self._phase = _OVER
        password = self._password_of(self.user)
        if password is None or not auth.verify(plugin, password, self.scramble, response):
            using = "YES" if response else "NO"
            return Refused(Err.ACCESS_DENIED, f"Access denied for user '{self.user}'@'{self._host}' (using password: {using})", seq + 1)
        data = b""
        if plugin == auth.CACHING_SHA2 and password:
            seq += 1
            data = frame(bytes((0x01, auth.FAST_AUTH_OK)), seq)
        return Accepted(self.user, self.database, self.collation, self.caps, data, seq + 1)
