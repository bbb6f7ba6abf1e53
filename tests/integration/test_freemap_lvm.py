"""Free space inside an LVM2 PV: its unallocated extents and the free blocks of an ext4 on a
two-segment linear LV count as free, another LV's unknown data does not; a default copy
leaves the deleted data behind, the copied LV fscks clean and every file matches.

The host has no device-mapper, so LVM's own tools build the VG with activation off
(`--driverloaded n`) and the LV's filesystem is made in a file and written to the extents
`lvs` reports; the copy is read back the same way, through `lvs` on the copied PV."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path

import pytest
from copy_helpers import identical, open_source
from loop_sources import LoopSource
from test_freemap import free_ranges

from p2v import runner
from p2v.demo.image import FixtureImage
from p2v.transfer.copy import CopyRequest, copy_disks

MiB = 1 << 20
EXTENT = 4 * MiB


def lvm(device: str, *argv: str) -> str:
    """An LVM command that sees only `device`, touches no device-mapper and keeps no backups."""
    config = (f'devices {{ filter=["a|^{device}$|","r|.*|"] obtain_device_list_from_udev=0 }} '
              'activation { udev_sync=0 udev_rules=0 } backup { backup=0 archive=0 }')
    return runner.run([argv[0], "--driverloaded", "n", "--config", config, *argv[1:]],
                      env={"LVM_SUPPRESS_FD_WARNINGS": "1"}).stdout


def lv_segments(device: str, vg: str, lv: str) -> list[tuple[int, int]]:
    """(byte offset on the PV, length) of each of the LV's segments, in LV order, as LVM's
    own tools report them."""
    pe_start = int(lvm(device, "pvs", "--noheadings", "--units", "b", "--nosuffix",
                       "-o", "pe_start", device))
    out = lvm(device, "lvs", "--noheadings", "-o", "seg_start_pe,seg_pe_ranges",
              f"{vg}/{lv}")
    segs = []
    for line in out.splitlines():
        if not line.strip():
            continue
        start, ranges = line.split()
        first, last = map(int, re.fullmatch(r".*:(\d+)-(\d+)", ranges).groups())  # type: ignore
        segs.append((int(start), pe_start + first * EXTENT, (last - first + 1) * EXTENT))
    return [(off, n) for _, off, n in sorted(segs)]


def read_lv(pv: Path, segs: list[tuple[int, int]], dest: Path) -> None:
    with pv.open("rb") as src, dest.open("wb") as out:
        for off, n in segs:
            src.seek(off)
            out.write(src.read(n))


def build_pv(tmp: Path) -> tuple[Path, str, dict[str, str], bytes]:
    """A 256 MiB PV full of random bytes but for what LVM writes: VG with LV `root` (ext4,
    26 extents in two segments; 28 MiB of files kept, 24 MiB deleted, its free blocks
    random), LV `other` (10 extents of random data) and 27 free extents whose old contents
    (a removed LV's among them) are random. Returns (PV file, VG name, kept files' sha256,
    `other`'s bytes)."""
    pv = tmp / "pv.raw"
    with pv.open("wb") as f:
        for _ in range(256):
            f.write(os.urandom(MiB))
    vg = "p2vt" + uuid.uuid4().hex[:8]
    loop = runner.run(["losetup", "-f", "--show", pv]).stdout.strip()
    try:
        lvm(loop, "pvcreate", loop)
        lvm(loop, "vgcreate", "-s", "4m", vg, loop)
        lvm(loop, "lvcreate", "-an", "-Zn", "-l", "12", "-n", "root", vg)
        lvm(loop, "lvcreate", "-an", "-Zn", "-l", "10", "-n", "gone", vg)
        lvm(loop, "lvcreate", "-an", "-Zn", "-l", "10", "-n", "other", vg)
        lvm(loop, "lvextend", "-l", "+14", f"{vg}/root")     # a second segment past `other`
        lvm(loop, "lvremove", "-f", f"{vg}/gone")
        root_segs = lv_segments(loop, vg, "root")
        other_segs = lv_segments(loop, vg, "other")
    finally:
        runner.run(["losetup", "-d", loop])
    assert len(root_segs) == 2
    # The root filesystem, made in a file the LV's size (free blocks keep their random bytes).
    fs = tmp / "root.img"
    with fs.open("wb") as f:
        for _ in range(26 * 4):
            f.write(os.urandom(MiB))
    runner.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "nodiscard", fs])
    mount = tmp / "m"
    mount.mkdir()
    runner.run(["mount", "-o", "loop", fs, mount])
    kept = {}
    try:
        for i in range(16):
            name = f"f{i}"
            data = os.urandom(4 * MiB if i % 4 == 0 else 3 * MiB + 1234 * i)
            (mount / name).write_bytes(data)
            if i % 2 == 0:
                kept[name] = hashlib.sha256(data).hexdigest()
        os.sync()
        for i in range(1, 16, 2):
            (mount / f"f{i}").unlink()
    finally:
        runner.run(["umount", mount])
    with fs.open("rb") as src, pv.open("r+b") as out:
        for off, n in root_segs:
            out.seek(off)
            out.write(src.read(n))
    other = tmp / "other.lv"
    read_lv(pv, other_segs, other)
    return pv, vg, kept, other.read_bytes()


