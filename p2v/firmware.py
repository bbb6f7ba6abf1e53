"""Where the host keeps its UEFI firmware (OVMF): the code every UEFI guest runs and the
empty variable store a brand-new machine starts with."""

from __future__ import annotations

import shutil
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
