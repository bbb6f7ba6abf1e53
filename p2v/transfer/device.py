"""A source disk as the transfer sees it: its size and reader tools (probed with sh only),
the name its image gets, and the source's hostname (the default image prefix)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from p2v.errors import RemoteCommandFailed, SourceDeviceError
from p2v.source.protocol import Source
from p2v.source.shreader import sh_argv


@dataclass(frozen=True)
class DeviceInfo:
    """What the probe found: the device's size and which reader the source can run."""

    device: str
    size: int
    python3: bool
    gzip: bool
    zstd: bool = False                 # the zstd binary (the sh reader's; python3 may also
                                       # have the zstandard module, which it finds itself)


def image_stem(device: str) -> str:
    """/dev/sda -> sda; /dev/mapper/vg0-root -> vg0-root; /dev/cciss/c0d0 -> cciss_c0d0."""
    name = device.removeprefix("/dev/").removeprefix("mapper/")
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "disk"


def probe_device(source: Source, device: str) -> DeviceInfo:
    """Size and reader tools of a source device; a missing or non-block device is a
    one-line error. Needs only sh (blockdev or /sys for the size)."""
    result = source.run(sh_argv("probe", device), check=False, timeout=60)
    host = source.target.host
    if result.returncode == 3:
        raise SourceDeviceError(device=device, host=host, detail="no such device")
    if result.returncode == 4:
        raise SourceDeviceError(device=device, host=host,
                                detail="not a block device (give a whole disk, e.g. /dev/sda)")
    fields = result.text.split()
    if result.returncode != 0 or len(fields) != 4 or not all(f.isdigit() for f in fields):
        raise RemoteCommandFailed(command=f"probe {device}", host=host,
                                  returncode=result.returncode,
                                  stderr_tail=result.stderr.strip()[-200:] or "(no output)")
    return DeviceInfo(device, int(fields[0]), fields[1] == "1", fields[2] == "1",
                      fields[3] == "1")


def source_hostname(source: Source) -> str:
    name = source.run(["cat", "/proc/sys/kernel/hostname"], root=False).text.strip()
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "source"


@dataclass(frozen=True)
class ImagePaths:
    """The files of one disk's image in the output dir, as copy and sync both name them."""

    image: Path                        # DIR/NAME-DEV.qcow2: complete once .part is gone

    def _beside(self, suffix: str) -> Path:
        return self.image.with_name(self.image.name + suffix)

    @property
    def part(self) -> Path:
        return self._beside(".part")

    @property
    def journal(self) -> Path:
        return self._beside(".journal")

    @property
    def sync_journal(self) -> Path:
        return self._beside(".sync-journal")

    @property
    def manifest(self) -> Path:
        return self._beside(".manifest.json")


def image_paths(output_dir: Path, name: str, device: str) -> ImagePaths:
    return ImagePaths(output_dir / f"{name}-{image_stem(device)}.qcow2")
