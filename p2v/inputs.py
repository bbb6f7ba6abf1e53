"""Checks of command-line input made before anything runs: each bad value is one UsageError."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from p2v.errors import (
    InputNotFound,
    InputUnreadable,
    NotADiskImage,
    OutputDirUnusable,
    UsageError,
)
from p2v.secure import check_path

# (offset, bytes) a raw disk starts with: an MBR or GPT's protective MBR, or a whole-disk
# ext2/3/4, XFS or LVM PV without a partition table (libguestfs opens those too).
_DISK_MAGIC = ((510, b"\x55\xaa"), (1080, b"\x53\xef"), (0, b"XFSB"), (512, b"LABELONE"),
               (536, b"LVM2 001"))
_QEMU_IMG_TIMEOUT = 60


def finite_positive(text: str) -> float:
    """argparse type of every seconds/number option: a finite number above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number: {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def check_name(name: str | None, flag: str = "--name") -> None:
    """Refuse a --name that is not one safe path component (`../x`, `a/b`, control chars)."""
    from p2v.job import name_problem

    if name is None:
        return
    problem = name_problem(name)
    if problem is not None:
        raise UsageError(detail=problem.replace("--name", flag, 1) + "; nothing was created")


def check_output_dir(path: Path | None, flag: str = "--output-dir") -> None:
    """The directory can be used (or created) for writing; nothing is created to find out.

    An existing path must be a writable directory; a missing one needs its nearest existing
    ancestor to be one (the command creates the rest later).
    """
    if path is None:
        return
    target = Path(os.path.abspath(path))
    if os.path.islink(target):
        # A planted link (even a dangling one) is named as such, not as "not a directory".
        check_path(target, "output dir")
    probe = target
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    shown = str(path)
    if probe != target:
        shown = f"{path} (its parent {probe})"
    if not probe.is_dir():
        raise OutputDirUnusable(flag=flag, path=shown, detail="is not a directory")
    # access() also sees a read-only mount and an immutable directory, even for root.
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputDirUnusable(flag=flag, path=shown, detail="is not writable")


def read_text_input(path: Path, what: str) -> str:
    """The UTF-8 text of an input file, or one line saying why it cannot be read."""
    if not path.is_file():
        raise InputNotFound(what=what, path=str(path))
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputUnreadable(what=what, path=str(path),
                              detail=f"not UTF-8 text ({exc.reason} at byte {exc.start})"
                              ) from None
    except OSError as exc:
        raise InputUnreadable(what=what, path=str(path),
                              detail=exc.strerror or str(exc)) from None


def check_json_text(text: str, path: Path, what: str) -> None:
    """Refuse text that is not a JSON object (bad syntax, or nested too deep to parse)."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise InputUnreadable(what=what, path=str(path),
                              detail="nested too deeply to be a p2v document") from None
    except ValueError as exc:
        raise InputUnreadable(what=what, path=str(path), detail=f"not valid JSON: {exc}"
                              ) from None
    if not isinstance(data, dict):
        raise InputUnreadable(what=what, path=str(path), detail="not a JSON object")


def check_disk_image(path: Path, *, boot: bool = True) -> None:
    """Refuse a missing, empty or non-disk IMAGE before any boot or appliance launch.

    Only a boot disk (the first image) must show a partition table, boot sector or
    filesystem at its start: a raw data disk may hold anything (an md member, btrfs, ZFS).
    """
    if not path.exists():
        raise InputNotFound(what="image", path=str(path))
    if not path.is_file():
        raise NotADiskImage(path=str(path), detail="not a regular file")
    if path.stat().st_size == 0:
        raise NotADiskImage(path=str(path), detail="it is empty (0 bytes)")
    info = _qemu_img_info(path)
    if int(info.get("virtual-size") or 0) == 0:
        raise NotADiskImage(path=str(path), detail="its virtual size is 0")
    if boot and info.get("format") == "raw" and not _looks_like_a_disk(path):
        raise NotADiskImage(path=str(path), detail="no partition table, boot sector or "
                            "filesystem at its start")


def _qemu_img_info(path: Path) -> dict[str, Any]:
    from p2v import qemuimg
    from p2v.errors import CommandFailed

    try:
        # -U: the image may be open read-only elsewhere (a running verify, a copy).
        data = qemuimg.info(path, timeout=_QEMU_IMG_TIMEOUT)
    except CommandFailed as exc:
        raise NotADiskImage(path=str(path),
                            detail=f"qemu-img cannot read it: {exc.fields['stderr_tail']}"
                            ) from None
    except ValueError:
        data = {}
    if not data:
        raise NotADiskImage(path=str(path), detail="qemu-img gave no description of it")
    return data


def _looks_like_a_disk(path: Path) -> bool:
    """A raw file holds a partition table, or a filesystem or PV written to the whole disk."""
    with path.open("rb") as f:
        head = f.read(4096)
    return any(head[at:at + len(magic)] == magic for at, magic in _DISK_MAGIC)
