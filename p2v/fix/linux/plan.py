"""Plan the changes a copied Linux guest needs to boot on virtio, from its files alone.

Every change is new file contents plus a few actions (rebuild an initramfs, regenerate the
grub config, copy the UEFI fallback loader, remove agents, relabel): one planner per concern,
run in the order the changes are reported. A plan with nothing in it is what makes a second
run a no-op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from p2v.fix.base import Change
from p2v.fix.console import add_console
from p2v.fix.linux import agents, devices, distro, multipath, network
from p2v.fix.linux.check import (
    boots_from_md_or_lvm,
    read_if_file,
    root_ok,
    storage_problems,
    will_exist,
)
from p2v.fix.linux.inspect import GuestReport, KernelInfo, device_map
from p2v.fix.options import FixOptions
from p2v.fix.session import GuestSession

# Files whose device names are rewritten, and how: (path, rewrite function).
_TABLES: tuple[tuple[str, Callable[[str, devices.DeviceMap], devices.Rewrite]], ...] = (
    ("/etc/fstab", devices.rewrite_fstab),
    ("/etc/crypttab", devices.rewrite_crypttab),
    ("/etc/default/grub", devices.rewrite_grub_default),
    ("/etc/mdadm/mdadm.conf", devices.rewrite_mdadm_conf),
    ("/etc/mdadm.conf", devices.rewrite_mdadm_conf),
    ("/etc/lvm/lvm.conf", devices.rewrite_lvm_conf),
    ("/etc/lvm/devices/system.devices", devices.rewrite_lvm_devices),
)


# Files the initramfs tools copy into the initramfs (mdadm, LVM, cryptsetup and resume
# hooks): changing one means rebuilding the initramfs too.
_INITRAMFS_COPIES = frozenset({
    "/etc/mdadm/mdadm.conf", "/etc/mdadm.conf", "/etc/lvm/lvm.conf",
    "/etc/lvm/devices/system.devices", "/etc/crypttab", "/etc/initramfs-tools/conf.d/resume",
    "/etc/uswsusp.conf",
    # dracut's multipath module and initramfs-tools' multipath hook carry these.
    multipath.CONF, multipath.BINDINGS, multipath.WWIDS,
})


# initramfs-tools' resume setting names the swap device.
_RESUME_FILES = ("/etc/initramfs-tools/conf.d/resume", "/etc/uswsusp.conf")


@dataclass
class FixPlan:
    files: dict[str, str] = field(default_factory=dict)     # guest path -> new text
    modes: dict[str, int] = field(default_factory=dict)     # new files' modes
    changes: list[Change] = field(default_factory=list)
    rebuild: list[KernelInfo] = field(default_factory=list)
    regenerate_grub: bool = False
    fallback: tuple[str, str] | None = None                  # copy src -> dst (guest paths)
    fallback_extra: list[tuple[str, str]] = field(default_factory=list)
    remove_argv: list[str] | None = None                     # removes agents in the guest
    relabel: str | None = None                               # SELinux file_contexts spec
    warnings: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.changes


_GRUB_D = "/etc/default/grub.d/"
_UNIT_DIR = "/etc/systemd/system/"


def _grub_d(text: str, dmap: devices.DeviceMap, where: str) -> devices.Rewrite:
    res = devices.rewrite_grub_default(text, dmap)
    fix = [c.replace("/etc/default/grub:", f"{where}:") for c in res.changes]
    return devices.Rewrite(res.text, tuple(fix), res.unresolved)


def _extra_tables(session: GuestSession) -> list[tuple[str, Callable[
        [str, devices.DeviceMap, str], devices.Rewrite]]]:
    """Files found by directory: grub snippets (read by grub-mkconfig after
    /etc/default/grub) and the admin's own mount and swap units."""
    found: list[tuple[str, Callable[[str, devices.DeviceMap, str], devices.Rewrite]]] = []
    if session.is_dir(_GRUB_D):
        found += [(_GRUB_D + n, _grub_d) for n in sorted(session.ls(_GRUB_D))
                  if n.endswith(".cfg") and session.is_file(_GRUB_D + n)]
    if session.is_dir(_UNIT_DIR):
        found += [(_UNIT_DIR + n, devices.rewrite_unit)
                  for n in sorted(session.ls(_UNIT_DIR))
                  if n.endswith((".mount", ".swap")) and session.is_file(_UNIT_DIR + n)]
    return found


