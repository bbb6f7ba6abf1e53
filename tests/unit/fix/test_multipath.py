"""Multipath (pure): the source's maps read from its files, placed on the converted disks,
and every name of a map rewritten like any other hardware-bound device name."""

from __future__ import annotations

import pytest

from p2v.fix.linux import devices, multipath
from p2v.fix.linux.devices import DeviceMap, DiskLayout, FsIdentity
from p2v.fix.linux.multipath import SourceMap
from p2v.model import DmDevice

WWID_A = "3600508b400105e210000900000490000"     # the boot LUN
WWID_B = "36001405f3a1b2c3d4e5f60718293a4b5"     # a data LUN, not converted
BOOT = FsIdentity("u-boot", None, "ext4")
ROOT = FsIdentity("u-root", None, "ext4")
SWAP = FsIdentity("u-swap", None, "swap")
PV = FsIdentity("Pv1aaa-bbbb-cccc-dddd-eeee-ffff-000000", None, "LVM2_member")

BINDINGS = f"""\
# Multipath bindings, Version : 1.0
# NOTE: this file is automatically maintained by the multipath program.
mpatha {WWID_A}
mpathb {WWID_B}
"""
WWIDS = f"""\
# Valid WWIDs:
/{WWID_A}/
/{WWID_B}/
/36005076801810523100000000000000a/
"""
CONF = f"""\
defaults {{
    user_friendly_names yes
    find_multipaths yes
}}
blacklist
{{
    devnode "^(ram|loop|fd|md|sr)[0-9]*"
}}
multipaths {{
    multipath {{
        wwid   "{WWID_A}"   # the boot LUN
        alias  sanroot
    }}
}}
"""


def one_lun(maps: dict[str, int | None] | None = None) -> DeviceMap:
    disks = [DiskLayout(None, {1: BOOT, 2: ROOT, 3: SWAP})]
    return DeviceMap(disks, {"mpatha": 0, WWID_A: 0, "mpathb": None, WWID_B: None}
                     if maps is None else maps)


def test_bindings_wwids_and_conf_are_read() -> None:
    assert multipath.parse_bindings(BINDINGS) == {"mpatha": WWID_A, "mpathb": WWID_B}
    assert multipath.parse_wwids(WWIDS) == [WWID_A, WWID_B, "36005076801810523100000000000000a"]
    conf = multipath.parse_conf(CONF)
    assert conf.aliases == {"sanroot": WWID_A}
    assert conf.config_dir == "/etc/multipath/conf.d"
    assert multipath.parse_conf('defaults {\n config_dir "/etc/mp.d"\n}\n').config_dir == \
        "/etc/mp.d"


def test_known_maps_are_aliases_and_wwids() -> None:
    names = multipath.known_maps(BINDINGS, WWIDS, CONF)
    assert names["mpatha"] == names["sanroot"] == names[WWID_A] == WWID_A
    assert names["mpathb"] == WWID_B
    assert "36005076801810523100000000000000a" in names     # a map named by its WWID
    assert multipath.known_maps(None, None, None) == {}


@pytest.mark.parametrize(("path", "new"), [
    ("/dev/mapper/mpatha-part2", "UUID=u-root"),        # kpartx -p -part (newer)
    ("/dev/mapper/mpatha2", "UUID=u-root"),             # kpartx without delimiter (EL7)
    ("/dev/mapper/mpathap2", "UUID=u-root"),            # kpartx -p p
    (f"/dev/mapper/{WWID_A}p1", "UUID=u-boot"),         # no user_friendly_names
    (f"/dev/mapper/{WWID_A}-part3", "UUID=u-swap"),
    ("/dev/mapper/mpatha", "/dev/vda"),                 # the whole LUN
    ("/dev/mpath/mpatha", "/dev/vda"),                  # EL5 style
    ("/dev/disk/by-id/dm-name-mpatha-part1", "UUID=u-boot"),
    (f"/dev/disk/by-id/dm-uuid-part2-mpath-{WWID_A}", "UUID=u-root"),
    (f"/dev/disk/by-id/dm-uuid-mpath-{WWID_A}", "/dev/vda"),
    (f"/dev/disk/by-id/scsi-{WWID_A}-part2", "UUID=u-root"),   # one path's own by-id name
    (f"/dev/disk/by-id/wwn-0x{WWID_A[1:]}-part1", "UUID=u-boot"),
])
def test_every_name_of_a_placed_map_resolves(path: str, new: str) -> None:
    dmap = one_lun()
    assert dmap.bound(path)
    assert dmap.resolve(path).new == new


def test_names_of_an_unplaced_map_are_bound_but_unresolved() -> None:
    dmap = one_lun()
    for path in ("/dev/mapper/mpathb-part1", f"/dev/disk/by-id/dm-uuid-mpath-{WWID_B}"):
        assert dmap.bound(path) and dmap.resolve(path).new is None


