"""The source-side reader and the stream parser, run locally on files (no SSH)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from p2v.errors import StreamError
from p2v.source.extents import (
    READER,
    format_ranges,
    missing_ranges,
    ranges_input,
    read_extents,
    read_header,
    reader_argv,
)
from p2v.transfer.device import image_stem

CHUNK = 64 << 10


def run_reader(path: Path, ranges: str, compress: bool = True, codec: str | None = None,
               *, no_site: bool = False, path_env: str | None = None) -> bytes:
    """The reader run locally; no_site: a python3 without the zstandard module (-S: no
    site-packages); path_env: its PATH (where it looks for the zstd binary)."""
    codec = codec or ("zlib" if compress else "none")
    env = None if path_env is None else {"PATH": path_env}
    return subprocess.run([sys.executable, "-B", *(["-S"] if no_site else []), "-c", READER,
                           str(path), str(CHUNK), codec], input=ranges.encode(),
                          capture_output=True, check=True, env=env).stdout


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """Chunks: 0 text (compressible), 1 zero, 2 random, 3 zero, 4 half a chunk of random."""
    path = tmp_path / "disk.raw"
    path.write_bytes((b"p2v text " * CHUNK)[:CHUNK] + bytes(CHUNK) + os.urandom(CHUNK)
                     + bytes(CHUNK) + os.urandom(CHUNK // 2))
    return path


def test_frames_verify_and_skip_zeros(disk: Path) -> None:
    raw = run_reader(disk, "0-5")
    stream = io.BytesIO(raw)
    assert read_header(stream) == (disk.stat().st_size, CHUNK, "zlib")
    extents = list(read_extents(stream, CHUNK))
    content = disk.read_bytes()
    assert [e.index for e in extents] == [0, 1, 2, 3, 4]
    assert [e.zero for e in extents] == [False, True, False, True, False]
    assert not any(e.corrupt for e in extents)
    for e in extents:
        expected = content[e.offset:e.offset + e.length]
        assert (e.data if not e.zero else bytes(e.length)) == expected
    assert extents[4].length == CHUNK // 2
    assert [e.packed for e in extents] == [True, False, False, False, False]
    # Zeros cost a header; text compresses; random data is sent as it is.
    assert extents[1].wire_bytes < 64
    assert extents[0].wire_bytes < CHUNK // 10
    assert extents[2].wire_bytes > CHUNK
    assert len(raw) < len(content) - CHUNK   # zeros and text did not cross in full


def _zstd_tools(directory: Path) -> str:
    """A PATH holding only the zstd binary."""
    directory.mkdir()
    (directory / "zstd").symlink_to(shutil.which("zstd") or "/usr/bin/zstd")
    return str(directory)


@pytest.mark.parametrize("how", ["module", "binary"])
def test_zstd_where_the_source_has_it(disk: Path, tmp_path: Path, how: str) -> None:
    """zstd through the zstandard module, or (python3 without it) the zstd binary: text
    goes compressed and verifies, random data goes as it is (not larger)."""
    if how == "module":
        pytest.importorskip("zstandard")
        raw = run_reader(disk, "0-5", codec="zstd", path_env="/nonexistent")
    else:
        raw = run_reader(disk, "0-5", codec="zstd", no_site=True,
                         path_env=_zstd_tools(tmp_path / "bin"))
    stream = io.BytesIO(raw)
    assert read_header(stream)[2] == "zstd"
    extents = list(read_extents(stream, CHUNK))
    content = disk.read_bytes()
    assert not any(e.corrupt for e in extents)
    assert [e.packed for e in extents] == [True, False, False, False, False]
    assert extents[0].data == content[:CHUNK] and extents[0].wire_bytes < CHUNK // 10
    assert extents[2].wire_bytes == CHUNK + 49        # the frame header, the bytes as read


def test_no_zstd_on_the_source_falls_back_to_zlib(disk: Path) -> None:
    """No module (-S) and no zstd on PATH: zlib, named in the header."""
    stream = io.BytesIO(run_reader(disk, "0-1", codec="zstd", no_site=True,
                                   path_env="/nonexistent"))
    assert read_header(stream)[2] == "zlib"
    (extent,) = read_extents(stream, CHUNK)
    assert extent.packed and not extent.corrupt


def test_ranges_are_honoured(disk: Path) -> None:
    stream = io.BytesIO(run_reader(disk, "2-3,4-9", compress=False))
    read_header(stream)
    assert [e.index for e in read_extents(stream, CHUNK)] == [2, 4]


def test_a_damaged_chunk_is_flagged_corrupt(disk: Path) -> None:
    raw = bytearray(run_reader(disk, "2-3", compress=False))
    raw[-200] ^= 0xFF                   # inside chunk 2's payload (random: sent raw)
    stream = io.BytesIO(bytes(raw))
    read_header(stream)
    (extent,) = read_extents(stream, CHUNK)
    assert extent.corrupt and extent.index == 2


def test_a_cut_stream_is_a_stream_error(disk: Path) -> None:
    raw = run_reader(disk, "0-5")
    stream = io.BytesIO(raw[: len(raw) // 2])
    read_header(stream)
    with pytest.raises(StreamError, match="rerun the same command to resume"):
        list(read_extents(stream, CHUNK))


def test_reader_refuses_nothing_and_writes_nothing(disk: Path) -> None:
    before = disk.read_bytes()
    mtime = disk.stat().st_mtime_ns
    run_reader(disk, "0-5")
    assert disk.read_bytes() == before and disk.stat().st_mtime_ns == mtime


def test_range_helpers() -> None:
    assert missing_ranges(set(), 4) == [(0, 4)]
    assert missing_ranges({0, 1, 5}, 8) == [(2, 5), (6, 8)]
    assert missing_ranges(set(range(8)), 8) == []
    assert format_ranges([(2, 5), (6, 8), (9, 9)]) == "2-5,6-8"


def test_reader_argv_low_priority_and_quoting() -> None:
    argv = reader_argv("/dev/sda", CHUNK)
    assert argv[:2] == ["sh", "-c"] and "ionice -c 3" in argv[2] and "nice -n 19" in argv[2]
    assert argv[4:7] == ["python3", "-B", "-c"] and argv[-4:] == ["/dev/sda", str(CHUNK),
                                                                   "zlib", "0"]
    assert reader_argv("/dev/sda", CHUNK, codec="none",
                       low_priority=False)[:3] == ["python3", "-B", "-c"]
    assert reader_argv("/dev/sda", CHUNK, codec="zstd")[-2] == "zstd"
    with pytest.raises(ValueError, match="codec"):
        reader_argv("/dev/sda", CHUNK, codec="lz4")
    assert ranges_input([(0, 3), (5, 9)]) == b"0-3,5-9\n"


@pytest.mark.parametrize(("device", "stem"), [
    ("/dev/sda", "sda"), ("/dev/mapper/vg0-root", "vg0-root"), ("/dev/cciss/c0d0", "cciss_c0d0"),
    ("/dev/nvme0n1", "nvme0n1"),
])
def test_image_stem(device: str, stem: str) -> None:
    assert image_stem(device) == stem


def test_every_python3_run_on_the_source_writes_no_bytecode() -> None:
    """python3 -B wherever p2v starts python3 (only ever on the source): a frozen or
    read-only source must not get a __pycache__ (issue 13, defect 9)."""
    import re

    root = Path(__file__).resolve().parents[3] / "p2v"
    runs = []
    for path in root.rglob("*.py"):
        text = path.read_text()
        runs += [(path.name, flag) for flag in re.findall(r'\[\s*"python3",\s*"([^"]*)"', text)]
        runs += [(path.name, flag) for flag in re.findall(r"\bpython3 (-[A-Za-z]+)", text)
                 if flag != "-B"]
    assert runs and all(flag == "-B" for _, flag in runs), runs
