"""The fix plan computed from a guest's files (a fake in-memory guest; no libguestfs)."""

from __future__ import annotations

from typing import Any

import pytest

from p2v.errors import FixError
from p2v.fix.fixer import caps_path_for
from p2v.fix.linux import fixer, network
from p2v.fix.linux.agents import Agent
from p2v.fix.linux.check import check_guest
from p2v.fix.linux.devices import DeviceMap, DiskLayout, FsIdentity, MdContent
from p2v.fix.linux.inspect import FsInfo, GuestReport, KernelInfo
from p2v.fix.linux.plan import FixPlan, plan_fix
from p2v.fix.options import FixOptions
from p2v.model import GuestCaps

KVER = "6.1.0-9-amd64"
NO_VIRTIO = {m: False for m in ("virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net")}
ALL_VIRTIO = {m: True for m in NO_VIRTIO}
AVAILABLE = tuple(sorted(NO_VIRTIO))


class FakeSession:
    """The GuestSession methods planning reads the guest's files with."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def read_text(self, path: str) -> str:
        return str(self.files[path])

    def is_file(self, path: str) -> bool:
        return path in self.files

    def exists(self, path: str) -> bool:
        return path in self.files or self.is_dir(path)

    def is_dir(self, path: str) -> bool:
        return any(f.startswith(path.rstrip("/") + "/") for f in self.files)

    def ls(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted({f[len(prefix):].split("/")[0] for f in self.files if f.startswith(prefix)})

    def case_sensitive_path(self, path: str) -> str:
        for f in self.files:
            if f.lower() == path.lower():
                return f
        return path


BIOS_FILES = {
    "/etc/fstab": "/dev/sda1 / ext4 errors=remount-ro 0 1\n/dev/sda2 none swap sw 0 0\n",
    "/etc/default/grub": 'GRUB_CMDLINE_LINUX=""\nGRUB_DISABLE_LINUX_UUID=true\n',
    "/boot/grub/grub.cfg": "\tlinux\t/boot/vmlinuz root=/dev/sda1 ro quiet\n",
    "/etc/initramfs-tools/modules": "ahci\nsd_mod\n",
    "/etc/udev/rules.d/70-persistent-net.rules": (
        'SUBSYSTEM=="net", ATTR{address}=="52:54:00:b1:05:01", NAME="eth0"\n'),
    "/etc/systemd/system.conf": "",
    "/usr/sbin/update-grub": "",
    f"/boot/initrd.img-{KVER}": "",
}
DMAP = DeviceMap([DiskLayout(None, {1: FsIdentity("u-root", None, "ext4"),
                                    2: FsIdentity("u-swap", None, "swap")})])


def report(virtio: dict[str, bool] = NO_VIRTIO, firmware: str = "bios",
           family: str | None = "debian") -> GuestReport:
    return GuestReport(
        root="/dev/sda1", os_type="linux", distro="debian", version="12.1",
        product="Debian 12", family=family, firmware=firmware, bootloader="grub2",
        grub_cfg="/boot/grub/grub.cfg",
        kernels=[KernelInfo(KVER, f"/boot/initrd.img-{KVER}", dict(virtio), (), AVAILABLE)],
        filesystems=[FsInfo("/dev/sda1", "ext4", "u-root", None, "/"),
                     FsInfo("/dev/sda2", "swap", "u-swap", None, None)],
        nic_names=["eth0"], nic_pins={"eth0": "52:54:00:b1:05:01"}, has_systemd_udev=True,
        disks=1)


PIN = FixOptions(pins=(network.NicPin("eth0", "52:54:00:b1:05:01"),))


def kinds(plan: FixPlan) -> list[tuple[str, str]]:
    return [(c.kind, c.target) for c in plan.changes]


def test_bios_guest_plan() -> None:
    plan = plan_fix(FakeSession(dict(BIOS_FILES)), report(), DMAP, PIN)  # type: ignore[arg-type]
    assert kinds(plan) == [
        ("edit", "/etc/fstab"),
        ("edit", "/etc/default/grub"),
        ("regenerate-grub", "/boot/grub/grub.cfg"),
        ("create", "/etc/systemd/network/10-p2v-eth0.link"),
        ("edit", "/etc/initramfs-tools/modules"),
        ("rebuild-initramfs", KVER),
    ]
    assert plan.files["/etc/fstab"].startswith("UUID=u-root / ext4")
    assert "GRUB_DISABLE_LINUX_UUID=false" in plan.files["/etc/default/grub"]
    assert plan.modes["/etc/systemd/network/10-p2v-eth0.link"] == 0o644
    assert plan.regenerate_grub and [k.version for k in plan.rebuild] == [KVER]
    assert plan.fallback is None and not plan.warnings


def test_a_fixed_guest_plans_nothing() -> None:
    files = dict(BIOS_FILES)
    first = plan_fix(FakeSession(files), report(), DMAP, PIN)  # type: ignore[arg-type]
    files.update(first.files)
    files["/boot/grub/grub.cfg"] = "\tlinux\t/boot/vmlinuz root=UUID=u-root ro quiet\n"
    second = plan_fix(FakeSession(files), report(ALL_VIRTIO), DMAP, PIN)  # type: ignore[arg-type]
    assert second.empty and second.files == {} and not second.rebuild


def test_without_macs_names_are_not_pinned_and_that_is_said() -> None:
    rep = report()
    plan = plan_fix(FakeSession(dict(BIOS_FILES)), rep, DMAP, FixOptions())  # type: ignore[arg-type]
    assert not any(c.target.endswith(".link") for c in plan.changes)
    assert not any("not pinned" in w for w in plan.warnings)   # its udev rule pins eth0
    rep.nic_pins = {}
    plan = plan_fix(FakeSession(dict(BIOS_FILES)), rep, DMAP, FixOptions())  # type: ignore[arg-type]
    assert any("not pinned (eth0)" in w for w in plan.warnings)


def test_pin_to_a_new_mac_updates_the_persistent_rule() -> None:
    options = FixOptions(pins=(network.NicPin("eth0", "52:54:00:00:00:42"),))
    plan = plan_fix(FakeSession(dict(BIOS_FILES)), report(), DMAP, options)  # type: ignore[arg-type]
    assert "52:54:00:00:00:42" in plan.files[network.RULES_FILE]
    assert "MACAddress=52:54:00:00:00:42" in plan.files[network.link_path("eth0")]


def test_uefi_without_fallback_loader_plans_the_copy() -> None:
    files = dict(BIOS_FILES)
    files["/boot/efi/EFI/debian/grubx64.efi"] = "x"
    plan = plan_fix(FakeSession(files), report(firmware="uefi"), DMAP, PIN)  # type: ignore[arg-type]
    assert plan.fallback == ("/boot/efi/EFI/debian/grubx64.efi", "/boot/efi/EFI/BOOT/BOOTX64.EFI")
    assert ("copy", "\\EFI\\BOOT\\BOOTX64.EFI") in kinds(plan)
    files["/boot/efi/EFI/BOOT/bootx64.efi"] = "x"          # FAT: any case will do
    plan = plan_fix(FakeSession(files), report(firmware="uefi"), DMAP, PIN)  # type: ignore[arg-type]
    assert plan.fallback is None


def test_uefi_shim_is_preferred_and_takes_grub_along() -> None:
    files = dict(BIOS_FILES)
    files["/boot/efi/EFI/redhat/shimx64.efi"] = "s"
    files["/boot/efi/EFI/redhat/grubx64.efi"] = "g"
    files["/boot/efi/EFI/redhat/grub.cfg"] = "c"
    plan = plan_fix(FakeSession(files), report(firmware="uefi"), DMAP, PIN)  # type: ignore[arg-type]
    assert plan.fallback == ("/boot/efi/EFI/redhat/shimx64.efi",
                             "/boot/efi/EFI/BOOT/BOOTX64.EFI")
    assert ("/boot/efi/EFI/redhat/grubx64.efi", "/boot/efi/EFI/BOOT/grubx64.efi") \
        in plan.fallback_extra
    assert ("/boot/efi/EFI/redhat/grub.cfg", "/boot/efi/EFI/BOOT/grub.cfg") in plan.fallback_extra


def test_kernel_without_virtio_modules_is_a_warning_and_caps_fall_back_to_sata() -> None:
    rep = report()
    rep.kernels = [KernelInfo(KVER, f"/boot/initrd.img-{KVER}", dict(NO_VIRTIO), (), ())]
    plan = plan_fix(FakeSession(dict(BIOS_FILES)), rep, DMAP, PIN)  # type: ignore[arg-type]
    assert not plan.rebuild
    assert any("cannot boot on virtio" in w for w in plan.warnings)
    caps = fixer.decide_caps(rep, PIN, fixer._after(rep, plan, applied=True))
    assert caps == GuestCaps(disk_bus="sata", nic_model="e1000e", firmware="bios")


def test_caps_after_a_rebuild_are_virtio() -> None:
    rep = report()
    plan = plan_fix(FakeSession(dict(BIOS_FILES)), rep, DMAP, PIN)  # type: ignore[arg-type]
    caps = fixer.decide_caps(rep, PIN, fixer._after(rep, plan, applied=True))
    assert caps == GuestCaps(disk_bus="virtio", nic_model="virtio", firmware="bios")
    dry = fixer.decide_caps(rep, PIN, fixer._after(rep, plan, applied=False))
    assert dry.disk_bus == "sata"


def test_legacy_grub_without_a_tool_is_edited_in_place() -> None:
    files = {k: v for k, v in BIOS_FILES.items()
             if k not in ("/boot/grub/grub.cfg", "/usr/sbin/update-grub", "/etc/default/grub")}
    files["/boot/grub/menu.lst"] = "title x\nroot (hd0,0)\nkernel /vmlinuz root=/dev/hda1 ro\n"
    rep = report()
    rep.bootloader, rep.grub_cfg = "grub-legacy", "/boot/grub/menu.lst"
    plan = plan_fix(FakeSession(files), rep, DMAP, PIN)  # type: ignore[arg-type]
    assert not plan.regenerate_grub
    assert "root=UUID=u-root" in plan.files["/boot/grub/menu.lst"]


def test_unknown_family_is_reported_not_guessed() -> None:
    plan = plan_fix(FakeSession(dict(BIOS_FILES)), report(family=None), DMAP,  # type: ignore[arg-type]
                    PIN)
    assert any("unknown distro family" in w for w in plan.warnings)
    assert not plan.rebuild


def test_caps_path_beside_first_image(tmp_path: Any) -> None:
    assert caps_path_for([tmp_path / "web01.qcow2", tmp_path / "b.qcow2"]) == \
        tmp_path / "web01.qcow2.caps.json"


def test_serial_console_goes_through_grub_defaults_once() -> None:
    files = dict(BIOS_FILES)
    options = FixOptions(pins=PIN.pins, serial_console=True)
    plan = plan_fix(FakeSession(files), report(), DMAP, options)  # type: ignore[arg-type]
    text = plan.files["/etc/default/grub"]
    assert 'GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"' in text
    assert "GRUB_DISABLE_LINUX_UUID=false" in text          # both edits kept
    assert 'GRUB_TERMINAL="console serial"' in text and plan.regenerate_grub
    files.update(plan.files)
    files["/boot/grub/grub.cfg"] = "\tlinux\t/boot/vmlinuz root=UUID=u-root ro console=ttyS0\n"
    again = plan_fix(FakeSession(files), report(ALL_VIRTIO), DMAP, options)  # type: ignore[arg-type]
    assert again.empty


def test_serial_console_without_grub_defaults_edits_the_kernel_lines() -> None:
    files = {k: v for k, v in BIOS_FILES.items() if k != "/etc/default/grub"}
    files["/boot/grub/grub.cfg"] = "\tlinux\t/boot/vmlinuz root=UUID=u-root ro\n"
    options = FixOptions(pins=PIN.pins, serial_console=True)
    plan = plan_fix(FakeSession(files), report(ALL_VIRTIO), DMAP, options)  # type: ignore[arg-type]
    assert "console=ttyS0,115200n8" in plan.files["/boot/grub/grub.cfg"]


def test_serial_console_login_prompt_shows_each_pinned_nics_address() -> None:
    files = dict(BIOS_FILES)
    files["/etc/systemd/system/multi-user.target.wants/ssh.service"] = ""
    options = FixOptions(pins=PIN.pins, serial_console=True)
    plan = plan_fix(FakeSession(files), report(), DMAP, options)  # type: ignore[arg-type]
    assert plan.files["/etc/issue.d/p2v-addresses.issue"] == "p2v: eth0 \\4{eth0}\n"
    assert plan.modes["/etc/issue.d/p2v-addresses.issue"] == 0o644
    without = plan_fix(FakeSession(files), report(), DMAP, PIN)  # type: ignore[arg-type]
    assert "/etc/issue.d/p2v-addresses.issue" not in without.files


def test_agents_reported_and_removed_only_when_asked() -> None:
    rep = report()
    rep.package_format = "deb"
    rep.agents = [Agent("open-vm-tools", "VMware guest agent")]
    plan = plan_fix(FakeSession(dict(BIOS_FILES)), rep, DMAP, PIN)  # type: ignore[arg-type]
    assert plan.remove_argv is None
    assert any("--remove-agents" in w for w in plan.warnings)
    options = FixOptions(pins=PIN.pins, remove_agents=True)
    plan = plan_fix(FakeSession(dict(BIOS_FILES)), rep, DMAP, options)  # type: ignore[arg-type]
    assert plan.remove_argv is not None and plan.remove_argv[-1] == "open-vm-tools"
    assert ("remove-packages", "open-vm-tools") in [(c.kind, c.target) for c in plan.changes]


def test_selinux_guest_gets_a_relabel_only_with_other_changes() -> None:
    rep = report()
    rep.selinux = ("enforcing", "targeted")
    plan = plan_fix(FakeSession(dict(BIOS_FILES)), rep, DMAP, PIN)  # type: ignore[arg-type]
    assert plan.relabel == "/etc/selinux/targeted/contexts/files/file_contexts"
    assert plan.changes[-1].kind == "selinux-relabel"
    files = dict(BIOS_FILES)
    files.update(plan.files)
    files["/boot/grub/grub.cfg"] = "\tlinux\t/boot/vmlinuz root=UUID=u-root ro quiet\n"
    rep.kernels = report(ALL_VIRTIO).kernels
    again = plan_fix(FakeSession(files), rep, DMAP, PIN)  # type: ignore[arg-type]
    assert again.empty and again.relabel is None


def test_a_rewritten_mdadm_conf_rebuilds_an_initramfs_that_already_has_virtio() -> None:
    files = dict(BIOS_FILES)
    files["/etc/mdadm/mdadm.conf"] = "DEVICE /dev/sd[a]1\nARRAY /dev/md0 UUID=aa:bb:cc:dd\n"
    plan = plan_fix(FakeSession(files), report(ALL_VIRTIO), DMAP, PIN)  # type: ignore[arg-type]
    assert plan.files["/etc/mdadm/mdadm.conf"].startswith("DEVICE /dev/vda1\n")
    rebuild = [c for c in plan.changes if c.kind == "rebuild-initramfs"]
    assert [c.target for c in rebuild] == [KVER]
    assert "holds the old /etc/mdadm/mdadm.conf" in rebuild[0].why
    # the rebuild keeps virtio whatever MODULES= the guest has
    assert "virtio_blk" in plan.files["/etc/initramfs-tools/modules"]


def test_no_initramfs_rebuild_when_nothing_it_copies_changed() -> None:
    plan = plan_fix(FakeSession(dict(BIOS_FILES)), report(ALL_VIRTIO), DMAP,  # type: ignore[arg-type]
                    PIN)
    assert not [c for c in plan.changes if c.kind == "rebuild-initramfs"]


def test_fstab_entry_of_a_disk_not_converted_gets_nofail() -> None:
    files = dict(BIOS_FILES)
    files["/etc/fstab"] += "UUID=not-copied /srv ext4 defaults 0 2\n"
    plan = plan_fix(FakeSession(files), report(ALL_VIRTIO), DMAP, PIN)  # type: ignore[arg-type]
    fstab = plan.files["/etc/fstab"]
    assert "UUID=not-copied /srv ext4 defaults,nofail 0 2" in fstab
    assert fstab.startswith("UUID=u-root / ext4")
    assert any("marked nofail" in c.why for c in plan.changes if c.target == "/etc/fstab")


def test_grub_snippets_and_mount_units_are_rewritten() -> None:
    files = dict(BIOS_FILES)
    files["/etc/default/grub.d/50-root.cfg"] = 'GRUB_CMDLINE_LINUX="root=/dev/sda1"\n'
    files["/etc/default/grub.d/README"] = "root=/dev/sda1 is an example\n"
    files["/etc/systemd/system/srv.mount"] = "[Mount]\nWhat=/dev/sda1\nWhere=/srv\n"
    plan = plan_fix(FakeSession(files), report(ALL_VIRTIO), DMAP, PIN)  # type: ignore[arg-type]
    snippet = plan.files["/etc/default/grub.d/50-root.cfg"]
    assert snippet == 'GRUB_CMDLINE_LINUX="root=UUID=u-root"\n'
    assert "/etc/default/grub.d/README" not in plan.files
    assert "What=/dev/disk/by-uuid/u-root" in plan.files["/etc/systemd/system/srv.mount"]
    assert plan.regenerate_grub


RAID = FsIdentity("3f1e2d4c-5b6a-7988-0123-456789abcdef", None, "linux_raid_member")
RAID_DMAP = DeviceMap([DiskLayout(None, {1: RAID}), DiskLayout(None, {1: RAID})])
MD_ARRAY = "ARRAY /dev/md0 metadata=1.2 UUID=3f1e2d4c:5b6a7988:01234567:89abcdef\n"


def md_report() -> GuestReport:
    rep = report(ALL_VIRTIO)
    rep.mounts = {"/": "/dev/md0"}
    return rep


def test_root_on_md_selected_by_a_glob_is_rewritten_and_then_assembles() -> None:
    files = dict(BIOS_FILES)
    files["/etc/mdadm/mdadm.conf"] = "DEVICE /dev/sd[ab]1\n" + MD_ARRAY
    plan = plan_fix(FakeSession(files), md_report(), RAID_DMAP, PIN)  # type: ignore[arg-type]
    assert plan.files["/etc/mdadm/mdadm.conf"].startswith("DEVICE /dev/vda1 /dev/vdb1\n")
    assert not [w for w in plan.warnings if "md array" in w]


def test_root_on_md_that_will_not_assemble_is_said_not_to_boot() -> None:
    files = dict(BIOS_FILES)
    files["/etc/mdadm/mdadm.conf"] = "DEVICE /dev/vda1\n" + MD_ARRAY
    plan = plan_fix(FakeSession(files), md_report(), RAID_DMAP, PIN)  # type: ignore[arg-type]
    assert [w for w in plan.warnings if w.startswith("will not boot: md array /dev/md0")]


def test_fstab_entry_on_an_md_array_left_behind_gets_nofail() -> None:
    files = dict(BIOS_FILES)
    files["/etc/mdadm/mdadm.conf"] = MD_ARRAY.replace("/dev/md0", "/dev/md9")
    files["/etc/fstab"] += "/dev/md9 /srv ext4 defaults 0 2\n"
    plan = plan_fix(FakeSession(files), report(ALL_VIRTIO), DMAP, PIN)  # type: ignore[arg-type]
    assert "/dev/md9 /srv ext4 defaults,nofail 0 2" in plan.files["/etc/fstab"]


def test_new_macs_carry_every_config_keyed_by_the_old_mac() -> None:
    files = dict(BIOS_FILES)
    files["/etc/systemd/network/10-lan.network"] = (
        "[Match]\nMACAddress=52:54:00:b1:05:01\n[Network]\nAddress=10.0.2.15/24\n")
    files["/etc/NetworkManager/system-connections/lan.nmconnection"] = (
        "[ethernet]\nmac-address=52:54:00:B1:05:01\n")
    files["/etc/netplan/01-lan.yaml"] = (
        "network:\n  ethernets:\n    lan:\n      match:\n        macaddress: 52:54:00:b1:05:01\n")
    new_mac = "52:54:00:77:88:99"
    options = FixOptions(pins=(network.NicPin("eth0", new_mac),),
                         mac_map=(("52:54:00:b1:05:01", new_mac),))
    plan = plan_fix(FakeSession(files), report(ALL_VIRTIO), DMAP, options)  # type: ignore[arg-type]
    assert "MACAddress=52:54:00:77:88:99" in plan.files["/etc/systemd/network/10-lan.network"]
    assert "mac-address=52:54:00:77:88:99" in plan.files[
        "/etc/NetworkManager/system-connections/lan.nmconnection"]
    assert "macaddress: 52:54:00:77:88:99" in plan.files["/etc/netplan/01-lan.yaml"]
    rules = plan.files["/etc/udev/rules.d/70-persistent-net.rules"]
    assert "52:54:00:77:88:99" in rules and "b1:05:01" not in rules


def test_root_lv_whose_pv_the_devices_file_names_by_wwid_is_fixed_not_trusted() -> None:
    pv = FsIdentity("Y7vRSg-W9c8-J4b3-kIL3-l0I0-fFtQ-8bPHpX", None, "LVM2_member")
    dmap = DeviceMap([DiskLayout(None, {1: FsIdentity("u-boot", None, "xfs"), 2: pv})])
    files = dict(BIOS_FILES)
    files["/etc/lvm/devices/system.devices"] = (
        "VERSION=1.1.2\nIDTYPE=sys_wwid IDNAME=naa.6005 DEVNAME=/dev/sda2 "
        "PVID=Y7vRSgW9c8J4b3kIL3l0I0fFtQ8bPHpX PART=2\n")
    rep = report(ALL_VIRTIO)
    rep.mounts = {"/": "/dev/rhel/root"}
    plan = plan_fix(FakeSession(files), rep, dmap, PIN)  # type: ignore[arg-type]
    assert "IDTYPE=devname IDNAME=/dev/vda2" in plan.files["/etc/lvm/devices/system.devices"]
    assert not [w for w in plan.warnings if "LVM PV" in w]
    assert [c for c in plan.changes if c.kind == "rebuild-initramfs"]


# LVM on md RAID1 (the xfsmd fixture): /boot on md0, the only PV is md1, root an XFS LV.
MD1 = "41f09b3e:96ac27d8:5be1d04a:0c7f3e92"
MD1_MEMBER = FsIdentity("41f09b3e-96ac-27d8-5be1-d04a0c7f3e92", None, "linux_raid_member")
MD1_PV = FsIdentity("Y7vRSg-W9c8-J4b3-kIL3-l0I0-fFtQ-8bPHpX", None, "LVM2_member")
LVM_ON_MD_DMAP = DeviceMap([DiskLayout(None, {2: MD1_MEMBER}), DiskLayout(None, {2: MD1_MEMBER})],
                           arrays=[MdContent(MD1, "/dev/md127", MD1_PV)])
LVM_ON_MD_FILES = {
    **BIOS_FILES,
    "/etc/fstab": "/dev/mapper/vg0-root / xfs defaults 0 1\n",
    "/boot/grub/grub.cfg": "\tlinux\t/vmlinuz root=/dev/mapper/vg0-root ro quiet\n",
    "/etc/mdadm/mdadm.conf": f"DEVICE partitions\nARRAY /dev/md1 metadata=1.2 UUID={MD1}\n",
    "/etc/lvm/lvm.conf": 'devices {\n filter = [ "a|^/dev/md[0-9]+$|", "r|.*|" ]\n}\n',
}


def lvm_on_md_report() -> GuestReport:
    rep = report(ALL_VIRTIO)
    rep.mounts = {"/": "/dev/vg0/root"}
    rep.mapper_names = ["vg0-root"]
    return rep


def test_root_lv_on_md_is_checked_through_the_array_and_the_filter() -> None:
    session = FakeSession(dict(LVM_ON_MD_FILES))
    checks = check_guest(session, lvm_on_md_report(), LVM_ON_MD_DMAP)  # type: ignore[arg-type]
    assert "md array /dev/md1 assembles on virtio from /dev/vda2, /dev/vdb2 " \
           "(mdadm.conf DEVICE partitions)" in checks
    assert "LVM PV /dev/md1 will be used on virtio (accepted by lvm.conf filter)" in checks


def test_root_lv_on_md_whose_pv_the_filter_rejects_is_not_said_to_boot() -> None:
    files = dict(LVM_ON_MD_FILES)
    files["/etc/lvm/lvm.conf"] = 'devices {\n filter = [ "a|^/dev/sd|", "r|.*|" ]\n}\n'
    with pytest.raises(FixError, match="LVM PV /dev/md1: rejected by lvm.conf filter"):
        check_guest(FakeSession(files), lvm_on_md_report(),  # type: ignore[arg-type]
                          LVM_ON_MD_DMAP)
    plan = plan_fix(FakeSession(files), lvm_on_md_report(), LVM_ON_MD_DMAP,  # type: ignore[arg-type]
                    PIN)
    assert "will not boot: LVM PV /dev/md1: rejected by lvm.conf filter" in plan.warnings
