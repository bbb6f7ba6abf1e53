"""Device-name rewriting (pure): fstab, crypttab, kernel args, grub, mdadm, LVM filters."""

from __future__ import annotations

import pytest

from p2v.fix.linux import devices
from p2v.fix.linux.devices import DeviceMap, DiskLayout, FsIdentity, MdContent

ROOT = FsIdentity("1111-root", None, "ext4")
SWAP = FsIdentity("2222-swap", None, "swap")
DATA = FsIdentity(None, "data", "xfs")       # a label, no UUID
RAW = FsIdentity(None, None, None)           # nothing to name it by


def two_disks(names: tuple[str | None, str | None] = (None, None)) -> DeviceMap:
    return DeviceMap([DiskLayout(names[0], {1: ROOT, 2: SWAP}),
                      DiskLayout(names[1], {1: DATA, 2: RAW})])


@pytest.mark.parametrize(("path", "disk", "part", "index"), [
    ("/dev/sda", "sda", None, 0),
    ("/dev/sda1", "sda", 1, 0),
    ("/dev/sdb12", "sdb", 12, 1),
    ("/dev/sdaa3", "sdaa", 3, 26),
    ("/dev/hdc1", "hdc", 1, 2),
    ("/dev/xvdb2", "xvdb", 2, 1),
    ("/dev/vda1", "vda", 1, 0),
    ("/dev/cciss/c0d1p2", "cciss/c0d1", 2, 1),
    ("/dev/cciss/c0d0", "cciss/c0d0", None, 0),
    ("/dev/nvme0n1p3", "nvme0n1", 3, 0),
    ("/dev/nvme1n1", "nvme1n1", None, 1),
    ("/dev/disk/by-id/ata-WDC_WD10-part2", "disk/by-id/ata-WDC_WD10", 2, None),
    ("/dev/disk/by-path/pci-0000:00:1f.2-ata-1", "disk/by-path/pci-0000:00:1f.2-ata-1", None,
     None),
])
def test_parse_device(path: str, disk: str, part: int | None, index: int | None) -> None:
    parsed = devices.parse_device(path)
    assert parsed is not None
    assert (parsed.disk, parsed.partition, parsed.guess_index) == (disk, part, index)


@pytest.mark.parametrize("path", ["/dev/mapper/vg0-root", "/dev/md0", "UUID=x", "/dev/loop0",
                                  "/dev/dm-0"])
def test_parse_device_leaves_stable_names(path: str) -> None:
    assert devices.parse_device(path) is None


def test_letters_round_trip() -> None:
    for i in (0, 1, 25, 26, 27, 51, 52, 701):
        assert devices.letters_to_index(devices.index_to_letters(i)) == i
    assert devices.index_to_letters(26) == "aa"
    assert devices.virtio_name(1, 2) == "/dev/vdb2"
    assert devices.virtio_name(0) == "/dev/vda"


def test_resolve_prefers_uuid_then_label_then_virtio_name() -> None:
    dmap = two_disks()
    assert dmap.resolve("/dev/sda1").new == "UUID=1111-root"
    assert dmap.resolve("/dev/sdb1").new == "LABEL=data"
    assert dmap.resolve("/dev/sdb2").new == "/dev/vdb2"
    assert dmap.resolve("/dev/sdb").new == "/dev/vdb"
    assert dmap.remap("/dev/sda1").new == "/dev/vda1"
    assert dmap.resolve("/dev/sdc1").new is None           # no third disk


def test_resolve_other_buses_by_position() -> None:
    dmap = two_disks()
    assert dmap.resolve("/dev/hda2").new == "UUID=2222-swap"
    assert dmap.resolve("/dev/xvdb2").new == "/dev/vdb2"
    assert dmap.resolve("/dev/cciss/c0d0p1").new == "UUID=1111-root"
    assert dmap.resolve("/dev/nvme1n1p2").new == "/dev/vdb2"


