"""What a register is asked for and the checks made before anything is defined: the request,
its images as qemu-img reads them, the guest's caps, MACs, volume names, the host's OVMF.

Both targets (p2v.target.libvirt, p2v.target.local) build on these; p2v.target.register
picks one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from p2v import qemuimg
from p2v.errors import CommandFailed, InputNotFound, UsageError
from p2v.libvirt_uri import default_uri
from p2v.model import GuestCaps, SourceInventory, SourceNic
from p2v.target.domain import NicMapping

Progress = Callable[[str], None]
OutputKind = Literal["libvirt", "local"]

# The name is also the stem of image, NVRAM and log file names: keep it to safe characters.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,62}")


@dataclass(frozen=True)
class ImageInfo:
    """What qemu-img says about one input image."""

    path: Path
    format: str
    virtual_size: int
    file_size: int
    backing: str | None


def inspect_image(path: Path) -> ImageInfo:
    """Read an image's format and sizes; a missing or unreadable image is bad input."""
    path = Path(path)
    if not path.exists():
        raise InputNotFound(what="disk image", path=str(path))
    if not os.access(path, os.R_OK) or not path.is_file():
        raise UsageError(detail=f"disk image {path} is not a readable file")
    try:
        # -U: the image may be open read-only elsewhere (a running verify, a source).
        data = qemuimg.info(path)
    except CommandFailed as exc:
        tail = exc.fields["stderr_tail"]
        raise UsageError(detail=f"disk image {path} is unreadable: {tail}") from None
    fmt = str(data.get("format", "raw"))
    if fmt not in ("raw", "qcow2"):
        raise UsageError(detail=f"disk image {path} is {fmt}; convert it to qcow2 or raw first")
    return ImageInfo(
        path=path.resolve(), format=fmt, virtual_size=int(data["virtual-size"]),
        file_size=path.stat().st_size,
        backing=data.get("full-backing-filename") or data.get("backing-filename"),
    )


@dataclass(frozen=True)
class RegisterRequest:
    """Everything `p2v register` was asked to do."""

    name: str
    images: tuple[Path, ...]
    inventory: SourceInventory = field(default_factory=SourceInventory)
    caps: GuestCaps | None = None            # None: from the inventory's firmware, virtio
    memory_mib: int | None = None
    vcpus: int | None = None
    mappings: tuple[NicMapping, ...] = ()
    uri: str = field(default_factory=default_uri)
    start: bool = False
    replace: bool = False
    pool: str | None = None
    output: OutputKind = "libvirt"
    output_dir: Path | None = None
    nvram: Path | None = None                 # UEFI variable store to seed the guest's NVRAM
    new_macs: bool = False                    # give every NIC a fresh MAC instead of the source's
    force_new_macs: bool = False              # ... even where the guest pins names to MACs

    def guest_caps(self) -> GuestCaps:
        if self.caps is not None:
            return self.caps
        return GuestCaps(firmware=self.inventory.firmware or "bios")


@dataclass(frozen=True)
class RegisterResult:
    """What was registered, where: the `--json` document of `p2v register`."""

    name: str
    uuid: str
    output: OutputKind
    domain_type: str
    firmware: str
    disk_bus: str
    nic_model: str
    disks: tuple[str, ...]                   # file paths, or pool/volume
    nics: tuple[dict[str, str | None], ...]
    uri: str | None = None
    xml: str | None = None                   # the XML file written (local) or kept (failure)
    nvram: str | None = None
    serial_log: str | None = None
    started: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def check_request(request: RegisterRequest) -> GuestCaps:
    """Refuse bad input before touching any target."""
    if not _NAME.fullmatch(request.name):
        raise UsageError(detail=(
            f"--name {request.name!r}: use letters, digits and . _ + - (at most 63, "
            "starting with a letter or digit)"))
    if not request.images:
        raise UsageError(detail="give at least one disk image, boot disk first")
    caps = request.guest_caps()
    if request.nvram is not None:
        if caps.firmware != "uefi":
            raise UsageError(detail="--nvram needs a UEFI guest (firmware uefi in --caps or "
                                    "the inventory)")
        if not request.nvram.is_file():
            raise InputNotFound(what="UEFI variable store (--nvram)", path=str(request.nvram))
    if request.output == "local":
        if request.output_dir is None:
            raise UsageError(detail="--output local needs --output-dir DIR")
        if request.pool is not None or request.start:
            raise UsageError(detail="--pool and --start need --output libvirt")
    if request.force_new_macs and not request.new_macs:
        raise UsageError(detail="--force-new-macs goes with --new-macs")
    if request.new_macs and caps.pinned_nics and not request.force_new_macs:
        pins = ", ".join(f"{n.name}={n.mac}" for n in caps.pinned_nics)
        raise UsageError(detail=(
            f"--new-macs refused: the guest pins interface names to MACs ({pins}); new MACs "
            "would rename them and lose their network configuration. Keep the source's MACs, "
            "or add --force-new-macs to go ahead anyway"))
    return caps


def fresh_mac() -> str:
    """A random MAC in the locally administered range libvirt and qemu use (52:54:00)."""
    tail = os.urandom(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


def with_new_macs(request: RegisterRequest, progress: Progress) -> RegisterRequest:
    """The request with every source NIC given a fresh MAC (the source is still live)."""
    nics = tuple(SourceNic(n.name, fresh_mac()) for n in request.inventory.nics)
    caps = request.guest_caps()
    if caps.pinned_nics:
        progress("warning: --force-new-macs: interfaces pinned by MAC ("
                 + ", ".join(n.name for n in caps.pinned_nics)
                 + ") will get new names inside the guest; fix their configuration by hand")
    for old, new in zip(request.inventory.nics, nics, strict=True):
        progress(f"{old.name}: new MAC {new.mac} (source had {old.mac})")
    return replace(request, inventory=replace(request.inventory, nics=nics))


def host_ovmf() -> tuple[str, str]:
    """This host's OVMF code and its matching empty variable store (same flash size)."""
    from p2v.firmware import OVMF_CODE_CANDIDATES

    for code in OVMF_CODE_CANDIDATES:
        template = code.replace("OVMF_CODE", "OVMF_VARS")
        if Path(code).is_file() and Path(template).is_file():
            return code, template
    raise InputNotFound(what="OVMF firmware for a UEFI guest (install ovmf)",
                        path=" or ".join(OVMF_CODE_CANDIDATES))


def volume_names(name: str, images: Sequence[ImageInfo]) -> list[str]:
    """Pool volume / local file names of the guest's disks, in source order."""
    return [f"{name}-disk{index}.{image.format}" for index, image in enumerate(images)]


__all__ = [
    "ImageInfo", "host_ovmf", "RegisterRequest", "RegisterResult", "check_request",
    "inspect_image", "volume_names",
]
