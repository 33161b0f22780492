"""Packet framing: ``frame``, ``PacketReader`` and ``PacketScanner`` (no server needed).

The 16 MiB cases use the real constants. The hypothesis properties run twice:
once with the real constants (payloads up to a few SMALL_PACKETs), and once
with MAX_PAYLOAD / SMALL_PACKET / INSPECT_PREFIX scaled down, so that random
examples cross the split and prefix boundaries many times without moving
gigabytes. The code reads those module constants at call time, so the scaled
run exercises exactly the same branches.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.mysql import packets
from proxy.mysql.packets import (
    HEADER_SIZE,
    INSPECT_PREFIX,
    MAX_PAYLOAD,
    SKIM,
    SMALL_PACKET,
    PacketReader,
    PacketScanner,
    PacketTooLarge,
    ProtocolError,
    frame,
    frame_count,
)

FAST = settings(max_examples=200, deadline=None)


def pattern(n: int, salt: int = 0) -> bytes:
    """n bytes whose content depends on the position (a shifted or dropped byte shows)."""
    block = bytes((i * 7 + salt) & 0xFF for i in range(251))  # 251 is prime: no alignment with 2**k sizes
    reps = n // len(block) + 1
    return (block * reps)[:n]


def packet_heads(stream: bytes) -> list[tuple[int, int]]:
    """(length, seq) of every physical packet in a framed stream; the stream must end on a boundary."""
    out = []
    pos = 0
    while pos < len(stream):
        n = int.from_bytes(stream[pos : pos + 3], "little")
        out.append((n, stream[pos + 3]))
        pos += HEADER_SIZE + n
    assert pos == len(stream), "stream does not end on a packet boundary"
    return out


def bodies(stream: bytes) -> bytes:
    """The payload bytes of a framed stream, headers removed."""
    out = bytearray()
    pos = 0
    while pos < len(stream):
        n = int.from_bytes(stream[pos : pos + 3], "little")
        out += stream[pos + HEADER_SIZE : pos + HEADER_SIZE + n]
        pos += HEADER_SIZE + n
    return bytes(out)


def cut(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """Split ``data`` at the given offsets (any order, duplicates and out-of-range ignored)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    out = []
    prev = 0
    for c in points:
        out.append(data[prev:c])
        prev = c
    out.append(data[prev:])
    return out


