"""The sync's hash list: the source-side program on a plain file, and the parser's refusals."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
from pathlib import Path

import pytest

from p2v.errors import StreamError
from p2v.source.freeze import _mounts_table
from p2v.source.hasher import HASHER, hasher_argv, read_hashes

CHUNK = 64 << 10


def test_hasher_lists_zero_and_data_chunks_and_writes_nothing(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    data = os.urandom(CHUNK)
    disk.write_bytes(bytes(CHUNK) + data + b"x" * 100)          # zero, data, short tail
    before = disk.stat().st_mtime_ns
    out = subprocess.run(["python3", "-B", "-c", HASHER, str(disk), str(CHUNK), "1"],
                         capture_output=True, check=True, cwd=tmp_path).stdout
    got = list(read_hashes(io.BytesIO(out), CHUNK, 2 * CHUNK + 100))
    assert [(i, h) for i, h, _ in got] == [
        (0, "Z"), (1, hashlib.sha256(data).hexdigest()),
        (2, hashlib.sha256(b"x" * 100).hexdigest())]
    assert sum(n for _, _, n in got) < 3 * 70
    assert disk.stat().st_mtime_ns == before and sorted(p.name for p in tmp_path.iterdir()) \
        == ["disk"]


def test_hasher_argv_is_low_priority_python_without_bytecode() -> None:
    argv = hasher_argv("/dev/sda", CHUNK)
    assert argv[:2] == ["sh", "-c"] and "nice -n 19" in argv[2]
    assert argv[4:7] == ["python3", "-B", "-c"] and argv[-3:] == ["/dev/sda", str(CHUNK), "1"]
    assert hasher_argv("/dev/sda", CHUNK, reader="sh", low_priority=False)[:2] == ["sh", "-c"]


@pytest.mark.parametrize("stream, why", [
    (b"P2VHASH1 131072 65536\n0 Z\n", "ended early"),
    (b"P2VHASH1 131072 65536\n0 Z\n2 Z\nE\n", "chunk 2 where 1 was due"),
    (b"P2VHASH1 131072 65536\n0 Z\n1 nothex\nE\n", "garbled"),
    (b"P2VHASH1 131072 65536\n0 Z\nE\n", "1 chunks listed, 2 expected"),
    (b"P2VHASH1 262144 65536\n0 Z\nE\n", "262144 bytes now"),
    (b"garbage\n", "bad hash stream header"),
])
def test_a_broken_hash_list_is_a_stream_error(stream: bytes, why: str) -> None:
    with pytest.raises(StreamError) as info:
        list(read_hashes(io.BytesIO(stream), CHUNK, 2 * CHUNK, host="h", device="/dev/sda"))
    assert why in info.value.message and "\n" not in info.value.message


def test_mounts_table_unescapes_and_sees_read_only() -> None:
    table = _mounts_table("/dev/sda1 / ext4 rw,relatime 0 0\n"
                          "/dev/sdb1 /srv/my\\040data xfs ro,noatime 0 0\n")
    assert table == {"/": ("ext4", False), "/srv/my data": ("xfs", True)}
