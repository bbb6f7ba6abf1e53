"""`p2v fix`: plan, then make, the changes that let a copied Linux guest boot on virtio.

One straight pipeline: open the images in the appliance, inspect (p2v.fix.inspect), plan
every change as new file contents plus a few actions (rebuild an initramfs, regenerate the
grub config, copy the UEFI fallback loader), stop there for --dry-run, else apply, check the
result and write the GuestCaps JSON beside the first image. A plan with nothing in it is
what makes a second run a no-op.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from p2v.errors import FixError, GuestfsError, UsageError
from p2v.fix import agents, devices, linux, multipath, network
from p2v.fix.base import Change, FixResult, Verdict, write_caps
from p2v.fix.console import add_console
from p2v.fix.inspect import GuestReport, KernelInfo, device_map, inspect_guest
from p2v.fix.session import GuestSession, open_guest
from p2v.fix.virtio_win import check_virtio_win
from p2v.fix.windows import fix_windows
from p2v.model import INVENTORY_SCHEMA, DiskInfo, GuestCaps, Inventory, SourceInventory
from p2v.qemuimg import image_format

CAPS_SUFFIX = ".caps.json"
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


@dataclass(frozen=True)
class FixOptions:
    pins: tuple[network.NicPin, ...] = ()        # NIC name -> the VM's MAC
    mac_map: tuple[tuple[str, str], ...] = ()    # source MAC -> the VM's, where they differ
    source_disks: tuple[str, ...] = ()           # the source's disk names, image order
    firmware: str | None = None                  # from the inventory, when known
    dry_run: bool = False
    serial_console: bool = False                 # add console=ttyS0 (kernel and grub)
    remove_agents: bool = False                  # remove other platforms' agents
    virtio_win: Path | None = None               # Windows: the virtio-win ISO or directory
    disk_ids: tuple[tuple[str, ...], ...] = ()   # each source disk's serial/WWID, image order
    mpath_maps: tuple[multipath.SourceMap, ...] = ()  # the source's multipath maps


def mac_changes(source: dict[str, str], vm: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """(source MAC, VM MAC) for each NIC name whose MAC changes in the VM."""
    return tuple((source[n], m.lower()) for n, m in vm.items()
                 if n in source and source[n].lower() != m.lower())


@dataclass(frozen=True)
class InventoryFacts:
    """What p2v fix takes from an inventory: NIC names and MACs, disk names, firmware."""

    pins: dict[str, str]
    disks: tuple[str, ...]
    firmware: str | None
    disk_ids: tuple[tuple[str, ...], ...] = ()
    mpath_maps: tuple[multipath.SourceMap, ...] = ()


def read_inventory(text: str, what: str = "inventory") -> InventoryFacts:
    """Read `p2v inspect --json` (p2v.inventory/1) or the minimal inventory register reads.

    Only physical NICs with a MAC become pins (bridges and bonds carry a member's MAC).
    """
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("schema") == INVENTORY_SCHEMA:
        inv = Inventory.from_dict(data, what)
        return InventoryFacts({n.name: n.mac.lower() for n in inv.nics if n.physical and n.mac},
                              tuple(d.name for d in inv.disks), inv.firmware,
                              tuple(disk_ids(d) for d in inv.disks),
                              multipath.maps_from_dm(inv.dm))
    src = SourceInventory.from_json(text, what)
    return InventoryFacts({n.name: n.mac for n in src.nics}, tuple(d.name for d in src.disks),
                          src.firmware)


def disk_ids(disk: DiskInfo) -> tuple[str, ...]:
    """What names a source disk by its identity (by-id links, multipath WWIDs)."""
    return tuple(i for i in (disk.serial, disk.wwid) if i)


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


def caps_path_for(images: Sequence[Path]) -> Path:
    """The GuestCaps JSON lives beside the first image: disk0.qcow2 -> disk0.qcow2.caps.json."""
    first = Path(images[0])
    return first.with_name(first.name + CAPS_SUFFIX)


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


# ------------------------------------------------------------------------------------ plan

def _read(session: GuestSession, path: str) -> str | None:
    return session.read_text(path) if session.is_file(path) else None


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
    (p2v.fix.multipath; a map no evidence places stays unplaced and is reported)."""
    disks = [replace(d, ids=options.disk_ids[i]) if i < len(options.disk_ids) else d
             for i, d in enumerate(base.disks)]
    plain = devices.DeviceMap(disks, arrays=base.arrays)
    names = multipath.known_maps(_read(session, multipath.BINDINGS),
                                 _read(session, multipath.WWIDS), _read(session, multipath.CONF))
    if not names and not options.mpath_maps:
        return plain
    fstab = _read(session, "/etc/fstab") or ""
    root_specs = [f[0] for f in (line.split() for line in fstab.splitlines())
                  if len(f) > 1 and f[1] == "/" and not f[0].startswith("#")]
    if grub_cfg and session.is_file(grub_cfg):
        root_specs += devices.kernel_roots(session.read_text(grub_cfg))
    hints = multipath.root_hints(names, plain, root_specs, root)
    hints.update(multipath.pv_hints(names, plain,
                                    _read(session, "/etc/lvm/devices/system.devices")))
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
    conf = _read(session, multipath.CONF)
    path = multipath.dropin_path(conf)
    _edit(plan, path, _read(session, path), multipath.dropin_text(),
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
    family = linux.family_named(report.family)
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
        old = _read(session, path)
        if old is not None and _take_rewrite(plan, path, old, rewrite(old, dmap)) \
                and path == "/etc/default/grub":
            plan.regenerate_grub = True
    for path, rewrite_one in _extra_tables(session):
        old = session.read_text(path)
        if _take_rewrite(plan, path, old, rewrite_one(old, dmap, path)) \
                and path.startswith(_GRUB_D):
            plan.regenerate_grub = True
    for path in _RESUME_FILES:
        old = _read(session, path)
        if old is not None:
            _take_rewrite(plan, path, old, devices.rewrite_resume(old, dmap, path))


def _plan_storage(session: GuestSession, plan: FixPlan, report: GuestReport,
                  dmap: devices.DeviceMap) -> None:
    """1a. fstab entries whose device the VM will not have get nofail (the boot goes on);
    multipath is kept off the virtio disks; md and LVM problems are reported."""
    fstab = plan.files.get("/etc/fstab") or _read(session, "/etc/fstab")
    if fstab is not None:
        marked = devices.mark_missing_nofail(fstab, _will_exist(session, report, dmap))
        if marked.rewrite.changed:
            _edit(plan, "/etc/fstab", fstab, marked.rewrite.text,
                  "; ".join(marked.rewrite.changes))
        plan.warnings += [f"will not boot: {f}" for f in marked.fatal]
    _multipath_plan(session, plan, dmap)
    md = _storage_problems(session, report, dmap, plan.files)
    plan.warnings += [("will not boot: " if _boots_from_md_or_lvm(report) else "") + p
                      for p in md]


def _plan_serial_console(session: GuestSession, plan: FixPlan, report: GuestReport,
                         options: FixOptions) -> None:
    """1b. A serial console, asked for: through the grub defaults (then regenerated), or on
    the kernel lines themselves where the guest has no grub defaults file."""
    path = "/etc/default/grub"
    if session.is_file(path):
        base = plan.files.get(path) or session.read_text(path)
        new, added = linux.add_serial_console(base)
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
        issue = linux.ISSUE_FILE
        old = session.read_text(issue) if session.is_file(issue) else None
        _edit(plan, issue, old, linux.address_issue([p.name for p in options.pins]),
              "the serial console's login prompt shows the IPv4 addresses (agetty \\4)",
              mode=0o644)


def _plan_grub_config(session: GuestSession, plan: FixPlan, report: GuestReport,
                      dmap: devices.DeviceMap, family: linux.LinuxFamily | None) -> None:
    """2. The grub config: regenerated when its kernel lines name a device that will not
    exist (or its defaults changed), else its kernel lines rewritten."""
    if not report.grub_cfg:
        if report.bootloader == "none found":
            plan.warnings.append("no grub configuration found: the boot loader is not checked")
        return
    cfg = session.read_text(report.grub_cfg)
    bad = [r for r in devices.kernel_roots(cfg) if not _root_ok(r, report, dmap)]
    if bad:
        has_tool = family is not None and _mkconfig_argv(session, family) is not None
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
            _edit(plan, path, _read(session, path), network.link_text(pin),
                  f"{pin.name} keeps its name on the NIC with MAC {pin.mac}", mode=0o644)
    rules = _read(session, network.RULES_FILE)
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
        original = _read(session, path)
        if original is None:
            continue
        current = plan.files.get(path, original)
        new, changed = network.follow_macs(current, dict(options.mac_map), path)
        if changed:
            _edit(plan, path, original, new, "; ".join(changed))


def _plan_initramfs(session: GuestSession, plan: FixPlan, report: GuestReport,
                    family: linux.LinuxFamily | None) -> None:
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
        old = _read(session, family.modules_file) or ""
        new = family.modules_config(old)
        _edit(plan, family.modules_file, old if session.is_file(family.modules_file) else None,
              new, f"keep {', '.join(linux.VIRTIO_MODULES)} in every future initramfs",
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
                               f"fallback loader from {_efi_name(source)}: a VM "
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
    path = f"/boot/efi/EFI/{rel}"
    try:
        return session.case_sensitive_path(path)
    except GuestfsError:
        return path


def _efi_name(path: str) -> str:
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


def _mkconfig_argv(session: GuestSession, family: linux.LinuxFamily) -> list[str] | None:
    for argv in family.grub_mkconfig:
        for prefix in ("/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"):
            if session.exists(prefix + argv[0]):
                return list(argv)
    return None


def _root_ok(spec: str, report: GuestReport, dmap: devices.DeviceMap) -> bool:
    uuids = {f.uuid for f in report.filesystems if f.uuid}
    labels = {f.label for f in report.filesystems if f.label}
    return devices.root_will_exist(spec, dmap, uuids, labels, set(report.mapper_names))


# ----------------------------------------------------------------------------------- apply

def _sh(session: GuestSession, argv: list[str], what: str) -> str:
    return "\n".join(session.command_lines(argv, action=what))


def apply_plan(session: GuestSession, report: GuestReport, dmap: devices.DeviceMap,
               plan: FixPlan, progress: Callable[[str], None]) -> list[str]:
    """Make the planned changes; return the checks made afterwards (raise if one fails)."""
    family = linux.family_named(report.family)
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
        have = linux.has_virtio(listing, set(kernel.builtin))
        missing = [m for m in linux.VIRTIO_BOOT_MODULES if not have[m]]
        if missing:
            raise FixError(images=report.root, detail=f"{kernel.initrd} still lacks "
                           f"{', '.join(missing)} after {family.initramfs_tool}")
        checks.append(f"{kernel.initrd} holds {', '.join(m for m, ok in have.items() if ok)} "
                      f"(rebuilt in {time.monotonic() - started:.0f} s)")
    if plan.regenerate_grub and report.grub_cfg:
        argv = _mkconfig_argv(session, family) if family else None
        if argv is not None:
            progress(f"regenerating {report.grub_cfg} with {argv[0]}")
            _sh(session, argv, f"regenerating the grub config with {argv[0]}")
        cfg = session.read_text(report.grub_cfg)
        bad = [r for r in devices.kernel_roots(cfg) if not _root_ok(r, report, dmap)]
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
        checks.append(f"\\EFI\\BOOT\\BOOTX64.EFI is a copy of {_efi_name(src)}")
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


def _mdadm_text(session: GuestSession, planned: dict[str, str] | None = None) -> str | None:
    """The guest's mdadm.conf (as planned, when given)."""
    for path in ("/etc/mdadm/mdadm.conf", "/etc/mdadm.conf"):
        text = (planned or {}).get(path) or _read(session, path)
        if text is not None:
            return text
    return None


def _storage_problems(session: GuestSession, report: GuestReport,
                 dmap: devices.DeviceMap, planned: dict[str, str] | None = None) -> list[str]:
    """What the initramfs will not find on virtio: md arrays that do not assemble under the
    guest's mdadm.conf, PVs that LVM's filters or devices file ignore (as planned)."""
    planned = planned or {}

    def text(path: str) -> str | None:
        return planned.get(path) or _read(session, path)

    md_conf = _mdadm_text(session, planned)
    return (devices.md_assembly_problems(md_conf, dmap)
            + devices.lvm_pv_problems(text("/etc/lvm/lvm.conf"),
                                      text("/etc/lvm/devices/system.devices"), dmap, md_conf))


def _will_exist(session: GuestSession, report: GuestReport,
                dmap: devices.DeviceMap) -> Callable[[str], bool]:
    """Whether an fstab device spec will exist in the VM (an md array whose members were
    not converted will not)."""
    behind = devices.md_arrays_left_behind(_mdadm_text(session), dmap)
    return lambda spec: spec not in behind and _root_ok(spec, report, dmap)


def _boots_from_md_or_lvm(report: GuestReport) -> bool:
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
                                            _will_exist(session, report, dmap)).fatal
        if fatal:
            raise FixError(images=report.root, detail="; ".join(fatal))
    md = _storage_problems(session, report, dmap)
    if md and _boots_from_md_or_lvm(report):
        raise FixError(images=report.root, detail="; ".join(md))
    checks += devices.storage_checks(_mdadm_text(session), _read(session, "/etc/lvm/lvm.conf"),
                                     _read(session, "/etc/lvm/devices/system.devices"), dmap)
    if report.grub_cfg and session.is_file(report.grub_cfg):
        cfg = session.read_text(report.grub_cfg)
        roots = devices.kernel_roots(cfg)
        bad = [r for r in roots if not _root_ok(r, report, dmap)]
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


# ------------------------------------------------------------------------------------ caps

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


def fix_images(images: Sequence[Path], options: FixOptions,
               progress: Callable[[str], None] = lambda _m: None) -> FixResult:
    """Inspect, plan and (unless dry-run) fix one guest's disk images, all together.

    A Windows guest goes to p2v.fix.windows (virtio-win drivers); a Linux one is fixed here.
    """
    images = tuple(Path(i) for i in images)
    started = time.monotonic()
    # A wrong --virtio-win is refused before the appliance starts.
    virtio_kind = check_virtio_win(options.virtio_win) if options.virtio_win else None
    progress(f"launching the appliance over {len(images)} image(s)")
    # The format is given, never probed: qemu restricts writes to sector 0 of a probed raw.
    formats = {image_format(i) for i in images}
    fmt = formats.pop() if len(formats) == 1 else None
    iso = (options.virtio_win,) if virtio_kind == "iso" and options.virtio_win else ()
    with open_guest(images, readonly=options.dry_run, fmt=fmt, extra_readonly=iso) as session:
        root = session.inspect()
        if session.inspect_get_type(root) == "windows":
            return fix_windows(session, root, images, virtio_win=options.virtio_win,
                               virtio_kind=virtio_kind, dry_run=options.dry_run,
                               caps_path=caps_path_for(images), progress=progress,
                               started=started)
        if options.virtio_win is not None:
            raise UsageError(detail="--virtio-win is for Windows guests; this one is "
                                    f"{session.inspect_get_type(root)}: drop the option")
        # Mounted read-only until there is something to change: a run with nothing to do
        # (or a dry run) leaves every byte of the images as it was.
        session.resolve_spec = appliance_resolver(session, root, options)
        report = inspect_guest(session, list(options.source_disks) or None)
        dmap = guest_device_map(session, report.root, report.grub_cfg,
                                device_map(session, list(options.source_disks) or None), options)
        progress(f"found {report.product} ({report.distro} {report.version}, {report.firmware}, "
                 f"{report.bootloader}), kernels: "
                 + ", ".join(f"{k.version} (virtio {'yes' if k.boots_on_virtio else 'no'})"
                             for k in report.kernels))
        plan = plan_fix(session, report, dmap, options)
        checks: list[str] = []
        applied = False
        if not options.dry_run and not plan.empty:
            session.umount_all()
            session.mount_guest(report.root)
            checks = apply_plan(session, report, dmap, plan, progress)
            applied = True
        elif not options.dry_run:
            checks = check_guest(session, report, dmap)
    after = _after(report, plan, applied)
    caps = decide_caps(report, options, after)
    pins = nic_pins(report, options)
    verdict = Verdict(caps, caps_document(caps, report, pins, after), summary(report))
    caps_path = None
    if not options.dry_run:
        caps_path = caps_path_for(images)
        write_caps(caps_path, verdict.caps_document)
    return FixResult(images, report, plan, applied, verdict, caps_path, options.dry_run, checks,
                     round(time.monotonic() - started, 1))
