"""The compressed protocol's framing (proxy/mysql/compress.py), bytes only.

Through the proxy it is tested with real clients: tests/test_clients_php.py (mysqlnd compresses
whenever it asked to), tests/test_clients_node.py and tests/test_clients_cli.py (--compress).
"""

from __future__ import annotations

import os
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.mysql.compress import HEADER_SIZE, MAX_CHUNK, MIN_COMPRESS_LENGTH, Compression
from proxy.mysql.packets import ProtocolError, frame


def header(data: bytes) -> tuple[int, int, int]:
    return int.from_bytes(data[:3], "little"), data[3], int.from_bytes(data[4:7], "little")


def test_short_payload_goes_uncompressed_with_length_zero() -> None:
    c = Compression()
    packet = frame(b"\x03SELECT 1", 0)
    assert len(packet) < MIN_COMPRESS_LENGTH
    out = c.wrap(packet)
    assert header(out) == (len(packet), 0, 0)
    assert out[HEADER_SIZE:] == packet


def test_long_payload_is_zlib_and_says_its_inflated_length() -> None:
    c = Compression()
    packet = frame(b"x" * 5000, 1)
    out = c.wrap(packet)
    length, seq, inflated = header(out)
    assert (seq, inflated) == (0, len(packet)) and length == len(out) - HEADER_SIZE < len(packet)
    assert zlib.decompress(out[HEADER_SIZE:]) == packet


def test_incompressible_payload_is_stored_as_it_is() -> None:
    packet = os.urandom(4000)
    out = Compression().wrap(packet)
    assert header(out) == (len(packet), 0, 0) and out[HEADER_SIZE:] == packet


def test_sequence_ids_follow_the_peer_and_count_each_packet_sent() -> None:
    """A command arrives as compressed packet 0: the answer's packets are 1, 2, ... (mysqlnd checks)."""
    c = Compression()
    peer = Compression()
    assert c.unwrap(peer.wrap(frame(b"\x03SELECT 1", 0))) == frame(b"\x03SELECT 1", 0)
    assert [header(c.wrap(b"a" * 10))[1] for _ in range(3)] == [1, 2, 3]
    peer.seq = 0  # the client's next command starts again at 0
    c.unwrap(peer.wrap(b"\x01\x00\x00\x00\x0e"))
    assert header(c.wrap(b"b"))[1] == 1


def test_more_than_16_mib_is_split_into_several_compressed_packets() -> None:
    data = b"z" * (MAX_CHUNK + 10)
    c = Compression()
    out = c.wrap(data)
    assert c.seq == 2
    assert Compression().unwrap(out) == data


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8), st.integers(1, 50))
def test_unwrap_joins_what_wrap_made_whatever_the_reads(chunks: list[bytes], step: int) -> None:
    sender, receiver = Compression(), Compression()
    wire = b"".join(sender.wrap(c) for c in chunks if c)
    got = b"".join(receiver.unwrap(wire[i : i + step]) for i in range(0, len(wire), step))
    assert got == b"".join(chunks)


def test_corrupt_or_lying_packets_are_protocol_errors() -> None:
    body = zlib.compress(b"y" * 100)
    with pytest.raises(ProtocolError):
        Compression().unwrap(len(body).to_bytes(3, "little") + b"\x00" + (99).to_bytes(3, "little") + body)
    with pytest.raises(ProtocolError):
        Compression().unwrap((5).to_bytes(3, "little") + b"\x00" + (100).to_bytes(3, "little") + b"junk!")