def _mac_config_files(session: GuestSession) -> list[str]:
    found = [p for p in network.MAC_CONFIG_FILES if session.is_file(p)]
    for folder in network.MAC_CONFIG_DIRS:
        if session.is_dir(folder):
            found += [f"{folder}/{n}" for n in sorted(session.ls(folder))
                      if session.is_file(f"{folder}/{n}")]
    return found


def guest_device_map(session: GuestSession, root: str, grub_cfg: str | None,
                     base: devices.DeviceMap, options: FixOptions) -> devices.DeviceMap:
    """The guest's disks with what names them beyond the bus: each source disk's serial and
    WWID (by-id links), and the multipath maps of the source, placed on the disk each was
    (p2v.fix.linux.multipath; a map no evidence places stays unplaced and is reported)."""
    disks = [replace(d, ids=options.disk_ids[i]) if i < len(options.disk_ids) else d
             for i, d in enumerate(base.disks)]
    plain = devices.DeviceMap(disks, arrays=base.arrays)
    names = multipath.known_maps(read_if_file(session, multipath.BINDINGS),
                                 read_if_file(session, multipath.WWIDS),
                                 read_if_file(session, multipath.CONF))
    if not names and not options.mpath_maps:
        return plain
    fstab = read_if_file(session, "/etc/fstab") or ""
    root_specs = [f[0] for f in (line.split() for line in fstab.splitlines())
                  if len(f) > 1 and f[1] == "/" and not f[0].startswith("#")]
    if grub_cfg and session.is_file(grub_cfg):
        root_specs += devices.kernel_roots(session.read_text(grub_cfg))
    hints = multipath.root_hints(names, plain, root_specs, root)
    hints.update(multipath.pv_hints(names, plain,
                                    read_if_file(session, "/etc/lvm/devices/system.devices")))
    placed = multipath.place_maps(names, plain, options.mpath_maps, hints)
    return devices.DeviceMap(disks, placed, arrays=base.arrays)


def appliance_resolver(session: GuestSession, root: str,
                       options: FixOptions) -> Callable[[str], str | None]:
    """For mounting: the appliance device (/dev/sdb1) of an fstab name libguestfs cannot
    resolve itself (/dev/mapper/mpatha-part1, a by-id link of the old disk)."""
    found: dict[str, str | None] = {}

    def resolve(spec: str) -> str | None:
        if spec not in found:
            base = device_map(session, list(options.source_disks) or None)
            res = guest_device_map(session, root, None, base, options).remap(spec)
            found[spec] = ("/dev/sd" + res.new[len("/dev/vd"):]
                           if res.new and res.new.startswith("/dev/vd") else None)
        return found[spec]

    return resolve


def _multipath_plan(session: GuestSession, plan: FixPlan, dmap: devices.DeviceMap) -> None:
    """multipath kept off the virtio disks, in a drop-in of its own (the guest's multipath
    files are left as they are: removing the drop-in undoes it). The maps' names are
    rewritten with the other device names; one on no converted disk is reported there."""
    # In use: the source had maps (bindings, wwids, aliases, the inventory), not merely the
    # package and its default multipath.conf (Ubuntu server installs both everywhere).
    if not dmap.maps or not any(session.exists(t) for t in multipath.TOOLS):
        return
    conf = read_if_file(session, multipath.CONF)
    path = multipath.dropin_path(conf)
    _edit(plan, path, read_if_file(session, path), multipath.dropin_text(),
          "the source used multipath (SAN or dual-path disks): keep it off the single-path "
          "virtio disks", mode=0o644)


def _in_initramfs(path: str) -> bool:
    return path in _INITRAMFS_COPIES or path.endswith("/" + multipath.DROPIN)


def _edit(plan: FixPlan, path: str, old: str | None, new: str, why: str,
          mode: int | None = None) -> None:
    if old == new:
        return
    plan.files[path] = new
    if mode is not None:
        plan.modes[path] = mode
    plan.changes.append(Change("create" if old is None else "edit", path, why))


