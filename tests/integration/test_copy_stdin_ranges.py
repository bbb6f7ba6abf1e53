"""The readers' chunk ranges go on stdin (issue 13, defect 4), and the source is never written.

A busy server's sync asks for thousands of scattered chunks: "a-b,c-d,..." for ~7,500 of
them is over Linux's 128 KiB limit for one argument, so with the ranges in argv the reader
never started ("Argument list too long") and the sync could never finish. Here a real sync
over a real sshd rewrites 12,000 scattered chunks, and both readers are asked for 15,000
ranges directly. The copy and the sync run from a *writable* loop device whose kernel
write counters must not move.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from copy_helpers import identical, open_source
from loop_sources import LoopSource, write_random_disk

from p2v.demo.live import SourceEndpoint
from p2v.source.extents import format_ranges
from p2v.source.reader import choose_reader
from p2v.transfer.copy import CopyRequest, copy_disks, read_spec
from p2v.transfer.device import probe_device
from p2v.transfer.pump import open_extents
from p2v.transfer.sync import SyncRequest, sync

CHUNK = 64 << 10
COUNT = 24_000                          # chunks: a 1.5 GiB sparse disk
ARG_MAX_STRLEN = 128 << 10              # Linux's MAX_ARG_STRLEN (32 pages)


def write_counters(device: str) -> tuple[int, int]:
    """(write I/Os, write sectors) of a block device, fields 5 and 7 of its stat file."""
    fields = Path(f"/sys/block/{Path(device).name}/stat").read_text().split()
    return int(fields[4]), int(fields[6])


def sha256_of(path: Path) -> str:
    """The loop device's backing file: what the device holds, read faster than through it."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def scattered_source(tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[tuple[SourceEndpoint, Path]]:
    path = tmp_path_factory.mktemp("stdin-ranges") / "disk.raw"
    with path.open("wb") as f:
        f.truncate(COUNT * CHUNK)
        f.seek(5 * CHUNK)
        f.write(os.urandom(3 * CHUNK))
    with LoopSource.from_files([path], writable=True) as ep:
        yield ep, path


@pytest.fixture(scope="module")
def small_source(tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[SourceEndpoint, Path]]:
    path = tmp_path_factory.mktemp("untouched") / "disk.raw"
    write_random_disk(path, 32 << 20, 12 << 20)
    with path.open("r+b") as f:
        f.seek(20 << 20)
        f.write((b"compressible text " * (1 << 20))[: 4 << 20])
    with LoopSource.from_files([path], writable=True) as ep:
        yield ep, path


def change_chunks(device: str, indexes: range, chunk: int, tag: bytes = b"changed") -> None:
    """What a busy server does between the copy and the sync (through the device)."""
    fd = os.open(device, os.O_WRONLY)
    try:
        for index in indexes:
            os.pwrite(fd, index.to_bytes(8, "big") + tag, index * chunk + 100)
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("reader", ["python3", "sh"])
def test_copy_and_sync_never_write_the_source(small_source: tuple[SourceEndpoint, Path],
                                              tmp_path: Path, reader: str) -> None:
    """A writable source device: its kernel write counters do not move and its hash stays."""
    ep, raw = small_source
    (device,) = ep.disks
    before, digest = write_counters(device), sha256_of(raw)
    with open_source(ep) as source:
        (copied,) = copy_disks(source, CopyRequest(disks=ep.disks, output_dir=tmp_path,
                                                   name="u", chunk_size=1 << 20,
                                                   reader=reader))
    assert write_counters(device) == before and sha256_of(raw) == digest
    assert identical(raw, copied.image)
    change_chunks(device, range(3, 30, 7), 1 << 20, reader.encode())
    before, digest = write_counters(device), sha256_of(raw)
    with open_source(ep) as source:
        (result,) = sync(source, SyncRequest(output_dir=tmp_path, name="u",
                                             reader=reader)).disks
    assert write_counters(device) == before and sha256_of(raw) == digest
    assert result.changed_chunks == 4 and identical(raw, result.image)


@pytest.mark.slow
def test_a_sync_of_12000_scattered_chunks(scattered_source: tuple[SourceEndpoint, Path],
                                          tmp_path: Path) -> None:
    """The whole story: a busy server changed every other chunk; the sync finishes."""
    ep, raw = scattered_source
    (device,) = ep.disks
    with open_source(ep) as source:
        copy_disks(source, CopyRequest(disks=ep.disks, output_dir=tmp_path, name="s",
                                       chunk_size=CHUNK))
    change_chunks(device, range(0, COUNT, 2), CHUNK)
    assert len(format_ranges([(i, i + 1) for i in range(0, COUNT, 2)])) > ARG_MAX_STRLEN
    before = write_counters(device)
    with open_source(ep) as source:
        (result,) = sync(source, SyncRequest(output_dir=tmp_path, name="s")).disks
    assert write_counters(device) == before
    assert result.changed_chunks == COUNT // 2
    assert identical(raw, result.image)


@pytest.mark.parametrize("reader", ["python3", "sh"])
def test_both_readers_take_15000_ranges(small_source: tuple[SourceEndpoint, Path],
                                        tmp_path: Path, reader: str) -> None:
    """Two chunks on the disk and 15,000 past its end (which the readers skip at once):
    the command line alone would have been too long."""
    ep, raw = small_source
    ranges = [(5, 6), (7, 8)] + [(i, i + 1) for i in range(1000, 31_000, 2)]
    assert len(format_ranges(ranges)) > ARG_MAX_STRLEN
    request = CopyRequest(disks=ep.disks, output_dir=tmp_path, name="r", chunk_size=CHUNK)
    with open_source(ep) as source:
        info = probe_device(source, ep.disks[0])
        chosen = choose_reader(reader, python3=info.python3, gzip=info.gzip, zstd=info.zstd,
                               host=source.target.host, device=info.device)
        with open_extents(source, read_spec(source, info, request, chosen),
                          ranges) as stream:
            got = [(e.index, e.zero, e.corrupt, e.data) for e in stream.extents]
    data = raw.read_bytes()
    assert got == [(5, False, False, data[5 * CHUNK:6 * CHUNK]),
                   (7, False, False, data[7 * CHUNK:8 * CHUNK])]