def test_inventory_names_decide_the_disk_not_the_letter() -> None:
    # The source had an NVMe boot disk and a SATA data disk, copied in that order.
    dmap = two_disks(("nvme0n1", "sda"))
    assert dmap.resolve("/dev/nvme0n1p1").new == "UUID=1111-root"
    assert dmap.resolve("/dev/sda2").new == "/dev/vdb2"
    assert dmap.resolve("/dev/sdb1").new is None    # a disk that was not copied


def test_by_id_resolves_only_when_there_is_one_disk() -> None:
    one = DeviceMap([DiskLayout(None, {1: ROOT})])
    assert one.resolve("/dev/disk/by-id/ata-X_123-part1").new == "UUID=1111-root"
    assert two_disks().resolve("/dev/disk/by-id/ata-X_123-part1").new is None


FSTAB = """\
# /etc/fstab: static file system information.
# /dev/sda1 in a comment stays
/dev/sda1 /     ext4 errors=remount-ro 0 1
/dev/sda2 none  swap sw 0 0
UUID=abcd /boot ext4 defaults 0 2
/dev/mapper/vg0-root /srv ext4 defaults 0 2
/dev/sdb1\t/data\txfs\tdefaults\t0 2
/dev/sdb2 /raw ext2 defaults 0 2
/dev/sdc1 /gone ext4 defaults 0 2
proc /proc proc defaults 0 0
"""


def test_fstab_rewrite() -> None:
    res = devices.rewrite_fstab(FSTAB, two_disks())
    lines = res.text.splitlines()
    assert lines[1] == "# /dev/sda1 in a comment stays"
    assert lines[2] == "UUID=1111-root /     ext4 errors=remount-ro 0 1"
    assert lines[3] == "UUID=2222-swap none  swap sw 0 0"
    assert lines[4] == "UUID=abcd /boot ext4 defaults 0 2"
    assert lines[5] == "/dev/mapper/vg0-root /srv ext4 defaults 0 2"
    assert lines[6] == "LABEL=data\t/data\txfs\tdefaults\t0 2"
    assert lines[7] == "/dev/vdb2 /raw ext2 defaults 0 2"
    assert lines[8] == "/dev/sdc1 /gone ext4 defaults 0 2"
    assert len(res.changes) == 4
    assert res.unresolved == ("fstab line 9: /dev/sdc1 (no disk of this guest matches)",)
    assert res.text.endswith("\n")


def test_fstab_rewrite_is_idempotent() -> None:
    once = devices.rewrite_fstab(FSTAB, two_disks())
    twice = devices.rewrite_fstab(once.text, two_disks())
    assert twice.text == once.text and not twice.changed


def test_crypttab_second_column() -> None:
    text = "cryptroot /dev/sda2 none luks,discard\ncryptdata UUID=x /etc/key luks\n"
    res = devices.rewrite_crypttab(text, two_disks())
    assert res.text == ("cryptroot UUID=2222-swap none luks,discard\n"
                        "cryptdata UUID=x /etc/key luks\n")


@pytest.mark.parametrize(("line", "want"), [
    ("root=/dev/sda1 ro quiet", "root=UUID=1111-root ro quiet"),
    ("ro root=/dev/sda1 resume=/dev/sda2", "ro root=UUID=1111-root resume=UUID=2222-swap"),
    ("root=/dev/mapper/vg0-root ro", "root=/dev/mapper/vg0-root ro"),
    ("root=UUID=1111-root ro", "root=UUID=1111-root ro"),
    ("root=/dev/vda1 ro", "root=/dev/vda1 ro"),
    ("real_root=/dev/sdb2", "real_root=/dev/vdb2"),
    ("myroot=/dev/sda1", "myroot=/dev/sda1"),      # not a kernel root argument
])
def test_kernel_args(line: str, want: str) -> None:
    assert devices.rewrite_kernel_args(line, two_disks(), "cmdline").text == want


GRUB_DEFAULT = """\
GRUB_DEFAULT=0
GRUB_CMDLINE_LINUX_DEFAULT="quiet resume=/dev/sda2"
GRUB_CMDLINE_LINUX="root=/dev/sda1"
GRUB_DISABLE_LINUX_UUID=true
"""