def test_lvs_and_other_maps_are_not_multipath() -> None:
    dmap = one_lun()
    for path in ("/dev/mapper/vg0-root", "/dev/mapper/cryptroot", "/dev/mapper/mpathz"):
        assert not dmap.bound(path)


FSTAB = """\
/dev/mapper/mpatha-part2 /        ext4 errors=remount-ro 0 1
/dev/mapper/mpatha-part1 /boot    ext4 defaults 0 2
/dev/mapper/mpatha-part3 none     swap sw 0 0
/dev/mapper/mpathb-part1 /srv/san xfs  defaults 0 2
/dev/mapper/vg0-data     /data    ext4 defaults 0 2
"""


def test_fstab_on_multipath_maps_gets_uuids_and_the_lun_left_behind_is_reported() -> None:
    res = devices.rewrite_fstab(FSTAB, one_lun())
    lines = res.text.splitlines()
    assert lines[0].startswith("UUID=u-root /        ext4")
    assert lines[1].startswith("UUID=u-boot /boot")
    assert lines[2].startswith("UUID=u-swap none")
    assert lines[3] == FSTAB.splitlines()[3]
    assert lines[4] == FSTAB.splitlines()[4]
    assert res.unresolved == ("fstab line 4: /dev/mapper/mpathb-part1 (no disk of this guest "
                              "matches)",)
    assert not devices.rewrite_fstab(res.text, one_lun()).changed


def test_kernel_args_crypttab_resume_and_units_follow_the_map() -> None:
    dmap = one_lun()
    args = devices.rewrite_kernel_args(
        "linux /vmlinuz root=/dev/mapper/mpatha-part2 resume=/dev/mapper/mpatha-part3 ro",
        dmap, "grub.cfg")
    assert args.text == "linux /vmlinuz root=UUID=u-root resume=UUID=u-swap ro"
    crypt = devices.rewrite_crypttab("cryptdata /dev/mapper/mpatha-part1 none luks\n", dmap)
    assert crypt.text == "cryptdata UUID=u-boot none luks\n"
    resume = devices.rewrite_resume("RESUME=/dev/mapper/mpatha-part3\n", dmap, "resume")
    assert resume.text == "RESUME=UUID=u-swap\n"
    unit = devices.rewrite_unit("[Mount]\nWhat=/dev/mapper/mpatha-part1\n", dmap, "boot.mount")
    assert unit.text == "[Mount]\nWhat=/dev/disk/by-uuid/u-boot\n"
    cfg = devices.rewrite_grub_cfg("\tlinux /vmlinuz root=/dev/mapper/mpathb-part2 ro\n", dmap,
                                   "/boot/grub/grub.cfg")
    assert cfg.unresolved == ("/boot/grub/grub.cfg line 1: root=/dev/mapper/mpathb-part2 (no "
                              "disk of this guest matches)",)


LVM_CONF = 'devices {\n  filter = [ "a|/dev/mapper/mpath.*|", "r|.*|" ]\n}\n'


def lvm_guest() -> DeviceMap:
    return DeviceMap([DiskLayout(None, {1: BOOT, 2: PV})], {"mpatha": 0, WWID_A: 0})


def test_lvm_filter_accepting_only_multipath_maps_is_opened_to_virtio() -> None:
    dmap = lvm_guest()
    assert devices.lvm_pv_problems(LVM_CONF, None, dmap) == [
        "LVM PV /dev/vda2: rejected by lvm.conf filter"]
    res = devices.rewrite_lvm_conf(LVM_CONF, dmap)
    assert 'filter = [ "a|/dev/vd.*|", "r|.*|" ]' in res.text
    assert devices.lvm_pv_problems(res.text, None, dmap) == []
    named = devices.rewrite_lvm_conf('filter = [ "a|^/dev/mapper/mpatha-part2$|", "r|.*|" ]\n',
                                     dmap)
    assert named.text == 'filter = [ "a|^/dev/vda2$|", "r|.*|" ]\n'


def test_lvm_devices_file_entry_by_multipath_uuid_is_found_by_its_pvid() -> None:
    dmap = lvm_guest()
    pvid = (PV.uuid or "").replace("-", "")
    text = f"VERSION=1.1.2\nIDTYPE=mpath_uuid IDNAME=part2-mpath-{WWID_A} " \
           f"DEVNAME=/dev/mapper/mpatha2 PVID={pvid} PART=2\n"
    assert devices.lvm_pv_problems(None, text, dmap)     # as it is, LVM ignores the PV
    res = devices.rewrite_lvm_devices(text, dmap)
    assert res.text.splitlines()[1] == \
        f"IDTYPE=devname IDNAME=/dev/vda2 DEVNAME=/dev/vda2 PVID={pvid} PART=2"
    assert devices.lvm_pv_problems(None, res.text, dmap) == []


