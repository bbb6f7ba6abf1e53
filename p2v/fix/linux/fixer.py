"""The Linux guests' Fixer: inspect, plan, apply or check, and decide the guest's caps.

Mounted read-only until there is something to change: a run with nothing to do (or a dry
run) leaves every byte of the images as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from p2v.fix.base import Verdict
from p2v.fix.linux import network
from p2v.fix.linux.apply import apply_plan
from p2v.fix.linux.check import check_guest
from p2v.fix.linux.devices import DeviceMap
from p2v.fix.linux.inspect import GuestReport, KernelInfo, device_map, inspect_guest
from p2v.fix.linux.plan import FixPlan, appliance_resolver, guest_device_map, plan_fix
from p2v.fix.options import FixOptions
from p2v.fix.session import GuestSession
from p2v.model import GuestCaps


def caps_document(caps: GuestCaps, report: GuestReport, pins: Sequence[network.NicPin],
                  kernels: Sequence[KernelInfo]) -> dict[str, Any]:
    """GuestCaps plus what it was decided from (GuestCaps.from_json ignores the extra keys).

    Only facts about the guest go in, never this run's changes: a second run writes the
    same document.
    """
    data: dict[str, Any] = dict(caps.to_dict())
    data["os"] = {"distro": report.distro, "version": report.version,
                  "product": report.product, "family": report.family}
    data["kernels"] = [{"version": k.version, "virtio": k.virtio} for k in kernels]
    data["nics"] = [{"name": p.name, "mac": p.mac} for p in pins]
    return data


def nic_pins(report: GuestReport, options: FixOptions) -> list[network.NicPin]:
    """The names pinned to MACs: the ones given, else those the guest's udev rules pin."""
    if options.pins:
        return list(options.pins)
    return [network.NicPin(n, m) for n, m in sorted(report.nic_pins.items())]


def summary(report: GuestReport) -> list[str]:
    """The guest as `p2v fix` prints it: OS, boot, kernels, filesystems, NICs."""
    r = report
    lines = [f"{r.product}: {r.distro} {r.version} (family {r.family or 'unknown'}), "
             f"{r.firmware}, boot loader {r.bootloader}"
             + (f" ({r.grub_cfg})" if r.grub_cfg else "")]
    for k in r.kernels:
        virtio = ", ".join(f"{m} {'yes' if ok else 'no'}" for m, ok in k.virtio.items())
        lines.append(f"  kernel {k.version}: {k.initrd or 'no initramfs'}: {virtio}")
    lines += [f"  filesystem {f.device} {f.type} {f.mountpoint or '-'} UUID={f.uuid or '-'}"
              for f in r.filesystems]
    if r.esp_loaders:
        lines.append(f"  EFI loaders: {', '.join(r.esp_loaders)}")
    lines.append(f"  NICs configured: {', '.join(r.nic_names) or 'none found'}"
                 + (f"; pinned by udev rules: {r.nic_pins}" if r.nic_pins else ""))
    return lines


def decide_caps(report: GuestReport, options: FixOptions, after: list[KernelInfo]) -> GuestCaps:
    """virtio when a bootable kernel has the drivers in its boot path, else the SATA fallback."""
    firmware = options.firmware or report.firmware
    virtio_disk = any(k.boots_on_virtio for k in after)
    virtio_nic = any("virtio_net" in k.available for k in after)
    return GuestCaps(disk_bus="virtio" if virtio_disk else "sata",
                     nic_model="virtio" if virtio_nic else "e1000e",
                     machine="q35", firmware="uefi" if firmware == "uefi" else "bios")


def _after(report: GuestReport, plan: FixPlan, applied: bool) -> list[KernelInfo]:
    if not applied:
        return report.kernels
    rebuilt = {k.version for k in plan.rebuild}
    return [KernelInfo(k.version, k.initrd,
                       {m: (ok or m in k.available) for m, ok in k.virtio.items()}
                       if k.version in rebuilt else k.virtio, k.builtin, k.available)
            for k in report.kernels]


class LinuxFixer:
    """p2v.fix.base.Fixer for a Linux guest: its device names, initramfs and boot loader."""

    report: GuestReport
    dmap: DeviceMap
    fix_plan: FixPlan

    def __init__(self, session: GuestSession, root: str, options: FixOptions,
                 progress: Callable[[str], None]) -> None:
        self.session = session
        self.root = root
        self.options = options
        self.progress = progress

    def inspect(self) -> GuestReport:
        session, options = self.session, self.options
        session.resolve_spec = appliance_resolver(session, self.root, options)
        sources = list(options.source_disks) or None
        report = self.report = inspect_guest(session, sources)
        self.dmap = guest_device_map(session, report.root, report.grub_cfg,
                                     device_map(session, sources), options)
        self.progress(
            f"found {report.product} ({report.distro} {report.version}, {report.firmware}, "
            f"{report.bootloader}), kernels: "
            + ", ".join(f"{k.version} (virtio {'yes' if k.boots_on_virtio else 'no'})"
                        for k in report.kernels))
        return report

    def plan(self) -> FixPlan:
        self.fix_plan = plan_fix(self.session, self.report, self.dmap, self.options)
        return self.fix_plan

    def apply(self) -> list[str]:
        self.session.umount_all()
        self.session.mount_guest(self.report.root)
        return apply_plan(self.session, self.report, self.dmap, self.fix_plan, self.progress)

    def check(self) -> list[str]:
        return check_guest(self.session, self.report, self.dmap)

    def verdict(self, applied: bool) -> Verdict:
        after = _after(self.report, self.fix_plan, applied)
        caps = decide_caps(self.report, self.options, after)
        pins = nic_pins(self.report, self.options)
        return Verdict(caps, caps_document(caps, self.report, pins, after), summary(self.report))
