"""The login state machine (proxy/login.py) with bytes alone: no socket, no server.

The end-to-end logins (PyMySQL, the mariadb client, raw packets, COM_CHANGE_USER) are in
test_proxy_basic.py and test_session_features.py; these pin down each branch and sequence id.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.login import Accepted, Login, Refused, Send, StartTls
from proxy.mysql import auth
from proxy.mysql.constants import SERVER_CAPS, Cap, Err
from proxy.mysql.messages import HandshakeResponse, build_handshake_response, parse_auth_switch, parse_handshake
from proxy.mysql.packets import ProtocolError

USER, PASSWORD = "app", "s3cret"
CLIENT_CAPS = (Cap.PROTOCOL_41 | Cap.SECURE_CONNECTION | Cap.PLUGIN_AUTH | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA
               | Cap.TRANSACTIONS | Cap.FOUND_ROWS | Cap.COMPRESS | Cap.CONNECT_WITH_DB)


def login(plugin: str = auth.NATIVE) -> Login:
    return Login(plugin, {USER: PASSWORD, "nopw": ""}.get, "10.1.2.3")


def response(lg: Login, *, user: str = USER, password: str = PASSWORD, plugin: str | None = auth.NATIVE,
             database: str | None = "appdb", caps: int = CLIENT_CAPS) -> bytes:
    if plugin not in (None, auth.NATIVE, auth.CACHING_SHA2):
        answer = b"whatever that plugin sends"
    else:
        answer = auth.client_response(plugin or auth.NATIVE, password, lg.scramble) if password else b""
    # (build_handshake_response sets CONNECT_WITH_DB when a database is named, clears it otherwise)
    return build_handshake_response(HandshakeResponse(caps, 1 << 24, 33, user, answer, database, plugin))


def unpack(data: bytes) -> list[tuple[int, bytes]]:
    """Framed packets -> (sequence id, payload)."""
    out, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 3], "little")
        out.append((data[pos + 3], data[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    return out


def change_user_payload(lg: Login, user: str, password: str, plugin: str, database: str = "otherdb",
                        collation: int = 8) -> bytes:
    answer = auth.client_response(plugin, password, lg.scramble) if plugin in (auth.NATIVE, auth.CACHING_SHA2) else b"x"
    return (b"\x11" + user.encode() + b"\0" + bytes((len(answer),)) + answer + database.encode() + b"\0"
            + struct.pack("<H", collation) + plugin.encode() + b"\0")


@pytest.mark.parametrize("plugin", [auth.NATIVE, auth.CACHING_SHA2])
def test_greeting_offers_the_plugin_and_scramble(plugin: str) -> None:
    lg = login(plugin)
    [(seq, payload)] = unpack(lg.greeting("10.11.9-MariaDB", 77))
    hs = parse_handshake(payload)
    assert seq == 0
    assert (hs.server_version, hs.connection_id, hs.auth_plugin) == ("10.11.9-MariaDB", 77, plugin)
    assert hs.scramble == lg.scramble and len(lg.scramble) == 20
    assert hs.capabilities == SERVER_CAPS


def test_native_login_is_accepted_with_what_the_client_said() -> None:
    lg = login()
    step = lg.receive(1, response(lg))
    assert step == Accepted(USER, "appdb", 33, CLIENT_CAPS & SERVER_CAPS, b"", 2)
    assert step.caps & Cap.COMPRESS  # offered (proxy/compressed.py), so granted to a client that asks


def test_caching_sha2_fast_path_sends_fast_auth_ok_before_the_ok() -> None:
    lg = login(auth.CACHING_SHA2)
    step = lg.receive(1, response(lg, plugin=auth.CACHING_SHA2))
    assert isinstance(step, Accepted)
    assert unpack(step.data) == [(2, bytes((0x01, auth.FAST_AUTH_OK)))]
    assert step.ok_seq == 3


def test_a_client_may_use_the_other_spoken_plugin_unasked() -> None:
    lg = login(auth.NATIVE)
    step = lg.receive(1, response(lg, plugin=auth.CACHING_SHA2))
    assert isinstance(step, Accepted) and step.ok_seq == 3
    assert lg.plugin == auth.CACHING_SHA2


@pytest.mark.parametrize(("password", "using"), [("wrong", "YES"), ("", "NO")])
def test_wrong_password_is_refused_in_the_servers_words(password: str, using: str) -> None:
    lg = login()
    step = lg.receive(1, response(lg, password=password))
    assert step == Refused(Err.ACCESS_DENIED, f"Access denied for user '{USER}'@'10.1.2.3' (using password: {using})", 2)
    with pytest.raises(ProtocolError):
        lg.receive(3, response(lg))  # no second try on the same connection


def test_unknown_user_is_refused_even_with_an_empty_password() -> None:
    lg = login()
    step = lg.receive(1, response(lg, user="stranger", password=""))
    assert isinstance(step, Refused) and "'stranger'@'10.1.2.3'" in step.message


def test_account_with_an_empty_password_logs_in_without_one() -> None:
    lg = login(auth.CACHING_SHA2)
    step = lg.receive(1, response(lg, user="nopw", password="", plugin=auth.CACHING_SHA2))
    assert isinstance(step, Accepted)
    assert step.data == b"" and step.ok_seq == 2  # no fast-auth packet for an empty password


def test_unspoken_plugin_gets_an_auth_switch_then_the_answer_is_checked() -> None:
    lg = login(auth.NATIVE)
    step = lg.receive(1, response(lg, plugin="mysql_old_password"))
    assert isinstance(step, Send)
    [(seq, payload)] = unpack(step.data)
    assert seq == 2 and parse_auth_switch(payload) == (auth.NATIVE, lg.scramble)
    with pytest.raises(ProtocolError, match="out of order"):
        lg.receive(2, b"")
    step = lg.receive(3, auth.native_scramble(PASSWORD, lg.scramble))
    assert isinstance(step, Accepted) and step.ok_seq == 4 and step.user == USER


def test_auth_switch_answer_with_a_wrong_password_is_refused() -> None:
    lg = login(auth.CACHING_SHA2)
    assert isinstance(lg.receive(1, response(lg, plugin="dialog")), Send)
    step = lg.receive(3, auth.sha2_scramble("nope", lg.scramble))
    assert isinstance(step, Refused) and step.seq == 4


def test_out_of_order_and_tls_requests_are_protocol_errors() -> None:
    lg = login()
    with pytest.raises(ProtocolError, match="out of order"):
        lg.receive(2, response(lg))
    with pytest.raises(ProtocolError, match="TLS is not offered by this proxy"):
        lg.receive(1, ssl_request())
    with pytest.raises(ProtocolError):
        login().receive(1, b"\x01\x02")  # truncated handshake response


@pytest.mark.parametrize("plugin", [auth.NATIVE, auth.CACHING_SHA2])
def test_change_user_checks_against_the_greeting_scramble(plugin: str) -> None:
    lg = login()
    assert isinstance(lg.receive(1, response(lg)), Accepted)
    step = lg.change_user(0, change_user_payload(lg, USER, PASSWORD, plugin))
    assert isinstance(step, Accepted)
    assert (step.database, step.collation, step.caps) == ("otherdb", 8, CLIENT_CAPS & SERVER_CAPS)
    assert step.ok_seq == (2 if plugin == auth.CACHING_SHA2 else 1)
    assert lg.collation == 8  # a later COM_RESET_CONNECTION restores this one
    refused = lg.change_user(0, change_user_payload(lg, USER, "wrong", plugin))
    assert isinstance(refused, Refused) and refused.seq == 1


def test_change_user_with_an_unspoken_plugin_switches_first() -> None:
    lg = login()
    assert isinstance(lg.receive(1, response(lg)), Accepted)
    step = lg.change_user(0, change_user_payload(lg, USER, PASSWORD, "client_ed25519"))
    assert isinstance(step, Send) and unpack(step.data)[0][0] == 1
    step = lg.receive(2, auth.native_scramble(PASSWORD, lg.scramble))
    assert isinstance(step, Accepted) and step.ok_seq == 3


def test_malformed_change_user_is_a_protocol_error() -> None:
    lg = login()
    assert isinstance(lg.receive(1, response(lg)), Accepted)
    with pytest.raises(ProtocolError):
        lg.change_user(0, b"\x11app")  # no NUL after the name


# --------------------------------------------------------------------------- bad input

def _mutations(draw: st.DrawFn) -> tuple[int, bytes]:
    """A handshake response, cut short or with bytes overwritten, or plain noise."""
    lg = login()
    good = response(lg, plugin=draw(st.sampled_from([auth.NATIVE, auth.CACHING_SHA2, "dialog", None])))
    kind = draw(st.sampled_from(["cut", "overwrite", "noise", "ssl"]))
    if kind == "ssl":  # an SSLRequest, as is or overwritten
        data = bytearray(ssl_request())
        for _ in range(draw(st.integers(0, 3))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        data = bytes(data)
    elif kind == "cut":
        data = good[: draw(st.integers(0, len(good)))]
    elif kind == "overwrite":
        data = bytearray(good)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        data = bytes(data)
    else:
        data = draw(st.binary(max_size=200))
    return draw(st.integers(0, 3)), data


@settings(max_examples=400, deadline=None)
@given(st.composite(_mutations)(), st.composite(_mutations)(), st.composite(_mutations)(),
       st.sampled_from(["plain", "offered", "required"]))
def test_any_login_bytes_get_an_answer_or_a_protocol_error(first: tuple[int, bytes], second: tuple[int, bytes],
                                                           third: tuple[int, bytes], tls: str) -> None:
    """Whatever a client sends while logging in, the machine answers or raises ProtocolError (which the
    frontend turns into a 'Bad handshake' error packet): never another exception. With TLS offered
    or required, an SSLRequest (StartTls) may come first, then what follows it over TLS."""
    lg = Login(auth.NATIVE, {USER: PASSWORD, "nopw": ""}.get, "10.1.2.3", offer_tls=tls != "plain",
               require_tls=tls == "required")
    lg.greeting("10.11.9-MariaDB", 1)
    for seq, data in (first, second, third):
        try:
            step = lg.receive(seq, data)
        except ProtocolError:
            return
        assert isinstance(step, Send | Accepted | Refused | StartTls)
        assert not isinstance(step, StartTls) or tls != "plain"
        assert not isinstance(step, Accepted) or tls != "required" or lg.tls  # never a plain login when required
        if not isinstance(step, Send | StartTls):
            return


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_any_change_user_bytes_get_an_answer_or_a_protocol_error(payload: bytes) -> None:
    lg = login()
    assert isinstance(lg.receive(1, response(lg)), Accepted)
    try:
        step = lg.change_user(0, b"\x11" + payload)
    except ProtocolError:
        return
    assert isinstance(step, Send | Accepted | Refused)


# --------------------------------------------------------------------------- TLS (listen.tls_cert)


def ssl_request(caps: int = CLIENT_CAPS | Cap.SSL) -> bytes:
    return build_handshake_response(HandshakeResponse(caps, 1 << 24, 33, USER, b"", None, None))[:32]


def test_tls_offered_only_when_configured() -> None:
    plain = parse_handshake(unpack(login().greeting("10.11.9-MariaDB", 1))[0][1])
    assert not plain.capabilities & Cap.SSL
    lg = Login(auth.NATIVE, {USER: PASSWORD}.get, "10.1.2.3", offer_tls=True)
    assert parse_handshake(unpack(lg.greeting("10.11.9-MariaDB", 1))[0][1]).capabilities & Cap.SSL


def test_ssl_request_then_the_response_with_sequence_id_2() -> None:
    lg = Login(auth.NATIVE, {USER: PASSWORD}.get, "10.1.2.3", offer_tls=True, require_tls=True)
    lg.greeting("10.11.9-MariaDB", 1)
    assert type(lg.receive(1, ssl_request())) is StartTls and lg.tls
    with pytest.raises(ProtocolError, match="sequence id 1, expected 2"):
        lg.receive(1, response(lg, caps=CLIENT_CAPS | Cap.SSL))
    step = lg.receive(2, response(lg, caps=CLIENT_CAPS | Cap.SSL))
    assert type(step) is Accepted and step.ok_seq == 3 and step.user == USER


def test_a_second_ssl_request_is_refused() -> None:
    lg = Login(auth.NATIVE, {USER: PASSWORD}.get, "10.1.2.3", offer_tls=True)
    lg.greeting("10.11.9-MariaDB", 1)
    lg.receive(1, ssl_request())
    with pytest.raises(ProtocolError, match="a second SSLRequest"):
        lg.receive(2, ssl_request())


def test_require_tls_refuses_a_plain_login_before_checking_the_password() -> None:
    lg = Login(auth.NATIVE, {USER: PASSWORD}.get, "10.1.2.3", offer_tls=True, require_tls=True)
    lg.greeting("10.11.9-MariaDB", 1)
    step = lg.receive(1, response(lg, password="wrong"))
    assert step == Refused(Err.SECURE_TRANSPORT_REQUIRED, step.message, 2)  # not 1045: the password is not looked at
    assert "insecure transport" in step.message


def test_greeting_names_the_servers_default_collation() -> None:
    """A client that names no character set takes the greeting's: the server's own, as straight."""
    lg = login()
    assert parse_handshake(unpack(lg.greeting("10.11.9-MariaDB", 7, 0, 8))[0][1]).collation == 8  # latin1
    assert parse_handshake(unpack(lg.greeting("10.11.9-MariaDB", 7))[0][1]).collation == 45  # not known yet
