"""Scratch dirs (the boot check's, the accelerator probe's, a qcow2 writer's NBD socket,
libguestfs's temp dir): held while used, swept once dead.

A killed p2v runs no `finally`, so a scratch dir (a boot check's overlays, console logs, a
copy of the NVRAM, an NBD socket dir) would stay behind. Each one therefore holds an flock
on its own `.owner` file for as long as its process lives (the kernel drops it when the
process dies, however it dies), and every new scratch dir first removes the dirs in its root
whose lock nobody holds. The roots are a job's work dir (`p2v clean` removes it too) or the
state dir. Nothing in a scratch dir is named like an image (`*.qcow2`), so no glob for
images ever picks one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from p2v.errors import UsageError
from p2v.secure import private_dir, state_dir

log = logging.getLogger(__name__)

OWNER = ".owner"
ROOT_LOCK = ".lock"
ADOPTED = ".adopted"     # dirs made elsewhere by this run's helpers, removed with this one
# The only entries a sweep may remove: the dirs this module makes.
KINDS = ("verify", "kvmprobe", "nbd", "guestfs", "sshchild")
WORK_DIR_ROOT = ".p2v-scratch"   # the root inside a job's work dir


def default_root() -> Path:
    """Where a scratch dir goes outside a job: the state dir, else a private dir of this user."""
    root = state_dir() / "scratch"
    try:
        private_dir(root.parent, "state dir")     # 0700 and ours, as every command makes it
        _make_root(root)
    except PermissionError:       # a user who may not write the state dir
        root = Path(tempfile.gettempdir()) / f"p2v-scratch-{os.geteuid()}"
        _make_root(root)
    return root


def socket_root() -> Path:
    """A root short enough for unix socket paths (108 bytes): the default root, else a
    private dir of this user in the temp dir (a long P2V_STATE_DIR)."""
    root = default_root()
    if len(os.fsencode(root)) <= 60:
        return root
    root = Path(tempfile.gettempdir()) / f"p2v-scratch-{os.geteuid()}"
    _make_root(root)
    return root


def _make_root(root: Path) -> None:
    """Create ROOT (0700), refusing a symlink or a dir that another user owns."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = root.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise UsageError(detail=f"{root} is a symlink, not a directory or not yours: p2v "
                                "puts no scratch files there; remove it or set P2V_STATE_DIR")


@contextmanager
def _root_locked(root: Path) -> Iterator[None]:
    """Serialise sweeps against the creation of scratch dirs in ROOT (held for moments)."""
    with (root / ROOT_LOCK).open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


def _is_ours(entry: Path) -> bool:
    return entry.name.split("-", 1)[0] in KINDS and entry.is_dir() and not entry.is_symlink()


def _owner_dead(entry: Path) -> bool:
    try:
        owner = (entry / OWNER).open("r")
    except FileNotFoundError:
        # Only a creator killed between making the dir and locking it leaves no owner file:
        # creation happens under the root lock, which the sweeper holds now.
        return True
    with owner:
        try:
            fcntl.flock(owner.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def owner_alive(path: Path) -> bool:
    """Whether the run that made scratch dir PATH still lives (False once the dir is gone)."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    if not (path / OWNER).exists():
        return False
    return not _owner_dead(path)


def sweep(root: Path) -> list[Path]:
    """Remove ROOT's scratch dirs whose owner is gone; return what was removed."""
    if not root.is_dir():
        return []
    with _root_locked(root):
        return _sweep_locked(root)


def adopt(path: Path, other: Path) -> None:
    """Have scratch dir PATH take OTHER (a dir a helper made outside it) along when a sweep
    removes it, that is once the run that made both is dead.

    libguestfs puts its sockets in /tmp whatever its temp dir is (always, for root), and only
    its close() removes them: recorded here, the next sweep removes them after a SIGKILL.
    """
    with (Path(path) / ADOPTED).open("a") as f:
        f.write(f"{os.fspath(other)}\n")
        f.flush()


def _remove_adopted(entry: Path) -> None:
    """Remove the dirs ENTRY adopted that are still real dirs of this user."""
    try:
        lines = (entry / ADOPTED).read_text().splitlines()
    except OSError:
        return
    for line in lines:
        other = Path(line)
        try:
            info = other.lstat()
        except OSError:
            continue              # closed normally: libguestfs removed it itself
        if (other.is_absolute() and len(other.parts) > 2 and stat.S_ISDIR(info.st_mode)
                and info.st_uid == os.geteuid()):
            shutil.rmtree(other, ignore_errors=True)


def _sweep_locked(root: Path) -> list[Path]:
    removed = []
    for entry in sorted(root.iterdir()):
        if _is_ours(entry) and _owner_dead(entry):
            _remove_adopted(entry)
            shutil.rmtree(entry, ignore_errors=True)
            log.info("removed %s, left behind by a p2v run that was killed", entry)
            removed.append(entry)
    return removed


@contextmanager
def scratch_dir(kind: str, root: Path | None = None) -> Iterator[Path]:
    """A fresh private dir `ROOT/KIND-XXXX`, removed on the way out (or by the next sweep)."""
    if kind not in KINDS:
        raise ValueError(f"unknown scratch kind {kind!r}")
    root = default_root() if root is None else root
    _make_root(root)
    owner: IO[str]
    with _root_locked(root):
        _sweep_locked(root)
        path = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=root))
        owner = (path / OWNER).open("w")
        fcntl.flock(owner.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        owner.write(f"{os.getpid()}\n")
        owner.flush()
        yield path
    finally:
        # Adopted dirs stay: their makers remove them while alive (and may outlive this dir).
        shutil.rmtree(path, ignore_errors=True)
        owner.close()


__all__ = ["WORK_DIR_ROOT", "adopt", "default_root", "owner_alive", "scratch_dir", "socket_root",
           "sweep"]