def test_grub_default_rewrites_cmdline_and_enables_uuids() -> None:
    res = devices.rewrite_grub_default(GRUB_DEFAULT, two_disks())
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="quiet resume=UUID=2222-swap"' in res.text
    assert 'GRUB_CMDLINE_LINUX="root=UUID=1111-root"' in res.text
    assert "GRUB_DISABLE_LINUX_UUID=false" in res.text
    assert len(res.changes) == 3
    assert not devices.rewrite_grub_default(res.text, two_disks()).changed


def test_grub_default_quoted_true() -> None:
    res = devices.rewrite_grub_default('GRUB_DISABLE_LINUX_UUID="true"\n', two_disks())
    assert res.text == "GRUB_DISABLE_LINUX_UUID=false\n"


GRUB_CFG = """\
menuentry 'Debian GNU/Linux' {
\tset root='hd0,msdos1'
\tsearch --no-floppy --fs-uuid --set=root 1111-root
\tlinux\t/boot/vmlinuz-6.1.0 root=/dev/sda1 ro  quiet
\tinitrd\t/boot/initrd.img-6.1.0
}
"""
MENU_LST = """\
title Debian
root (hd0,0)
kernel /boot/vmlinuz root=/dev/hda1 ro
"""


def test_grub_cfg_and_menu_lst() -> None:
    res = devices.rewrite_grub_cfg(GRUB_CFG, two_disks(), "grub.cfg")
    assert "\tlinux\t/boot/vmlinuz-6.1.0 root=UUID=1111-root ro  quiet" in res.text
    assert "set root='hd0,msdos1'" in res.text     # grub's own disk naming is left alone
    legacy = devices.rewrite_grub_cfg(MENU_LST, two_disks(), "menu.lst")
    assert "kernel /boot/vmlinuz root=UUID=1111-root ro" in legacy.text
    assert devices.kernel_roots(res.text) == ["UUID=1111-root"]


def test_root_will_exist() -> None:
    dmap = two_disks()
    uuids, labels, mapper = {"1111-root"}, {"data"}, {"vg0-root", "my--vg-lv--a"}

    def ok(spec: str) -> bool:
        return devices.root_will_exist(spec, dmap, uuids, labels, mapper)

    assert ok("UUID=1111-root") and not ok("UUID=nope")
    assert ok("LABEL=data")
    assert ok("/dev/mapper/vg0-root") and not ok("/dev/mapper/vg1-root")
    assert ok("/dev/vg0/root") and ok("/dev/my-vg/lv-a")
    assert ok("/dev/vda1") and not ok("/dev/vdc1") and not ok("/dev/vda7")
    assert not ok("/dev/sda1")
    assert not ok("/dev/disk/by-id/ata-X-part1")


def test_mdadm_conf() -> None:
    text = ("# DEVICE /dev/sda1\nDEVICE /dev/sda1 /dev/sdb1\n"
            "ARRAY /dev/md0 metadata=1.2 UUID=aa:bb devices=/dev/sda1,/dev/sdb1\n")
    res = devices.rewrite_mdadm_conf(text, two_disks())
    assert res.text == ("# DEVICE /dev/sda1\nDEVICE /dev/vda1 /dev/vdb1\n"
                        "ARRAY /dev/md0 metadata=1.2 UUID=aa:bb devices=/dev/vda1,/dev/vdb1\n")


def test_lvm_filter() -> None:
    text = ('devices {\n    filter = [ "a|^/dev/sda2$|", "a|/dev/sd.*|", "r|.*|" ]\n'
            '    # filter = [ "a|/dev/sda|" ]\n'
            '    global_filter = [ "a|/dev/cciss/c0d0p1|", "r|.*|" ]\n}\n')
    res = devices.rewrite_lvm_conf(text, two_disks())
    assert 'filter = [ "a|^/dev/vda2$|", "a|/dev/vd.*|", "r|.*|" ]' in res.text
    assert '# filter = [ "a|/dev/sda|" ]' in res.text
    assert 'global_filter = [ "a|/dev/vda1|", "r|.*|" ]' in res.text
    assert not devices.rewrite_lvm_conf(res.text, two_disks()).changed


