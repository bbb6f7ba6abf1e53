"""Make a Linux guest's planned changes in the appliance, then check the result."""

from __future__ import annotations

import time
from collections.abc import Callable

from p2v.errors import FixError, GuestfsError
from p2v.fix.linux import devices, distro
from p2v.fix.linux.check import check_guest, root_ok
from p2v.fix.linux.inspect import GuestReport
from p2v.fix.linux.plan import FixPlan, efi_name, mkconfig_argv
from p2v.fix.session import GuestSession


def _sh(session: GuestSession, argv: list[str], what: str) -> str:
    return "\n".join(session.command_lines(argv, action=what))


def apply_plan(session: GuestSession, report: GuestReport, dmap: devices.DeviceMap,
               plan: FixPlan, progress: Callable[[str], None]) -> list[str]:
    """Make the planned changes; return the checks made afterwards (raise if one fails)."""
    family = distro.family_named(report.family)
    for path, text in plan.files.items():
        session.mkdir_p(path.rsplit("/", 1)[0] or "/")
        session.write_text(path, text, mode=plan.modes.get(path))
    progress(f"wrote {len(plan.files)} file(s)")
    checks: list[str] = []
    if plan.remove_argv is not None:
        progress("removing other platforms' agents: " + " ".join(plan.remove_argv))
        _sh(session, plan.remove_argv, "removing other platforms' agents")
        checks.append("removed: " + ", ".join(a.package for a in report.agents))
    for kernel in plan.rebuild:
        assert family is not None and kernel.initrd is not None
        progress(f"rebuilding the initramfs of {kernel.version} with {family.initramfs_tool} "
                 "(minutes under TCG)")
        started = time.monotonic()
        _sh(session, family.rebuild(kernel.version, kernel.initrd),
            f"rebuilding the initramfs of {kernel.version}")
        listing = _sh(session, family.list_initrd(kernel.initrd),
                      f"listing {kernel.initrd}")
        have = distro.has_virtio(listing, set(kernel.builtin))
        missing = [m for m in distro.VIRTIO_BOOT_MODULES if not have[m]]
        if missing:
            raise FixError(images=report.root, detail=f"{kernel.initrd} still lacks "
                           f"{', '.join(missing)} after {family.initramfs_tool}")
        checks.append(f"{kernel.initrd} holds {', '.join(m for m, ok in have.items() if ok)} "
                      f"(rebuilt in {time.monotonic() - started:.0f} s)")
    if plan.regenerate_grub and report.grub_cfg:
        argv = mkconfig_argv(session, family) if family else None
        if argv is not None:
            progress(f"regenerating {report.grub_cfg} with {argv[0]}")
            _sh(session, argv, f"regenerating the grub config with {argv[0]}")
        cfg = session.read_text(report.grub_cfg)
        bad = [r for r in devices.kernel_roots(cfg) if not root_ok(r, report, dmap)]
        if bad:
            # The guest's tool still wrote a bus-bound name (no udev links, say): fix the
            # lines themselves rather than leave a config that cannot find its root.
            res = devices.rewrite_grub_cfg(cfg, dmap, report.grub_cfg)
            session.write_text(report.grub_cfg, res.text)
            checks += [f"rewritten after regeneration: {c}" for c in res.changes]
            cfg = res.text
    if plan.fallback is not None:
        src, dst = plan.fallback
        session.mkdir_p("/boot/efi/EFI/BOOT")
        session.cp(src, dst)
        for extra_src, extra_dst in plan.fallback_extra:
            session.cp(extra_src, extra_dst)
        checks.append(f"\\EFI\\BOOT\\BOOTX64.EFI is a copy of {efi_name(src)}")
    if plan.relabel is not None:
        checks.append(_relabel(session, report, plan))
    checks += check_guest(session, report, dmap)
    return checks


def _relabel(session: GuestSession, report: GuestReport, plan: FixPlan) -> str:
    """Label what p2v wrote, in the appliance; else have the guest relabel itself at boot."""
    spec = plan.relabel or ""
    paths = sorted({*plan.files, *(k.initrd for k in plan.rebuild if k.initrd),
                    *([report.grub_cfg] if plan.regenerate_grub and report.grub_cfg else [])})
    try:
        if not session.is_file(spec):
            raise GuestfsError(action="relabelling", detail=f"no {spec}")
        for path in paths:
            session.selinux_relabel(spec, path)
        return f"SELinux labels set on {len(paths)} changed file(s) ({spec})"
    except GuestfsError as exc:
        session.write_text("/.autorelabel", "")
        return f"SELinux relabel at first boot (/.autorelabel): {exc}"
