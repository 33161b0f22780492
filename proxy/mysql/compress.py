"""The compressed protocol (CLIENT_COMPRESS), sans I/O: a framing layer under the packets.

After the login's OK, both sides of a connection that agreed on CLIENT_COMPRESS wrap their
packet stream in compressed packets: a 7-byte header (3-byte length of what follows, 1-byte
compressed sequence id, 3-byte length before compression, 0 when the payload is stored as it
is) and a zlib stream. A compressed packet may hold several ordinary packets or part of one;
the reader just joins the payloads back into the ordinary stream.

The compressed sequence id counts on its own: a client starts each command at 0, and each
side answers with the id after the last one it received (mysqlnd and libmysqlclient check it).

mysqlnd (PHP's MYSQLI_CLIENT_COMPRESS, PDO::MYSQL_ATTR_COMPRESS) compresses whenever it asked
for it, whether or not the greeting offered it, so a proxy that does not speak this has to
hang or drop such a client.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from .packets import ProtocolError

HEADER_SIZE = 7
MAX_CHUNK = 0xFFFFFF  # the most one compressed packet holds, before and after compression
# Payloads shorter than this go uncompressed, as the server's MIN_COMPRESS_LENGTH.
MIN_COMPRESS_LENGTH = 50
# zlib level: the server's my_compress uses the default (6); 1 costs a third of the CPU and
# compresses result sets nearly as well, and the proxy's CPU is what the relay spends.
LEVEL = 1


@dataclass(slots=True)
class Compression:
    """One connection's compressed framing: ``unwrap`` what arrives, ``wrap`` what leaves.

    One incoming packet inflates to at most the 16 MiB its header announces (checked while
    inflating, so a zip bomb costs no more); the ordinary packets it carries are then bounded
    by the reader above, as without compression.
    """

    seq: int = 0  # the compressed sequence id of the next packet sent
    _buf: bytearray = field(default_factory=bytearray)

    def unwrap(self, data: bytes) -> bytes:
        """Bytes received -> the ordinary packet stream they carry (b"" until a packet is whole)."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_SIZE:
            length = int.from_bytes(buf[pos : pos + 3], "little")
            if end - pos - HEADER_SIZE < length:
                break
            seq = buf[pos + 3]
            inflated = int.from_bytes(buf[pos + 4 : pos + 7], "little")
            body = bytes(buf[pos + HEADER_SIZE : pos + HEADER_SIZE + length])
            pos += HEADER_SIZE + length
            if inflated:
                out.append(_inflate(body, inflated))
            else:
                out.append(body)
            self.seq = (seq + 1) & 0xFF
        if pos:
            del buf[:pos]
        return b"".join(out)

    def wrap(self, data: bytes | bytearray | memoryview) -> bytes:
        """An ordinary packet stream -> compressed packets to send, numbered on from ``seq``."""
        out: list[bytes] = []
        view = memoryview(data)
        for start in range(0, len(view), MAX_CHUNK):
            chunk = view[start : start + MAX_CHUNK]
            n = len(chunk)
            packed = zlib.compress(chunk, LEVEL) if n >= MIN_COMPRESS_LENGTH else b""
            if packed and len(packed) < n:
                out.append(_header(len(packed), self.seq, n) + packed)
            else:
                out.append(_header(n, self.seq, 0) + bytes(chunk))
            self.seq = (self.seq + 1) & 0xFF
        return b"".join(out)


def _header(length: int, seq: int, inflated: int) -> bytes:
    return length.to_bytes(3, "little") + bytes((seq,)) + inflated.to_bytes(3, "little")


def _inflate(body: bytes, size: int) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(body, size)
    except zlib.error as e:
        raise ProtocolError(f"Bad compressed packet: {e}") from None
    if len(out) != size or d.unconsumed_tail or not d.eof:
        raise ProtocolError(f"Bad compressed packet: {len(out)} bytes inflated, the header says {size}")
    return out