def overlap(ranges: list[tuple[int, int]], a: int, z: int) -> int:
    return sum(max(0, min(z, y) - max(a, x)) for x, y in ranges)


def test_lvm_free_space_map_and_default_copy(tmp_path: Path) -> None:
    pv, vg, kept, other = build_pv(tmp_path)
    loop = runner.run(["losetup", "-f", "--show", "-r", pv]).stdout.strip()
    try:
        root_segs = lv_segments(loop, vg, "root")
        other_segs = lv_segments(loop, vg, "other")
        pe_start = root_segs[0][0]
    finally:
        runner.run(["losetup", "-d", loop])
    ranges = free_ranges(pv)
    # Every unallocated extent is free, nothing of `other` is.
    allocated = sorted(root_segs + other_segs)
    unallocated, at = [], pe_start
    for off, n in allocated:
        if off > at:
            unallocated.append((at, off))
        at = off + n
    end = pe_start + 63 * EXTENT
    unallocated.append((at, end))
    assert sum(z - a for a, z in unallocated) == 27 * EXTENT
    for a, z in unallocated:
        assert overlap(ranges, a, z) == z - a
    for off, n in other_segs:
        assert overlap(ranges, off, off + n) == 0
    assert overlap(ranges, 0, pe_start) == 0 and overlap(ranges, end, 256 * MiB) == 0
    # In `root`: e2fsprogs' free count (whole bitmap bytes only: a few blocks per group
    # may be missed), and no block of a kept file.
    fs = tmp_path / "root.img"
    header = runner.run(["dumpe2fs", "-h", fs]).stdout
    free_blocks = int(re.search(r"^Free blocks:\s+(\d+)", header, re.M)[1])  # type: ignore
    in_root = sum(overlap(ranges, off, off + n) for off, n in root_segs)
    assert free_blocks * 4096 - 8 * 8 * 4096 <= in_root <= free_blocks * 4096
    lv_to_pv = []
    lv_at = 0
    for off, n in root_segs:
        lv_to_pv.append((lv_at, off, n))
        lv_at += n
    for name in kept:
        listing = runner.run(["debugfs", "-R", f"blocks /{name}", fs]).stdout.split()
        assert listing
        for block in map(int, listing):
            lv_off = block * 4096
            (dev,) = [off + lv_off - lv for lv, off, n in lv_to_pv if lv <= lv_off < lv + n]
            assert overlap(ranges, dev, dev + 4096) == 0, (name, block)

    out = tmp_path / "out"
    with LoopSource.from_files([pv]) as ep, open_source(ep) as source:
        (result,) = copy_disks(source, CopyRequest(disks=ep.disks, output_dir=out, name="lvm"))
    # Sent: 28 MiB of kept files, `other`'s 40 MiB, metadata and the 4 MiB chunks they
    # share with free space (extents start 1 MiB into a chunk); left behind: most of the
    # 24 MiB of deleted files and of the 108 MiB of free extents. All of it is random, so
    # a copy that skipped nothing would send the whole 256 MiB.
    assert result.free_chunks > 0
    assert 68 * MiB < result.wire_bytes < 128 * MiB, result.wire_bytes
    copied = tmp_path / "copied.raw"
    runner.run(["qemu-img", "convert", "-O", "raw", result.image, copied])
    loop = runner.run(["losetup", "-f", "--show", "-r", copied]).stdout.strip()
    try:
        assert lv_segments(loop, vg, "root") == root_segs      # LVM reads the copy's VG
        copied_other = tmp_path / "other.copy"
        read_lv(copied, lv_segments(loop, vg, "other"), copied_other)
    finally:
        runner.run(["losetup", "-d", loop])
    assert copied_other.read_bytes() == other
    root = tmp_path / "root.copy"
    read_lv(copied, root_segs, root)
    fsck = runner.run(["e2fsck", "-fn", root], check=False)
    assert fsck.returncode == 0, fsck.stdout
    mount = tmp_path / "copy"
    mount.mkdir()
    runner.run(["mount", "-o", "loop,ro,noload", root, mount])
    try:
        got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
               for p in mount.iterdir() if p.is_file()}
    finally:
        runner.run(["umount", mount])
    assert got == kept


