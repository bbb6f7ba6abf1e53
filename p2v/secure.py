"""Private paths: dirs and files only their owner reads, and no symlinked or foreign-owned path.

A copied disk holds the server's secrets (shadow, keys, databases), and so do the inventory,
caps and report files that name it. Every directory p2v makes is 0700 and every file 0600,
whatever the caller's umask; an existing path p2v would write into that is a symlink or is
owned by another user is refused (such a path lets another local user redirect or read what
p2v writes). The one widening is `grant_qemu`: the group search bit that lets the qemu user
libvirt runs guests as reach an image (docs/user/register.md, "Who can read the images", says
why a group and not an ACL or a chown).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
from pathlib import Path
from typing import IO, Any

from p2v.errors import UnsafePath

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
DEFAULT_STATE_DIR = Path("/var/lib/p2v")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
# Debian's and Ubuntu's build default (qemu.conf's commented `group =`); Fedora's is "qemu".
_QEMU_GROUPS = ("libvirt-qemu", "qemu")


def private_umask() -> int:
    """Set umask 077 for this process and its children (qemu-img, qemu-storage-daemon, cp
    create p2v's images); returns the old umask so an in-process caller can restore it."""
    return os.umask(0o077)


def private_umask_restore(old: int) -> None:
    """Give an in-process caller (tests call cli.main) its own umask back."""
    os.umask(old)


def state_dir() -> Path:
    """p2v's own state: $P2V_STATE_DIR, else the root-owned /var/lib/p2v."""
    return Path(os.environ.get("P2V_STATE_DIR") or DEFAULT_STATE_DIR)


def check_path(path: Path, what: str, *, root_ok: bool = False) -> None:
    """Refuse an existing `path` that is a symlink or is owned by someone other than us
    (`root_ok`: or root, for a directory p2v only creates its own dir in, such as /tmp)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(what=what, path=str(path), problem="is a symlink",
                         advice="remove the link, or give the real path")
    if st.st_uid != os.geteuid() and not (root_ok and st.st_uid == 0):
        raise UnsafePath(what=what, path=str(path),
                         problem=f"is owned by uid {st.st_uid}, not by this user "
                                 f"(uid {os.geteuid()})",
                         advice="remove it or choose another path")


def private_dir(path: Path, what: str = "directory", *, tighten: bool = True) -> Path:
    """Make `path` (and missing parents) 0700, or check the existing one; returns `path`.

    `tighten` also takes group and other access away from an existing dir (a work dir or
    the state dir: p2v's own), except the group search bit `grant_qemu` gave qemu's group.
    A user's existing --output-dir keeps its mode (tighten=False); what p2v puts in it is
    0600 anyway.
    """
    path = Path(path)
    missing = []
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    if missing:
        # What the new dirs go into: a planted symlink there (a state dir pointed elsewhere)
        # would carry them away.
        check_path(probe, what, root_ok=True)
    for new in reversed(missing):
        try:
            os.mkdir(new, PRIVATE_DIR)
        except FileExistsError:          # made meanwhile by someone else: check it below
            check_path(new, what)
            continue
        os.chmod(new, PRIVATE_DIR)       # the umask may have taken bits away; never adds
    check_path(path, what)
    if not path.is_dir():
        raise UnsafePath(what=what, path=str(path), problem="is not a directory",
                         advice="remove it or choose another path")
    if tighten and not missing:
        st = path.stat()
        keep = 0o010 if st.st_gid == qemu_gid() else 0
        mode = stat.S_IMODE(st.st_mode)
        if mode & ~(PRIVATE_DIR | keep):
            os.chmod(path, mode & (PRIVATE_DIR | keep))
    return path


def open_private(path: Path, mode: str = "w", what: str = "file") -> IO[Any]:
    """open() for a file p2v writes: 0600 whatever the umask, never through a symlink.

    `mode` is one of w, a, a+ (text) or wb, ab (binary).
    """
    flags = {"w": os.O_WRONLY, "a": os.O_WRONLY | os.O_APPEND,
             "a+": os.O_RDWR | os.O_APPEND}[mode.rstrip("b")]
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    except OSError as exc:
        if os.path.islink(path):
            check_path(path, what)
        raise exc
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            check_path(path, what)
        os.fchmod(fd, PRIVATE_FILE)
        if mode.startswith("w"):       # truncated only once it is known to be ours
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, mode)


def write_private(path: Path, data: str | bytes, what: str = "file") -> None:
    """Write a whole file, 0600."""
    with open_private(path, "wb", what) as out:
        out.write(data.encode() if isinstance(data, str) else data)


def replace_private(path: Path, data: str | bytes, what: str = "file") -> None:
    """Write a whole file, 0600, atomically: a reader sees the old file or the new one (a
    temporary file beside it is renamed over it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    write_private(tmp, data, what)
    tmp.replace(path)


def make_private(path: Path, what: str = "file") -> None:
    """0600 for a file a child process made (qemu-img create follows the umask)."""
    check_path(path, what)
    os.chmod(path, PRIVATE_FILE)


# ---------------------------------------------------------------- the qemu user's way in
def _qemu_conf() -> dict[str, str]:
    try:
        text = QEMU_CONF.read_text()
    except OSError:
        return {}
    found = re.findall(r'^\s*(group|dynamic_ownership)\s*=\s*"?([^"\s#]+)"?', text, re.M)
    return dict(found)


def qemu_gid() -> int | None:
    """The group local libvirt runs qemu as (qemu.conf `group`, else the build default)."""
    conf = _qemu_conf().get("group")
    for name in ([conf] if conf else list(_QEMU_GROUPS)):
        if name.startswith("+") and name[1:].isdigit():
            return int(name[1:])
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            continue
    return None


def _not_ours_to_open(directory: Path) -> bool:
    """A top-level dir (/root) or someone's home: never widened, even though root owns it."""
    if directory.parent == Path("/"):
        return True
    return any(Path(entry.pw_dir) == directory for entry in pwd.getpwall())


def grant_qemu(image: Path) -> list[str]:
    """Let the qemu group reach `image`: g+x, group qemu, on every private dir above it.

    Only search, never read: the dirs stay unlistable. The image itself is left to libvirt's
    dynamic_ownership (it chowns a disk to qemu while the guest runs and gives it back after);
    where qemu.conf turns that off, the image gets the group and 0660. Returns the problems
    (a dir qemu cannot pass and that is not ours), empty when qemu can reach the image.
    """
    gid = qemu_gid()
    if gid is None or os.geteuid() != 0:
        return []                 # root-less libvirt (qemu:///session) runs qemu as us
    image = Path(image).resolve()
    problems = []
    for directory in image.parents:
        st = directory.stat()
        if st.st_mode & stat.S_IXOTH or (st.st_gid == gid and st.st_mode & stat.S_IXGRP):
            continue
        if st.st_uid != os.geteuid() or _not_ours_to_open(directory):
            problems.append(f"qemu (group {gid}) cannot reach {image}: {directory} is mode "
                            f"{stat.S_IMODE(st.st_mode):04o}, owned by uid {st.st_uid}; "
                            "keep the images elsewhere (the default /var/lib/p2v/jobs), or "
                            "give qemu's group search (x) on it yourself")
            continue
        os.chown(directory, -1, gid)      # the group's bits become search only
        os.chmod(directory, (stat.S_IMODE(st.st_mode) & ~0o070) | stat.S_IXGRP)
    if _qemu_conf().get("dynamic_ownership") == "0" and image.stat().st_uid == os.geteuid():
        os.chown(image, -1, gid)
        os.chmod(image, 0o660)
    return problems


__all__ = [
    "DEFAULT_STATE_DIR", "PRIVATE_DIR", "PRIVATE_FILE", "check_path", "grant_qemu",
    "make_private", "open_private", "private_dir", "private_umask", "private_umask_restore",
    "qemu_gid", "replace_private", "state_dir", "write_private",
]
