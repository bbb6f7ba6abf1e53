"""Plan the virtio-win drivers a Windows guest gets, on host copies of its hives (hivex).

The boot-critical drivers get their .sys in System32\\drivers, a service with Start=0 and
their PCI IDs in the CriticalDeviceDatabase (up to Windows 7 / 2008 R2) or the DriverDatabase
(Windows 8 and later, with the package in the DriverStore); every driver is staged in
%SystemRoot%\\Drivers\\p2v-virtio, which is added to DevicePath, for a bounded first-boot
pnputil run (p2v.fix.windows.firstboot). A Windows version the catalog has no virtio driver
for keeps SATA and an emulated NIC.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from p2v.errors import FixError, UsageError
from p2v.fix.base import Change
from p2v.fix.session import GuestSession
from p2v.fix.windows import firstboot
from p2v.fix.windows.catalog import Catalog, Driver, WindowsVersion
from p2v.fix.windows.hive import RegValue, open_hive
from p2v.fix.windows.inspect import WindowsReport
from p2v.fix.windows.virtio_win import ISO_MOUNT, DriverTree
from p2v.model import Firmware, GuestCaps, NicModel

GROOT = "/guest"        # where the appliance mounts the Windows system volume
DEVICE_PATH_KEY = r"Microsoft\Windows\CurrentVersion"
STAGE_DEVICE_PATH = firstboot.STAGE_DIR
CONFIGURATION = "p2v_boot"     # the DriverDatabase configuration p2v writes for a device


@dataclass(frozen=True)
class RegEdit:
    hive: str       # SYSTEM or SOFTWARE
    key: str
    name: str
    value: RegValue
    group: str      # what the value is for, as reported


@dataclass(frozen=True)
class FileCopy:
    guest_path: str                  # relative to the system volume, / separated
    tree_path: str | None = None     # from the virtio-win tree ...
    data: bytes | None = None        # ... or these bytes
    why: str = ""


@dataclass
class WindowsPlan:
    drivers: list[str] = field(default_factory=list)       # installed offline (boot-critical)
    staged: list[str] = field(default_factory=list)        # staged for first-boot pnputil
    registry: list[RegEdit] = field(default_factory=list)
    files: list[FileCopy] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    caps: GuestCaps = field(default_factory=GuestCaps)
    fallback: str | None = None

    @property
    def empty(self) -> bool:
        return not self.changes


def cdd_key(pci: str) -> str:
    """A PCI hardware ID as a CriticalDeviceDatabase key: pci#ven_1af4&dev_1001&..."""
    return pci.replace("\\", "#").lower()


def package_name(driver: Driver, arch: str, inf: bytes) -> str:
    """The DriverStore package directory name: <inf>_<arch>_<16 hex of the inf's hash>."""
    return f"{driver.inf_file.lower()}_{arch}_{hashlib.sha256(inf).hexdigest()[:16]}"


