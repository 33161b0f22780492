"""TLS: contexts built from the config, and the TLS layer of client connections.

Contexts are built once at start and again on reload, so that a bad certificate file is a
config error named by its key, and each new connection reuses one instead of reading files.
Links to the server use asyncio's own TLS (``loop.start_tls``). Client connections use
``ClientTls`` below: a client sends its TLS handshake right behind its SSLRequest, often in
the same read, and those bytes must reach TLS, which ``start_tls`` offers no way to do.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable

from .config import BackendConfig, ConfigError, ListenConfig

log = logging.getLogger("proxy.tls")

_READ_SIZE = 1 << 17  # decrypted bytes taken at once (a TLS record holds at most 16 KiB)


def backend_context(cfg: BackendConfig) -> ssl.SSLContext | None:
    """The context links to the server use, or None when TLS to it is disabled.

    Modes as the mysql client's --ssl-mode: 'preferred' and 'required' encrypt without checking
    who answers (a certificate file is only a client certificate then); 'verify_ca' checks the
    chain against ``tls_ca`` (or the system's CAs); 'verify_identity' also checks the host name.
    """
    mode = cfg.tls_mode
    if mode == "disabled":
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if mode in ("verify_ca", "verify_identity"):
        ctx.check_hostname = mode == "verify_identity"
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            if cfg.tls_ca:
                ctx.load_verify_locations(cafile=cfg.tls_ca)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"backend.tls_ca: cannot load {cfg.tls_ca}: {_reason(e)}") from None
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.tls_cert and cfg.tls_key:
        _load_certificate(ctx, cfg.tls_cert, cfg.tls_key, "backend.tls_cert")
    return ctx


def listen_context(cfg: ListenConfig) -> ssl.SSLContext | None:
    """The context TLS clients are served with, or None when no certificate is configured."""
    if not cfg.tls_cert or not cfg.tls_key:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_certificate(ctx, cfg.tls_cert, cfg.tls_key, "listen.tls_cert")
    if cfg.tls_ca:
        # Mutual TLS: a client without a certificate this CA signed fails the handshake.
        try:
            ctx.load_verify_locations(cafile=cfg.tls_ca)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"listen.tls_ca: cannot load {cfg.tls_ca}: {_reason(e)}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _load_certificate(ctx: ssl.SSLContext, cert: str, key: str, config_key: str) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"{config_key}: cannot load {cert} with {key}: {_reason(e)}") from None


def _reason(e: Exception) -> str:
    return getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)


class ClientTls(asyncio.Protocol, asyncio.Transport):
    """Server-side TLS between a client's socket and its ClientConnection.

    To the socket's transport it is the protocol; to the client connection it is the transport
    (write, close, pause_reading ...), so the connection works the same over TLS. ``early``:
    TLS bytes already read together with the SSLRequest. Data the client sends flows through
    ``ssl.SSLObject`` over memory buffers, with no copies kept beyond one read.
    """

    def __init__(self, raw: asyncio.Transport, app: asyncio.Protocol, context: ssl.SSLContext, early: bytes) -> None:
        super().__init__()
        self._raw = raw
        self._app = app
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._handshake_done = False
        raw.set_protocol(self)
        if early:
            self.data_received(early)

    # -- protocol side: the socket's transport calls these ------------------------------

    def data_received(self, data: bytes) -> None:
        incoming, tls = self._incoming, self._tls
        incoming.write(data)
        plain = []
        closed = False
        try:
            if not self._handshake_done:
                tls.do_handshake()
                self._handshake_done = True
            # Read while bytes are left, not until SSLWantReadError: the usual read is one whole
            # record (a command), and raising costs more than the decryption.
            while incoming.pending or tls.pending():
                chunk = tls.read(_READ_SIZE)
                if not chunk:
                    # The client's close_notify: the ssl module reads it as b"", not as
                    # SSLZeroReturnError. A client may close so without COM_QUIT (asyncio's TLS
                    # transport does, as aiomysql's close()), and the server ends such a session
                    # at once: so must the proxy, or its link stays held with whatever it holds.
                    closed = True
                    break
                plain.append(chunk)
        except ssl.SSLWantReadError:
            pass  # a partial record: the rest comes with the next read
        except ssl.SSLZeroReturnError:
            closed = True
        except ssl.SSLError as e:
            self._flush()  # a TLS alert, if OpenSSL wrote one
            self._fail(e)
            return
        self._flush()
        if self._handshake_done and plain:
            self._app.data_received(b"".join(plain) if len(plain) > 1 else plain[0])
        if closed:
            self._raw.close()

    def _fail(self, e: ssl.SSLError) -> None:
        log.info("client TLS error from %s: %s; closing", self._raw.get_extra_info("peername"), e.reason or e)
        self._raw.abort()

    def eof_received(self) -> bool | None:
        return None  # the socket transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        self._app.pause_writing()

    def resume_writing(self) -> None:
        self._app.resume_writing()

    # -- transport side: the client connection calls these -------------------------------

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self._raw.write(data)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # Before the handshake is done nothing can go out (an error for a client that never
        # finished it, at handshake_timeout, is dropped; the close follows).
        if self._raw.is_closing() or not self._handshake_done:
            return
        try:
            self._tls.write(data)
        except ssl.SSLError as e:  # the client already closed its side of TLS
            self._fail(e)
            return
        self._flush()

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(chunks))

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        # A layer above takes the plain bytes from here on (ClientCompression).
        self._app = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._app

    def is_closing(self) -> bool:
        return self._raw.is_closing()

    def close(self) -> None:
        if self._raw.is_closing():
            return
        if self._handshake_done:
            try:
                self._tls.unwrap()  # close_notify; the client's answer is not waited for
            except ssl.SSLError:
                pass
            self._flush()
        self._raw.close()

    def abort(self) -> None:
        self._raw.abort()

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def get_extra_info(self, name: str, default: object = None) -> object:
        if name == "ssl_object":
            return self._tls
        if name == "cipher":
            return self._tls.cipher()
        return self._raw.get_extra_info(name, default)
