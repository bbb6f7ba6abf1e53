"""The virtio-win driver catalog (drivers/virtio-win.toml): load it, check it, pick drivers.

The catalog is data so that a new Windows release or driver is one entry, not code. Every
entry is checked on load and a bad one is named with its field; picking is pure (a Windows
version and arch in, drivers out), so it is unit-tested without any image.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2v.errors import UsageError

SCHEMA = "p2v.drivers/1"
CATALOG_PATH = Path(__file__).resolve().parents[3] / "drivers" / "virtio-win.toml"
DATABASES = ("critical-device-database", "driver-database")
VARIANTS = ("client", "server")
ARCHS = ("amd64", "x86", "ARM64")
NICS = ("e1000", "e1000e")
PNPUTIL = ("legacy", "modern")
# libguestfs's architecture names -> virtio-win's directory names.
GUESTFS_ARCHS = {"x86_64": "amd64", "i386": "x86", "i486": "x86", "i586": "x86",
                 "i686": "x86", "aarch64": "ARM64"}
_PCI_ID = re.compile(r"PCI\\VEN_[0-9A-F]{4}&DEV_[0-9A-F]{4}"
                     r"(&SUBSYS_[0-9A-F]{8})?(&REV_[0-9A-F]{2})?")
_GUID = re.compile(r"\{[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}\}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class CatalogError(UsageError):
    """driver catalog {path}: {entry}: {detail}"""


@dataclass(frozen=True)
class WindowsVersion:
    """One Windows release as virtio-win names it (its directory, e.g. 2k19)."""

    dir: str
    name: str
    major: int
    minor: int
    variant: str            # client or server
    min_build: int
    database: str           # critical-device-database or driver-database
    fallback_nic: str       # e1000 or e1000e: the emulated NIC it has a driver for
    pnputil: str            # legacy or modern command line

    @property
    def uses_driver_database(self) -> bool:
        return self.database == "driver-database"


@dataclass(frozen=True)
class Driver:
    """One virtio-win driver and what it serves."""

    name: str
    dir: str
    files: tuple[str, ...]
    service: str
    device: str
    pci: tuple[str, ...]
    boot_critical: bool
    group: str
    class_guid: str
    windows: tuple[str, ...]
    archs: tuple[str, ...]
    optional: bool = False

    @property
    def sys_file(self) -> str:
        return next(f for f in self.files if f.lower().endswith(".sys"))

    @property
    def inf_file(self) -> str:
        return next(f for f in self.files if f.lower().endswith(".inf"))

    def tree_dir(self, version: WindowsVersion, arch: str) -> str:
        """Where its files sit in a virtio-win tree, e.g. viostor/2k19/amd64."""
        return f"{self.dir}/{version.dir}/{arch}"


@dataclass(frozen=True)
class Catalog:
    windows: tuple[WindowsVersion, ...]
    drivers: tuple[Driver, ...]

    def version_for(self, major: int, minor: int, variant: str,
                    build: int | None) -> WindowsVersion | None:
        """The catalog's entry for a guest's NT version, variant and build (None: unknown)."""
        same = [w for w in self.windows
                if (w.major, w.minor, w.variant) == (major, minor, variant.lower())]
        fitting = [w for w in same if build is None or w.min_build <= build]
        if not fitting:
            # A build older than every entry's minimum (a preview) still gets the oldest.
            fitting = same[:1]
        return max(fitting, key=lambda w: w.min_build, default=None)

    def drivers_for(self, version: WindowsVersion, arch: str) -> list[Driver]:
        """Every driver that serves this version and architecture, catalog order."""
        return [d for d in self.drivers if version.dir in d.windows and arch in d.archs]

    def driver(self, name: str) -> Driver:
        return next(d for d in self.drivers if d.name == name)


def _field(entry: dict[str, Any], key: str, kind: type, where: str, path: str,
           default: Any = None) -> Any:
    if key not in entry:
        if default is not None:
            return default
        raise CatalogError(path=path, entry=where, detail=f"missing field {key!r}")
    value = entry[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise CatalogError(path=path, entry=where,
                           detail=f"{key} must be a {kind.__name__}, not {value!r}")
    return value


def _choice(entry: dict[str, Any], key: str, allowed: tuple[str, ...], where: str,
            path: str) -> str:
    value = _field(entry, key, str, where, path)
    if value not in allowed:
        raise CatalogError(path=path, entry=where,
                           detail=f"{key} must be one of {', '.join(allowed)}, not {value!r}")
    return str(value)


def _strings(entry: dict[str, Any], key: str, where: str, path: str) -> tuple[str, ...]:
    value = _field(entry, key, list, where, path)
    if not value or not all(isinstance(v, str) and v for v in value):
        raise CatalogError(path=path, entry=where,
                           detail=f"{key} must be a non-empty list of strings")
    if len(set(value)) != len(value):
        raise CatalogError(path=path, entry=where, detail=f"{key} lists a value twice")
    return tuple(value)


def _windows(entry: dict[str, Any], index: int, path: str) -> WindowsVersion:
    where = f"windows[{index}]" + (f" ({entry['dir']})" if isinstance(entry.get("dir"), str)
                                   else "")
    version = WindowsVersion(
        dir=_field(entry, "dir", str, where, path),
        name=_field(entry, "name", str, where, path),
        major=_field(entry, "major", int, where, path),
        minor=_field(entry, "minor", int, where, path),
        variant=_choice(entry, "variant", VARIANTS, where, path),
        min_build=_field(entry, "min_build", int, where, path, default=0) or 0,
        database=_choice(entry, "database", DATABASES, where, path),
        fallback_nic=_choice(entry, "fallback_nic", NICS, where, path),
        pnputil=_choice(entry, "pnputil", PNPUTIL, where, path),
    )
    if not _NAME.fullmatch(version.dir):
        raise CatalogError(path=path, entry=where, detail=f"dir {version.dir!r} is not a name")
    # CriticalDeviceDatabase went away with Windows 8 (NT 6.2).
    expect = "driver-database" if (version.major, version.minor) >= (6, 2) \
        else "critical-device-database"
    if version.database != expect:
        raise CatalogError(path=path, entry=where, detail=f"database must be {expect} for NT "
                           f"{version.major}.{version.minor}")
    return version


def _driver(entry: dict[str, Any], index: int, path: str, dirs: set[str]) -> Driver:
    where = f"driver[{index}]" + (f" ({entry['name']})" if isinstance(entry.get("name"), str)
                                  else "")
    known = {"name", "dir", "files", "service", "device", "pci", "boot_critical", "group",
             "class_guid", "windows", "archs", "optional"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise CatalogError(path=path, entry=where, detail=f"unknown field {unknown[0]!r}")
    driver = Driver(
        name=_field(entry, "name", str, where, path),
        dir=_field(entry, "dir", str, where, path),
        files=_strings(entry, "files", where, path),
        service=_field(entry, "service", str, where, path),
        device=_field(entry, "device", str, where, path),
        pci=_strings(entry, "pci", where, path),
        boot_critical=_field(entry, "boot_critical", bool, where, path),
        group=_field(entry, "group", str, where, path),
        class_guid=_field(entry, "class_guid", str, where, path),
        windows=_strings(entry, "windows", where, path),
        archs=_strings(entry, "archs", where, path),
        optional=bool(_field(entry, "optional", bool, where, path, default=False)),
    )
    for name in (driver.name, driver.dir, driver.service, *driver.files):
        if not _NAME.fullmatch(name):
            raise CatalogError(path=path, entry=where, detail=f"{name!r} is not a plain name")
    for suffix in (".sys", ".inf", ".cat"):
        if not any(f.lower().endswith(suffix) for f in driver.files):
            raise CatalogError(path=path, entry=where, detail=f"files has no {suffix} file")
    for pci in driver.pci:
        if not _PCI_ID.fullmatch(pci):
            raise CatalogError(path=path, entry=where, detail=f"pci {pci!r} is not a PCI "
                               "hardware ID like PCI\\VEN_1AF4&DEV_1001&SUBSYS_00021AF4&REV_00")
    if not _GUID.fullmatch(driver.class_guid):
        raise CatalogError(path=path, entry=where,
                           detail=f"class_guid {driver.class_guid!r} is not an upper-case GUID")
    for value in driver.windows:
        if value not in dirs:
            raise CatalogError(path=path, entry=where,
                               detail=f"windows names {value!r}, which no [[windows]] entry has")
    for arch in driver.archs:
        if arch not in ARCHS:
            raise CatalogError(path=path, entry=where,
                               detail=f"archs: {arch!r} is not one of {', '.join(ARCHS)}")
    if driver.boot_critical and driver.optional:
        raise CatalogError(path=path, entry=where,
                           detail="a boot-critical driver cannot be optional")
    return driver


def parse_catalog(text: str, path: str = "catalog") -> Catalog:
    """Check every entry of a catalog document; raise CatalogError naming the first bad one."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(path=path, entry="file", detail=f"not valid TOML: {exc}") from None
    if data.get("schema") != SCHEMA:
        raise CatalogError(path=path, entry="schema", detail=f"must be {SCHEMA!r}")
    raw_windows = data.get("windows")
    raw_drivers = data.get("driver")
    if not isinstance(raw_windows, list) or not raw_windows:
        raise CatalogError(path=path, entry="windows", detail="no [[windows]] entries")
    if not isinstance(raw_drivers, list) or not raw_drivers:
        raise CatalogError(path=path, entry="driver", detail="no [[driver]] entries")
    windows = tuple(_windows(e, i, path) for i, e in enumerate(raw_windows))
    seen: dict[tuple[int, int, str, int], str] = {}
    for w in windows:
        key = (w.major, w.minor, w.variant, w.min_build)
        if key in seen or w.dir in seen.values():
            raise CatalogError(path=path, entry=f"windows ({w.dir})",
                               detail="the same version or dir is listed twice")
        seen[key] = w.dir
    drivers = tuple(_driver(e, i, path, {w.dir for w in windows})
                    for i, e in enumerate(raw_drivers))
    names = [d.name for d in drivers]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise CatalogError(path=path, entry=f"driver ({dup})", detail="listed twice")
    return Catalog(windows, drivers)


def load_catalog(path: Path | None = None) -> Catalog:
    """The catalog shipped in drivers/ (or another file), checked."""
    path = path or CATALOG_PATH
    try:
        text = path.read_text()
    except OSError as exc:
        raise CatalogError(path=str(path), entry="file", detail=exc.strerror or str(exc)) \
            from None
    return parse_catalog(text, str(path))
