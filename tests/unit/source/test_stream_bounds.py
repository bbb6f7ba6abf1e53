"""Crafted reader streams on this side (issue 13, defect 8): every frame is checked against
what was asked, payloads are capped at the chunk and decompression is bounded."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from p2v.errors import StreamError
from p2v.source.extents import (
    KIND_END,
    KIND_RAW,
    KIND_ZERO,
    KIND_ZLIB,
    READER,
    ranges_input,
    read_extents,
    read_header,
)
from p2v.source.hasher import read_hashes
from p2v.source.shreader import read_sh_extents, read_sh_header

CHUNK = 64 << 10
SIZE = 4 * CHUNK - 100                  # four chunks, the last one short
_FRAME = struct.Struct(">BQI32sI")
NOHASH = b"\0" * 32


def frame(kind: int, index: int, length: int, payload: bytes = b"",
          digest: bytes = NOHASH) -> bytes:
    return _FRAME.pack(kind, index, length, digest, len(payload)) + payload


def data_frame(index: int, data: bytes) -> bytes:
    return frame(KIND_RAW, index, len(data), data, hashlib.sha256(data).digest())


def end() -> bytes:
    return frame(KIND_END, 0, 0)


def parse(body: bytes, ranges: list[tuple[int, int]] | None = None, chunk: int = CHUNK,
          size: int = SIZE) -> list:
    return list(read_extents(io.BytesIO(body), chunk, host="h", device="/dev/sda",
                             size=size, ranges=[(0, 4)] if ranges is None else ranges))


def zeros(*indexes: int) -> bytes:
    return b"".join(frame(KIND_ZERO, i, CHUNK if i < 3 else SIZE - 3 * CHUNK)
                    for i in indexes)


def test_a_well_formed_stream_passes() -> None:
    data = os.urandom(CHUNK)
    extents = parse(zeros(0) + data_frame(1, data) + zeros(2, 3) + end())
    assert [e.index for e in extents] == [0, 1, 2, 3] and extents[1].data == data


@pytest.mark.parametrize(("body", "ranges", "why"), [
    (zeros(0, 2) + end(), [(0, 2)], "chunk 2 where chunk 1 was asked for"),       # not asked
    (zeros(1, 0) + end(), [(0, 2)], "chunk 1 where chunk 0 was asked for"),       # order
    (zeros(0, 0) + end(), [(0, 2)], "chunk 0 where chunk 1 was asked for"),       # repeated
    (zeros(0, 1, 2) + end(), [(0, 2)], "chunk 2 where no more was asked for"),
    (zeros(0) + end(), [(0, 2)], "ended after 1 of the 2 chunks asked for"),
    (frame(KIND_ZERO, 0, CHUNK + 1) + end(), [(0, 1)], "length 65537 (chunks are 65536)"),
    (frame(KIND_ZERO, 3, CHUNK) + end(), [(3, 4)], "chunk 3 has length 65536, not 65436"),
    (frame(KIND_ZERO, 0, 0) + end(), [(0, 1)], "chunk 0 has length 0"),
    (frame(KIND_RAW, 0, CHUNK, bytes(CHUNK + 1)) + end(), [(0, 1)], "65537-byte payload"),
    (frame(KIND_RAW, 0, CHUNK, bytes(10)) + end(), [(0, 1)], "10-byte payload"),
    (frame(KIND_ZERO, 0, CHUNK, b"xx") + end(), [(0, 1)], "with a 2-byte payload"),
    (frame(9, 0, CHUNK) + end(), [(0, 1)], "unknown frame kind 9"),
])
def test_a_frame_not_asked_for_is_a_stream_error(body: bytes, ranges: list[tuple[int, int]],
                                                  why: str) -> None:
    with pytest.raises(StreamError) as info:
        parse(body, ranges)
    assert why in info.value.message and "\n" not in info.value.message


def test_a_huge_payload_length_is_refused_before_it_is_read() -> None:
    """A garbled length field must not make this side wait for (or buffer) 4 GiB."""
    body = _FRAME.pack(KIND_RAW, 0, CHUNK, NOHASH, 0xFFFFFFFF) + bytes(100)
    with pytest.raises(StreamError, match="4294967295-byte payload"):
        parse(body, [(0, 1)])


def peak_bytes(work: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_zlib_bomb_is_a_corrupt_chunk_and_never_inflated() -> None:
    chunk = 1 << 20
    bomb = zlib.compress(bytes(256 << 20), 9)           # ~250 KiB that inflate to 256 MiB
    assert len(bomb) < chunk
    body = frame(KIND_ZLIB, 0, chunk, bomb, hashlib.sha256(bytes(chunk)).digest()) + end()
    got: list = []
    peak = peak_bytes(lambda: got.extend(parse(body, [(0, 1)], chunk=chunk, size=chunk)))
    assert [(e.index, e.corrupt) for e in got] == [(0, True)]
    assert peak < 8 * chunk, peak


def test_a_zlib_payload_shorter_than_its_chunk_is_corrupt() -> None:
    data = b"text " * (CHUNK // 5) + b"x"
    short = zlib.compress(data[:-1])
    body = frame(KIND_ZLIB, 0, CHUNK, short, hashlib.sha256(data).digest()) + end()
    (extent,) = parse(body, [(0, 1)])
    assert extent.corrupt


# -- the sh reader's stream -------------------------------------------------------------------

def sh_parse(body: bytes, ranges: list[tuple[int, int]], chunk: int = CHUNK,
             size: int = SIZE) -> list:
    buffered, got_size, got_chunk, _ = read_sh_header(io.BytesIO(
        f"P2VSH2 {size} {chunk} gzip\n".encode() + body))
    return list(read_sh_extents(buffered, got_chunk, host="h", device="/dev/sda",
                                size=got_size, ranges=ranges))


def sh_data(index: int, data: bytes) -> bytes:
    return (f"D {index} {len(data)} R\n".encode() + data
            + f"H {hashlib.sha256(data).hexdigest()}\n".encode())


@pytest.mark.parametrize(("body", "ranges", "why"), [
    (b"Z 0 65536\nZ 2 65536\nE\n", [(0, 2)], "chunk 2 where chunk 1 was asked for"),
    (b"Z 1 65536\nZ 0 65536\nE\n", [(0, 2)], "chunk 1 where chunk 0 was asked for"),
    (b"Z 0 65536\nZ 0 65536\nE\n", [(0, 2)], "chunk 0 where chunk 1 was asked for"),
    (b"Z 0 65536\nE\n", [(0, 2)], "ended after 1 of the 2 chunks asked for"),
    (b"Z 3 65536\nE\n", [(3, 4)], "chunk 3 has length 65536, not 65436"),
    (b"Z 0 65537\nE\n", [(0, 1)], "length 65537 (chunks are 65536)"),
    (sh_data(1, os.urandom(100)) + b"E\n", [(1, 2)], "chunk 1 has length 100, not 65536"),
])
def test_an_sh_chunk_not_asked_for_is_a_stream_error(body: bytes,
                                                      ranges: list[tuple[int, int]],
                                                      why: str) -> None:
    with pytest.raises(StreamError) as info:
        sh_parse(body, ranges)
    assert why in info.value.message and "\n" not in info.value.message


def test_a_gzip_bomb_from_the_sh_reader_is_never_inflated() -> None:
    chunk = 1 << 20
    bomb = gzip.compress(bytes(256 << 20), 9)
    body = f"D 0 {chunk} G\n".encode() + bomb + b"H " + b"0" * 64 + b"\nE\n"
    peak = peak_bytes(lambda: pytest.raises(StreamError, sh_parse, body, [(0, 1)],
                                            chunk=chunk, size=chunk))
    assert peak < 8 * chunk, peak


def test_the_hash_list_refuses_an_endless_line() -> None:
    body = b"P2VHASH1 131072 65536\n0 " + b"a" * 10_000 + b"\nE\n"
    with pytest.raises(StreamError, match="garbled line"):
        list(read_hashes(io.BytesIO(body), CHUNK, 2 * CHUNK))


# -- ranges on stdin (defect 4), with the real programs run locally ----------------------------

def scattered(count: int) -> list[tuple[int, int]]:
    """Every other chunk: one range per chunk sent."""
    return [(i, i + 1) for i in range(0, count, 2)]


def test_the_python_reader_takes_more_ranges_than_argv_could(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    count = 24_000
    with disk.open("wb") as f:
        f.truncate(count * 512)
    ranges = scattered(count)
    text = ranges_input(ranges)
    assert len(text) > 128 << 10                        # over one argument's limit
    out = subprocess.run([sys.executable, "-B", "-c", READER, str(disk), "512", "zlib", "0"],
                         input=text, capture_output=True, check=True, timeout=120).stdout
    stream = io.BytesIO(out)
    size, chunk, _ = read_header(stream)
    got = [e.index for e in read_extents(stream, chunk, size=size, ranges=ranges)]
    assert got == list(range(0, count, 2))

