"""Where the virtio-win drivers come from: a directory on the host, or the ISO, read in the
appliance (attached read-only beside the guest's disks, never mounted on the host).

`check_virtio_win` runs before the appliance starts, so a wrong path costs nothing and
touches no image. `DriverTree` then finds a driver's directory case-insensitively (the ISO
and copies of it differ in case: NetKVM vs netkvm) and copies files into the guest.
"""

from __future__ import annotations

from pathlib import Path

from p2v.errors import ExitCode, UsageError
from p2v.fix.session import GuestSession
from p2v.fix.windows.catalog import Driver, WindowsVersion

ISO_MOUNT = "/virtio-win"      # where the appliance mounts the ISO (its own mountpoint)


class VirtioWinError(UsageError):
    """--virtio-win {path}: {detail}"""

    exit_code = ExitCode.DRIVERS_UNAVAILABLE


class DriverMissing(UsageError):
    """the virtio-win tree {tree} has no {driver} driver for {windows} {arch} (looked for {where}); use a virtio-win release that has it, nothing was written"""  # noqa: E501

    exit_code = ExitCode.DRIVERS_UNAVAILABLE


def check_virtio_win(path: Path) -> str:
    """'dir' or 'iso'; raise VirtioWinError for anything else."""
    if path.is_dir():
        return "dir"
    if not path.exists():
        raise VirtioWinError(path=str(path), detail="no such file or directory; give the "
                             "virtio-win ISO or a directory holding its contents")
    if not path.is_file():
        raise VirtioWinError(path=str(path), detail="not a directory or an ISO file")
    try:
        with path.open("rb") as f:
            f.seek(0x8001)
            magic = f.read(5)
    except OSError as exc:
        raise VirtioWinError(path=str(path), detail=exc.strerror or str(exc)) from None
    if magic != b"CD001":
        raise VirtioWinError(path=str(path), detail="not an ISO 9660 image (no CD001 volume "
                             "descriptor); give the virtio-win ISO or a directory")
    return "iso"


class DriverTree:
    """A virtio-win tree: a host directory, or the ISO mounted at ISO_MOUNT in the appliance."""

    def __init__(self, session: GuestSession, path: Path, kind: str) -> None:
        self.session = session
        self.path = path
        self.kind = kind

    def _entries(self, directory: str) -> list[str]:
        if self.kind == "dir":
            local = self.path / directory if directory else self.path
            return sorted(p.name for p in local.iterdir()) if local.is_dir() else []
        remote = f"{ISO_MOUNT}/{directory}" if directory else ISO_MOUNT
        return sorted(str(n) for n in self.session.ls(remote)) \
            if self.session.is_dir(remote) else []

    def _resolve(self, rel: str) -> str | None:
        """rel with each component in the case the tree has it, or None if absent."""
        found = ""
        for part in rel.split("/"):
            match = next((e for e in self._entries(found) if e.lower() == part.lower()), None)
            if match is None:
                return None
            found = f"{found}/{match}" if found else match
        return found

    def driver_files(self, driver: Driver, version: WindowsVersion, arch: str) -> dict[str, str]:
        """file name -> its path in the tree; raise DriverMissing if any is absent."""
        where = driver.tree_dir(version, arch)
        directory = self._resolve(where)
        files: dict[str, str] = {}
        if directory is not None:
            for name in driver.files:
                path = self._resolve(f"{directory}/{name}")
                if path is not None:
                    files[name] = path
        if len(files) != len(driver.files):
            missing = [n for n in driver.files if n not in files]
            raise DriverMissing(tree=str(self.path), driver=driver.name, windows=version.name,
                                arch=arch, where=f"{where}/"
                                + (missing[0] if directory is not None else ""))
        return files

    def read(self, rel: str) -> bytes:
        if self.kind == "dir":
            return (self.path / rel).read_bytes()
        return self.session.read_file(f"{ISO_MOUNT}/{rel}", action=f"reading {rel} from the ISO")

    def copy(self, rel: str, guest_path: str) -> None:
        """Copy a file of the tree to guest_path (a path in the appliance)."""
        if self.kind == "dir":
            self.session.upload(self.path / rel, guest_path,
                                action=f"copying {rel} into the guest")
        else:
            self.session.cp(f"{ISO_MOUNT}/{rel}", guest_path,
                            action=f"copying {rel} into the guest")