def test_find_devices() -> None:
    assert devices.find_devices("root=/dev/sda1 x /dev/vda2 /dev/nvme0n1p1,") == [
        "/dev/sda1", "/dev/nvme0n1p1"]


@pytest.mark.parametrize(("line", "want"), [
    ("DEVICE /dev/sd[ab]1\n", "DEVICE /dev/vda1 /dev/vdb1\n"),
    ("DEVICE /dev/sd*\n", "DEVICE /dev/vda /dev/vda1 /dev/vda2 /dev/vdb /dev/vdb1 /dev/vdb2\n"),
    ("DEVICE /dev/sd?2 # members\n", "DEVICE /dev/vda2 /dev/vdb2 # members\n"),
    ("dev /dev/sda1 /dev/sdb1\n", "dev /dev/vda1 /dev/vdb1\n"),
    ("DEVICE partitions containers\n", "DEVICE partitions containers\n"),
    ("ARRAY /dev/md0 UUID=aa:bb devices=/dev/sd[ab]1\n",
     "ARRAY /dev/md0 UUID=aa:bb devices=/dev/vda1,/dev/vdb1\n"),
])
def test_mdadm_device_patterns_follow_the_disks(line: str, want: str) -> None:
    res = devices.rewrite_mdadm_conf(line, two_disks())
    assert res.text == want
    assert not res.unresolved
    assert not devices.rewrite_mdadm_conf(res.text, two_disks()).changed


def test_mdadm_pattern_from_the_inventory_names() -> None:
    dmap = two_disks(("nvme0n1", "nvme1n1"))
    res = devices.rewrite_mdadm_conf("DEVICE /dev/nvme[01]n1p1\n", dmap)
    assert res.text == "DEVICE /dev/vda1 /dev/vdb1\n"


def test_mdadm_pattern_that_selects_nothing_is_reported() -> None:
    res = devices.rewrite_mdadm_conf("DEVICE /dev/sd[cd]1\n", two_disks())
    assert res.text == "DEVICE /dev/sd[cd]1\n"
    assert res.unresolved == ("mdadm.conf line 1: pattern /dev/sd[cd]1 selects no disk of "
                              "this guest",)


SYSTEM_DEVICES = (
    "# LVM uses devices listed in this file.\n"
    "VERSION=1.1.3\n"
    "IDTYPE=sys_wwid IDNAME=naa.600508b1001c3a2f DEVNAME=/dev/sda2 PVID=Pv1 PART=2\n"
    "IDTYPE=sys_serial IDNAME=WD-WX31A DEVNAME=/dev/sdb PVID=Pv2\n"
    "IDTYPE=md_uuid IDNAME=abc DEVNAME=/dev/md0 PVID=Pv3\n"
)


def test_lvm_devices_file_entries_by_hardware_id_become_virtio_devnames() -> None:
    res = devices.rewrite_lvm_devices(SYSTEM_DEVICES, two_disks())
    lines = res.text.splitlines()
    assert lines[:2] == SYSTEM_DEVICES.splitlines()[:2]
    assert lines[2] == "IDTYPE=devname IDNAME=/dev/vda2 DEVNAME=/dev/vda2 PVID=Pv1 PART=2"
    assert lines[3] == "IDTYPE=devname IDNAME=/dev/vdb DEVNAME=/dev/vdb PVID=Pv2"
    assert lines[4] == SYSTEM_DEVICES.splitlines()[4]          # md_uuid: bus-independent
    assert len(res.changes) == 2 and not res.unresolved
    assert not devices.rewrite_lvm_devices(res.text, two_disks()).changed


def test_lvm_devices_file_entry_of_a_disk_not_converted_is_reported() -> None:
    text = "IDTYPE=sys_wwid IDNAME=naa.1 DEVNAME=/dev/sdc1 PVID=PvX PART=1\n"
    res = devices.rewrite_lvm_devices(text, two_disks())
    assert res.text == text
    assert "PV PvX" in res.unresolved[0] and "/dev/sdc1" in res.unresolved[0]


