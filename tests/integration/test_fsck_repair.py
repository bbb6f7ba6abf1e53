"""The fix stage's filesystem repair mends what a live copy can leave: ext4 and XFS metadata
that disagree (a wrong link count), checked afterwards by the host's own fsck tools."""

from __future__ import annotations

import tempfile
from pathlib import Path

from p2v import runner
from p2v.fix.fsck import repair_filesystems

MiB = 1 << 20


def populate(image: Path, fstype: str) -> int:
    """Make the filesystem, write one file through a loop mount; return the file's inode."""
    with image.open("wb") as f:
        f.truncate(320 * MiB)
    runner.run([f"mkfs.{fstype}", "-q", *(["-F"] if fstype == "ext4" else ["-f"]), str(image)])
    with tempfile.TemporaryDirectory(prefix="p2v-fsck-") as mnt:
        runner.run(["mount", "-o", "loop", str(image), mnt])
        try:
            (Path(mnt) / "data").write_text("kept\n" * 1000)
            inode = (Path(mnt) / "data").stat().st_ino
        finally:
            runner.run(["umount", mnt])
    return inode


def damaged(tmp_path: Path) -> tuple[Path, Path]:
    ext, xfs = tmp_path / "ext4.raw", tmp_path / "xfs.raw"
    populate(ext, "ext4")
    runner.run(["debugfs", "-w", "-R", "set_inode_field /data links_count 7", str(ext)])
    ino = populate(xfs, "xfs")
    runner.run(["xfs_db", "-x", "-c", f"inode {ino}", "-c", "write core.nlinkv2 7", str(xfs)])
    assert runner.run(["e2fsck", "-fn", str(ext)], check=False).returncode != 0
    assert runner.run(["xfs_repair", "-n", str(xfs)], check=False).returncode != 0
    return ext, xfs


def test_damaged_ext4_and_xfs_come_out_clean_with_their_files(tmp_path: Path) -> None:
    ext, xfs = damaged(tmp_path)
    clean = tmp_path / "clean-xfs.raw"
    populate(clean, "xfs")
    lines = repair_filesystems([ext, xfs, clean], fmt="raw")     # one appliance for all three
    assert len(lines) == 3, lines
    assert "(ext4): clean or repaired" in lines[0]
    assert lines[1].endswith("(xfs): repaired"), lines
    assert lines[2].endswith("(xfs): clean"), lines             # checked, not repaired
    assert runner.run(["e2fsck", "-fn", str(ext)], check=False).returncode == 0
    for image in (xfs, clean):
        assert runner.run(["xfs_repair", "-n", str(image)], check=False).returncode == 0
    for image in (ext, xfs, clean):
        with tempfile.TemporaryDirectory(prefix="p2v-fsck-") as mnt:
            runner.run(["mount", "-o", "loop,ro", str(image), mnt])
            try:
                assert (Path(mnt) / "data").read_text() == "kept\n" * 1000
            finally:
                runner.run(["umount", mnt])