def plan_fix(session: GuestSession, report: GuestReport, dmap: devices.DeviceMap,
             options: FixOptions) -> FixPlan:
    """Every change the guest needs, computed from its files; nothing is written.

    One planner per concern, in the order the changes are reported (and made).
    """
    plan = FixPlan()
    family = distro.family_named(report.family)
    _plan_device_names(session, plan, dmap)
    _plan_storage(session, plan, report, dmap)
    if options.serial_console:
        _plan_serial_console(session, plan, report, options)
    _plan_grub_config(session, plan, report, dmap, family)
    _plan_nic_names(session, plan, report, options)
    _plan_mac_configs(session, plan, options)
    _plan_initramfs(session, plan, report, family)
    _plan_agents(plan, report, options)
    _plan_uefi_fallback(session, plan, report)
    _plan_selinux(plan, report)
    return plan


def _take_rewrite(plan: FixPlan, path: str, old: str, res: devices.Rewrite) -> bool:
    """Plan a rewritten file (names it left alone become warnings); whether it changed."""
    plan.warnings += [f"left as it is: {u}" for u in res.unresolved]
    if res.changed:
        _edit(plan, path, old, res.text, "; ".join(res.changes))
    return res.changed


def _plan_device_names(session: GuestSession, plan: FixPlan, dmap: devices.DeviceMap) -> None:
    """1. Device names in the config files (fstab, crypttab, grub defaults, md, LVM, units,
    resume), switched to names the VM will have."""
    for path, rewrite in _TABLES:
        old = read_if_file(session, path)
        if old is not None and _take_rewrite(plan, path, old, rewrite(old, dmap)) \
                and path == "/etc/default/grub":
            plan.regenerate_grub = True
    for path, rewrite_one in _extra_tables(session):
        old = session.read_text(path)
        if _take_rewrite(plan, path, old, rewrite_one(old, dmap, path)) \
                and path.startswith(_GRUB_D):
            plan.regenerate_grub = True
    for path in _RESUME_FILES:
        old = read_if_file(session, path)
        if old is not None:
            _take_rewrite(plan, path, old, devices.rewrite_resume(old, dmap, path))


def _plan_storage(session: GuestSession, plan: FixPlan, report: GuestReport,
                  dmap: devices.DeviceMap) -> None:
    """1a. fstab entries whose device the VM will not have get nofail (the boot goes on);
    multipath is kept off the virtio disks; md and LVM problems are reported."""
    fstab = plan.files.get("/etc/fstab") or read_if_file(session, "/etc/fstab")
    if fstab is not None:
        marked = devices.mark_missing_nofail(fstab, will_exist(session, report, dmap))
        if marked.rewrite.changed:
            _edit(plan, "/etc/fstab", fstab, marked.rewrite.text,
                  "; ".join(marked.rewrite.changes))
        plan.warnings += [f"will not boot: {f}" for f in marked.fatal]
    _multipath_plan(session, plan, dmap)
    md = storage_problems(session, report, dmap, plan.files)
    plan.warnings += [("will not boot: " if boots_from_md_or_lvm(report) else "") + p
                      for p in md]


def _plan_serial_console(session: GuestSession, plan: FixPlan, report: GuestReport,
                         options: FixOptions) -> None:
    """1b. A serial console, asked for: through the grub defaults (then regenerated), or on
    the kernel lines themselves where the guest has no grub defaults file."""
    path = "/etc/default/grub"
    if session.is_file(path):
        base = plan.files.get(path) or session.read_text(path)
        new, added = distro.add_serial_console(base)
        if added:
            plan.files[path] = new
            plan.changes.append(Change("edit", path, "serial console: " + "; ".join(added)))
            plan.regenerate_grub = True
    elif report.grub_cfg:
        cfg = plan.files.get(report.grub_cfg) or session.read_text(report.grub_cfg)
        new = add_console(cfg)
        if new != cfg:
            plan.files[report.grub_cfg] = new
            plan.changes.append(Change("edit", report.grub_cfg,
                                       "serial console on the kernel lines"))
    if session.is_dir("/etc/systemd/system"):
        # The login prompt on that console then shows the guest's addresses.
        issue = distro.ISSUE_FILE
        old = session.read_text(issue) if session.is_file(issue) else None
        _edit(plan, issue, old, distro.address_issue([p.name for p in options.pins]),
              "the serial console's login prompt shows the IPv4 addresses (agetty \\4)",
              mode=0o644)


