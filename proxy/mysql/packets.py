"""Packet framing: 3-byte little-endian length, 1-byte sequence id, payload.

A payload of 0xFFFFFF bytes or more is split; a packet of exactly 0xFFFFFF bytes
is always followed by another (possibly empty) one. Two readers share this:

* ``PacketReader`` assembles whole logical payloads (client commands, the
  connection phase): bytes in, ``(seq, payload)`` out.
* ``PacketScanner`` walks a relayed byte stream, shows each packet's head to a
  callback and leaves the bytes to be forwarded as they are; only packets the
  callback rewrites are re-framed. This is the hot path: no copy of rows.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_PAYLOAD = 0xFFFFFF
HEADER_SIZE = 4
# Packets up to this size are handed whole to the scanner's callback; longer ones
# (rows with big values) show only their first INSPECT_PREFIX bytes and stream on.
SMALL_PACKET = 16 * 1024
INSPECT_PREFIX = 64
# A packet's 4-byte header read as one number: length | seq << 24. One call costs less than
# three byte lookups and the shifts that join them (the scanner reads a header per packet).
_header = struct.Struct("<I").unpack_from
_LENGTH = 0xFFFFFF  # the header's length bits (always 3 bytes, whatever MAX_PAYLOAD is set to)


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid packet sequence."""

    def __init__(self, message: str, code: int = 1158) -> None:
        super().__init__(message)
        self.code = code


class PacketTooLarge(ProtocolError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"Got a packet bigger than 'max_allowed_packet' bytes ({size} > {limit})", 1153)
        self.size = size


def frame(payload: bytes | bytearray | memoryview, seq: int) -> bytes:
    """Frame one logical payload into packets starting at ``seq``."""
    n = len(payload)
    if n < MAX_PAYLOAD:
        return (n | (seq & 0xFF) << 24).to_bytes(4, "little") + payload  # bytes + any buffer is bytes
    out = bytearray()
    pos = 0
    while True:
        chunk = payload[pos : pos + MAX_PAYLOAD]
        out += len(chunk).to_bytes(3, "little") + bytes((seq & 0xFF,)) + chunk
        seq += 1
        pos += len(chunk)
        if len(chunk) < MAX_PAYLOAD:
            return bytes(out)


def frame_count(payload_len: int) -> int:
    """How many packets ``frame`` makes of a payload of this length."""
    return payload_len // MAX_PAYLOAD + 1


@dataclass
class PacketReader:
    """Assembles complete logical payloads from a byte stream.

    ``max_payload`` bounds memory: a client announcing more gets PacketTooLarge
    before the bytes arrive.
    """

    max_payload: int = 1 << 30
    _buf: bytearray = field(default_factory=bytearray)
    _parts: list[bytes] = field(default_factory=list)
    _parts_len: int = 0
    _first_seq: int = -1

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add bytes; return every payload now complete, as ``(first seq, payload)``."""
        buf = self._buf
        if not buf and not self._parts and len(data) >= HEADER_SIZE:
            # The common case: a chunk that is exactly one small packet (a client's command).
            header = _header(data)[0]
            length = header & _LENGTH
            if length + HEADER_SIZE == len(data) and length < MAX_PAYLOAD:
                if length > self.max_payload:
                    raise PacketTooLarge(length, self.max_payload)
                return [(header >> 24, data[HEADER_SIZE:])]
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_SIZE:
            length = _header(buf, pos)[0] & _LENGTH
            if self._parts_len + length > self.max_payload:
                if out:
                    # The payloads before come first: one may change what the rest is (an SSLRequest:
                    # a TLS handshake follows, for take_rest) or the limit. The next feed raises.
                    break
                raise PacketTooLarge(self._parts_len + length, self.max_payload)
            if end - pos - HEADER_SIZE < length:
                break
            seq = buf[pos + 3]
            body = bytes(buf[pos + HEADER_SIZE : pos + HEADER_SIZE + length])
            pos += HEADER_SIZE + length
            if self._first_seq < 0:
                self._first_seq = seq
            if length == MAX_PAYLOAD:
                self._parts.append(body)
                self._parts_len += length
                continue
            if self._parts:
                self._parts.append(body)
                body = b"".join(self._parts)
                self._parts.clear()
                self._parts_len = 0
            out.append((self._first_seq, body))
            self._first_seq = -1
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes held that do not yet make a complete payload."""
        return len(self._buf) + self._parts_len

    def take_rest(self) -> bytes:
        """The bytes held after the last complete payload, given up (the client's TLS handshake,
        which can come in the same read as its SSLRequest)."""
        if self._parts:
            raise ProtocolError("a packet split over several frames was cut short")
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


