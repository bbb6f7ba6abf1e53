"""The one home of libguestfs: open disk images in the appliance and turn its errors into ours."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from p2v.errors import GuestfsError
from p2v.verify.accel import guestfs_env

log = logging.getLogger(__name__)


class GuestSession:
    """A launched libguestfs handle over one guest's disks.

    `g` is the raw handle for the operations p2v needs; call through `call()` to get
    GuestfsError with the action named instead of a bare RuntimeError.
    """

    def __init__(self, g: Any) -> None:
        self.g = g

    def call(self, action: str, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.g, method)(*args, **kwargs)
        except RuntimeError as exc:
            raise GuestfsError(action=action, detail=str(exc).strip()) from exc

    def inspect(self) -> str:
        """Return the guest's root filesystem device, or raise if no OS is found."""
        roots = self.call("inspecting the guest", "inspect_os")
        if not roots:
            raise GuestfsError(action="inspecting the guest", detail="no operating system found")
        return str(roots[0])

    def mount_guest(self, root: str, readonly: bool = False) -> None:
        """Mount the guest's filesystems as its fstab does (shortest mountpoint first)."""
        mounts = self.call("reading mountpoints", "inspect_get_mountpoints", root)
        for mountpoint, device in sorted(mounts.items(), key=lambda m: len(m[0])):
            try:
                if readonly:
                    self.g.mount_ro(device, mountpoint)
                else:
                    self.g.mount(device, mountpoint)
            except RuntimeError as exc:
                log.warning("could not mount %s on %s: %s", device, mountpoint, exc)

    def read_text(self, path: str) -> str:
        return bytes(self.call(f"reading {path}", "read_file", path)).decode(errors="replace")

    def write_text(self, path: str, text: str, mode: int | None = None) -> None:
        self.call(f"writing {path}", "write", path, text.encode())
        if mode is not None:
            self.call(f"setting mode of {path}", "chmod", mode, path)

    def exists(self, path: str) -> bool:
        return bool(self.call(f"checking {path}", "exists", path))


@contextmanager
def open_guest(
    disks: Sequence[Path],
    *,
    readonly: bool = False,
    fmt: str | None = None,
    memsize: int | None = None,
    network: bool = False,
) -> Iterator[GuestSession]:
    """Launch the appliance over the disks; shut it down (flushing writes) on exit."""
    try:
        import guestfs  # noqa: PLC0415 - only importer of libguestfs by design
    except ImportError as exc:  # pragma: no cover - depends on the host
        raise GuestfsError(
            action="loading the python binding",
            detail="import guestfs failed; run p2v from the venv built by `make setup`",
        ) from exc
    for key, value in guestfs_env().items():
        os.environ.setdefault(key, value)
    g = guestfs.GuestFS(python_return_dict=True)
    session = GuestSession(g)
    try:
        if memsize:
            g.set_memsize(memsize)
        if network:
            g.set_network(True)
        for disk in disks:
            options: dict[str, Any] = {"readonly": readonly}
            if fmt:
                options["format"] = fmt
            session.call(f"adding {disk}", "add_drive_opts", str(disk), **options)
        session.call("launching the appliance", "launch")
        yield session
        if not readonly:
            session.call("flushing changes", "shutdown")
    finally:
        g.close()
