"""`p2v fix` for Windows: inject the virtio-win drivers the catalog picks, offline.

Windows finds its boot disk only through a driver that is registered as boot-critical
before the first boot: without it a disk moved onto virtio blue-screens with
INACCESSIBLE_BOOT_DEVICE. So, in one appliance session over the guest's disks (and the
virtio-win ISO, read-only, if one is given):

1. inspect (libguestfs: version, arch, system root, control set, hives; the build number
   from the SOFTWARE hive) and look the version up in the catalog;
2. plan on host copies of SYSTEM and SOFTWARE (hivex): the boot-critical drivers get their
   .sys in System32\\drivers, a service with Start=0 and their PCI IDs in the
   CriticalDeviceDatabase (up to Windows 7 / 2008 R2) or the DriverDatabase (Windows 8 and
   later, with the package in the DriverStore); every driver is staged in
   %SystemRoot%\\Drivers\\p2v-virtio, which is added to DevicePath, for a bounded first-boot
   pnputil run (p2v.fix.windows.firstboot);
3. stop there for --dry-run, or when nothing differs (a second run), else remount
   read-write, upload the hives and files, and read the hives back to check every value.

A Windows version the catalog has no virtio driver for keeps SATA and an emulated NIC in
its GuestCaps, and the report says so.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2v.errors import FixError, GuestfsError
from p2v.fix.base import Verdict
from p2v.fix.session import GuestSession
from p2v.fix.windows.catalog import Catalog, load_catalog
from p2v.fix.windows.inspect import WindowsReport, inspect_windows
from p2v.fix.windows.plan import (
    GROOT,
    WindowsPlan,
    check_registry,
    guest_path,
    plan_windows,
)
from p2v.fix.windows.virtio_win import ISO_MOUNT, DriverTree
from p2v.model import GuestCaps


def summary(report: WindowsReport, plan: WindowsPlan) -> list[str]:
    """The guest as `p2v fix` prints it: version, system volume, catalog entry, drivers."""
    r = report
    out = [f"{r.product}: Windows NT {r.version} ({r.variant}, {r.arch}), "
           f"{r.systemroot} on {r.drive}:, {r.control_set}, {r.firmware}; catalog: "
           f"{r.catalog_dir or 'no entry'}"]
    if plan.drivers or plan.staged:
        out.append(f"  drivers: boot-critical {', '.join(plan.drivers) or 'none'}; "
                   f"staged for first boot {', '.join(plan.staged) or 'none'}")
    return out


def caps_document(caps: GuestCaps, report: WindowsReport, plan: WindowsPlan) -> dict[str, Any]:
    """GuestCaps plus what it was decided from (facts only: a second run writes the same)."""
    data: dict[str, Any] = dict(caps.to_dict())
    data["os"] = {"distro": "windows", "version": report.version, "product": report.product,
                  "variant": report.variant, "arch": report.arch,
                  "catalog": report.catalog_dir}
    data["drivers"] = sorted(plan.drivers + plan.staged)
    data["fallback"] = plan.fallback
    return data


def _mount(session: GuestSession, root: str, readonly: bool) -> None:
    try:
        if readonly:
            session.mount_ro(root, GROOT)
        else:
            session.mount(root, GROOT)
    except GuestfsError as exc:
        if readonly:
            raise
        raise FixError(images=root, detail=f"the Windows volume cannot be opened for writing "
                       f"({exc.fields.get('detail', exc)}); it is hibernated or was not shut "
                       "down cleanly (Fast Startup): shut the source down fully "
                       "(shutdown /s /t 0) and copy it again") from exc


def _apply(session: GuestSession, tree: DriverTree | None, plan: WindowsPlan,
           hives: dict[str, Path], hive_paths: dict[str, str]) -> list[str]:
    changed = {c.target for c in plan.changes}
    for name, path in hives.items():
        session.upload(path, hive_paths[name], action=f"writing the {name} hive")
    for copy in plan.files:
        if copy.guest_path.replace("/", "\\") not in changed:
            continue
        target = guest_path(session, copy.guest_path)
        session.mkdir_p(target.rsplit("/", 1)[0])
        if copy.data is not None:
            session.write(target, copy.data, action=f"writing {copy.guest_path}")
        else:
            assert tree is not None and copy.tree_path is not None
            tree.copy(copy.tree_path, target)
    # Read the hives back out of the guest: what Windows will see.
    with tempfile.TemporaryDirectory(prefix="p2v-hives-") as tmp:
        back = {}
        for name, remote in hive_paths.items():
            back[name] = Path(tmp) / name
            session.download(remote, back[name], action=f"reading the {name} hive back")
        checks = check_registry(plan, back)
    copied = sum(1 for c in plan.files if c.guest_path.replace("/", "\\") in changed)
    return [*checks, f"{copied} file(s) written"]


class WindowsFixer:
    """p2v.fix.base.Fixer for a Windows guest: the virtio-win drivers, injected offline.

    work: a private host dir for the copies of the hives, from inspection until apply.
    """

    report: WindowsReport
    win_plan: WindowsPlan

    def __init__(self, session: GuestSession, root: str, virtio_win: Path | None,
                 virtio_kind: str | None, work: Path, progress: Callable[[str], None],
                 catalog: Catalog | None = None) -> None:
        self.session = session
        self.root = root
        self.virtio_win = virtio_win
        self.virtio_kind = virtio_kind
        self.work = work
        self.progress = progress
        self.catalog = catalog or load_catalog()
        self.tree: DriverTree | None = None
        self.hive_paths: dict[str, str] = {}
        self.hives: dict[str, Path] = {}

    def inspect(self) -> WindowsReport:
        session, root = self.session, self.root
        session.mkmountpoint(GROOT)
        if self.virtio_win is not None and self.virtio_kind is not None:
            if self.virtio_kind == "iso":
                session.mkmountpoint(ISO_MOUNT)
                session.mount_ro(session.list_devices()[-1], ISO_MOUNT)
            self.tree = DriverTree(session, self.virtio_win, self.virtio_kind)
        _mount(session, root, readonly=True)
        self.hive_paths = _hive_paths(session, root)
        for name, remote in self.hive_paths.items():
            self.hives[name] = self.work / name
            session.download(remote, self.hives[name], action=f"reading the {name} hive")
        report = self.report = inspect_windows(session, root, self.hives["SOFTWARE"],
                                               self.catalog)
        self.progress(f"found {report.product} (Windows NT {report.version}, "
                      f"{report.variant}, {report.arch}); catalog entry: "
                      f"{report.catalog_dir or 'none'}")
        return report

    def plan(self) -> WindowsPlan:
        self.win_plan = plan_windows(self.session, self.report, self.catalog, self.tree,
                                     self.hives)
        return self.win_plan

    def apply(self) -> list[str]:
        self.progress(f"writing {len(self.win_plan.changes)} change(s) into the guest")
        self.session.umount(GROOT)
        _mount(self.session, self.root, readonly=False)
        return _apply(self.session, self.tree, self.win_plan, self.hives, self.hive_paths)

    def check(self) -> list[str]:
        """Nothing to check on a guest left as it was: apply reads back what it writes."""
        return []

    def verdict(self, applied: bool) -> Verdict:
        plan = self.win_plan
        return Verdict(plan.caps, caps_document(plan.caps, self.report, plan),
                       summary(self.report, plan),
                       {"drivers": {"boot": plan.drivers, "staged": plan.staged}})


def _hive_paths(session: GuestSession, root: str) -> dict[str, str]:
    """The registry hives p2v edits, as the appliance has them under GROOT."""
    paths = {
        "SYSTEM": guest_path(session, session.inspect_get_windows_system_hive(root).lstrip("/")),
        "SOFTWARE": guest_path(session,
                               session.inspect_get_windows_software_hive(root).lstrip("/")),
    }
    # Windows 10 and later also keep the driver database in a hive of its own (HKLM\DRIVERS).
    drivers_hive = paths["SYSTEM"].rsplit("/", 1)[0] + "/DRIVERS"
    drivers_hive = guest_path(session, drivers_hive[len(GROOT) + 1:])
    if session.is_file(drivers_hive):
        paths["DRIVERS"] = drivers_hive
    return paths
