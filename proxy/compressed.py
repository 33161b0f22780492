"""The compressed protocol between a client and the proxy: a layer under ClientConnection.

Like ``ClientTls`` it sits between the socket's transport (or the TLS layer) and the client
connection: to the one below it is the protocol, to the connection it is the transport. The
connection reads and writes ordinary packets as on any other client; the framing itself is
``mysql.compress.Compression``. Only clients that asked for CLIENT_COMPRESS get this layer,
so the relay of every other client runs as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from .mysql.compress import Compression
from .mysql.packets import ProtocolError

log = logging.getLogger("proxy.client")


class ClientCompression(asyncio.Protocol, asyncio.Transport):
    """Compressed framing over ``inner`` (the socket's transport or ClientTls) for ``app``."""

    def __init__(self, inner: asyncio.Transport, app: asyncio.Protocol) -> None:
        super().__init__()
        self._inner = inner
        self._app = app
        self._framing = Compression()
        inner.set_protocol(self)

    # -- protocol side: the transport below calls these ----------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            plain = self._framing.unwrap(data)
        except ProtocolError as e:
            log.warning("client %s: %s; closing", self._inner.get_extra_info("peername"), e)
            self._inner.abort()
            return
        if plain:
            self._app.data_received(plain)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        self._app.pause_writing()

    def resume_writing(self) -> None:
        self._app.resume_writing()

    # -- transport side: the client connection calls these -------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data and not self._inner.is_closing():
            self._inner.write(self._framing.wrap(data))

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(chunks))

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def close(self) -> None:
        self._inner.close()

    def abort(self) -> None:
        self._inner.abort()

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._inner.get_extra_info(name, default)
