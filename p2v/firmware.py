"""Where the host keeps its UEFI firmware (OVMF): the code every UEFI guest runs and the
empty variable store a brand-new machine starts with."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from p2v.errors import InputNotFound

OVMF_CODE_CANDIDATES = (
    "/usr/share/OVMF/OVMF_CODE_4M.fd",
    "/usr/share/OVMF/OVMF_CODE.fd",
    "/usr/share/edk2/ovmf/OVMF_CODE.fd",
)
OVMF_VARS_CANDIDATES = (
    "/usr/share/OVMF/OVMF_VARS_4M.fd",
    "/usr/share/OVMF/OVMF_VARS.fd",
    "/usr/share/edk2/ovmf/OVMF_VARS.fd",
)


def _first_existing(candidates: tuple[str, ...], what: str) -> Path:
    for candidate in candidates:
        if Path(candidate).exists():
            return Path(candidate)
    raise InputNotFound(what=what, path=" or ".join(candidates))


def ovmf_code() -> Path:
    return _first_existing(OVMF_CODE_CANDIDATES, "OVMF firmware (install ovmf)")


def fresh_ovmf_vars(dest: Path) -> Path:
    """Copy an empty UEFI variable store: what a brand-new VM gets."""
    shutil.copyfile(_first_existing(OVMF_VARS_CANDIDATES, "OVMF variable store"), dest)
    return dest


# GPT partition types that say how a disk boots.
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"          # EFI system partition
BIOS_BOOT_GUID = "21686148-6449-6E6F-744E-656564454649"    # grub's core image on GPT + BIOS
# Enough of a disk's start for its GPT header and entries, at 512- or 4096-byte sectors.
TABLE_BYTES = 1 << 20


def disk_firmware(head: bytes) -> str:
    """How a disk whose first bytes are HEAD boots: "uefi" for a GPT disk with an EFI system
    partition and no BIOS boot partition, else "bios" (MBR, GPT for BIOS, or no table).

    What an existing image without a live inventory tells about its firmware; fix's own
    inspection (the mounted ESP, its loaders) agrees on every fixture."""
    for sector in (512, 4096):
        types = _gpt_types(head, sector)
        if types is not None:
            return "uefi" if ESP_GUID in types and BIOS_BOOT_GUID not in types else "bios"
    return "bios"


def _gpt_types(head: bytes, sector: int) -> set[str] | None:
    """The partition type GUIDs of a GPT at this sector size, or None when there is none."""
    header = head[sector:sector + 92]
    if len(header) < 92 or header[:8] != b"EFI PART":
        return None
    entries_lba = int.from_bytes(header[72:80], "little")
    count = int.from_bytes(header[80:84], "little")
    size = int.from_bytes(header[84:88], "little")
    if size < 128:
        return set()
    types: set[str] = set()
    for index in range(min(count, 4096)):
        at = entries_lba * sector + index * size
        raw = head[at:at + 16]
        if len(raw) < 16:
            break
        if raw != bytes(16):
            types.add(str(uuid.UUID(bytes_le=raw)).upper())
    return types
