"""zstd on this side of the wire: frames found by their block headers (the sh reader sends
no length), decompressed exactly to the chunk's length by the zstandard module or by the
zstd binary, bombs never inflated, and zstd frames in both readers' streams."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import subprocess
from collections.abc import Callable

import pytest

from p2v.errors import StreamError
from p2v.source import codec
from p2v.source.extents import KIND_ZSTD, read_extents
from p2v.source.shreader import read_sh_extents, read_sh_header

zstandard = pytest.importorskip("zstandard")

CHUNK = 1 << 16
TEXT = (b"a chunk of text that compresses well " * 4000)[:CHUNK]


def binary_frame(data: bytes, *extra: str) -> bytes:
    """What the zstd binary sends from a pipe (no content size in the header)."""
    return subprocess.run(["zstd", "-q", "-c", "-1", *extra], input=data,
                          capture_output=True, check=True).stdout


FRAMES: dict[str, Callable[[bytes], bytes]] = {
    "module": lambda d: zstandard.ZstdCompressor(level=1).compress(d),
    "module-checksum": lambda d: zstandard.ZstdCompressor(level=3, write_checksum=True
                                                          ).compress(d),
    "binary": binary_frame,
    "binary-no-checksum": lambda d: binary_frame(d, "--no-check"),
}


@pytest.mark.parametrize("make", FRAMES.values(), ids=FRAMES.keys())
@pytest.mark.parametrize("data", [TEXT, os.urandom(CHUNK), bytes(CHUNK) + b"x",
                                  b"x" * (3 * CHUNK)], ids=["text", "random", "rle", "long"])
def test_frame_end_finds_where_each_frame_ends(make: Callable[[bytes], bytes],
                                               data: bytes) -> None:
    frame = make(data)
    assert codec.frame_end(frame + b"H next line\n") == len(frame)
    for cut in (0, 3, 5, len(frame) // 2, len(frame) - 1):
        assert codec.frame_end(frame[:cut]) is None
    assert codec.unzstd(frame, len(data)) == data


def test_not_a_frame_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a zstd frame"):
        codec.frame_end(b"\x1f\x8b\x08\x00\x00\x00")


def test_unzstd_wants_exactly_one_frame_of_exactly_the_length() -> None:
    frame = FRAMES["module"](TEXT)
    assert codec.unzstd(frame, len(TEXT) - 1) is None        # longer than said
    assert codec.unzstd(frame, len(TEXT) + 1) is None        # shorter than said
    assert codec.unzstd(frame + b"tail", len(TEXT)) is None  # bytes after the frame
    assert codec.unzstd(frame[:-3], len(TEXT)) is None       # cut
    assert codec.unzstd(b"garbage!", len(TEXT)) is None


@pytest.mark.parametrize("content_size", [True, False])
def test_a_zstd_bomb_is_never_inflated(content_size: bool) -> None:
    bomb = zstandard.ZstdCompressor(level=19, write_content_size=content_size
                                    ).compress(bytes(256 << 20))
    assert len(bomb) < CHUNK
    assert codec.unzstd(bomb, 1 << 20) is None


def test_the_zstd_binary_decodes_when_the_module_is_missing() -> None:
    decode = codec._binary_decoder()
    assert decode is not None
    frame = FRAMES["binary"](TEXT)
    assert decode(frame, len(TEXT)) == TEXT
    assert decode(frame, len(TEXT) - 1) is None              # never more than asked
    assert decode(b"garbage!", 10) is None
    bomb = binary_frame(bytes(64 << 20))
    assert decode(bomb, CHUNK) is None


def test_no_decoder_means_no_zstd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "zstd_decoder", lambda: None)
    assert not codec.accepts_zstd()
    assert codec.unzstd(FRAMES["module"](TEXT), len(TEXT)) is None


def test_a_zstd_frame_in_the_python3_stream() -> None:
    frame = FRAMES["module"](TEXT)
    body = (struct.pack(">BQI32sI", KIND_ZSTD, 0, CHUNK, hashlib.sha256(TEXT).digest(),
                        len(frame)) + frame + struct.pack(">BQI32sI", 3, 0, 0, b"\0" * 32, 0))
    (extent,) = read_extents(io.BytesIO(body), CHUNK, size=CHUNK, ranges=[(0, 1)])
    assert extent.data == TEXT and extent.packed and not extent.corrupt
    assert extent.wire_bytes == 49 + len(frame)


def sh_stream(*chunks: bytes) -> bytes:
    return (f"P2VSH2 {len(chunks) * CHUNK} {CHUNK} zstd\n".encode() + b"".join(chunks)
            + b"E\n")


def sh_chunk(index: int, data: bytes, frame: bytes) -> bytes:
    return (f"D {index} {len(data)} S\n".encode() + frame
            + f"H {hashlib.sha256(data).hexdigest()}\n".encode())


def test_zstd_frames_in_the_sh_stream_end_where_the_next_line_starts() -> None:
    lines = b"\n" * CHUNK                    # content that looks like lines
    stream = sh_stream(sh_chunk(0, TEXT, binary_frame(TEXT)), b"Z 1 65536\n",
                       sh_chunk(2, lines, binary_frame(lines)))
    buffered, size, chunk, name = read_sh_header(io.BytesIO(stream))
    assert (size, chunk, name) == (3 * CHUNK, CHUNK, "zstd")
    extents = list(read_sh_extents(buffered, chunk, size=size, ranges=[(0, 3)]))
    assert [(e.index, e.zero, e.packed, e.corrupt) for e in extents] == [
        (0, False, True, False), (1, True, False, False), (2, False, True, False)]
    assert extents[0].data == TEXT and extents[2].data == lines
    assert sum(e.wire_bytes for e in extents) == len(stream) - len(
        b"P2VSH2 196608 65536 zstd\nE\n")


def test_a_damaged_or_oversized_sh_zstd_chunk() -> None:
    frame = bytearray(binary_frame(TEXT))
    frame[-6] ^= 0xFF                        # inside the last block (or its checksum)
    buffered, size, chunk, _ = read_sh_header(io.BytesIO(sh_stream(
        sh_chunk(0, TEXT, bytes(frame)))))
    (extent,) = read_sh_extents(buffered, chunk, size=size, ranges=[(0, 1)])
    assert extent.corrupt
    bomb = binary_frame(bytes(16 * CHUNK))
    buffered, size, chunk, _ = read_sh_header(io.BytesIO(sh_stream(
        sh_chunk(0, bytes(CHUNK), bomb))))
    (extent,) = read_sh_extents(buffered, chunk, size=size, ranges=[(0, 1)])
    assert extent.corrupt
    endless = codec.ZSTD_MAGIC + b"\x00\x00" + b"\x00\x00\x00" * (CHUNK // 2)
    buffered, size, chunk, _ = read_sh_header(io.BytesIO(sh_stream(
        f"D 0 {CHUNK} S\n".encode() + endless)))
    with pytest.raises(StreamError, match="larger than its chunk|inside a zstd frame"):
        list(read_sh_extents(buffered, chunk, size=size, ranges=[(0, 1)]))