# The callback of a scanner: (payload length, buffer, offset, packets skimmed since the
# last one shown) -> (verdict, replacement). What it is shown is buffer[offset:offset +
# length]: the payload, or for a long packet its prefix (slicing stops at the buffer's
# end). The buffer and offset, not a slice: most packets shown are read a byte or two
# deep, and cutting a view for each costs more than reading them. A replacement payload
# is framed with the packet's own sequence id (None: forward the packet as it is).
# Verdict 0 goes on; SKIM goes on skimming; any other value stops the scan at that
# packet's end (see PacketScanner). ResponseTracker.feed is one.
Buffer = bytes | bytearray | memoryview
Inspector = Callable[[int, Buffer, int, int], "tuple[int, bytes | None]"]

# Verdict: go on, and from now show only packets that start with 0xFE or 0xFF (EOF, ERR,
# or a rare row); count the others. Rows and column definitions never start with those
# otherwise, so a result set's body passes with no call per packet.
SKIM = -1


@dataclass
class PacketScanner:
    """Finds packet boundaries in a relayed stream without copying rows.

    ``feed`` returns the bytes to forward now. Every packet's head is shown to
    the inspector once: whole when it is small, else its first bytes (enough
    to tell a row from an OK/EOF/ERR). Continuation packets of a split payload
    are not shown. After a SKIM verdict, packets whose first byte is below 0xFE
    are only counted, up to the next one shown. Any other non-zero verdict makes
    feed return at that packet's end, keeps it in ``verdict`` and keeps the rest
    for the next ``feed(b"")``.
    """

    inspect: Inspector
    verdict: int = 0  # the last feed's stopping verdict; 0 when it did not stop
    held: bytearray = field(default_factory=bytearray)  # not yet forwarded: a partial packet, or what follows a stop
    _skip: int = 0  # body bytes of a long packet still to pass through
    _continuing: bool = False  # the last packet was 0xFFFFFF long
    _deferred: int = 0  # a verdict on a long packet, given when its body has passed
    _skim: bool = False  # the inspector asked to see only packets starting with 0xFE / 0xFF
    _skimmed: int = 0  # packets passed unseen since the last one shown

    def reset(self) -> None:
        if self.held:
            self.held = bytearray()
        self._skip = 0
        self._continuing = False
        self._deferred = 0
        self._skim = False
        self._skimmed = 0
        self.verdict = 0

    @property
    def rest(self) -> bytes:
        """Bytes held back after a stop (belong to whatever comes next)."""
        return bytes(self.held)

    def feed(self, data: bytes | bytearray) -> list[bytes | memoryview]:
        # The relay's hot path: one pass, locals only, one inspector call per packet shown.
        if self.held:
            self.held += data
            data = self.held
            self.held = bytearray()
        inspect = self.inspect
        small = SMALL_PACKET
        verdict = 0
        out: list[bytes | memoryview] = []
        view = memoryview(data)
        end = len(data)
        pos = 0
        sent = 0  # view[sent:pos] is scanned and not yet put in out
        skip = self._skip
        skim = self._skim
        skimmed = self._skimmed
        continuing = self._continuing
        while pos < end:
            if skip:
                n = skip if skip < end - pos else end - pos
                pos += n
                skip -= n
                if not skip and self._deferred and not continuing:
                    verdict = self._deferred  # the long packet that ended it has passed
                    self._deferred = 0
                    break
                continue
            body = pos + HEADER_SIZE
            if body > end:
                break
            length = _header(data, pos)[0] & _LENGTH
            if continuing:
                continuing = length == MAX_PAYLOAD
                skip = length
                pos = body
                continue
            if length <= small:
                nxt = body + length
                if nxt > end:
                    break
                if skim and length and data[body] < 0xFE:
                    skimmed += 1
                    pos = nxt
                    continue
                verdict, replacement = inspect(length, data, body, skimmed)
                skimmed = 0
                if replacement is not None:
                    if pos > sent:
                        out.append(view[sent:pos])
                    out.append(frame(replacement, data[pos + 3]))
                    sent = nxt
                pos = nxt
                skim = verdict == SKIM
                if skim:
                    verdict = 0
                elif verdict:
                    break
                continue
            if end - body < INSPECT_PREFIX:
                break
            continuing = length == MAX_PAYLOAD
            skip = length
            pos = body
            if skim and data[body] < 0xFE:
                skimmed += 1
                continue
            verdict, _ = inspect(length, view[body : body + INSPECT_PREFIX], 0, skimmed)
            skimmed = 0
            skim = verdict == SKIM
            if verdict and not skim:
                # A long packet ends the response: stop once all of it has passed.
                self._deferred = verdict
            verdict = 0
        self._skip = skip
        self._skim = skim
        self._skimmed = skimmed
        self._continuing = continuing
        self.verdict = verdict
        if pos > sent:
            # All of it unchanged (a whole response in one read, the usual case): the bytes themselves.
            out.append(data if sent == 0 and pos == end and type(data) is bytes else view[sent:pos])
        if pos < end:
            self.held = bytearray(view[pos:end])
        return out