def _plan_grub_config(session: GuestSession, plan: FixPlan, report: GuestReport,
                      dmap: devices.DeviceMap, family: distro.LinuxFamily | None) -> None:
    """2. The grub config: regenerated when its kernel lines name a device that will not
    exist (or its defaults changed), else its kernel lines rewritten."""
    if not report.grub_cfg:
        if report.bootloader == "none found":
            plan.warnings.append("no grub configuration found: the boot loader is not checked")
        return
    cfg = session.read_text(report.grub_cfg)
    bad = [r for r in devices.kernel_roots(cfg) if not root_ok(r, report, dmap)]
    if bad:
        has_tool = family is not None and mkconfig_argv(session, family) is not None
        if report.bootloader == "grub2" and has_tool:
            plan.regenerate_grub = True
        else:
            _take_rewrite(plan, report.grub_cfg, cfg,
                          devices.rewrite_grub_cfg(cfg, dmap, report.grub_cfg))
    if plan.regenerate_grub:
        why = (f"kernel lines name {', '.join(sorted(set(bad)))}" if bad
               else "follow the new /etc/default/grub")
        plan.changes.append(Change("regenerate-grub", report.grub_cfg, why))


def _plan_nic_names(session: GuestSession, plan: FixPlan, report: GuestReport,
                    options: FixOptions) -> None:
    """3. NIC names pinned to the VM's MACs (systemd .link files, or udev rules)."""
    if not options.pins:
        loose = [n for n in report.nic_names if n not in report.nic_pins]
        if loose:
            plan.warnings.append(f"NIC names not pinned ({', '.join(loose)}): no --mac or "
                                 "--inventory NICs given; a virtio NIC may get another name")
        return
    if session.is_dir("/etc/systemd") or report.has_systemd_udev:
        for pin in options.pins:
            path = network.link_path(pin.name)
            _edit(plan, path, read_if_file(session, path), network.link_text(pin),
                  f"{pin.name} keeps its name on the NIC with MAC {pin.mac}", mode=0o644)
    rules = read_if_file(session, network.RULES_FILE)
    if rules is not None:
        new_rules, rule_changes = network.update_rules(rules, list(options.pins))
        _edit(plan, network.RULES_FILE, rules, new_rules, "; ".join(rule_changes))
    elif not report.has_systemd_udev:
        text = "".join(network.rules_line(p) + "\n" for p in options.pins)
        _edit(plan, network.RULES_FILE, None, text, "pin NIC names (udev without .link)",
              mode=0o644)
    unknown = [n for n in report.nic_names if n not in {p.name for p in options.pins}]
    if unknown:
        plan.warnings.append(f"configured interfaces without a MAC to pin them to: "
                             f"{', '.join(unknown)} (give --mac NAME=MAC)")


def _plan_mac_configs(session: GuestSession, plan: FixPlan, options: FixOptions) -> None:
    """3b. Configs keyed by a source NIC's MAC follow the VM's new MAC (--new-macs)."""
    if not options.mac_map:
        return
    for path in _mac_config_files(session):
        original = read_if_file(session, path)
        if original is None:
            continue
        current = plan.files.get(path, original)
        new, changed = network.follow_macs(current, dict(options.mac_map), path)
        if changed:
            _edit(plan, path, original, new, "; ".join(changed))


def _plan_initramfs(session: GuestSession, plan: FixPlan, report: GuestReport,
                    family: distro.LinuxFamily | None) -> None:
    """4. virtio drivers in the initramfs of each kernel that lacks them; a rebuild of those
    that carry a config file planned above."""
    if family is None:
        plan.warnings.append(f"unknown distro family ({report.distro}): initramfs not changed")
        return
    needs = [k for k in report.kernels if not k.boots_on_virtio and k.can_get_virtio
             and k.initrd is not None]
    # The initramfs carries its own copy of these files: one rewritten on the root
    # alone leaves the early boot assembling md arrays and LVs from the old names.
    stale = sorted(p for p in plan.files if _in_initramfs(p))
    refresh = [k for k in report.kernels if stale and k.initrd is not None
               and k.boots_on_virtio and k not in needs]
    if needs or refresh:
        # A rebuild inside the appliance must keep virtio whatever MODULES= says.
        old = read_if_file(session, family.modules_file) or ""
        new = family.modules_config(old)
        _edit(plan, family.modules_file, old if session.is_file(family.modules_file) else None,
              new, f"keep {', '.join(distro.VIRTIO_MODULES)} in every future initramfs",
              mode=0o644)
    for kernel in needs:
        plan.rebuild.append(kernel)
        missing = [m for m, ok in kernel.virtio.items() if not ok]
        plan.changes.append(Change("rebuild-initramfs", kernel.version,
                                   f"{kernel.initrd} lacks {', '.join(missing)} "
                                   f"({family.initramfs_tool})"))
    for kernel in refresh:
        plan.rebuild.append(kernel)
        plan.changes.append(Change("rebuild-initramfs", kernel.version,
                                   f"{kernel.initrd} holds the old {', '.join(stale)} "
                                   f"({family.initramfs_tool})"))
    for kernel in report.kernels:
        if not kernel.can_get_virtio:
            plan.warnings.append(f"kernel {kernel.version} has no virtio_blk driver: it "
                                 "cannot boot on virtio")


