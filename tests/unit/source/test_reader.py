"""The readers behind one interface: which one runs (the --reader rules, in one place), and
what each sends read back through `Reader.parse` (no SSH)."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from p2v.errors import SourceDeviceError, StreamError
from p2v.source import reader as reader_module
from p2v.source.extents import ranges_input
from p2v.source.reader import Python3Reader, Reader, ShReader, choose_reader

CHUNK = 64 << 10


def pick(requested: str, python3: bool = True, gzip: bool = True,
         preferred: str = "python3", zstd: bool = False) -> Reader:
    return choose_reader(requested, python3=python3, gzip=gzip, host="h", device="/dev/x",
                         preferred=preferred, zstd=zstd)


def test_auto_takes_python3_where_the_source_has_it_else_sh() -> None:
    assert pick("auto") == Python3Reader()
    assert pick("auto", python3=False) == ShReader(gzip=True)
    assert pick("auto", python3=False, gzip=False) == ShReader(gzip=False)
    assert pick("sh") == ShReader(gzip=True)
    assert pick("python3").name == "python3" and pick("sh").name == "sh"


def test_auto_keeps_the_preferred_reader_and_python3_needs_python3() -> None:
    assert pick("auto", preferred="sh") == ShReader(gzip=True)
    assert pick("auto", python3=False, preferred="python3").name == "sh"
    assert pick("python3", preferred="sh").name == "python3"
    with pytest.raises(SourceDeviceError, match="no python3"):
        pick("python3", python3=False)


def codec_arg(reader: Reader, compress: bool = True) -> str:
    argv = reader.argv("/dev/x", CHUNK, compress=compress, low_priority=False, skip_free=True)
    return argv[-1] if reader.name == "sh" else argv[-2]


def test_the_sh_reader_compresses_only_where_the_source_has_gzip_or_zstd() -> None:
    assert codec_arg(ShReader(gzip=True)) == "gzip"
    assert codec_arg(ShReader(gzip=False)) == "none"
    assert codec_arg(ShReader(gzip=True, zstd=True)) == "zstd"
    assert codec_arg(ShReader(gzip=False, zstd=True)) == "zstd"
    assert codec_arg(ShReader(gzip=True, zstd=True), compress=False) == "none"
    assert pick("sh", gzip=False, zstd=True) == ShReader(gzip=False, zstd=True)


def test_zstd_is_asked_for_only_where_this_host_decompresses_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No zstandard module and no zstd binary here: zlib (python3), gzip (sh)."""
    assert codec_arg(Python3Reader()) == "zstd"
    assert codec_arg(Python3Reader(), compress=False) == "none"
    monkeypatch.setattr(reader_module, "accepts_zstd", lambda: False)
    assert codec_arg(Python3Reader()) == "zlib"
    assert codec_arg(ShReader(gzip=True, zstd=True)) == "gzip"


def test_the_python3_reader_streams_the_chunks_asked_for(tmp_path: Path) -> None:
    reader = Python3Reader()
    disk = tmp_path / "disk.raw"
    content = os.urandom(CHUNK) + bytes(CHUNK) + (b"text " * CHUNK)[:CHUNK] + os.urandom(100)
    disk.write_bytes(content)
    ranges = [(0, 1), (2, 4)]
    argv = reader.argv(str(disk), CHUNK, compress=True, low_priority=False, skip_free=False)
    raw = subprocess.run(argv, input=ranges_input(ranges), capture_output=True,
                         check=True).stdout
    stream = reader.parse(io.BytesIO(raw), CHUNK, host="h", device="d", size=len(content),
                          ranges=ranges)
    assert (stream.size, stream.chunk_size) == (len(content), CHUNK)
    got = [(e.index, e.corrupt, e.data) for e in stream.extents]
    assert got == [(0, False, content[:CHUNK]), (2, False, content[2 * CHUNK:3 * CHUNK]),
                   (3, False, content[3 * CHUNK:])]


def test_the_sh_reader_parses_its_stream() -> None:
    """(The sh reader needs a block device to run: its stream is canned here.)"""
    raw = b"P2VSH2 70000 65536 none\nZ 0 65536\nZ 1 4464\nE\n"
    stream = ShReader().parse(io.BytesIO(raw), CHUNK, host="h", device="d", size=70000,
                              ranges=[(0, 2)])
    assert (stream.size, stream.chunk_size) == (70000, CHUNK)
    assert [(e.index, e.zero, e.length) for e in stream.extents] == [(0, True, CHUNK),
                                                                     (1, True, 4464)]


@pytest.mark.parametrize("reader", [Python3Reader(), ShReader()])
def test_no_header_is_a_stream_error(reader: Reader) -> None:
    with pytest.raises(StreamError, match="no stream header"):
        reader.parse(io.BytesIO(b"P2"), CHUNK, host="h", device="d", size=CHUNK,
                     ranges=[(0, 1)])
