"""Repair what a live copy leaves behind, before fix mounts anything: e2fsck for ext2/3/4,
log replay then xfs_repair for XFS.

A copy read from a running server is not a snapshot: metadata written while it ran (an inode
table, a directory block, a group descriptor) can disagree with blocks read earlier, and a
root filesystem in that state stops the first boot at "UNEXPECTED INCONSISTENCY; RUN fsck
MANUALLY" (seen with the bios fixture: a directory entry created during the copy pointed into
its group's unused inode area). e2fsck replays the journal and repairs that in the appliance.
xfs_repair refuses a dirty log and its -L would throw the log away, so an XFS filesystem is
mounted and unmounted first (the kernel replays the log), then checked with `xfs_repair -n`
and repaired only when that finds damage. A log that cannot be replayed is reported and the
filesystem left as it is: zeroing it would lose the last writes for certain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from p2v.errors import GuestfsError
from p2v.fix.session import GuestSession, open_guest

EXT = ("ext2", "ext3", "ext4")


def repair_filesystems(images: Sequence[Path], fmt: str = "qcow2",
                       progress: Callable[[str], None] = lambda _m: None) -> list[str]:
    """Check and repair each ext2/3/4 and XFS filesystem; return one line per filesystem."""
    lines: list[str] = []
    with open_guest(list(images), fmt=fmt) as session:
        found = session.list_filesystems()
        for device, fstype in sorted(found.items()):
            if fstype in EXT:
                progress(f"checking {device} ({fstype}) with e2fsck -fy")
                lines.append(f"{device} ({fstype}): {_e2fsck(session, device)}")
            elif fstype == "xfs":
                progress(f"checking {device} (xfs): log replay, then xfs_repair")
                lines.append(f"{device} (xfs): {_xfs(session, device)}")
    return lines


def _e2fsck(session: GuestSession, device: str) -> str:
    try:
        session.e2fsck(device)
        return "clean or repaired"
    except GuestfsError as exc:
        # Exit status 1 (errors corrected) is reported as an error by some libguestfs
        # versions; whatever is left, fix and the boot check will show.
        return f"e2fsck reported: {exc.fields['detail']}"


def _xfs(session: GuestSession, device: str) -> str:
    try:
        session.mount(device, "/")
        session.umount("/")
    except GuestfsError as exc:
        return (f"left as it is: its log could not be replayed ({exc.fields['detail']}); "
                "xfs_repair -L would discard it")
    try:
        if session.xfs_repair(device, nomodify=True) == 0:
            return "clean"
        session.xfs_repair(device)
        return "repaired" if session.xfs_repair(device, nomodify=True) == 0 else \
            "xfs_repair ran, damage remains"
    except GuestfsError as exc:
        return f"xfs_repair reported: {exc.fields['detail']}"


__all__ = ["repair_filesystems"]