def test_fstab_entries_of_missing_disks_get_nofail() -> None:
    text = ("UUID=1111-root / ext4 errors=remount-ro 0 1\n"
            "UUID=9999-data  /srv/data   xfs   defaults   0 2\n"
            "/dev/sdc1 /backup ext4\n"
            "LABEL=san /san ext4 noauto 0 0\n"
            "nas:/export /mnt/nas nfs defaults 0 0\n"
            "tmpfs /tmp tmpfs defaults 0 0\n")
    known = {"UUID=1111-root"}
    res = devices.mark_missing_nofail(text, known.__contains__)
    lines = res.rewrite.text.splitlines()
    assert lines[0] == "UUID=1111-root / ext4 errors=remount-ro 0 1"
    assert lines[1] == "UUID=9999-data  /srv/data   xfs   defaults,nofail   0 2"
    assert lines[2] == "/dev/sdc1 /backup ext4 defaults,nofail"
    assert lines[3:] == text.splitlines()[3:]          # noauto, network, pseudo: as they are
    assert len(res.rewrite.changes) == 2 and not res.fatal
    again = devices.mark_missing_nofail(res.rewrite.text, known.__contains__)
    assert not again.rewrite.changed


def test_a_missing_boot_mount_is_fatal_not_nofail() -> None:
    res = devices.mark_missing_nofail("UUID=gone /usr ext4 defaults 0 1\n", lambda _s: False)
    assert not res.rewrite.changed
    assert res.fatal == ("fstab: /usr is on UUID=gone, which the VM will not have",)


def test_the_root_entry_is_left_to_the_kernel_line_check() -> None:
    """The initramfs mounts / from root=; fstab's / entry is only remounted by systemd."""
    res = devices.mark_missing_nofail("/dev/sda1 / ext4 defaults 0 1\n", lambda _s: False)
    assert not res.rewrite.changed and not res.fatal


def test_mount_unit_what_becomes_a_by_uuid_path() -> None:
    text = "[Mount]\nWhat=/dev/sda1\nWhere=/srv\n"
    res = devices.rewrite_unit(text, two_disks(), "/etc/systemd/system/srv.mount")
    assert res.text == "[Mount]\nWhat=/dev/disk/by-uuid/1111-root\nWhere=/srv\n"
    assert res.changes == ("/etc/systemd/system/srv.mount line 2: What=/dev/sda1 -> "
                           "What=/dev/disk/by-uuid/1111-root",)
    assert not devices.rewrite_unit(res.text, two_disks(), "x.mount").changed


def test_swap_unit_is_reported_by_file_and_line() -> None:
    text = "[Swap]\nWhat=/dev/sda2\n"
    res = devices.rewrite_unit(text, two_disks(), "/etc/systemd/system/dev-sda2.swap")
    assert res.text == text
    assert res.unresolved[0].startswith("/etc/systemd/system/dev-sda2.swap line 2: "
                                        "What=/dev/sda2")


MEMBER = FsIdentity("3f1e2d4c-5b6a-7988-0123-456789abcdef", None, "linux_raid_member")
ARRAY = "ARRAY /dev/md0 metadata=1.2 UUID=3f1e2d4c:5b6a7988:01234567:89abcdef\n"


def raid1() -> DeviceMap:
    return DeviceMap([DiskLayout(None, {1: MEMBER}), DiskLayout(None, {1: MEMBER})])


@pytest.mark.parametrize(("conf", "problem"), [
    (None, None),                                           # no mdadm.conf: scans everything
    (ARRAY, None),                                          # no DEVICE line: partitions
    ("DEVICE partitions\n" + ARRAY, None),
    ("DEVICE /dev/vd[ab]1\n" + ARRAY, None),
    ("DEVICE /dev/sd[ab]1\n" + ARRAY, "none of its members (/dev/vda1, /dev/vdb1) is selected"),
    ("DEVICE /dev/vda1\n" + ARRAY, "only /dev/vda1 of its members"),
    (ARRAY.replace("\n", " devices=/dev/sda1,/dev/sdb1\n"), "none of its members"),
    ("ARRAY /dev/md1 UUID=00000000:00000000:00000000:00000001\n", None),   # not converted
])
def test_md_assembly_model(conf: str | None, problem: str | None) -> None:
    problems = devices.md_assembly_problems(conf, raid1())
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0]