def boot_driver_edits(driver: Driver, version: WindowsVersion, control_set: str,
                      package: str) -> list[RegEdit]:
    """The SYSTEM values that make Windows load a storage driver at boot for its devices."""
    svc = f"{control_set}\\Services\\{driver.service}"
    group = f"service {driver.service}"
    edits = [
        RegEdit("SYSTEM", svc, "Type", RegValue.dword(1), group),            # kernel driver
        RegEdit("SYSTEM", svc, "Start", RegValue.dword(0), group),           # boot start
        RegEdit("SYSTEM", svc, "ErrorControl", RegValue.dword(1), group),
        RegEdit("SYSTEM", svc, "Group", RegValue.sz(driver.group), group),
        RegEdit("SYSTEM", svc, "ImagePath",
                RegValue.expand_sz(f"system32\\drivers\\{driver.sys_file}"), group),
        RegEdit("SYSTEM", svc, "DisplayName", RegValue.sz(driver.name), group),
        # The miniport's bus interface (5 = PCI), as its .inf's AddReg sets it.
        RegEdit("SYSTEM", f"{svc}\\Parameters\\PnpInterface", "5", RegValue.dword(1), group),
    ]
    if not version.uses_driver_database:
        group = f"CriticalDeviceDatabase entries for {driver.name}"
        for pci in driver.pci:
            key = f"{control_set}\\Control\\CriticalDeviceDatabase\\{cdd_key(pci)}"
            edits += [RegEdit("SYSTEM", key, "Service", RegValue.sz(driver.service), group),
                      RegEdit("SYSTEM", key, "ClassGUID", RegValue.sz(driver.class_guid), group)]
        return edits
    group = f"DriverDatabase entries for {driver.name}"
    inf = driver.inf_file.lower()
    db = "DriverDatabase"
    pkg = f"{db}\\DriverPackages\\{package}"
    edits += [
        RegEdit("SYSTEM", f"{db}\\DriverInfFiles\\{inf}", "", RegValue.multi_sz(package), group),
        RegEdit("SYSTEM", f"{db}\\DriverInfFiles\\{inf}", "Active", RegValue.sz(package), group),
        RegEdit("SYSTEM", pkg, "", RegValue.sz(inf), group),
        RegEdit("SYSTEM", pkg, "Provider", RegValue.sz("Red Hat, Inc."), group),
        RegEdit("SYSTEM", f"{pkg}\\Configurations\\{CONFIGURATION}", "Service",
                RegValue.sz(driver.service), group),
        RegEdit("SYSTEM", f"{pkg}\\Configurations\\{CONFIGURATION}", "ConfigFlags",
                RegValue.dword(0), group),
    ]
    for pci in driver.pci:
        edits += [
            RegEdit("SYSTEM", f"{pkg}\\Descriptors\\{pci}", "Configuration",
                    RegValue.sz(CONFIGURATION), group),
            # The value data ranks the match (first byte: rank, 0xff: any configuration).
            RegEdit("SYSTEM", f"{db}\\DeviceIds\\{pci}", inf,
                    RegValue.binary(bytes([1, 0xFF, 0, 0])), group),
        ]
    return edits


def extended_device_path(current: str | None) -> str:
    """DevicePath with the staging dir appended once (PnP searches it for new devices)."""
    parts = [p for p in (current or "%SystemRoot%\\inf").split(";") if p]
    if any(p.strip().lower() == STAGE_DEVICE_PATH.lower() for p in parts):
        return ";".join(parts)
    return ";".join([*parts, STAGE_DEVICE_PATH])


def guest_path(session: GuestSession, rel: str) -> str:
    """rel (under the system volume) as the appliance has it, in the case it exists."""
    return session.case_sensitive_path(f"{GROOT}/{rel}")


def _same_file(session: GuestSession, tree: DriverTree | None, copy: FileCopy) -> bool:
    path = guest_path(session, copy.guest_path)
    if not session.is_file(path):
        return False
    have = session.checksum("sha256", path)
    if copy.data is not None:
        return have == hashlib.sha256(copy.data).hexdigest()
    assert tree is not None and copy.tree_path is not None
    if tree.kind == "dir":
        want = hashlib.sha256((tree.path / copy.tree_path).read_bytes()).hexdigest()
    else:
        want = session.checksum("sha256", f"{ISO_MOUNT}/{copy.tree_path}")
    return have == want


def _text_file(session: GuestSession, rel: str) -> str:
    path = guest_path(session, rel)
    if not session.is_file(path):
        return ""
    raw = session.read_file(path, action=f"reading {rel}")
    if raw.startswith(b"\xff\xfe"):
        return raw[2:].decode("utf-16-le", errors="replace")
    return raw.decode("utf-8", errors="replace").lstrip("\ufeff")


