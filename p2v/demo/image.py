"""What a built fixture image is: its disks, firmware store and the identity baked into it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from p2v.errors import P2VError


class FixtureError(P2VError):
    """building the {variant} fixture failed: {detail}"""


@dataclass(frozen=True)
class FixtureImage:
    """A built "legacy physical server", as cached on disk (never committed).

    disks are raw images in source order (boot disk first); nvram is the physical
    machine's own UEFI variable store (uefi variants only; boot entry included).
    """

    variant: str
    directory: Path
    disks: tuple[Path, ...]
    firmware: Literal["bios", "uefi"]
    nvram: Path | None
    hostname: str
    nic_name: str            # the interface name the guest configures (eth0, enp0s25, ...)
    mac: str                 # the physical NIC's MAC, which the static config is bound to
    address: str             # static address with prefix, e.g. 10.0.2.15/24
    gateway: str
    root_password: str       # for console checks only
    ssh_private_key: Path    # authorised for root in the image
    host_public_key: str     # "ssh-ed25519 AAAA..." line of the image's sshd
    root_device: str         # what fstab/cmdline name, e.g. /dev/sda1 or /dev/mapper/vg0-root

    def to_json(self) -> str:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        data["disks"] = [str(d) for d in self.disks]
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> FixtureImage:
        data = json.loads(text)
        data["directory"] = Path(data["directory"])
        data["disks"] = tuple(Path(d) for d in data["disks"])
        data["nvram"] = Path(data["nvram"]) if data["nvram"] else None
        data["ssh_private_key"] = Path(data["ssh_private_key"])
        return cls(**data)
