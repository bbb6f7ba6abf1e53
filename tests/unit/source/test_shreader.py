"""The sh reader's stream on this side: zero lines, raw and gzip chunks (a gzip member ends
where the next line starts), a damaged chunk flagged, a broken stream a StreamError."""

from __future__ import annotations

import gzip
import hashlib
import io
import os

import pytest

from p2v.errors import StreamError
from p2v.source.shreader import read_sh_extents, read_sh_header

CHUNK = 1 << 16


def frame(index: int, data: bytes, packed: bool) -> bytes:
    payload = gzip.compress(data, 1) if packed else data
    head = f"D {index} {len(data)} {'G' if packed else 'R'}\n".encode()
    return head + payload + f"H {hashlib.sha256(data).hexdigest()}\n".encode()


def parse(stream: bytes) -> list:
    buffered, size, chunk, _ = read_sh_header(io.BytesIO(stream))
    assert (size, chunk) == (4 * CHUNK - 100, CHUNK)
    return list(read_sh_extents(buffered, chunk))


def test_zero_raw_and_gzip_chunks_in_one_stream() -> None:
    text = (b"some text that compresses " * 5000)[:CHUNK]
    noise = os.urandom(CHUNK)
    tail = b"\n" * (CHUNK - 100)         # a gzip member whose content looks like lines
    stream = (f"P2VSH2 {4 * CHUNK - 100} {CHUNK} gzip\n".encode() + b"Z 0 65536\n"
              + frame(1, text, True) + frame(2, noise, False) + frame(3, tail, True) + b"E\n")
    extents = parse(stream)
    assert [e.index for e in extents] == [0, 1, 2, 3]
    assert extents[0].zero and extents[0].data == b""
    assert [e.data for e in extents[1:]] == [text, noise, tail]
    assert not any(e.corrupt for e in extents)
    assert extents[1].wire_bytes < CHUNK // 10 < CHUNK < extents[2].wire_bytes
    assert sum(e.wire_bytes for e in extents) == len(
        stream) - len(b"P2VSH2 262044 65536 gzip\nE\n")


def test_a_damaged_chunk_is_flagged_not_written() -> None:
    data = os.urandom(CHUNK)
    good = frame(1, data, False)
    bad = good.replace(data[:8], b"\0" * 8, 1)
    stream = f"P2VSH2 {4 * CHUNK - 100} {CHUNK} gzip\n".encode() + bad + b"E\n"
    (extent,) = parse(stream)
    assert extent.corrupt


@pytest.mark.parametrize("cut", [30, 200, CHUNK // 2, CHUNK + 40])
def test_a_cut_stream_is_a_stream_error(cut: int) -> None:
    stream = (f"P2VSH2 {4 * CHUNK - 100} {CHUNK} gzip\n".encode()
              + frame(0, os.urandom(CHUNK), False) + b"E\n")
    with pytest.raises(StreamError):
        parse(stream[:cut])


def test_a_short_read_on_the_source_does_not_pass_as_a_chunk() -> None:
    data = os.urandom(CHUNK)
    short = (f"D 0 {CHUNK} R\n".encode() + data[:1000]
             + f"H {hashlib.sha256(data[:1000]).hexdigest()}\n".encode())
    stream = f"P2VSH2 {4 * CHUNK - 100} {CHUNK} gzip\n".encode() + short + b"E\n"
    with pytest.raises(StreamError):
        parse(stream)
