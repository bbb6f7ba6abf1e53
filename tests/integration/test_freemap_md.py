"""Free space inside an md RAID1 member (v1.2 superblock, data at its data_offset): the
member's data area is the whole array, so the free blocks of an ext4 there count as free,
shifted by the data offset; a member whose data may not be current keeps all of it.

The host has no md driver: the superblock is written by hand to mdadm's v1 layout and
checksum (the slow test below reads the real ones mdadm made in the xfsmd fixture)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from copy_helpers import open_source
from loop_sources import LoopSource
from test_freemap import free_ranges

from p2v import runner
from p2v.demo.image import FixtureImage
from p2v.source.extents import FREEMAP
from p2v.transfer.copy import CopyRequest, copy_disks

MiB = 1 << 20
DATA_OFFSET = 2048          # sectors: 1 MiB, mdadm's default for small members
USED = 60 * MiB


def superblock(*, level: int = 1, features: int = 0, resync: int = (1 << 64) - 1,
               role: int = 0, csum_delta: int = 0) -> bytes:
    """A v1.2 md superblock (at 4 KiB into the member) of a two-disk array, member 0."""
    max_dev = 2
    sb = bytearray(256 + 2 * max_dev)
    struct.pack_into("<III", sb, 0, 0xA92B4EFC, 1, features)
    sb[16:32] = os.urandom(16)                        # set_uuid
    struct.pack_into("<i", sb, 72, level)
    struct.pack_into("<Q", sb, 80, USED >> 9)          # used size of the member, sectors
    struct.pack_into("<QQQ", sb, 128, DATA_OFFSET, USED >> 9, 8)   # data offset/size, sb
    struct.pack_into("<I", sb, 160, 0)                 # dev_number
    struct.pack_into("<Q", sb, 208, resync)
    struct.pack_into("<I", sb, 220, max_dev)
    struct.pack_into("<HH", sb, 256, role, 1)          # dev_roles
    total = sum(struct.unpack_from(f"<{len(sb) // 4}I", sb))
    struct.pack_into("<I", sb, 216, (((total & 0xFFFFFFFF) + (total >> 32)) + csum_delta)
                     & 0xFFFFFFFF)
    return bytes(sb)


def member(tmp_path: Path, sb: bytes) -> tuple[Path, list[tuple[int, int]]]:
    """A RAID1 member holding an ext4 with a file; and that ext4's own free ranges."""
    fs = tmp_path / "fs.raw"
    with fs.open("wb") as f:
        f.truncate(USED)
    runner.run(["mkfs.ext4", "-q", "-F", "-b", "4096", fs])
    data = tmp_path / "data"
    data.write_bytes(os.urandom(8 * MiB))
    runner.run(["debugfs", "-w", "-R", f"write {data} data", fs])
    path = tmp_path / "member.raw"
    with path.open("wb") as out:
        out.truncate(DATA_OFFSET * 512 + USED)
        out.seek(4096)
        out.write(sb)
        out.seek(DATA_OFFSET * 512)
        out.write(fs.read_bytes())
    return path, free_ranges(fs)


def test_ext4_on_a_raid1_member_is_free_where_the_array_is(tmp_path: Path) -> None:
    path, inner = member(tmp_path, superblock())
    shift = DATA_OFFSET * 512
    assert inner and free_ranges(path) == [(a + shift, z + shift) for a, z in inner]


@pytest.mark.parametrize("sb", [
    superblock(csum_delta=1),                 # a bad checksum
    superblock(level=5),                      # a stripe: the member holds a share
    superblock(resync=0),                     # not in sync
    superblock(features=0x2),                 # recovering: its data is not all there
    superblock(features=0x4),                 # reshaping
    superblock(role=0xFFFF),                  # a spare
    superblock(role=0xFFFE),                  # faulty
], ids=["csum", "raid5", "resync", "recovery", "reshape", "spare", "faulty"])
def test_a_member_whose_data_may_not_be_current_is_all_used(tmp_path: Path, sb: bytes) -> None:
    path, inner = member(tmp_path, sb)
    assert inner and free_ranges(path) == []


def member_free(raw: Path) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(partitions as (start, size) bytes, the reader's free ranges in them) of a raw disk."""
    table = json.loads(runner.run(["sfdisk", "-J", raw]).stdout)["partitiontable"]
    parts = [(p["start"] * 512, p["size"] * 512) for p in table["partitions"]]
    namespace: dict[str, Any] = {}
    exec(FREEMAP, namespace)  # noqa: S102 - the reader's own code, run as on a source
    fd = os.open(raw, os.O_RDONLY)
    try:
        free = [r for base, size in parts for r in namespace["_content_free"](fd, base, size) or []]
    finally:
        os.close(fd)
    return parts, sorted(free)


def same_outside(a: Path, b: Path, free: list[tuple[int, int]]) -> bool:
    """Whether two raw images hold the same bytes everywhere but in the free ranges."""
    size, at = a.stat().st_size, 0
    used = []
    for start, end in free + [(size, size)]:
        if start > at:
            used.append((at, start))
        at = max(at, end)
    with a.open("rb") as fa, b.open("rb") as fb:
        for start, end in used:
            for off in range(start, end, 8 * MiB):
                n = min(8 * MiB, end - off)
                fa.seek(off)
                fb.seek(off)
                if fa.read(n) != fb.read(n):
                    return False
    return True


@pytest.mark.slow
def test_xfsmd_fixture_lvm_and_xfs_on_md_raid1(xfsmd_image: FixtureImage,
                                               tmp_path: Path) -> None:
    """The xfsmd fixture's members (superblocks made by mdadm): /boot's ext4 on md0 and
    the XFS root and swap LVs of the PV on md1 are skipped where free; every byte outside
    the free ranges is copied as it is. (Not byte-identical: grub-install ran once per disk
    and the second run freed /boot blocks that still hold the first run's files.)"""
    with LoopSource(xfsmd_image, partitions=True) as ep, open_source(ep) as source:
        results = copy_disks(source, CopyRequest(disks=ep.disks, output_dir=tmp_path,
                                                 name="xfsmd"))
    for disk, result in zip(xfsmd_image.disks, results, strict=True):
        parts, free = member_free(Path(disk))
        # Without md support nothing on these disks (two md members each) is free.
        assert result.free_chunks > 100, result.free_chunks
        md1 = parts[1]
        assert sum(min(z, md1[0] + md1[1]) - max(a, md1[0]) for a, z in free
                   if a < md1[0] + md1[1] and z > md1[0]) > 256 * MiB   # XFS root and swap
        raw = tmp_path / f"{result.image.stem}.raw"
        runner.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", result.image, raw])
        assert same_outside(Path(disk), raw, free)
        raw.unlink()