def plan_windows(session: GuestSession, report: WindowsReport, catalog: Catalog,
                 tree: DriverTree | None, hives: dict[str, Path]) -> WindowsPlan:
    """Every change the guest needs; applies the registry edits to the host copies of the
    hives (only uploaded by apply) and reports what differs."""
    plan = WindowsPlan()
    version = catalog.version_for(report.major, report.minor, report.variant, report.build) \
        if report.catalog_dir else None
    drivers = catalog.drivers_for(version, report.arch) if version else []
    fallback_nic = cast(NicModel, version.fallback_nic if version
                        else ("e1000" if (report.major, report.minor) < (6, 2) else "e1000e"))
    storage = [d for d in drivers if d.boot_critical and d.device == "virtio-blk"]
    firmware = cast(Firmware, "uefi" if report.firmware == "uefi" else "bios")
    if version is None or not storage:
        _plan_sata_fallback(plan, report, version, fallback_nic, firmware, hives)
        return plan
    if tree is None:
        raise UsageError(detail=f"{report.product} needs virtio drivers: give --virtio-win "
                                "DIR|ISO (the virtio-win ISO or its unpacked contents)")
    found = _driver_files(plan, tree, drivers, version, report.arch)
    plan.registry = (_plan_drivers(plan, report, version, tree, found, drivers, hives)
                     + _plan_first_boot(session, plan, report, version, hives))
    _diff_registry(plan, hives)
    for copy in plan.files:
        if not _same_file(session, tree, copy):
            kind = "copy" if copy.tree_path else "create"
            plan.changes.append(Change(kind, copy.guest_path.replace("/", "\\"), copy.why))
    has_net = "netkvm" in found
    plan.caps = GuestCaps(disk_bus="virtio", nic_model="virtio" if has_net else fallback_nic,
                          machine="q35", firmware=firmware)
    if not has_net:
        plan.warnings.append(f"no netkvm driver: the NIC stays {fallback_nic}")
    return plan


def _plan_sata_fallback(plan: WindowsPlan, report: WindowsReport,
                        version: WindowsVersion | None, fallback_nic: NicModel,
                        firmware: Firmware, hives: dict[str, Path]) -> None:
    """No virtio storage driver for this Windows: SATA disks, an emulated NIC, and the inbox
    AHCI driver started at boot."""
    name = version.name if version else f"Windows NT {report.version} ({report.variant})"
    plan.fallback = f"the driver catalog has no virtio storage driver for {name} {report.arch}"
    plan.warnings.append(f"{plan.fallback}: the guest keeps SATA disks and an "
                         f"{fallback_nic} NIC (no virtio drivers injected)")
    plan.caps = GuestCaps(disk_bus="sata", nic_model=fallback_nic, machine="q35",
                          firmware=firmware)
    _inbox_ahci(plan, report, hives)


def _driver_files(plan: WindowsPlan, tree: DriverTree, drivers: list[Driver],
                  version: WindowsVersion, arch: str) -> dict[str, dict[str, str]]:
    """Every driver's files (name -> path in the tree), found before anything is written: a
    missing one stops the run, a missing optional one is left out with a warning."""
    found: dict[str, dict[str, str]] = {}
    for driver in drivers:
        try:
            found[driver.name] = tree.driver_files(driver, version, arch)
        except UsageError as exc:
            if not driver.optional:
                raise
            plan.warnings.append(f"optional driver {driver.name} left out: {exc}")
    return found


def _plan_drivers(plan: WindowsPlan, report: WindowsReport, version: WindowsVersion,
                  tree: DriverTree, found: dict[str, dict[str, str]], drivers: list[Driver],
                  hives: dict[str, Path]) -> list[RegEdit]:
    """Stage every driver for pnputil; install the boot-critical ones offline (their .sys,
    their DriverStore package, their registry values, returned)."""
    edits: list[RegEdit] = []
    stage = firstboot.STAGE_PATH
    for driver in drivers:
        files = found.get(driver.name)
        if files is None:
            continue
        for name, rel in files.items():
            plan.files.append(FileCopy(f"{stage}/{name}", rel, why=f"staged for pnputil "
                                       f"({driver.name})"))
        if not driver.boot_critical:
            plan.staged.append(driver.name)
            continue
        plan.drivers.append(driver.name)
        plan.files.append(FileCopy(f"Windows/System32/drivers/{driver.sys_file}",
                                   files[driver.sys_file],
                                   why=f"boot-critical {driver.name} loaded at boot"))
        package = package_name(driver, report.arch, tree.read(files[driver.inf_file]))
        if version.uses_driver_database:
            for name, rel in files.items():
                plan.files.append(FileCopy(
                    f"Windows/System32/DriverStore/FileRepository/{package}/{name}", rel,
                    why=f"driver package of {driver.name}"))
        boot = boot_driver_edits(driver, version, report.control_set, package)
        edits += boot
        if "DRIVERS" in hives:
            # The same DriverDatabase keys in the DRIVERS hive, whose root is HKLM\DRIVERS.
            edits += [RegEdit("DRIVERS", e.key, e.name, e.value, e.group)
                      for e in boot if e.key.startswith("DriverDatabase\\")]
    return edits