def test_a_glob_rewritten_by_p2v_passes_the_assembly_model() -> None:
    conf = "DEVICE /dev/sd[ab]1\n" + ARRAY
    assert devices.md_assembly_problems(conf, raid1())                 # before: fails
    fixed = devices.rewrite_mdadm_conf(conf, raid1()).text
    assert devices.md_assembly_problems(fixed, raid1()) == []


PV = FsIdentity("Y7vRSg-W9c8-J4b3-kIL3-l0I0-fFtQ-8bPHpX", None, "LVM2_member")
PVID = "Y7vRSgW9c8J4b3kIL3l0I0fFtQ8bPHpX"


def pv_disk() -> DeviceMap:
    return DeviceMap([DiskLayout(None, {1: ROOT, 2: PV})])


@pytest.mark.parametrize(("conf", "devices_file", "problem"), [
    (None, None, None),
    ('devices {\n filter = [ "a|^/dev/vda2$|", "r|.*|" ]\n}\n', None, None),
    ('devices {\n filter = [ "a|^/dev/sda2$|", "r|.*|" ]\n}\n', None,
     "rejected by lvm.conf filter"),
    ("devices {\n use_devicesfile = 0\n}\n", "IDTYPE=sys_wwid IDNAME=naa.1 DEVNAME=/dev/sda2\n",
     None),
    ('devices {\n global_filter = [ "r|/dev/vd.*|" ]\n}\n', None, "global_filter"),
    ('devices {\n # filter = [ "r|.*|" ]\n}\n', None, None),
    (None, f"IDTYPE=devname IDNAME=/dev/vda2 DEVNAME=/dev/vda2 PVID={PVID} PART=2\n", None),
    (None, f"IDTYPE=sys_wwid IDNAME=naa.1 DEVNAME=/dev/sda2 PVID={PVID} PART=2\n",
     "not in /etc/lvm/devices/system.devices"),
])
def test_lvm_pv_model(conf: str | None, devices_file: str | None, problem: str | None) -> None:
    problems = devices.lvm_pv_problems(conf, devices_file, pv_disk())
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0]


def test_p2v_rewrites_pass_the_lvm_model() -> None:
    conf = 'devices {\n filter = [ "a|^/dev/sda2$|", "r|.*|" ]\n}\n'
    dev = f"IDTYPE=sys_wwid IDNAME=naa.1 DEVNAME=/dev/sda2 PVID={PVID} PART=2\n"
    assert devices.lvm_pv_problems(conf, dev, pv_disk())
    new_conf = devices.rewrite_lvm_conf(conf, pv_disk()).text
    new_dev = devices.rewrite_lvm_devices(dev, pv_disk()).text
    assert devices.lvm_pv_problems(new_conf, new_dev, pv_disk()) == []


def test_dracut_storage_args_must_name_what_the_vm_has() -> None:
    luks = FsIdentity("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", None, "crypto_LUKS")
    dmap = DeviceMap([DiskLayout(None, {1: ROOT, 2: luks}), DiskLayout(None, {1: MEMBER})])
    line = ("linux /vmlinuz root=/dev/mapper/vg0-root rd.lvm.lv=vg0/root "
            "rd.luks.uuid=luks-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0 "
            "rd.md.uuid=3f1e2d4c:5b6a7988:01234567:89abcdef")
    assert devices.dracut_arg_problems(line, dmap, {"vg0-root"}) == []
    bad = line.replace("vg0/root", "vg1/root").replace("3f1e2d4c:", "00000000:")
    assert devices.dracut_arg_problems(bad, dmap, {"vg0-root"}) == [
        "kernel line: rd.lvm.lv=vg1/root names nothing on the converted disks",
        "kernel line: rd.md.uuid=00000000:5b6a7988:01234567:89abcdef names nothing on the "
        "converted disks"]