def test_maps_are_placed_by_the_inventory_then_by_wwid_never_by_position() -> None:
    names = multipath.known_maps(BINDINGS, None, None)
    disks = [DiskLayout("sda", {1: ROOT}), DiskLayout("sdc", {1: BOOT})]
    # The inventory saw mpatha over sda and sdb (two paths), mpathb over sdc and sdd.
    inv = (SourceMap("mpatha", WWID_A, ("sda", "sdb")), SourceMap("mpathb", WWID_B, ("sdd",
                                                                                    "sdc")))
    placed = multipath.place_maps(names, DeviceMap(disks), inv)
    assert placed == {"mpatha": 0, "mpathb": 1, WWID_A: 0, WWID_B: 1}
    # No inventory maps, but the disks' WWIDs (sysfs naa.HEX) are known.
    by_id = [DiskLayout("sdc", {1: BOOT}, ids=("naa." + WWID_B[1:],))]
    assert multipath.place_maps(names, DeviceMap(by_id)) == {
        "mpatha": None, "mpathb": 0, WWID_A: None, WWID_B: 0}
    # Nothing tells: one disk, two maps: neither is guessed to be it.
    assert set(multipath.place_maps(names, DeviceMap([DiskLayout(None, {1: ROOT})])).values()) \
        == {None}


def test_the_inventory_dm_table_gives_the_maps() -> None:
    dm = [DmDevice("dm-0", "mpatha", f"mpath-{WWID_A}", "multipath", ("sda", "sdb")),
          DmDevice("dm-1", "mpatha-part1", f"part1-mpath-{WWID_A}", "other", ("dm-0",)),
          DmDevice("dm-2", "vg0-root", "LVM-abc", "lvm", ("dm-1",))]
    assert multipath.maps_from_dm(dm) == (SourceMap("mpatha", WWID_A, ("sda", "sdb")),)


def test_the_root_found_on_the_images_places_its_map() -> None:
    names = multipath.known_maps(BINDINGS, None, None)
    dmap = DeviceMap([DiskLayout(None, {1: BOOT}), DiskLayout(None, {1: BOOT, 2: ROOT})])
    # fstab says / is mpatha partition 2; libguestfs found the root on /dev/sdb2.
    hints = multipath.root_hints(names, dmap, ["/dev/mapper/mpatha-part2"], "/dev/sdb2")
    assert hints == {"mpatha": 1}
    assert multipath.place_maps(names, dmap, (), hints)["mpatha"] == 1
    # Another partition number is no evidence; nor is a root on an LV.
    assert multipath.root_hints(names, dmap, ["/dev/mapper/mpatha-part1"], "/dev/sdb2") == {}
    assert multipath.root_hints(names, dmap, ["/dev/mapper/vg0-root"], "/dev/vg0/root") == {}


def test_the_pv_found_on_the_images_places_its_map() -> None:
    names = multipath.known_maps(BINDINGS, None, None)
    dmap = DeviceMap([DiskLayout(None, {1: BOOT}), DiskLayout(None, {1: BOOT, 2: PV})])
    pvid = (PV.uuid or "").replace("-", "")
    text = f"IDTYPE=mpath_uuid IDNAME=mpath-{WWID_B} DEVNAME=/dev/mapper/mpathb PVID={pvid}\n"
    assert multipath.pv_hints(names, dmap, text) == {"mpathb": 1, WWID_B: 1}


def test_the_drop_in_goes_to_config_dir_and_blacklists_only_virtual_disks() -> None:
    assert multipath.dropin_path(None) == "/etc/multipath/conf.d/p2v-virtio.conf"
    assert multipath.dropin_path('defaults {\n config_dir /etc/mp.d/\n}\n') == \
        "/etc/mp.d/p2v-virtio.conf"
    text = multipath.dropin_text()
    assert 'devnode "^vd[a-z]+"' in text and 'vendor "QEMU"' in text
    assert text.count("{") == text.count("}")


def test_mdadm_device_glob_over_multipath_maps_selects_their_virtio_names() -> None:
    member = FsIdentity("3f1e2d4c-5b6a-7988-0123-456789abcdef", None, "linux_raid_member")
    dmap = DeviceMap([DiskLayout(None, {1: member}), DiskLayout(None, {1: member})],
                     {"mpatha": 0, "mpathb": 1})
    text = "DEVICE /dev/mapper/mpath*\nARRAY /dev/md0 UUID=3f1e2d4c:5b6a7988:01234567:89abcdef\n"
    assert devices.md_assembly_problems(text, dmap)
    res = devices.rewrite_mdadm_conf(text, dmap)
    assert res.text.splitlines()[0] == "DEVICE /dev/vda /dev/vda1 /dev/vdb /dev/vdb1"
    assert devices.md_assembly_problems(res.text, dmap) == []
