"""Phony Windows disk images and a phony virtio-win tree, for testing `p2v fix --virtio-win`.

A phony image is an MBR disk with one NTFS partition holding just what libguestfs inspection
and p2v fix read: \\Windows\\System32\\cmd.exe (a PE header, for the architecture),
\\Windows\\System32\\config\\SYSTEM and SOFTWARE hives made with hivex (product name, NT
version, build, installation type, control sets, computer name, mounted devices), the
driver directories. It never boots: it is built in seconds in one appliance launch and
cached by the hash of this file and the catalog. The phony virtio-win tree has every file the
catalog names, for the versions given, with placeholder contents.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from p2v.demo.fixtures import (
    build_unused,
    default_cache_dir,
    locked,
    remove_build,
    use_build,
)
from p2v.fix.session import open_guest
from p2v.fix.windows import hive as hive_module
from p2v.fix.windows.catalog import CATALOG_PATH, Catalog, load_catalog
from p2v.fix.windows.hive import RegValue, create_hive, open_hive
from p2v.runner import run

DISK_MB = 64
DISK_SIGNATURE = 0x5032_5601   # MBR disk signature; MountedDevices names C: by it


@dataclass(frozen=True)
class WindowsSpec:
    """What a phony Windows image claims to be."""

    key: str                 # fixture name: win7, win2k19, win2k25
    product: str
    major: int
    minor: int
    build: int
    installation: str        # Client or Server (InstallationType)
    edition: str
    hostname: str
    arch: str = "amd64"


PHONY_WINDOWS = (
    WindowsSpec("win7", "Windows 7 Professional", 6, 1, 7601, "Client", "Professional",
                "P2V-WIN7"),
    WindowsSpec("win2k19", "Windows Server 2019 Standard", 10, 0, 17763, "Server",
                "ServerStandard", "P2V-W2K19"),
    WindowsSpec("win2k25", "Windows Server 2025 Datacenter", 10, 0, 26100, "Server",
                "ServerDatacenter", "P2V-W2K25"),
)


def pe_header(arch: str) -> bytes:
    """A minimal PE executable header (what `file` reads to tell x86-64 from i386)."""
    plus = arch == "amd64"
    machine = 0x8664 if plus else 0x14C
    dos = bytearray(0x80)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x80)
    opt = bytearray(0xF0 if plus else 0xE0)
    struct.pack_into("<H", opt, 0, 0x20B if plus else 0x10B)
    struct.pack_into("<H", opt, 68, 3)          # console subsystem
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", machine, 0, 0, 0, 0, len(opt), 0x0022)
    return (bytes(dos) + coff + bytes(opt)).ljust(1024, b"\0")


def write_hives(spec: WindowsSpec, directory: Path) -> dict[str, Path]:
    """SYSTEM and SOFTWARE hives (and Windows 10's DRIVERS) as a fresh install has them."""
    system, software = directory / "SYSTEM", directory / "SOFTWARE"
    create_hive(system, "CMI-CreateHive{2A7FB991-7BBE-4F9D-B91E-7CB51D4737F5}")
    create_hive(software, "CMI-CreateHive{199DAFC2-6F16-4946-BF90-5A3FC3A60902}")
    ten = spec.major >= 10
    with open_hive(software, write=True) as h:
        cv = r"Microsoft\Windows NT\CurrentVersion"
        h.set_value(cv, "ProductName", RegValue.sz(spec.product))
        h.set_value(cv, "CurrentVersion", RegValue.sz("6.3" if ten else f"{spec.major}."
                                                       f"{spec.minor}"))
        if ten:
            h.set_value(cv, "CurrentMajorVersionNumber", RegValue.dword(spec.major))
            h.set_value(cv, "CurrentMinorVersionNumber", RegValue.dword(spec.minor))
        h.set_value(cv, "CurrentBuild", RegValue.sz(str(spec.build)))
        h.set_value(cv, "CurrentBuildNumber", RegValue.sz(str(spec.build)))
        h.set_value(cv, "InstallationType", RegValue.sz(spec.installation))
        h.set_value(cv, "EditionID", RegValue.sz(spec.edition))
        h.set_value(cv, "SystemRoot", RegValue.sz("C:\\Windows"))
        h.set_value(r"Microsoft\Windows\CurrentVersion", "DevicePath",
                    RegValue.expand_sz("%SystemRoot%\\inf"))
        h.set_value(r"Microsoft\Windows\CurrentVersion", "ProgramFilesDir",
                    RegValue.sz("C:\\Program Files"))
    with open_hive(system, write=True) as h:
        for name, value in (("Current", 1), ("Default", 1), ("Failed", 0),
                            ("LastKnownGood", 2)):
            h.set_value("Select", name, RegValue.dword(value))
        for cs in ("ControlSet001", "ControlSet002"):
            h.set_value(cs + r"\Control\ComputerName\ComputerName", "ComputerName",
                        RegValue.sz(spec.hostname))
            h.set_value(cs + r"\Services\Tcpip\Parameters", "Hostname",
                        RegValue.sz(spec.hostname.lower()))
            ahci = "msahci" if spec.major < 10 else "storahci"
            h.set_value(cs + rf"\Services\{ahci}", "Start", RegValue.dword(0))
            h.set_value(cs + rf"\Services\{ahci}", "Type", RegValue.dword(1))
            if (spec.major, spec.minor) < (6, 2):
                h.set_value(cs + r"\Control\CriticalDeviceDatabase\pci#cc_0106", "Service",
                            RegValue.sz("msahci"))
        if (spec.major, spec.minor) >= (6, 2):
            h.ensure(r"DriverDatabase\DeviceIds")
            h.ensure(r"DriverDatabase\DriverPackages")
            h.ensure(r"DriverDatabase\DriverInfFiles")
        # C: is the partition at 1 MiB of the disk with this signature.
        h.set_value("MountedDevices", r"\DosDevices\C:",
                    RegValue.binary(struct.pack("<IQ", DISK_SIGNATURE, 1 << 20)))
    hives = {"SYSTEM": system, "SOFTWARE": software}
    if spec.major >= 10:
        hives["DRIVERS"] = directory / "DRIVERS"
        create_hive(hives["DRIVERS"], "ROOT")
        with open_hive(hives["DRIVERS"], write=True) as h:
            for key in ("DeviceIds", "DriverPackages", "DriverInfFiles"):
                h.ensure(f"DriverDatabase\\{key}")
    return hives


def _image_key(specs: tuple[WindowsSpec, ...]) -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(Path(hive_module.__file__).read_bytes())
    digest.update(repr(specs).encode())
    return digest.hexdigest()[:16]


def build_windows_images(cache_dir: Path | None = None,
                         specs: tuple[WindowsSpec, ...] = PHONY_WINDOWS) -> dict[str, Path]:
    """Build (or reuse from the cache) one raw image per spec; returns key -> image path.

    All images are made in one appliance launch. A build lands in a temp dir and is
    renamed into place, so a cache entry is always complete.
    """
    cache = (cache_dir or default_cache_dir()) / f"windows-{_image_key(specs)}"
    paths = {s.key: cache / f"{s.key}.img" for s in specs}
    cache.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time; each user holds the build's users file (as for the fixtures),
    # so a run of newer code never deletes the images a run beside it still reads.
    with locked(cache.parent / ".windows.lock"):
        if not (cache / "images.json").is_file():
            _build_windows_images(cache, specs)
        use_build(cache)
        for stale in cache.parent.glob("windows-*"):
            if stale != cache and stale.is_dir() and build_unused(stale):
                remove_build(stale)
    return paths


def _build_windows_images(cache: Path, specs: tuple[WindowsSpec, ...]) -> None:
    work = Path(tempfile.mkdtemp(prefix=".windows-", dir=cache.parent))
    try:
        disks = []
        for spec in specs:
            disk = work / f"{spec.key}.img"
            with disk.open("wb") as f:
                f.truncate(DISK_MB << 20)
            disks.append(disk)
        with open_guest(disks, fmt="raw") as s:
            for index, (spec, _disk) in enumerate(zip(specs, disks, strict=True)):
                dev = f"/dev/sd{chr(ord('a') + index)}"
                s.part_init(dev, "mbr")
                s.part_add(dev, 2048, -1)
                s.part_set_mbr_id(dev, 1, 0x07)
                s.part_set_bootable(dev, 1)
                s.mkfs("ntfs", f"{dev}1", label="Windows")
                s.mount(f"{dev}1", "/")
                hive_dir = work / spec.key
                hive_dir.mkdir()
                hives = write_hives(spec, hive_dir)
                for path in ("/Windows/System32/config", "/Windows/System32/drivers",
                             "/Windows/INF", "/Windows/System32/DriverStore/FileRepository",
                             "/Program Files", "/Users"):
                    s.mkdir_p(path)
                for name, hive in hives.items():
                    s.upload(hive, f"/Windows/System32/config/{name}")
                s.write("/Windows/System32/cmd.exe", pe_header(spec.arch))
                s.write("/Windows/System32/ntoskrnl.exe", pe_header(spec.arch))
                s.write("/Windows/System32/drivers/storahci.sys", pe_header(spec.arch))
                s.write("/pagefile.sys", b"")
                s.umount_all()
        # The disk signature MountedDevices names, in the MBR (part_init wrote zero).
        for disk in disks:
            with disk.open("r+b") as f:
                f.seek(440)
                f.write(struct.pack("<I", DISK_SIGNATURE))
        (work / "images.json").write_text(json.dumps([s.__dict__ for s in specs], indent=2))
        for spec in specs:
            shutil.rmtree(work / spec.key)
        if cache.exists():
            shutil.rmtree(cache)
        os.rename(work, cache)
    finally:
        if work.exists():
            shutil.rmtree(work)


def make_virtio_win_tree(root: Path, windows_dirs: tuple[str, ...] = ("w7", "2k19", "2k25"),
                         archs: tuple[str, ...] = ("amd64",), skip: tuple[str, ...] = (),
                         catalog: Catalog | None = None) -> Path:
    """A virtio-win tree with every file the catalog names (placeholder contents).

    `skip` leaves drivers out (name, or name/windows-dir), for the missing-driver error.
    """
    catalog = catalog or load_catalog()
    versions = {w.dir: w for w in catalog.windows}
    for driver in catalog.drivers:
        for wdir in windows_dirs:
            if wdir not in driver.windows or driver.name in skip \
                    or f"{driver.name}/{wdir}" in skip:
                continue
            for arch in archs:
                if arch not in driver.archs:
                    continue
                target = root / driver.tree_dir(versions[wdir], arch)
                target.mkdir(parents=True, exist_ok=True)
                for name in driver.files:
                    body = (pe_header(arch) if name.endswith((".sys", ".exe"))
                            else f"; {name} for {wdir}/{arch} (phony)\n".encode())
                    (target / name).write_bytes(body)
    (root / "virtio-win-version.txt").write_text("phony virtio-win tree made by p2v tests\n")
    return root


def make_virtio_win_iso(tree: Path, iso: Path) -> Path:
    """The tree as an ISO 9660 image with Joliet and Rock Ridge names, like the real one."""
    run(["genisoimage", "-quiet", "-J", "-R", "-V", "virtio-win", "-o", str(iso), str(tree)])
    return iso


def catalog_key() -> str:
    return hashlib.sha256(CATALOG_PATH.read_bytes()).hexdigest()[:16]
