"""The boot check through libvirt: the domain XML register will define, booted as a transient
domain on throwaway overlays with its NICs on an isolated network, then destroyed.

The direct-qemu check (p2v.verify.boot.verify_boot) boots p2v's own command line; this one
boots what libvirt will run for the registered guest (machine type, firmware, disk bus, NIC
model), so "verified" is about that guest. Nothing here is defined: the domain is created
with AUTODESTROY (gone when p2v's connection closes, also when p2v is killed), its overlays
and logs live in a scratch dir (p2v.scratch), and a network left by a killed run is
removed by the next check or `p2v clean` (p2v.target.libvirt.sweep_transient).
"""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from p2v.errors import InputNotFound, TargetNotReady, UsageError
from p2v.fix.session import open_guest
from p2v.libvirt_uri import default_uri
from p2v.scratch import owner_alive, scratch_dir
from p2v.secure import grant_qemu, qemu_gid
from p2v.target.transient import Throwaway, disk_sources, network_xml, transient_xml
from p2v.verify.boot import BootVerdict, Logs, make_overlays, watch
from p2v.verify.probe import prepare_overlay

QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")
QEMU_RUN_DIR = Path("/run/libvirt/qemu")
# The isolated bridge carries no host address at all and never forwards or answers ARP:
# frames from the guest reach nothing but the check's other NICs.
_BRIDGE_SYSCTLS = (("ipv6", "disable_ipv6", "1"), ("ipv4", "forwarding", "0"),
                   ("ipv4", "arp_ignore", "8"))


@dataclass(frozen=True)
class DomainBoot:
    """One check of a domain XML: the XML, the image behind each of its disks, the host."""

    xml: str
    images: Mapping[str, Path]      # each disk source of the XML (file, or pool/volume)
    uri: str = field(default_factory=default_uri)
    nvram: Path | None = None       # a UEFI guest's NVRAM seed (default: the XML's template)
    timeout: float = 300.0
    scratch_root: Path | None = None


def _facts(root: ET.Element) -> tuple[str, str, str]:
    """(firmware, disk bus, accelerator) as the XML defines them."""
    firmware = "uefi" if root.find("os/loader") is not None else "bios"
    target = root.find("devices/disk[@device='disk']/target")
    bus = str(target.get("bus")) if target is not None else "?"
    accel = "kvm" if root.get("type") == "kvm" else "tcg"
    return firmware, bus, accel


def _check(boot: DomainBoot, sources: list[str]) -> None:
    if not sources:
        raise UsageError(detail="the domain XML has no disk to boot")
    for source in sources:
        image = boot.images.get(source)
        if image is None:
            raise UsageError(detail=f"the domain's disk {source!r} has no image to boot from")
        if not Path(image).is_file():
            raise InputNotFound(what="disk image", path=str(image))
    if boot.nvram is not None and not boot.nvram.is_file():
        raise InputNotFound(what="UEFI variable store (--nvram)", path=str(boot.nvram))
    if boot.timeout <= 0:
        raise UsageError(detail="--timeout must be a positive number of seconds")


def _grant(paths: list[Path]) -> None:
    problems = [p for path in paths for p in grant_qemu(path)]
    if problems:
        raise TargetNotReady(problems="; ".join(problems))


def _qemu_writable(path: Path) -> None:
    """A file qemu itself opens (the firmware log): made here, writable by qemu's group."""
    path.touch(mode=0o660)
    gid = qemu_gid()
    if gid is not None and os.geteuid() == 0:
        os.chown(path, -1, gid)
    path.chmod(0o660)


def harden_bridge(bridge: str) -> None:
    for family, key, value in _BRIDGE_SYSCTLS:
        knob = Path(f"/proc/sys/net/{family}/conf/{bridge}/{key}")
        try:
            knob.write_text(value)
        except OSError:
            pass        # no such knob on this kernel: the bridge has no address anyway


