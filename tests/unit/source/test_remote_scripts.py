"""The programs p2v sends to the source (p2v/source/remote), run here as the source runs
them: `python3 -B -c` and `sh -c` on small local inputs, no SSH in between."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
from pathlib import Path

from p2v.source.extents import read_extents, read_header, reader_argv
from p2v.source.identity import DISK_ID_SCRIPT
from p2v.source.shreader import sh_argv

CHUNK = 64 * 1024


def test_the_python_reader_streams_a_file_chunk_by_chunk(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    data = os.urandom(CHUNK) + bytes(CHUNK) + b"p2v" * (CHUNK // 3) + b"x"
    disk.write_bytes(data)
    argv = reader_argv(str(disk), CHUNK, codec="zlib", low_priority=False)
    out = subprocess.run(argv, input=b"0-3", capture_output=True, check=True).stdout
    stream = io.BytesIO(out)
    assert read_header(stream) == (len(data), CHUNK, "zlib")
    extents = list(read_extents(stream, CHUNK, size=len(data), ranges=[(0, 3)]))
    assert [(e.index, e.zero, e.corrupt) for e in extents] == [
        (0, False, False), (1, True, False), (2, False, False)]
    assert b"".join(e.data if not e.zero else bytes(e.length) for e in extents) == data
    assert extents[2].sha256 == hashlib.sha256(data[2 * CHUNK:]).hexdigest()


def test_the_sh_probe_names_a_missing_device_and_a_file(tmp_path: Path) -> None:
    """Exit 3: no such device; exit 4: not a block device (both one-line errors in p2v)."""
    missing = subprocess.run(sh_argv("probe", str(tmp_path / "nope")), capture_output=True)
    (tmp_path / "file").write_bytes(b"x")
    plain = subprocess.run(sh_argv("probe", str(tmp_path / "file")), capture_output=True)
    assert (missing.returncode, plain.returncode) == (3, 4)


def test_the_disk_id_script_says_nothing_of_a_device_without_ids(tmp_path: Path) -> None:
    done = subprocess.run(["sh", "-c", DISK_ID_SCRIPT, "p2v-disk-id", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == ""
