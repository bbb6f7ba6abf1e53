"""Device names by identity (pure): by-id links, matched to the source disk's serial/WWID,
inside mdadm.conf and LVM filter regexes; by-id links of virtual devices; dracut's args."""

from __future__ import annotations

import pytest

from p2v.fix.linux import devices
from p2v.fix.linux.devices import DeviceMap, DiskLayout, FsIdentity

ROOT = FsIdentity("u-root", None, "ext4")
PV = FsIdentity("Pv0000-1111", None, "LVM2_member")
MEMBER = FsIdentity("3f1e2d4c-5b6a-7988-0123-456789abcdef", None, "linux_raid_member")
SSD = DiskLayout("sda", {1: ROOT, 2: PV, 3: MEMBER},
                 ids=("S3Z1NB0K123456X", "t10.ATA     Samsung SSD 860     S3Z1NB0K123456X"))
HDD = DiskLayout("sdb", {1: MEMBER}, ids=("ZA1B2C3D", "naa.5000c500a1b2c3d4"))
NVME = DiskLayout("nvme0n1", {1: ROOT}, ids=("S4EWNX0M", "eui.0025388b91b2f5d1"))


@pytest.mark.parametrize(("path", "index"), [
    ("/dev/disk/by-id/ata-Samsung_SSD_860_EVO_500GB_S3Z1NB0K123456X", 0),
    ("/dev/disk/by-id/scsi-0ATA_Samsung_SSD_860_S3Z1NB0K123456X", 0),
    ("/dev/disk/by-id/scsi-SATA_ST2000DM008-2FR1_ZA1B2C3D", 1),
    ("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4", 1),
    ("/dev/disk/by-id/scsi-35000c500a1b2c3d4", 1),
    ("/dev/disk/by-id/nvme-eui.0025388b91b2f5d1", 2),
    ("/dev/disk/by-id/nvme-Samsung_SSD_970_EVO_Plus_1TB_S4EWNX0M", 2),
    ("/dev/disk/by-id/ata-OTHER_MODEL_Z9Z9Z9Z9", None),       # a disk not converted
    ("/dev/disk/by-path/pci-0000:00:1f.2-ata-1", None),       # no identity to match
])
def test_by_id_names_are_matched_by_the_source_disks_identity(path: str,
                                                              index: int | None) -> None:
    dmap = DeviceMap([SSD, HDD, NVME])
    parsed = dmap.parse(path)
    assert parsed is not None and dmap.disk_index(parsed) == index


def test_by_id_partition_resolves_to_the_filesystem_uuid() -> None:
    dmap = DeviceMap([SSD, HDD])
    assert dmap.resolve("/dev/disk/by-id/ata-Samsung_SSD_860_EVO_500GB_S3Z1NB0K123456X-part1"
                        ).new == "UUID=u-root"
    assert dmap.remap("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4-part1").new == "/dev/vdb1"


def test_one_disk_without_identities_keeps_the_old_rule() -> None:
    one = DeviceMap([DiskLayout(None, {1: ROOT})])
    assert one.resolve("/dev/disk/by-id/ata-ANY_SERIAL-part1").new == "UUID=u-root"


@pytest.mark.parametrize("path", [
    "/dev/disk/by-id/dm-name-vg0-root",
    "/dev/disk/by-id/dm-uuid-LVM-abcdefABCDEF0123456789",
    "/dev/disk/by-id/md-uuid-3f1e2d4c:5b6a7988:01234567:89abcdef",
    "/dev/disk/by-id/md-name-host:0",
    "/dev/disk/by-id/lvm-pv-uuid-Pv0000-1111",
    "/dev/disk/by-id/dm-uuid-CRYPT-LUKS2-0f1e2d3c4b5a69788796a5b4c3d2e1f0-cdata",
])
def test_by_id_links_of_virtual_devices_are_no_disk(path: str) -> None:
    one = DeviceMap([DiskLayout(None, {1: ROOT})])
    assert not one.bound(path) and one.resolve(path).new is None
    assert devices.rewrite_kernel_args(f"root={path}", one, "x").text == f"root={path}"


def test_root_by_lv_or_md_link_will_exist_when_the_lv_or_array_does() -> None:
    dmap = DeviceMap([SSD, HDD])
    assert devices.root_will_exist("/dev/disk/by-id/dm-name-vg0-root", dmap, set(), set(),
                                   {"vg0-root"})
    assert not devices.root_will_exist("/dev/disk/by-id/dm-name-vg1-root", dmap, set(), set(),
                                       {"vg0-root"})
    assert devices.root_will_exist("/dev/disk/by-id/md-uuid-3f1e2d4c:5b6a7988:01234567:89abcdef",
                                   dmap, set(), set(), set())
    assert not devices.root_will_exist("/dev/disk/by-id/md-uuid-00000000:5b6a7988:01234567:"
                                       "89abcdef", dmap, set(), set(), set())


def test_mdadm_conf_devices_by_id_become_virtio_names() -> None:
    text = ("DEVICE /dev/disk/by-id/ata-Samsung_SSD_860_EVO_500GB_S3Z1NB0K123456X-part3 "
            "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4-part1\n"
            "ARRAY /dev/md0 UUID=3f1e2d4c:5b6a7988:01234567:89abcdef\n")
    dmap = DeviceMap([SSD, HDD])
    assert devices.md_assembly_problems(text, dmap)      # by-id names match nothing on virtio
    res = devices.rewrite_mdadm_conf(text, dmap)
    assert res.text.splitlines()[0] == "DEVICE /dev/vda3 /dev/vdb1"
    assert devices.md_assembly_problems(res.text, dmap) == []


def test_lvm_filter_by_id_keeps_its_regex_tail() -> None:
    dmap = DeviceMap([SSD, HDD])
    conf = ('filter = [ "a|/dev/disk/by-id/ata-Samsung_SSD_860_EVO_500GB_S3Z1NB0K123456X-part.*|",'
            ' "a|^/dev/disk/by-id/wwn-0x5000c500a1b2c3d4$|", "r|.*|" ]\n')
    assert devices.lvm_pv_problems(conf, None, dmap)
    res = devices.rewrite_lvm_conf(conf, dmap)
    assert res.text == 'filter = [ "a|/dev/vda.*|", "a|^/dev/vdb$|", "r|.*|" ]\n'
    assert devices.lvm_pv_problems(res.text, None, dmap) == []


def test_dracut_vg_and_luks_name_args_are_checked_too() -> None:
    luks = FsIdentity("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", None, "crypto_LUKS")
    dmap = DeviceMap([DiskLayout(None, {1: ROOT, 2: luks})])
    good = "rd.lvm.vg=vg-sys rd.luks.name=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0=cryptroot"
    assert devices.dracut_arg_problems(good, dmap, {"vg--sys-root"}) == []
    bad = "rd.lvm.vg=vg rd.luks.name=00000000-4b5a-6978-8796-a5b4c3d2e1f0=cryptroot"
    assert devices.dracut_arg_problems(bad, dmap, {"vg--sys-root"}) == [
        "kernel line: rd.luks.name=00000000-4b5a-6978-8796-a5b4c3d2e1f0=cryptroot names "
        "nothing on the converted disks",
        "kernel line: rd.lvm.vg=vg names nothing on the converted disks"]
