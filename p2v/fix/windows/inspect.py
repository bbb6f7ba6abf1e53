"""What a Windows guest is: libguestfs inspection, plus the build number from its SOFTWARE
hive, looked up in the driver catalog."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from p2v.fix.inspect import has_esp
from p2v.fix.session import GuestSession
from p2v.fix.windows.catalog import GUESTFS_ARCHS, Catalog
from p2v.fix.windows.hive import open_hive


@dataclass(frozen=True)
class WindowsReport:
    """What the Windows guest is, as p2v fix found it."""

    root: str
    product: str
    major: int
    minor: int
    build: int | None
    variant: str                 # client or server
    arch: str                    # virtio-win's name: amd64, x86
    systemroot: str              # /Windows
    hostname: str
    control_set: str             # ControlSet001
    drive: str                   # the system volume's letter
    firmware: str
    catalog_dir: str | None      # the catalog's name for this version (2k19), None: unknown

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), os_type="windows")

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}" + (f" build {self.build}" if self.build else "")


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def inspect_windows(session: GuestSession, root: str, software: Path,
                    catalog: Catalog) -> WindowsReport:
    """The guest's version facts (libguestfs inspection, plus the build from SOFTWARE)."""
    with open_hive(software) as h:
        cv = h.values(r"Microsoft\Windows NT\CurrentVersion")
    build = next((_int(cv[k].data) for k in ("CurrentBuildNumber", "CurrentBuild")
                  if k in cv), None)
    arch_raw = session.inspect_get_arch(root)
    arch = GUESTFS_ARCHS.get(arch_raw, arch_raw)
    major, minor = session.inspect_get_version(root)
    variant = session.inspect_get_product_variant(root).lower()
    drive = next((str(letter) for letter, dev in session.inspect_get_drive_mappings(root).items()
                  if dev == root), "C")
    version = catalog.version_for(major, minor, variant, build)
    return WindowsReport(
        root=root, product=session.inspect_get_product_name(root), major=major, minor=minor,
        build=build, variant=variant, arch=arch,
        systemroot=session.inspect_get_windows_systemroot(root),
        hostname=session.inspect_get_hostname(root),
        control_set=session.inspect_get_windows_current_control_set(root), drive=drive,
        firmware="uefi" if has_esp(session) else "bios",
        catalog_dir=version.dir if version else None)