def same_nice(name: str, run_dir: Path = QEMU_RUN_DIR) -> None:
    """Give the domain's qemu (every thread: nice is per thread) p2v's own nice level.

    libvirtd starts qemu at its own priority; a check run under `nice` should not boot
    its guest at a higher one. Best effort: a remote or vanished qemu is left as it is.
    """
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        pid = int((run_dir / f"{name}.pid").read_text().strip())
        tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except (OSError, ValueError):
        return
    for task in tasks:
        try:
            if os.getpriority(os.PRIO_PROCESS, task) < ours:
                os.setpriority(os.PRIO_PROCESS, task, ours)
        except OSError:
            continue


def _nvram(root: ET.Element, boot: DomainBoot, work: Path) -> Path | None:
    element = root.find("os/nvram")
    if element is None:
        return None
    seed = boot.nvram or element.get("template")
    if not seed:
        raise UsageError(detail="the UEFI domain XML names no NVRAM template; give --nvram")
    nvram = work / "VARS.fd"
    shutil.copyfile(seed, nvram)
    return nvram


def _qemu_log_tail(name: str) -> Callable[[], str]:
    def tail() -> str:
        path = QEMU_LOG_DIR / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.strip().splitlines()[-5:])
    return tail


def verify_domain(boot: DomainBoot,
                  progress: Callable[[str], None] = lambda _msg: None) -> BootVerdict:
    """Boot the domain XML as a transient domain and judge it as `verify_boot` does."""
    from p2v.target.libvirt import TransientGuest

    root = ET.fromstring(boot.xml)
    sources = disk_sources(boot.xml)
    _check(boot, sources)
    firmware, bus, accel = _facts(root)
    with scratch_dir("verify", boot.scratch_root) as work:
        images = [Path(boot.images[s]).resolve() for s in sources]
        overlays = make_overlays(images, work)
        progress("preparing a throwaway overlay (serial console, report probe)")
        with open_guest(overlays, fmt="qcow2") as session:
            prepared = prepare_overlay(session)
        logs = Logs(work / "console.log", work / "report.log", work / "firmware.log")
        _qemu_writable(logs.firmware)
        _grant([*overlays, *images])
        throwaway = Throwaway(
            token=work.name.removeprefix("verify-")[:8], scratch=work,
            overlays=dict(zip(sources, overlays, strict=True)), console_log=logs.console,
            report_log=logs.report, firmware_log=logs.firmware, nvram=_nvram(root, boot, work))
        guest = TransientGuest(boot.uri)
        try:
            guest.start(network_xml(throwaway), transient_xml(boot.xml, throwaway), owner_alive,
                        prepare_network=lambda: harden_bridge(throwaway.bridge))
            same_nice(throwaway.name)
            progress(f"booting the domain XML register defines as transient domain "
                     f"{throwaway.name} ({bus}, {firmware}, {accel}, NICs on an isolated "
                     f"network), timeout {boot.timeout:.0f} s")
            seen = watch(logs, guest.active, _qemu_log_tail(throwaway.name), boot.timeout)
        finally:
            guest.close()
            (QEMU_LOG_DIR / f"{throwaway.name}.log").unlink(missing_ok=True)
        return seen.verdict(accel=accel, bus=bus, firmware=firmware, prepared=prepared,
                            via="libvirt-transient", domain=throwaway.name)


def file_images(xml: str) -> dict[str, Path]:
    """For `p2v verify --domain-xml`: each file disk is its own image; a pool volume is refused."""
    images = {}
    for source in disk_sources(xml):
        if not source.startswith("/"):
            raise UsageError(detail=(
                f"the domain's disk {source!r} is a pool volume: `p2v verify --domain-xml` "
                "boots file disks only; write the XML with `register --output local`"))
        images[source] = Path(source)
    return images


__all__ = ["DomainBoot", "file_images", "harden_bridge", "verify_domain"]
