"""Whether a Linux guest will find its disks on virtio: the grub config's root, the fstab
entries the boot needs, md arrays and LVM PVs (checked before and after the fix)."""

from __future__ import annotations

from collections.abc import Callable

from p2v.errors import FixError
from p2v.fix.linux import devices
from p2v.fix.linux.inspect import GuestReport
from p2v.fix.session import GuestSession


def read_if_file(session: GuestSession, path: str) -> str | None:
    """The guest file's text, or None when there is no such file."""
    return session.read_text(path) if session.is_file(path) else None


def root_ok(spec: str, report: GuestReport, dmap: devices.DeviceMap) -> bool:
    """Whether a root= or fstab device spec names a device the VM will have."""
    uuids = {f.uuid for f in report.filesystems if f.uuid}
    labels = {f.label for f in report.filesystems if f.label}
    return devices.root_will_exist(spec, dmap, uuids, labels, set(report.mapper_names))


def _mdadm_text(session: GuestSession, planned: dict[str, str] | None = None) -> str | None:
    """The guest's mdadm.conf (as planned, when given)."""
    for path in ("/etc/mdadm/mdadm.conf", "/etc/mdadm.conf"):
        text = (planned or {}).get(path) or read_if_file(session, path)
        if text is not None:
            return text
    return None


def storage_problems(session: GuestSession, report: GuestReport,
                     dmap: devices.DeviceMap, planned: dict[str, str] | None = None) -> list[str]:
    """What the initramfs will not find on virtio: md arrays that do not assemble under the
    guest's mdadm.conf, PVs that LVM's filters or devices file ignore (as planned)."""
    planned = planned or {}

    def text(path: str) -> str | None:
        return planned.get(path) or read_if_file(session, path)

    md_conf = _mdadm_text(session, planned)
    return (devices.md_assembly_problems(md_conf, dmap)
            + devices.lvm_pv_problems(text("/etc/lvm/lvm.conf"),
                                      text("/etc/lvm/devices/system.devices"), dmap, md_conf))


def will_exist(session: GuestSession, report: GuestReport,
               dmap: devices.DeviceMap) -> Callable[[str], bool]:
    """Whether an fstab device spec will exist in the VM (an md array whose members were
    not converted will not)."""
    behind = devices.md_arrays_left_behind(_mdadm_text(session), dmap)
    return lambda spec: spec not in behind and root_ok(spec, report, dmap)


def boots_from_md_or_lvm(report: GuestReport) -> bool:
    """A boot mount on md or on an LV (which may sit on md): a lost array stops the boot."""
    boot = [d for m, d in report.mounts.items() if m in devices.BOOT_MOUNTS]
    return any(d.startswith(("/dev/md", "/dev/mapper/")) or devices.is_lv_path(d)
               for d in boot)


def check_guest(session: GuestSession, report: GuestReport, dmap: devices.DeviceMap) -> list[str]:
    """The grub config names a root device the VM will have, and so does every fstab entry
    the boot needs (raise FixError if not)."""
    checks = []
    if session.is_file("/etc/fstab"):
        fatal = devices.mark_missing_nofail(session.read_text("/etc/fstab"),
                                            will_exist(session, report, dmap)).fatal
        if fatal:
            raise FixError(images=report.root, detail="; ".join(fatal))
    md = storage_problems(session, report, dmap)
    if md and boots_from_md_or_lvm(report):
        raise FixError(images=report.root, detail="; ".join(md))
    checks += devices.storage_checks(_mdadm_text(session),
                                     read_if_file(session, "/etc/lvm/lvm.conf"),
                                     read_if_file(session, "/etc/lvm/devices/system.devices"), dmap)
    if report.grub_cfg and session.is_file(report.grub_cfg):
        cfg = session.read_text(report.grub_cfg)
        roots = devices.kernel_roots(cfg)
        bad = [r for r in roots if not root_ok(r, report, dmap)]
        if bad:
            raise FixError(images=report.root, detail=f"{report.grub_cfg} still names "
                           f"root={', '.join(sorted(set(bad)))}, which the VM will not have")
        dracut = devices.dracut_arg_problems(cfg, dmap, set(report.mapper_names))
        if dracut:
            raise FixError(images=report.root, detail=f"{report.grub_cfg}: " + "; ".join(dracut))
        if roots:
            checks.append(f"{report.grub_cfg}: every kernel line's root "
                          f"({', '.join(sorted(set(roots)))}) will exist on virtio")
    return checks