def test_metadata_that_fails_its_checksum_or_disagrees_keeps_the_whole_pv(tmp_path: Path
                                                                           ) -> None:
    """A PV with two metadata areas (start and end): both agree -> its free extents are
    free; one area from an older VG state, or a flipped byte in the text -> nothing is."""
    pv = tmp_path / "pv.raw"
    with pv.open("wb") as f:
        f.truncate(64 * MiB)
    vg = "p2vt" + uuid.uuid4().hex[:8]
    loop = runner.run(["losetup", "-f", "--show", pv]).stdout.strip()
    try:
        lvm(loop, "pvcreate", "--pvmetadatacopies", "2", loop)
        lvm(loop, "vgcreate", "-s", "4m", vg, loop)
        older = pv.read_bytes()
        lvm(loop, "lvcreate", "-an", "-Zn", "-l", "3", "-n", "a", vg)
        pe_start = lv_segments(loop, vg, "a")[0][0]
    finally:
        runner.run(["losetup", "-d", loop])
    current = pv.read_bytes()
    ranges = free_ranges(pv)
    assert ranges and ranges[0][0] == pe_start + 3 * EXTENT
    assert overlap(ranges, 0, 64 * MiB) >= 10 * EXTENT
    # The end-of-disk area as it was before lvcreate: both checksums hold, the texts differ.
    tail = 60 * MiB
    assert older[tail:] != current[tail:]
    pv.write_bytes(current[:tail] + older[tail:])
    assert free_ranges(pv) == []
    # A flipped byte in the first area's newest text (older ones stay before it).
    where = current.rindex(b"Text Format Volume Group", 0, pe_start)
    pv.write_bytes(current[:where] + b"t" + current[where + 1:])
    assert free_ranges(pv) == []


@pytest.mark.slow
def test_uefi_fixture_lvm_on_a_partition(uefi_image: FixtureImage, tmp_path: Path) -> None:
    """The uefi fixture's PV is its third GPT partition (root ext4 and swap LVs): a default
    copy skips the LVs' free space (zeros in that image, so the copy stays identical)."""
    with LoopSource(uefi_image, partitions=True) as ep, open_source(ep) as source:
        (result,) = copy_disks(source, CopyRequest(disks=ep.disks, output_dir=tmp_path,
                                                   name="uefi"))
    # 56 free chunks came from the ESP and /boot alone; root's and swap's free space adds
    # about 200 more 4 MiB chunks.
    assert result.free_chunks > 200, result.free_chunks
    assert identical(Path(uefi_image.disks[0]), result.image)