# LVM on md RAID1 (the xfsmd fixture's layout): the PV is the array, not a partition.
MD1_UUID = "41f09b3e:96ac27d8:5be1d04a:0c7f3e92"
MD1_MEMBER = FsIdentity("41f09b3e-96ac-27d8-5be1-d04a0c7f3e92", None, "linux_raid_member")
MD_CONF = "DEVICE partitions\nARRAY /dev/md1 metadata=1.2 UUID=" + MD1_UUID + "\n"
MD_ONLY = 'devices {\n filter = [ "a|^/dev/md[0-9]+$|", "r|.*|" ]\n}\n'


def pv_on_md(appliance_name: str = "/dev/md127") -> DeviceMap:
    """Two disks whose second partitions are the members of md1, the only PV."""
    member = {1: ROOT, 2: MD1_MEMBER}
    return DeviceMap([DiskLayout(None, member), DiskLayout(None, member)],
                     arrays=[MdContent(MD1_UUID, appliance_name, PV)])


@pytest.mark.parametrize(("conf", "devices_file", "md_conf", "problem"), [
    (MD_ONLY, None, MD_CONF, None),
    (None, None, MD_CONF, None),
    ('devices {\n filter = [ "r|^/dev/md|" ]\n}\n', None, MD_CONF,
     "LVM PV /dev/md1: rejected by lvm.conf filter"),
    # No ARRAY line: the array is known by the name it was assembled under.
    ('devices {\n global_filter = [ "r|^/dev/md127$|" ]\n}\n', None, None,
     "LVM PV /dev/md127: rejected by lvm.conf global_filter"),
    (None, f"IDTYPE=md_uuid IDNAME=md-uuid-41f09b3e DEVNAME=/dev/md1 PVID={PVID}\n", MD_CONF,
     None),
    (None, f"IDTYPE=devname IDNAME=/dev/md1 DEVNAME=/dev/md1 PVID={PVID}\n", MD_CONF, None),
    (None, "IDTYPE=devname IDNAME=/dev/md2 DEVNAME=/dev/md2 PVID=someotherpv\n", MD_CONF,
     "LVM PV /dev/md1: not in /etc/lvm/devices/system.devices"),
])
def test_lvm_pv_on_md_model(conf: str | None, devices_file: str | None, md_conf: str | None,
                            problem: str | None) -> None:
    problems = devices.lvm_pv_problems(conf, devices_file, pv_on_md(), md_conf)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0], problems


def test_a_pv_on_md_is_found_under_the_guests_name_for_the_array() -> None:
    assert devices.md_guest_name(MD1_UUID.replace(":", ""), MD_CONF) == "/dev/md1"
    assert devices.md_guest_name(MD1_UUID, "DEVICE partitions\n") is None
    # An array holding a filesystem (an md /boot) is no PV.
    boot = DeviceMap(pv_on_md().disks, arrays=[MdContent(MD1_UUID, "/dev/md1", ROOT)])
    assert devices.lvm_pv_problems('devices {\n filter = [ "r|.*|" ]\n}\n', None, boot,
                                   MD_CONF) == []


def test_storage_checks_name_what_will_work_on_virtio() -> None:
    lines = devices.storage_checks(MD_CONF, MD_ONLY, None, pv_on_md())
    assert lines == [
        "md array /dev/md1 assembles on virtio from /dev/vda2, /dev/vdb2 "
        "(mdadm.conf DEVICE partitions)",
        "LVM PV /dev/md1 will be used on virtio (accepted by lvm.conf filter)",
    ]
    # What does not work is a problem, never a check.
    glob = MD_CONF.replace("partitions", "/dev/sd[ab]2")
    assert devices.storage_checks(glob, 'devices {\n filter = [ "r|.*|" ]\n}\n', None,
                                  pv_on_md()) == []
    assert devices.storage_checks(None, None, None, DeviceMap([])) == []