def read_all(reader: PacketReader, chunks: Sequence[bytes]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for c in chunks:
        out += reader.feed(c)
    return out


class Recorder:
    """An inspector that records what it is shown and optionally rewrites small packets."""

    def __init__(self, replace: bool = False) -> None:
        self.seen: list[tuple[int, bytes]] = []
        self.replace = replace

    def __call__(self, length: int, buf: packets.Buffer, at: int = 0, skimmed: int = 0) -> tuple[int, bytes | None]:
        # Copy now: the buffer is the scanner's.
        payload = bytes(buf[at : at + length])
        self.seen.append((length, payload))
        if self.replace and length <= packets.SMALL_PACKET:
            return 0, b"R" + payload + b"!"
        return 0, None


def scan_all(scanner: PacketScanner, chunks: Sequence[bytes]) -> bytes:
    out: list[bytes | memoryview] = []
    for c in chunks:
        out += scanner.feed(c)
    # Join only at the end: a view handed out earlier must not have changed meanwhile.
    return b"".join(bytes(x) for x in out)


def expected_shown(logical: Sequence[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """What the inspector must see for these (seq, payload) logical packets."""
    out = []
    for _seq, payload in logical:
        first_len = min(len(payload), packets.MAX_PAYLOAD)
        if first_len <= packets.SMALL_PACKET:
            out.append((first_len, payload[:first_len]))
        else:
            out.append((first_len, payload[: packets.INSPECT_PREFIX]))
    return out


@contextmanager
def scaled_constants(max_payload: int = 200, small: int = 40, prefix: int = 8) -> Iterator[None]:
    assert prefix <= small < max_payload
    with mock.patch.multiple(packets, MAX_PAYLOAD=max_payload, SMALL_PACKET=small, INSPECT_PREFIX=prefix):
        yield


# --------------------------------------------------------------------------- frame


def test_frame_small_payload_header_and_seq() -> None:
    assert frame(b"abc", 5) == b"\x03\x00\x00\x05abc"
    assert frame(b"", 0) == b"\x00\x00\x00\x00"
    assert frame(b"\x01", 256) == b"\x01\x00\x00\x00\x01"  # seq is one byte and wraps
    assert frame(bytearray(b"xy"), 1) == b"\x02\x00\x00\x01xy"
    assert frame(memoryview(b"xyz")[1:], 9) == b"\x02\x00\x00\x09yz"
    n = 0xABCDE
    assert frame(bytes(n), 0)[:4] == b"\xde\xbc\x0a\x00"  # little-endian length


def test_frame_just_below_max_is_one_packet() -> None:
    payload = pattern(MAX_PAYLOAD - 1)
    out = frame(payload, 3)
    assert packet_heads(out) == [(MAX_PAYLOAD - 1, 3)]
    assert frame_count(MAX_PAYLOAD - 1) == 1


def test_frame_exactly_max_is_followed_by_an_empty_packet() -> None:
    payload = pattern(MAX_PAYLOAD)
    out = frame(payload, 3)
    assert packet_heads(out) == [(MAX_PAYLOAD, 3), (0, 4)]
    assert len(out) == MAX_PAYLOAD + 2 * HEADER_SIZE
    assert out[-4:] == b"\x00\x00\x00\x04"
    assert bodies(out) == payload
    assert frame_count(MAX_PAYLOAD) == 2


def test_frame_more_than_16mib_splits_and_seq_wraps() -> None:
    payload = pattern(2 * MAX_PAYLOAD + 10, salt=1)
    out = frame(payload, 254)
    assert packet_heads(out) == [(MAX_PAYLOAD, 254), (MAX_PAYLOAD, 255), (10, 0)]
    assert bodies(out) == payload
    assert frame_count(len(payload)) == 3
    # Same bytes whatever buffer type the payload comes in.
    assert frame(memoryview(payload), 254) == out


def test_frame_exact_multiple_of_max_ends_with_empty_packet() -> None:
    payload = pattern(2 * MAX_PAYLOAD, salt=2)
    out = frame(payload, 0)
    assert packet_heads(out) == [(MAX_PAYLOAD, 0), (MAX_PAYLOAD, 1), (0, 2)]
    assert bodies(out) == payload
    assert frame_count(len(payload)) == 3


@pytest.mark.parametrize("n", [0, 1, 200, 399, 400, 401, 600, 1000])
def test_frame_count_matches_frame(n: int) -> None:
    with scaled_constants(max_payload=200):
        assert len(packet_heads(frame(pattern(n), 0))) == frame_count(n)


# --------------------------------------------------------------------------- PacketReader


def test_reader_several_payloads_in_one_chunk_and_byte_by_byte() -> None:
    stream = frame(b"\x03SELECT 1", 0) + frame(b"", 7) + frame(b"\x0e", 0)
    want = [(0, b"\x03SELECT 1"), (7, b""), (0, b"\x0e")]
    assert PacketReader().feed(stream) == want
    r = PacketReader()
    got = read_all(r, [stream[i : i + 1] for i in range(len(stream))])
    assert got == want
    assert r.pending == 0


def test_reader_pending_counts_held_bytes() -> None:
    r = PacketReader()
    assert r.feed(b"\x05\x00\x00") == []
    assert r.pending == 3
    assert r.feed(b"\x00ab") == []
    assert r.pending == 6
    assert r.feed(b"cde") == [(0, b"abcde")]
    assert r.pending == 0


def test_reader_reassembles_exact_max_across_header_boundaries() -> None:
    payload = pattern(MAX_PAYLOAD, salt=3)
    stream = frame(payload, 1) + frame(b"next", 0)
    # Chunk edges inside the first header, at its end, inside the empty packet's header, and between packets.
    m = MAX_PAYLOAD + HEADER_SIZE
    cuts = [1, 3, 4, 5, 1 << 20, m - 1, m, m + 1, m + 3, m + 4, m + 5, m + 7]
    r = PacketReader()
    got = read_all(r, cut(stream, cuts))
    assert got == [(1, payload), (0, b"next")]
    assert r.pending == 0


def test_reader_reassembles_more_than_16mib() -> None:
    payload = pattern(2 * MAX_PAYLOAD + 5, salt=4)
    stream = frame(payload, 0)
    m = MAX_PAYLOAD + HEADER_SIZE
    r = PacketReader()
    chunks = cut(stream, [2, m - 2, m + 2, 2 * m - 1, 2 * m + 1, 2 * m + 4, len(stream) - 1])
    got: list[tuple[int, bytes]] = []
    for c in chunks[:-1]:
        got += r.feed(c)
    assert got == []  # nothing is complete before the last byte
    # Held: both full parts (headers dropped) and the last packet without its final byte.
    assert r.pending == len(stream) - 1 - 2 * HEADER_SIZE
    got += r.feed(chunks[-1])
    assert got == [(0, payload)]
    assert r.pending == 0


def test_reader_rejects_announced_size_before_the_bytes_arrive() -> None:
    r = PacketReader(max_payload=100)
    assert r.feed(b"\x64\x00\x00\x00" + bytes(100)) == [(0, bytes(100))]  # exactly the limit is fine
    with pytest.raises(PacketTooLarge) as ei:
        r.feed(b"\x65\x00\x00\x00")  # only the header of a 101-byte payload
    assert isinstance(ei.value, ProtocolError)
    assert ei.value.code == 1153
    assert ei.value.size == 101


def test_reader_gives_complete_payloads_before_an_oversized_header() -> None:
    """An SSLRequest and the client's TLS hello in one read: the hello (16 03 01 ...) reads as a
    header of a 66 326-byte packet, over the login limit, and must reach take_rest, not an error."""
    r = PacketReader(max_payload=64 * 1024)
    ssl_request = frame(bytes(32), 1)
    hello = bytes.fromhex("160301") + bytes(300)
    assert r.feed(ssl_request + hello) == [(1, bytes(32))]
    assert r.take_rest() == hello
    # Without a take_rest, the oversized packet is refused on the next read.
    r = PacketReader(max_payload=100)
    assert r.feed(frame(b"a", 0) + b"\x65\x00\x00\x00") == [(0, b"a")]
    with pytest.raises(PacketTooLarge):
        r.feed(b"x")


def test_reader_limit_counts_the_whole_split_payload() -> None:
    limit = MAX_PAYLOAD + 10
    ok = frame(pattern(limit), 0)
    assert PacketReader(max_payload=limit).feed(ok) == [(0, pattern(limit))]
    too_big = frame(pattern(limit + 1), 0)
    r = PacketReader(max_payload=limit)
    assert r.feed(too_big[: MAX_PAYLOAD + HEADER_SIZE]) == []  # the first part alone fits
    with pytest.raises(PacketTooLarge) as ei:
        r.feed(too_big[MAX_PAYLOAD + HEADER_SIZE :][:HEADER_SIZE])
    assert ei.value.size == limit + 1


def test_reader_limit_below_one_packet() -> None:
    with pytest.raises(PacketTooLarge):
        PacketReader(max_payload=MAX_PAYLOAD - 1).feed(b"\xff\xff\xff\x00")


# --------------------------------------------------------------------------- PacketScanner


def test_scanner_small_packets_shown_whole_and_forwarded() -> None:
    stream = frame(b"\x01", 1) + frame(b"\x03def", 2) + frame(b"", 3) + frame(b"\xfe\x00\x00\x02\x00", 4)
    rec = Recorder()
    s = PacketScanner(rec)
    assert scan_all(s, [stream]) == stream
    assert rec.seen == [(1, b"\x01"), (4, b"\x03def"), (0, b""), (5, b"\xfe\x00\x00\x02\x00")]
    assert s.rest == b""


def test_scanner_boundary_between_small_and_big() -> None:
    at_limit = pattern(SMALL_PACKET, salt=5)
    above = pattern(SMALL_PACKET + 1, salt=6)
    stream = frame(at_limit, 1) + frame(above, 2)
    rec = Recorder()
    assert scan_all(PacketScanner(rec), cut(stream, [7, SMALL_PACKET + 6, SMALL_PACKET + 9])) == stream
    assert rec.seen == [(SMALL_PACKET, at_limit), (SMALL_PACKET + 1, above[:INSPECT_PREFIX])]


def test_scanner_waits_for_the_prefix_of_a_big_packet() -> None:
    big = pattern(SMALL_PACKET * 3, salt=7)
    stream = frame(big, 5)
    rec = Recorder()
    s = PacketScanner(rec)
    first = HEADER_SIZE + INSPECT_PREFIX - 1
    assert b"".join(bytes(x) for x in s.feed(stream[:first])) == b""  # not enough to show it yet
    assert rec.seen == []
    out = b"".join(bytes(x) for x in s.feed(stream[first : first + 1]))
    assert rec.seen == [(len(big), big[:INSPECT_PREFIX])]
    out += scan_all(s, cut(stream[first + 1 :], [1, 100, 20000]))
    assert out == stream


def test_scanner_16mib_payload_shown_once_continuations_not_shown() -> None:
    big = pattern(MAX_PAYLOAD + 100, salt=8)
    stream = frame(b"\x01", 1) + frame(big, 2) + frame(b"\xfe\x00\x00\x02\x00", 4)
    m = HEADER_SIZE + 1 + HEADER_SIZE + MAX_PAYLOAD  # end of the first big part
    rec = Recorder()
    out = scan_all(PacketScanner(rec), cut(stream, [3, 6, 9, 40, m - 1, m + 1, m + 3, m + 5, m + 104, m + 106]))
    assert out == stream
    assert rec.seen == [(1, b"\x01"), (MAX_PAYLOAD, big[:INSPECT_PREFIX]), (5, b"\xfe\x00\x00\x02\x00")]


def test_scanner_exact_multiple_hides_the_empty_continuation_but_not_an_empty_packet() -> None:
    big = pattern(MAX_PAYLOAD, salt=9)
    stream = frame(big, 1) + frame(b"", 3)  # big is 0xFFFFFF + empty continuation (seq 2); then a real empty packet
    assert packet_heads(stream) == [(MAX_PAYLOAD, 1), (0, 2), (0, 3)]
    rec = Recorder()
    assert scan_all(PacketScanner(rec), [stream]) == stream
    assert rec.seen == [(MAX_PAYLOAD, big[:INSPECT_PREFIX]), (0, b"")]


def test_scanner_replacement_is_reframed_with_the_same_seq() -> None:
    stream = frame(b"\x01", 1) + frame(b"\x00\x00\x00\x02@\x00\x00", 7) + frame(b"tail", 8)

    def inspect(length: int, buf: packets.Buffer, at: int = 0, skimmed: int = 0) -> tuple[int, bytes | None]:
        return 0, (b"\x00\x00\x00\x02\x00\x00\x00" if bytes(buf[at + 4 : at + 5]) == b"@" else None)

    for chunks in ([stream], cut(stream, [5, 7, 10, 14]), [stream[i : i + 1] for i in range(len(stream))]):
        out = scan_all(PacketScanner(inspect), chunks)
        assert out == frame(b"\x01", 1) + frame(b"\x00\x00\x00\x02\x00\x00\x00", 7) + frame(b"tail", 8)


def test_scanner_stop_returns_at_the_packet_end_and_keeps_the_rest() -> None:
    p1, p2, p3 = frame(b"a", 1), frame(b"bb", 2), frame(b"ccc", 3)
    stream = p1 + p2 + p3 + b"\x05\x00"  # plus the start of something else
    shown: list[int] = []

    def inspect(length: int, buf: packets.Buffer, at: int = 0, skimmed: int = 0) -> tuple[int, None]:
        shown.append(length)
        return (7 if length == 2 else 0), None

    s = PacketScanner(inspect)
    assert b"".join(bytes(x) for x in s.feed(stream)) == p1 + p2
    assert shown == [1, 2]
    assert s.verdict == 7
    assert s.rest == p3 + b"\x05\x00"
    # The held bytes are scanned on the next feed, with nothing new needed.
    assert b"".join(bytes(x) for x in s.feed(b"")) == p3
    assert shown == [1, 2, 3]
    assert s.verdict == 0
    assert s.rest == b"\x05\x00"


def test_scanner_stop_on_a_long_packet_waits_for_its_body() -> None:
    """A verdict on a long packet (only its prefix was shown) stops after the packet's last byte."""
    big = pattern(SMALL_PACKET * 2, salt=3)
    stream = frame(b"a", 1) + frame(big, 2) + b"\x09"  # plus the start of something else

    def inspect(length: int, buf: packets.Buffer, at: int = 0, skimmed: int = 0) -> tuple[int, None]:
        return (1 if length == len(big) else 0), None

    s = PacketScanner(inspect)
    middle = HEADER_SIZE + 1 + HEADER_SIZE + 100
    out = b"".join(bytes(x) for x in s.feed(stream[:middle]))
    assert s.verdict == 0  # the body has not passed yet
    out += b"".join(bytes(x) for x in s.feed(stream[middle:]))
    assert s.verdict == 1
    assert out == stream[:-1]
    assert s.rest == b"\x09"


def test_scanner_reset_forgets_a_half_packet() -> None:
    rec = Recorder()
    s = PacketScanner(rec)
    s.feed(frame(pattern(SMALL_PACKET * 2), 1)[:200])  # inside a big packet's body
    s.reset()
    assert scan_all(s, [frame(b"\x00ok", 1)]) == frame(b"\x00ok", 1)
    assert rec.seen[-1] == (3, b"\x00ok")


# --------------------------------------------------------------------------- properties


@st.composite
def logical_packets(draw: st.DrawFn, max_size: int, boundaries: Sequence[int]) -> list[tuple[int, bytes]]:
    """(seq, payload) lists; sizes are biased to the interesting boundaries."""
    size = st.one_of(
        st.integers(0, 30),
        st.sampled_from(list(boundaries)),
        st.integers(0, max_size),
    )
    specs = draw(st.lists(st.tuples(st.integers(0, 255), size, st.integers(0, 255)), min_size=1, max_size=6))
    return [(seq, pattern(n, salt)) for seq, n, salt in specs]


def _boundaries(max_payload: int, small: int, prefix: int) -> list[int]:
    out = {max_payload - 1, max_payload, max_payload + 1, 2 * max_payload, 2 * max_payload + 1, small, small + 1, prefix}
    return sorted(out)


def _check_reader(logical: list[tuple[int, bytes]], cuts: list[int]) -> None:
    stream = b"".join(frame(p, seq) for seq, p in logical)
    r = PacketReader()
    got = read_all(r, cut(stream, cuts))
    assert got == [(seq & 0xFF, p) for seq, p in logical]
    assert r.pending == 0


def _check_scanner(logical: list[tuple[int, bytes]], cuts: list[int]) -> None:
    stream = b"".join(frame(p, seq) for seq, p in logical)
    chunks = cut(stream, cuts)
    rec = Recorder()
    s = PacketScanner(rec)
    assert scan_all(s, chunks) == stream
    assert rec.seen == expected_shown(logical)
    assert s.rest == b""

    # With replacements: small packets come back re-framed with their own seq, big ones untouched.
    rec = Recorder(replace=True)
    want = b"".join(
        frame(b"R" + p + b"!", seq) if len(p) <= packets.SMALL_PACKET else frame(p, seq) for seq, p in logical
    )
    assert scan_all(PacketScanner(rec), chunks) == want


_REAL_MAX = 3 * SMALL_PACKET  # real constants: no 16 MiB payloads in a random loop


@FAST
@given(logical_packets(_REAL_MAX, [SMALL_PACKET - 1, SMALL_PACKET, SMALL_PACKET + 1, INSPECT_PREFIX]), st.lists(st.integers(0, 4 * _REAL_MAX), max_size=12))
def test_reader_returns_exactly_the_payloads(logical: list[tuple[int, bytes]], cuts: list[int]) -> None:
    _check_reader(logical, cuts)


@FAST
@given(logical_packets(_REAL_MAX, [SMALL_PACKET - 1, SMALL_PACKET, SMALL_PACKET + 1, INSPECT_PREFIX]), st.lists(st.integers(0, 4 * _REAL_MAX), max_size=12))
def test_scanner_forwards_input_and_shows_each_packet_once(logical: list[tuple[int, bytes]], cuts: list[int]) -> None:
    _check_scanner(logical, cuts)


@FAST
@given(logical_packets(650, _boundaries(200, 40, 8)), st.lists(st.integers(0, 3000), max_size=25))
def test_reader_property_with_scaled_split_size(logical: list[tuple[int, bytes]], cuts: list[int]) -> None:
    with scaled_constants(200, 40, 8):
        _check_reader(logical, cuts)


@FAST
@given(logical_packets(650, _boundaries(200, 40, 8)), st.lists(st.integers(0, 3000), max_size=25))
def test_scanner_property_with_scaled_split_size(logical: list[tuple[int, bytes]], cuts: list[int]) -> None:
    with scaled_constants(200, 40, 8):
        _check_scanner(logical, cuts)


@FAST
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=8), st.integers(0, 2**32))
def test_scanner_stop_then_resume_loses_and_repeats_nothing(payloads: list[bytes], seed: int) -> None:
    """Stopping at any packet and resuming with feed(b'') yields the stream once, in order."""
    # Each payload starts with its index, so the inspector can tell which one it is shown.
    payloads = [bytes((i,)) + p for i, p in enumerate(payloads)]
    stream = b"".join(frame(p, i) for i, p in enumerate(payloads))
    rnd = random.Random(seed)
    stop_at = {i for i in range(len(payloads)) if rnd.random() < 0.5}
    shown: list[int] = []

    def inspect(length: int, buf: packets.Buffer, at: int = 0, skimmed: int = 0) -> tuple[int, None]:
        p = bytes(buf[at : at + length])
        seq = p[0]
        shown.append(seq)
        return (1 if seq in stop_at else 0), None

    s = PacketScanner(inspect)
    out = b"".join(bytes(x) for x in s.feed(stream))
    for _ in range(len(payloads)):
        out += b"".join(bytes(x) for x in s.feed(b""))
    assert out == stream
    assert shown == list(range(len(payloads)))
    assert s.rest == b""


# --------------------------------------------------------------------------- skimming


def test_scanner_skim_counts_rows_and_shows_eof() -> None:
    """After SKIM only packets starting with 0xFE / 0xFF are shown, with the count skimmed before them."""
    shown: list[tuple[bytes, int]] = []

    def inspect(length: int, buf: packets.Buffer, at: int = 0, skimmed: int = 0) -> tuple[int, None]:
        p = bytes(buf[at : at + length])
        shown.append((p, skimmed))
        return (1 if p[0] == 0xFF else SKIM), None

    rows = [b"\x01a", b"\x03def", b"\x00", b"\xfb"]
    stream = b"".join(frame(p, i) for i, p in enumerate([b"\x02", *rows, b"\xfe\x00\x00\x02\x00", b"\x01b", b"\xff\x10\x00"]))
    s = PacketScanner(inspect)
    for size in (len(stream), 1):
        shown.clear()
        s.reset()
        out = scan_all(s, cut(stream, list(range(size, len(stream), size))))
        assert out == stream
        assert shown == [(b"\x02", 0), (b"\xfe\x00\x00\x02\x00", 4), (b"\xff\x10\x00", 1)]
        assert s.verdict == 1


def test_scanner_skim_ends_with_the_next_packet_shown() -> None:
    """Skimming lasts until a packet is shown; a verdict other than SKIM there shows everything again."""
    shown: list[bytes] = []

    def inspect(length: int, buf: packets.Buffer, at: int = 0, skimmed: int = 0) -> tuple[int, None]:
        p = bytes(buf[at : at + length])
        shown.append(p)
        return (SKIM if p[0] == 0x02 else 0), None

    payloads = [b"\x02", b"\x01", b"\xfe\x00\x00\x0a\x00", b"\x01", b"\x03"]
    assert scan_all(PacketScanner(inspect), [b"".join(frame(p, 1) for p in payloads)])
    assert shown == [b"\x02", b"\xfe\x00\x00\x0a\x00", b"\x01", b"\x03"]


def _check_skimming(logical: list[tuple[int, bytes]], cuts: list[int]) -> None:
    stream = b"".join(frame(p, seq) for seq, p in logical)
    shown: list[tuple[bytes, int]] = []

    def inspect(length: int, buf: packets.Buffer, at: int = 0, skimmed: int = 0) -> tuple[int, None]:
        p = bytes(buf[at : at + length])
        shown.append((p, skimmed))
        return SKIM, None

    s = PacketScanner(inspect)
    assert scan_all(s, cut(stream, cuts)) == stream
    # The first packet is always shown; after it, those that are empty or start with 0xFE / 0xFF.
    heads = expected_shown(logical)
    want, skimmed = [], 0
    for i, (_length, head) in enumerate(heads):
        if i and head and head[0] < 0xFE:
            skimmed += 1
        else:
            want.append((head, skimmed))
            skimmed = 0
    assert shown == want
    assert s._skimmed == skimmed


@st.composite
def skimmed_packets(draw: st.DrawFn, max_size: int, boundaries: Sequence[int]) -> list[tuple[int, bytes]]:
    """Like logical_packets, with first bytes that are often 0xFE or 0xFF."""
    logical = draw(logical_packets(max_size, boundaries))
    firsts = draw(st.lists(st.sampled_from([0x00, 0x03, 0xFB, 0xFE, 0xFF]), min_size=len(logical), max_size=len(logical)))
    return [(seq, bytes((f,)) + p[1:] if p else p) for (seq, p), f in zip(logical, firsts)]


@FAST
@given(skimmed_packets(650, _boundaries(200, 40, 8)), st.lists(st.integers(0, 3000), max_size=25))
def test_scanner_skims_across_any_cut_and_split_size(logical: list[tuple[int, bytes]], cuts: list[int]) -> None:
    with scaled_constants(200, 40, 8):
        _check_skimming(logical, cuts)
