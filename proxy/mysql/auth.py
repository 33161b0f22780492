"""Authentication plugins: scrambles computed by clients and checked by servers.

The proxy knows each account's password, so it verifies a client by computing
the expected scramble itself and comparing in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from .packets import ProtocolError

NATIVE = "mysql_native_password"
CACHING_SHA2 = "caching_sha2_password"
CLEAR = "mysql_clear_password"
# The plugins answered with a scramble of the password, which the proxy computes and checks
# itself; a peer naming another plugin is asked (or answered) with one of these.
SCRAMBLE_PLUGINS = (NATIVE, CACHING_SHA2)

# caching_sha2_password AuthMoreData codes
FAST_AUTH_OK = 0x03
FULL_AUTH_NEEDED = 0x04
REQUEST_PUBLIC_KEY = 0x02

SCRAMBLE_LEN = 20


def new_scramble() -> bytes:
    """20 random bytes without NUL or '$' (some clients stop at NUL)."""
    out = bytearray()
    while len(out) < SCRAMBLE_LEN:
        for b in os.urandom(SCRAMBLE_LEN):
            b &= 0x7F
            if b not in (0, ord("$")) and len(out) < SCRAMBLE_LEN:
                out.append(b)
    return bytes(out)


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def native_scramble(password: str, scramble: bytes) -> bytes:
    """SHA1(pw) XOR SHA1(scramble + SHA1(SHA1(pw))); empty for an empty password."""
    if not password:
        return b""
    stage1 = hashlib.sha1(password.encode()).digest()
    stage2 = hashlib.sha1(stage1).digest()
    return _xor(stage1, hashlib.sha1(scramble[:SCRAMBLE_LEN] + stage2).digest())


def sha2_scramble(password: str, scramble: bytes) -> bytes:
    """SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + scramble); empty for an empty password."""
    if not password:
        return b""
    p1 = hashlib.sha256(password.encode()).digest()
    p2 = hashlib.sha256(p1).digest()
    return _xor(p1, hashlib.sha256(p2 + scramble[:SCRAMBLE_LEN]).digest())


def client_response(plugin: str, password: str, scramble: bytes) -> bytes:
    """What a client sends for ``plugin`` (used for backend links)."""
    if plugin == NATIVE:
        return native_scramble(password, scramble)
    if plugin == CACHING_SHA2:
        return sha2_scramble(password, scramble)
    if plugin == CLEAR:
        return password.encode() + b"\x00"
    raise ValueError(f"authentication plugin {plugin!r} is not supported")


def verify(plugin: str, password: str, scramble: bytes, response: bytes) -> bool:
    """Whether a client's scramble proves it knows ``password`` (constant time)."""
    if plugin == NATIVE:
        expected = native_scramble(password, scramble)
    elif plugin == CACHING_SHA2:
        expected = sha2_scramble(password, scramble)
    else:
        return False
    # Some clients send a NUL after an empty response.
    if not password:
        return response in (b"", b"\x00")
    return hmac.compare_digest(expected, response)


def rsa_encrypt_password(password: str, scramble: bytes, public_key_pem: bytes) -> bytes:
    """caching_sha2 full auth without TLS: RSA-OAEP of (password + NUL) XOR scramble.

    Needs the ``cryptography`` package (a dependency of the project). A login that cannot be
    done raises ProtocolError, which the pool reports once and names in its clients' errors.
    """
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding
    except ImportError:  # pragma: no cover - depends on the install
        raise ProtocolError(
            "the server asks for caching_sha2_password full authentication, which needs RSA without TLS: "
            "install the 'cryptography' package (pip install cryptography) or set backend.tls"
        ) from None
    plain = password.encode() + b"\x00"
    mask = (scramble * (len(plain) // len(scramble) + 1))[: len(plain)]
    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except ValueError as e:
        raise ProtocolError(f"the server's RSA public key for caching_sha2_password is not usable: {e}") from None
    return key.encrypt(  # type: ignore[union-attr]
        _xor(plain, mask),
        padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
    )
