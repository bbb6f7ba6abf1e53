"""The one home of libguestfs: open disk images in the appliance and turn its errors into ours."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from p2v.accel import guestfs_env
from p2v.errors import GuestfsError
from p2v.scratch import adopt, scratch_dir

log = logging.getLogger(__name__)


class _Handle:
    """The guestfs handle with every call's RuntimeError turned into a GuestfsError.

    Callers anywhere in p2v then get a one-line error naming the failed call, never a
    traceback from the binding.
    """

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._raw, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except RuntimeError as exc:
                raise GuestfsError(action=name, detail=str(exc).strip()) from exc

        return call


class GuestSession:
    """A launched libguestfs handle over one guest's disks.

    `g` is the handle for the operations p2v needs (its errors are GuestfsError); `call()`
    names the action in words for the error message.
    """

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.g: Any = _Handle(raw)
        # Turns an fstab device libguestfs cannot mount (a multipath map, a by-id link of
        # the old disk) into the appliance device it is; called with "/" mounted.
        self.resolve_spec: Callable[[str], str | None] | None = None

    def call(self, action: str, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.raw, method)(*args, **kwargs)
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
                self._mount(device, mountpoint, readonly)
                continue
            except RuntimeError as exc:
                error = exc
            # libguestfs hands back fstab names it cannot resolve as they are: the root is
            # the one inspection found, the others may be known by name (p2v.fix.multipath).
            other = root if mountpoint == "/" else (
                self.resolve_spec(device) if self.resolve_spec else None)
            try:
                if other is None or other == device:
                    raise error
                self._mount(other, mountpoint, readonly)
                log.info("mounted %s (fstab: %s) on %s", other, device, mountpoint)
            except RuntimeError as exc:
                log.warning("could not mount %s on %s: %s", device, mountpoint, exc)

    def _mount(self, device: str, mountpoint: str, readonly: bool) -> None:
        if readonly:
            self.raw.mount_ro(device, mountpoint)
        else:
            self.raw.mount(device, mountpoint)

    def read_text(self, path: str) -> str:
        return bytes(self.call(f"reading {path}", "read_file", path)).decode(errors="replace")

    def write_text(self, path: str, text: str, mode: int | None = None) -> None:
        self.call(f"writing {path}", "write", path, text.encode())
        if mode is not None:
            self.call(f"setting mode of {path}", "chmod", mode, path)

    def exists(self, path: str) -> bool:
        return bool(self.call(f"checking {path}", "exists", path))


def _appliance_sockdirs(sockdir_root: str) -> set[Path]:
    """The socket dirs of the libguestfs appliances (qemu children of this process) running now.

    Read from each child's command line (`-chardev socket,path=DIR/guestfsd.sock`): libguestfs
    offers no call that names the dir.
    """
    found: set[Path] = set()
    for children in Path("/proc/self/task").glob("*/children"):
        try:
            pids = children.read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            for arg in argv:
                for part in arg.decode(errors="replace").split(","):
                    sock = Path(part.removeprefix("path="))
                    if (part.startswith("path=") and sock.name == "guestfsd.sock"
                            and str(sock.parent.parent) == sockdir_root
                            and sock.parent.name.startswith("libguestfs")):
                        found.add(sock.parent)
    return found


@contextmanager
def _sockdir_adopted(g: Any, scratch: Path) -> Iterator[None]:
    """While the appliance launches, record its socket dir in SCRATCH (see scratch.adopt).

    The dir is made during launch, so a watcher looks for it from the start: a p2v killed
    mid-launch would otherwise leave it in /tmp.
    """
    root = str(Path(g.get_sockdir()).resolve())
    before = _appliance_sockdirs(root)
    done = threading.Event()

    def watch() -> None:
        while True:
            new = _appliance_sockdirs(root) - before
            for path in new:
                adopt(scratch, path)
            if new or done.wait(0.05):
                return

    watcher = threading.Thread(target=watch, name="p2v-guestfs-sockdir", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


@contextmanager
def open_guest(
    disks: Sequence[Path],
    *,
    readonly: bool = False,
    fmt: str | None = None,
    memsize: int | None = None,
    network: bool = False,
    extra_readonly: Sequence[Path] = (),
) -> Iterator[GuestSession]:
    """Launch the appliance over the disks; shut it down (flushing writes) on exit.

    extra_readonly: raw images attached read-only after the disks (the virtio-win ISO).
    """
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
    scratch = ExitStack()
    try:
        # libguestfs's own temp dir goes into a scratch dir: a killed p2v (no g.close) left
        # $TMPDIR/libguestfsXXXXXX behind; the next appliance's sweep removes it.
        tmp = scratch.enter_context(scratch_dir("guestfs"))
        g.set_tmpdir(str(tmp))
        if memsize:
            g.set_memsize(memsize)
        if network:
            g.set_network(True)
        for disk in disks:
            options: dict[str, Any] = {"readonly": readonly}
            if fmt:
                options["format"] = fmt
            session.call(f"adding {disk}", "add_drive_opts", str(disk), **options)
        for extra in extra_readonly:
            session.call(f"adding {extra}", "add_drive_opts", str(extra), readonly=True,
                         format="raw")
        with _sockdir_adopted(g, tmp):
            session.call("launching the appliance", "launch")
        yield session
        if not readonly:
            session.call("flushing changes", "shutdown")
    finally:
        g.close()
        scratch.close()
