"""XFS free space: the reader's map against xfs_db's, and a default copy of an XFS disk whose
free space holds deleted files (not sent; the copy repairs clean and every file matches)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
from loop_sources import LoopSource

from p2v import runner
from p2v.source.extents import FREEMAP
from p2v.source.ssh import SshOptions, SshSource
from p2v.transfer.copy import CopyRequest, copy_disks

MiB = 1 << 20


def reader_namespace() -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(FREEMAP, namespace)  # noqa: S102 - the reader's own code, run as on a source
    return namespace


def make_xfs(path: Path, mount: Path, options: list[str], *, big: int, small: int
             ) -> dict[str, bytes]:
    """A 320 MiB XFS (mkfs.xfs's minimum) with `big` 12 MiB random files and `small` 2 KiB
    ones, every other file deleted after it reached the disk: free space full of old data.
    Returns the kept files' contents by name."""
    with path.open("wb") as f:
        f.truncate(320 * MiB)
    runner.run(["mkfs.xfs", "-q", "-f", *options, path])
    kept: dict[str, bytes] = {}
    if not big + small:
        return kept
    mount.mkdir()
    runner.run(["mount", "-o", "loop", path, mount])
    try:
        files = [(f"big{i}", 12 * MiB) for i in range(big)]
        files += [(f"small{i}", 2048) for i in range(small)]
        for name, size in files:
            (mount / name).write_bytes(os.urandom(size))
        os.sync()
        for k, (name, _) in enumerate(files):
            if k % 2:
                (mount / name).unlink()
            else:
                kept[name] = (mount / name).read_bytes()
    finally:
        runner.run(["umount", mount])
    return kept


def xfs_db_free(path: Path) -> tuple[set[tuple[int, int, int]], int, int, int]:
    """(free extents (ag, agbno, len) incl. the AG free lists, the AGFs' free blocks,
    block size, blocks per AG), as xfs_db sees them."""
    extents = set()
    for line in runner.run(["xfs_db", "-r", "-c", "freesp -d", path]).stdout.splitlines():
        fields = line.split()
        if len(fields) == 3 and all(f.isdigit() for f in fields):
            extents.add((int(fields[0]), int(fields[1]), int(fields[2])))
    sb = runner.run(["xfs_db", "-r", "-c", "sb 0", "-c", "print blocksize agcount agblocks",
                     path]).stdout
    bs, agcount, agblocks = (int(re.search(rf"^{k} = (\d+)", sb, re.M)[1])  # type: ignore
                             for k in ("blocksize", "agcount", "agblocks"))
    total = 0
    for ag in range(agcount):
        agf = runner.run(["xfs_db", "-r", "-c", f"agf {ag}", "-c", "print freeblks", path])
        total += int(agf.stdout.split("=")[1])
    return extents, total, bs, agblocks


@pytest.mark.parametrize("options, big, small", [
    ([], 4, 0),                          # v5, 4 KiB blocks
    (["-b", "size=1024"], 1, 400),       # 1 KiB blocks, fragmented: a 2-level bnobt
    (["-m", "crc=0"], 0, 0),             # v4 headers (this kernel cannot mount v4: empty)
])
def test_xfs_free_space_matches_xfs_db(tmp_path: Path, options: list[str], big: int,
                                       small: int) -> None:
    fs = tmp_path / "xfs.raw"
    kept = make_xfs(fs, tmp_path / "m", options, big=big, small=small)
    if small:
        levels = runner.run(["xfs_db", "-r", "-c", "agf 0", "-c", "print bnolevel", fs])
        assert levels.stdout.strip() == "bnolevel = 2"
    listed, free_blocks, bs, agblocks = xfs_db_free(fs)
    ns = reader_namespace()
    fd = os.open(fs, os.O_RDONLY)
    try:
        extents = ns["_xfs_free"](fd, 0, fs.stat().st_size)
        merged = ns["free_ranges"](fd, str(fs), fs.stat().st_size)
    finally:
        os.close(fd)
    # Exactly the AGFs' free blocks, each extent one xfs_db lists (xfs_db adds the AG
    # free lists' few blocks, which the reader leaves as used).
    assert sum(z - a for a, z in extents) == free_blocks * bs
    for a, z in extents:
        ag, agbno = divmod(a // bs, agblocks)
        assert (ag, agbno, (z - a) // bs) in listed
    assert sum(z - a for a, z in merged) == free_blocks * bs
    content = fs.read_bytes()
    for data in kept.values():
        where = content.find(data[:2048])
        assert where >= 0 and not any(a <= where < z for a, z in merged)


def sha256_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_default_copy_skips_free_xfs_space(tmp_path: Path) -> None:
    fs = tmp_path / "xfs.raw"
    kept = make_xfs(fs, tmp_path / "m", [], big=8, small=0)      # 48 MiB kept, 48 deleted
    out = tmp_path / "out"
    with LoopSource.from_files([fs]) as ep, SshSource.open(
            f"ssh://{ep.user}@{ep.host}:{ep.port}",
            SshOptions(identity=ep.key, known_hosts=ep.known_hosts, use_agent=False,
                       ssh_config=Path("/dev/null"))) as source:
        (result,) = copy_disks(source, CopyRequest(disks=ep.disks, output_dir=out, name="x"))
    assert result.free_chunks > 0
    # The 48 MiB kept, plus metadata, the log and the 4 MiB chunks a kept file shares
    # with a deleted one; most of the deleted 48 MiB of random data stays behind (sending
    # it would make 96 MiB and more).
    assert 48 * MiB < result.wire_bytes < 72 * MiB, result.wire_bytes
    copied = tmp_path / "copied.raw"
    runner.run(["qemu-img", "convert", "-O", "raw", result.image, copied])
    repair = runner.run(["xfs_repair", "-n", "-f", copied], check=False)
    assert repair.returncode == 0, repair.stdout + repair.stderr
    mount = tmp_path / "copy"
    mount.mkdir()
    runner.run(["mount", "-o", "loop,ro,norecovery", copied, mount])
    try:
        got = sha256_tree(mount)
    finally:
        runner.run(["umount", mount])
    assert got == {name: hashlib.sha256(data).hexdigest() for name, data in kept.items()}
