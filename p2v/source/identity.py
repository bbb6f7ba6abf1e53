"""Which machine and which disk a copy came from: the SSH host key and the disk's serial/WWN.

A hostname says nothing: servers cloned from one template share it, and their disks share
device names and sizes. What differs is the host key the server proves it holds at login and
what the disk reports about itself in sysfs (SCSI/SATA `device/wwid`, NVMe `wwid`, virtio
`serial`, a device-mapper UUID; `lsblk` only where sysfs has none, as it may lean on udev).
A loop device reports nothing: then the host key alone identifies the source. Recorded in the
copy's journal header and manifest, compared before anything is resumed, taken as complete or
synced (`mismatch`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from p2v.source import remote

if TYPE_CHECKING:
    from p2v.source.protocol import Source

# $1: the device. Prints "KEY<TAB>VALUE" per identifier the disk has (none for a loop
# device); a partition answers with its disk's. Reads sysfs only, writes nothing.
DISK_ID_SCRIPT = remote.script("disk_id.sh")

_UNPRINTABLE = re.compile(r"[^\x21-\x7e]+")


@dataclass(frozen=True)
class SourceIdentity:
    """One source disk as the copy records it (`source` in journal header and manifest)."""

    host_key: str                                   # "ssh-ed25519 SHA256:…"
    disk: dict[str, str] = field(default_factory=dict)   # sysfs attribute -> identifier

    def to_dict(self) -> dict[str, Any]:
        return {"host_key": self.host_key, "disk": dict(self.disk)}


def parse_disk_ids(text: str) -> dict[str, str]:
    """The script's lines as {attribute: identifier}; padding and control bytes folded to
    single spaces (SATA wwids are space-padded), empty identifiers dropped."""
    ids: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("\t")
        value = _UNPRINTABLE.sub(" ", value).strip()
        if sep and key and value:
            ids[key.strip()] = value
    return ids


def source_identity(source: Source, device: str) -> SourceIdentity:
    """The identity of `device` on the logged-in source (one short remote command)."""
    result = source.run(["sh", "-c", DISK_ID_SCRIPT, "p2v-disk-id", device], root=False,
                        timeout=60, check=False)
    disk = parse_disk_ids(result.text) if result.returncode == 0 else {}
    return SourceIdentity(source.host_key(), disk)


def _show(disk: dict[str, str]) -> str:
    return ", ".join(f"{k} {v!r}" for k, v in sorted(disk.items())) or "none"


def mismatch(recorded: object, current: SourceIdentity) -> str | None:
    """Why a recorded identity is not `current`'s (a short phrase), or None if it is.

    Same host key, and the same disk where either side reports one: an identifier present
    on both sides must agree, and a disk that reports identifiers is not one that reports
    none. A record without identity (written by an older p2v) never matches: it cannot
    tell a clone from the original.
    """
    if not isinstance(recorded, dict) or not isinstance(recorded.get("host_key"), str):
        return "it records no source identity: written by an older p2v"
    if recorded["host_key"] != current.host_key:
        return f"host key {recorded['host_key']}, this source's {current.host_key}"
    theirs = recorded.get("disk") or {}
    if not isinstance(theirs, dict):
        return "its disk identity is unreadable"
    theirs = {str(k): str(v) for k, v in theirs.items()}
    ours = current.disk
    common = theirs.keys() & ours.keys()
    differ = sorted(k for k in common if theirs[k] != ours[k])
    if differ:
        key = differ[0]
        return f"disk {key} {theirs[key]!r}, this source's {ours[key]!r}"
    if bool(theirs) != bool(ours) or (theirs and not common):
        return f"disk identity {_show(theirs)}, this source's {_show(ours)}"
    return None


__all__ = ["DISK_ID_SCRIPT", "SourceIdentity", "mismatch", "parse_disk_ids",
           "source_identity"]
