"""Repair what a live copy leaves behind: e2fsck -y on every ext2/3/4 filesystem of the images.

A copy read from a running server is not a snapshot: metadata written while it ran (an inode
table, a directory block, a group descriptor) can disagree with blocks read earlier, and a
root filesystem in that state stops the first boot at "UNEXPECTED INCONSISTENCY; RUN fsck
MANUALLY" (seen with the bios fixture: a directory entry created during the copy pointed into
its group's unused inode area). e2fsck replays the journal and repairs that in the
appliance, before fix mounts anything. XFS is left to its log replay at mount: xfs_repair
refuses a dirty log and -L would throw it away.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from p2v.errors import GuestfsError
from p2v.fix.session import open_guest

EXT = ("ext2", "ext3", "ext4")


def repair_filesystems(images: Sequence[Path], fmt: str = "qcow2",
                       progress: Callable[[str], None] = lambda _m: None) -> list[str]:
    """Check and repair each ext2/3/4 filesystem; return one line per filesystem."""
    lines: list[str] = []
    with open_guest(list(images), fmt=fmt) as session:
        found = session.g.list_filesystems()
        for device, fstype in sorted(found.items()):
            if fstype not in EXT:
                continue
            progress(f"checking {device} ({fstype}) with e2fsck -fy")
            try:
                session.g.e2fsck(device, forceall=True)
                lines.append(f"{device} ({fstype}): clean or repaired")
            except GuestfsError as exc:
                # Exit status 1 (errors corrected) is reported as an error by some
                # libguestfs versions; whatever is left, fix and the boot check will show.
                lines.append(f"{device} ({fstype}): e2fsck reported: {exc.fields['detail']}")
    return lines


__all__ = ["repair_filesystems"]