def _plan_agents(plan: FixPlan, report: GuestReport, options: FixOptions) -> None:
    """4b. Other platforms' agents: reported; removed when asked."""
    if not report.agents:
        return
    names = [a.package for a in report.agents]
    listed = ", ".join(f"{a.package} ({a.what})" for a in report.agents)
    argv = agents.remove_argv(report.package_format, names)
    if not options.remove_agents:
        plan.warnings.append(f"agents of other platforms installed: {listed}; "
                             "--remove-agents removes them")
    elif argv is None:
        plan.warnings.append(f"agents of other platforms installed: {listed}; no way to "
                             f"remove {report.package_format} packages offline")
    else:
        plan.remove_argv = argv
        plan.changes.append(Change("remove-packages", " ".join(names), listed))


def _plan_uefi_fallback(session: GuestSession, plan: FixPlan, report: GuestReport) -> None:
    """5. UEFI: the removable-media fallback loader a fresh NVRAM boots."""
    if report.firmware != "uefi" or not session.is_dir("/boot/efi/EFI") \
            or session.is_file(_esp_path(session, "BOOT/BOOTX64.EFI")):
        return
    source = _fallback_source(session)
    if source is None:
        plan.warnings.append("UEFI guest without \\EFI\\BOOT\\BOOTX64.EFI and no grub or "
                             "shim loader to copy there")
        return
    src_dir = source.rsplit("/", 1)[0]
    plan.fallback = (source, "/boot/efi/EFI/BOOT/BOOTX64.EFI")
    # shim loads grubx64.efi from its own directory; a signed grub reads grub.cfg from it.
    for extra in ("grubx64.efi", "mmx64.efi", "grub.cfg"):
        if source.endswith("/" + extra):
            continue
        path = f"{src_dir}/{extra}"
        if session.is_file(path):
            plan.fallback_extra.append((path, f"/boot/efi/EFI/BOOT/{extra}"))
    plan.changes.append(Change("copy", "\\EFI\\BOOT\\BOOTX64.EFI",
                               f"fallback loader from {efi_name(source)}: a VM "
                               "with a fresh NVRAM boots only that"))


def _plan_selinux(plan: FixPlan, report: GuestReport) -> None:
    """6. SELinux: what p2v writes has no label; an enforcing guest would deny it at boot."""
    mode, policy = report.selinux
    if mode != "disabled" and not plan.empty:
        plan.relabel = f"/etc/selinux/{policy}/contexts/files/file_contexts"
        plan.changes.append(Change("selinux-relabel", "the changed files",
                                   f"SELinux is {mode} ({policy})"))


def _esp_path(session: GuestSession, rel: str) -> str:
    """A path under /boot/efi/EFI as it exists (FAT is case-insensitive)."""
    return session.case_sensitive_path(f"/boot/efi/EFI/{rel}")


def efi_name(path: str) -> str:
    return "\\" + path[len("/boot/efi/"):].replace("/", "\\")


def _fallback_source(session: GuestSession) -> str | None:
    for vendor in session.ls("/boot/efi/EFI"):
        if vendor.upper() == "BOOT":
            continue
        for loader in ("shimx64.efi", "grubx64.efi"):
            path = _esp_path(session, f"{vendor}/{loader}")
            if session.is_file(path):
                return path
    return None


def mkconfig_argv(session: GuestSession, family: distro.LinuxFamily) -> list[str] | None:
    for argv in family.grub_mkconfig:
        for prefix in ("/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"):
            if session.exists(prefix + argv[0]):
                return list(argv)
    return None