def _plan_first_boot(session: GuestSession, plan: WindowsPlan, report: WindowsReport,
                     version: WindowsVersion, hives: dict[str, Path]) -> list[RegEdit]:
    """DevicePath, and the first-boot pnputil script with its Group Policy registration
    (its files planned, its registry values returned)."""
    with open_hive(hives["SOFTWARE"]) as h:
        current = h.get(DEVICE_PATH_KEY, "DevicePath")
    edits = [RegEdit("SOFTWARE", DEVICE_PATH_KEY, "DevicePath", RegValue.expand_sz(
        extended_device_path(str(current.data) if current else None)),
        "DevicePath (PnP looks for drivers of new devices there)")]
    scripts_ini = _text_file(session, firstboot.SCRIPTS_INI)
    index, _present = firstboot.startup_index(scripts_ini)
    edits += [RegEdit("SOFTWARE", key, name, value, "Group Policy startup script")
              for key, name, value in firstboot.registry_values(index, report.drive)]
    plan.files += [
        FileCopy(firstboot.SCRIPT_PATH, data=firstboot.script_text(version.pnputil).encode(),
                 why=f"first-boot pnputil, at most {firstboot.MAX_TRIES} tries"),
        FileCopy(firstboot.SCRIPTS_INI, data=b"\xff\xfe" + firstboot.scripts_ini_with_ours(
            scripts_ini).encode("utf-16-le"), why="run the first-boot script at startup"),
        FileCopy(firstboot.GPT_INI, data=firstboot.gpt_ini_with_scripts(
            _text_file(session, firstboot.GPT_INI)).encode(),
            why="enable startup scripts in the local policy"),
    ]
    return edits


def _inbox_ahci(plan: WindowsPlan, report: WindowsReport, hives: dict[str, Path]) -> None:
    """On the SATA fallback, the inbox AHCI driver must start at boot: a server that booted
    from a RAID controller has it on demand start (3) and would not find its disk."""
    if (report.major, report.minor) < (6, 0):
        plan.warnings.append(f"Windows NT {report.major}.{report.minor} has no inbox AHCI "
                             "driver: it boots only on IDE, which p2v does not offer yet")
        return
    service = "msahci" if (report.major, report.minor) < (6, 2) else "storahci"
    key = f"{report.control_set}\\Services\\{service}"
    if "SYSTEM" not in hives:
        return
    with open_hive(hives["SYSTEM"]) as h:
        present = h.node(key) is not None
    if not present:
        plan.warnings.append(f"no {service} service in the guest: it may not find a SATA disk")
        return
    plan.registry = [RegEdit("SYSTEM", key, "Start", RegValue.dword(0),
                             f"service {service} (inbox AHCI driver) starts at boot")]
    _diff_registry(plan, hives)


def _diff_registry(plan: WindowsPlan, hives: dict[str, Path]) -> None:
    """Apply the edits to the host copies; one change line per group that differed."""
    changed: dict[tuple[str, str], list[str]] = {}
    for name, path in hives.items():
        with open_hive(path, write=True) as h:
            for edit in (e for e in plan.registry if e.hive == name):
                if h.set_value(edit.key, edit.name, edit.value):
                    changed.setdefault((name, edit.group), []).append(
                        f"{edit.name or '(default)'}")
    for (hive, group), names in changed.items():
        plan.changes.append(Change("registry", f"{hive}: {group}",
                                      f"{len(names)} value(s) set"))


def check_registry(plan: WindowsPlan, hives: dict[str, Path]) -> list[str]:
    """Every planned value is in the hive files read back (raise FixError if not)."""
    names = " and ".join(hives)
    for name, path in hives.items():
        with open_hive(path) as h:
            for edit in (e for e in plan.registry if e.hive == name):
                if h.get(edit.key, edit.name) != edit.value:
                    raise FixError(images=str(path), detail=f"{name}\\{edit.key}\\{edit.name} "
                                   "does not hold the value written")
    return [f"{len(plan.registry)} registry value(s) read back from {names}"]
