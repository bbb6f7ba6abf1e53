"""The fix plan of a SAN-booted (multipath) guest, and of by-id / resume names (a fake
in-memory guest, as in test_plan; no libguestfs)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_plan import ALL_VIRTIO, BIOS_FILES, KVER, PIN, FakeSession, report

from p2v.errors import FixError
from p2v.fix.linux import devices, multipath
from p2v.fix.linux.check import check_guest
from p2v.fix.linux.devices import DeviceMap, DiskLayout, FsIdentity
from p2v.fix.linux.inspect import FsInfo
from p2v.fix.linux.plan import FixPlan, guest_device_map, plan_fix
from p2v.fix.options import FixOptions, read_inventory

WWID_A = "3600508b400105e210000900000490000"
WWID_B = "36001405f3a1b2c3d4e5f60718293a4b5"
BASE = DeviceMap([DiskLayout(None, {1: FsIdentity("u-boot", None, "ext4"),
                                    2: FsIdentity("u-root", None, "ext4"),
                                    3: FsIdentity("u-swap", None, "swap")})])
SAN_FILES = {
    **BIOS_FILES,
    "/etc/fstab": ("/dev/mapper/mpatha-part2 / ext4 errors=remount-ro 0 1\n"
                   "/dev/mapper/mpatha-part1 /boot ext4 defaults 0 2\n"
                   "/dev/mapper/mpatha-part3 none swap sw 0 0\n"
                   "/dev/mapper/mpathb-part1 /srv/san xfs defaults 0 2\n"),
    "/etc/default/grub": 'GRUB_CMDLINE_LINUX="resume=/dev/mapper/mpatha-part3"\n',
    "/boot/grub/grub.cfg": "\tlinux\t/boot/vmlinuz root=/dev/mapper/mpatha-part2 ro quiet\n",
    multipath.BINDINGS: f"mpatha {WWID_A}\nmpathb {WWID_B}\n",
    multipath.WWIDS: f"/{WWID_A}/\n/{WWID_B}/\n",
    multipath.CONF: "defaults {\n    user_friendly_names yes\n}\n",
    "/sbin/multipath": "",
}
DROPIN = "/etc/multipath/conf.d/p2v-virtio.conf"


def san_report() -> Any:
    rep = report(ALL_VIRTIO)
    rep.root = "/dev/sda2"          # where libguestfs found the root filesystem
    rep.filesystems = [FsInfo("/dev/sda1", "ext4", "u-boot", None, "/boot"),
                       FsInfo("/dev/sda2", "ext4", "u-root", None, "/"),
                       FsInfo("/dev/sda3", "swap", "u-swap", None, None),
                       FsInfo("/dev/sdb1", "ext4", "u-san", None, None)]
    return rep


def san_guest(files: dict[str, str]) -> tuple[Any, DeviceMap]:
    session = FakeSession(files)
    rep = san_report()
    return session, guest_device_map(session, rep.root, rep.grub_cfg,  # type: ignore[arg-type]
                                     BASE, FixOptions())


def apply(files: dict[str, str], plan: FixPlan, dmap: DeviceMap) -> dict[str, str]:
    """What apply_plan leaves: the files, and the grub config's kernel lines rewritten
    where the guest's tool (not run here) would have left the old root."""
    done = {**files, **plan.files}
    cfg = "/boot/grub/grub.cfg"
    done[cfg] = devices.rewrite_grub_cfg(done[cfg], dmap, cfg).text
    return done


def test_san_booted_guest_gets_uuids_a_blacklist_and_a_new_initramfs() -> None:
    session, dmap = san_guest(dict(SAN_FILES))
    assert dmap.maps["mpatha"] == 0 and dmap.maps["mpathb"] is None   # from the root
    plan = plan_fix(session, san_report(), dmap, PIN)
    fstab = plan.files["/etc/fstab"].splitlines()
    assert fstab[0].startswith("UUID=u-root / ext4")
    assert fstab[1].startswith("UUID=u-boot /boot ")
    assert fstab[2].startswith("UUID=u-swap none swap")
    # The data LUN was not converted: left as it is, reported, and nofail so the boot goes on.
    assert fstab[3] == "/dev/mapper/mpathb-part1 /srv/san xfs defaults,nofail 0 2"
    assert "left as it is: fstab line 4: /dev/mapper/mpathb-part1 (no disk of this guest " \
           "matches)" in plan.warnings
    assert not [w for w in plan.warnings if w.startswith("will not boot")]
    assert 'resume=UUID=u-swap' in plan.files["/etc/default/grub"]
    assert plan.files[DROPIN] == multipath.dropin_text() and plan.modes[DROPIN] == 0o644
    # bindings, wwids and multipath.conf are left as they are (the drop-in undoes it all).
    assert not {multipath.BINDINGS, multipath.WWIDS, multipath.CONF} & set(plan.files)
    rebuild = [c for c in plan.changes if c.kind == "rebuild-initramfs"]
    assert [c.target for c in rebuild] == [KVER] and DROPIN in rebuild[0].why
    assert plan.regenerate_grub
    done = apply(SAN_FILES, plan, dmap)
    assert "root=UUID=u-root" in done["/boot/grub/grub.cfg"]
    checks = check_guest(FakeSession(done), san_report(), dmap)  # type: ignore[arg-type]
    assert any("will exist on virtio" in c for c in checks)
    # A second run finds nothing left to do.
    session2, dmap2 = san_guest(done)
    again = plan_fix(session2, san_report(), dmap2, PIN)
    assert again.empty, again.changes


def test_a_root_map_nothing_places_is_reported_and_the_check_rejects_the_guest() -> None:
    files = dict(SAN_FILES)
    # fstab's / names partition 3 of the map, the root was found on partition 2: no evidence.
    files["/etc/fstab"] = "/dev/mapper/mpatha-part3 / ext4 defaults 0 1\n"
    files["/boot/grub/grub.cfg"] = "\tlinux\t/boot/vmlinuz root=/dev/mapper/mpatha-part3 ro\n"
    session, dmap = san_guest(files)
    assert dmap.maps["mpatha"] is None
    plan = plan_fix(session, san_report(), dmap, PIN)
    assert "left as it is: fstab line 1: /dev/mapper/mpatha-part3 (no disk of this guest " \
           "matches)" in plan.warnings
    with pytest.raises(FixError, match="root=/dev/mapper/mpatha-part3"):
        check_guest(FakeSession(apply(files, plan, dmap)), san_report(),  # type: ignore[arg-type]
                    dmap)


def test_boot_mount_on_a_map_left_behind_will_not_boot() -> None:
    files = dict(SAN_FILES)
    files["/etc/fstab"] += "/dev/mapper/mpathb-part1 /var xfs defaults 0 2\n"
    session, dmap = san_guest(files)
    plan = plan_fix(session, san_report(), dmap, PIN)
    assert "will not boot: fstab: /var is on /dev/mapper/mpathb-part1, which the VM will not " \
           "have" in plan.warnings
    with pytest.raises(FixError, match="/var is on /dev/mapper/mpathb-part1"):
        check_guest(FakeSession(apply(files, plan, dmap)), san_report(),  # type: ignore[arg-type]
                    dmap)


def test_the_inventory_places_the_maps_when_the_images_cannot() -> None:
    files = dict(SAN_FILES)
    files["/etc/fstab"] = "UUID=u-root / ext4 defaults 0 1\n" \
                          "/dev/mapper/mpathb-part1 /srv ext4 defaults 0 2\n"
    session = FakeSession(files)
    base = DeviceMap([DiskLayout("sda", BASE.disks[0].partitions),
                      DiskLayout("sdc", {1: FsIdentity("u-san", None, "ext4")})])
    opts = FixOptions(mpath_maps=(multipath.SourceMap("mpathb", WWID_B, ("sdc", "sdd")),))
    dmap = guest_device_map(session, "/dev/sda2", None, base, opts)  # type: ignore[arg-type]
    plan = plan_fix(session, san_report(), dmap, PIN)  # type: ignore[arg-type]
    assert "UUID=u-san /srv ext4 defaults 0 2" in plan.files["/etc/fstab"]


def test_leftover_multipath_files_without_the_tools_get_no_drop_in() -> None:
    files = {k: v for k, v in SAN_FILES.items() if k != "/sbin/multipath"}
    session, dmap = san_guest(files)
    plan = plan_fix(session, san_report(), dmap, PIN)
    assert DROPIN not in plan.files
    assert plan.files["/etc/fstab"].startswith("UUID=u-root /")


def test_multipath_installed_but_never_used_gets_no_drop_in() -> None:
    files = {**BIOS_FILES, multipath.CONF: "defaults {\n    user_friendly_names yes\n}\n",
             "/sbin/multipath": ""}
    session, dmap = san_guest(files)
    assert dmap.maps == {}
    plan = plan_fix(session, san_report(), dmap, PIN)
    assert DROPIN not in plan.files


def test_config_dir_of_the_guest_takes_the_drop_in() -> None:
    files = dict(SAN_FILES)
    files[multipath.CONF] = 'defaults {\n    config_dir "/etc/multipath.d"\n}\n'
    session, dmap = san_guest(files)
    plan = plan_fix(session, san_report(), dmap, PIN)
    assert "/etc/multipath.d/p2v-virtio.conf" in plan.files
    assert any(c.kind == "rebuild-initramfs" for c in plan.changes)


# ------------------------------------------------------------- audit: by-id and resume names

TWO = [DiskLayout("sda", {1: FsIdentity("u-root", None, "ext4"),
                          2: FsIdentity("u-swap", None, "swap")},
                  ids=("S3Z1NB0K123456X", "t10.ATA     Samsung SSD 860     S3Z1NB0K123456X")),
       DiskLayout("sdb", {1: FsIdentity("u-data", None, "xfs")},
                  ids=("ZA1B2C3D", "naa.5000c500a1b2c3d4"))]


def test_by_id_names_of_several_disks_follow_each_disk_by_its_serial_or_wwn() -> None:
    files = {**BIOS_FILES,
             "/etc/fstab": (
                 "/dev/disk/by-id/ata-Samsung_SSD_860_EVO_500GB_S3Z1NB0K123456X-part1 / ext4 "
                 "defaults 0 1\n"
                 "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4-part1 /data xfs defaults 0 2\n"
                 "/dev/disk/by-id/scsi-SATA_ST2000DM008_ZA1B2C3D-part1 /data2 xfs defaults 0 2\n"
                 "/dev/disk/by-id/ata-OTHER_DISK_Z9Z9Z9Z9-part1 /old ext4 defaults 0 2\n"),
             "/etc/crypttab": "cswap /dev/disk/by-id/ata-Samsung_SSD_860_EVO_500GB_"
                              "S3Z1NB0K123456X-part2 /dev/urandom swap\n",
             "/etc/initramfs-tools/conf.d/resume": "RESUME=/dev/disk/by-id/scsi-35000c500a1b2c3d4"
                                                   "-part1\n",
             "/etc/default/grub": 'GRUB_CMDLINE_LINUX="resume=/dev/disk/by-id/wwn-0x5000c500a1'
                                  'b2c3d4-part1"\n'}
    session = FakeSession(files)
    rep = report(ALL_VIRTIO)
    rep.filesystems.append(FsInfo("/dev/sdb1", "xfs", "u-data", None, "/data"))
    opts = FixOptions(disk_ids=tuple(d.ids for d in TWO))
    dmap = guest_device_map(session, rep.root, rep.grub_cfg, DeviceMap([  # type: ignore[arg-type]
        DiskLayout(d.source_name, d.partitions) for d in TWO]), opts)
    plan = plan_fix(session, rep, dmap, PIN)  # type: ignore[arg-type]
    fstab = plan.files["/etc/fstab"].splitlines()
    assert fstab[0] == "UUID=u-root / ext4 defaults 0 1"
    assert fstab[1] == "UUID=u-data /data xfs defaults 0 2"
    assert fstab[2] == "UUID=u-data /data2 xfs defaults 0 2"
    # a disk that was not converted: reported by line, marked nofail
    assert fstab[3].startswith("/dev/disk/by-id/ata-OTHER_DISK_Z9Z9Z9Z9-part1 /old ext4 "
                               "defaults,nofail")
    assert any(w.startswith("left as it is: fstab line 4: /dev/disk/by-id/ata-OTHER")
               for w in plan.warnings)
    assert plan.files["/etc/crypttab"] == "cswap UUID=u-swap /dev/urandom swap\n"
    assert plan.files["/etc/initramfs-tools/conf.d/resume"] == "RESUME=UUID=u-data\n"
    assert 'resume=UUID=u-data' in plan.files["/etc/default/grub"]


def test_by_id_links_of_virtual_devices_are_not_taken_for_the_disk() -> None:
    # One disk: the old rule "one disk, so a by-id name means it" must not turn an LV's,
    # an md array's or a LUKS map's by-id link into /dev/vda.
    one = DeviceMap([DiskLayout(None, {1: FsIdentity("u-root", None, "ext4")})])
    text = ("/dev/disk/by-id/dm-name-vg0-data /data ext4 defaults 0 2\n"
            "/dev/disk/by-id/md-uuid-0a1b2c3d:4e5f6071:8293a4b5:c6d7e8f9 /srv ext4 defaults 0 2\n"
            "/dev/disk/by-id/dm-uuid-CRYPT-LUKS2-abcd-cdata /sec ext4 defaults 0 2\n")
    res = devices.rewrite_fstab(text, one)
    assert res.text == text and not res.unresolved


def test_a_by_id_name_of_another_disk_is_not_taken_for_the_one_converted() -> None:
    one = DeviceMap([TWO[0]])
    assert one.resolve("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4-part1").new is None
    assert one.resolve("/dev/disk/by-id/ata-Samsung_SSD_860_EVO_500GB_S3Z1NB0K123456X-part1"
                       ).new == "UUID=u-root"


def test_uswsusp_resume_device_is_renamed_and_an_unknown_one_reported() -> None:
    files = {**BIOS_FILES, "/etc/uswsusp.conf": "resume device = /dev/sda2\n",
             "/etc/initramfs-tools/conf.d/resume": "RESUME=/dev/sdc2\n"}
    plan = plan_fix(FakeSession(files), report(ALL_VIRTIO), BASE_ONE, PIN)  # type: ignore[arg-type]
    assert plan.files["/etc/uswsusp.conf"] == "resume device = /dev/vda2\n"
    assert "left as it is: /etc/initramfs-tools/conf.d/resume line 1: /dev/sdc2 (no disk of " \
           "this guest matches)" in plan.warnings
    assert any(c.kind == "rebuild-initramfs" and "/etc/uswsusp.conf" in c.why
               for c in plan.changes)


BASE_ONE = DeviceMap([DiskLayout(None, {1: FsIdentity("u-root", None, "ext4"),
                                        2: FsIdentity("u-swap", None, "swap")})])


def test_the_inventory_gives_each_disk_its_serial_wwid_and_multipath_maps() -> None:
    doc = {"schema": "p2v.inventory/1",
           "disks": [{"name": "sda", "path": "/dev/sda", "serial": "S1X",
                      "wwid": "naa.5000c500a1b2c3d4"},
                     {"name": "sdb", "path": "/dev/sdb"}],
           "dm": [{"device": "dm-0", "name": "mpatha", "uuid": f"mpath-{WWID_A}",
                   "kind": "multipath", "slaves": ["sda", "sdb"]}]}
    facts = read_inventory(json.dumps(doc))
    assert facts.disk_ids == (("S1X", "naa.5000c500a1b2c3d4"), ())
    assert facts.mpath_maps == (multipath.SourceMap("mpatha", WWID_A, ("sda", "sdb")),)


class FakeRaw:
    """A guestfs handle that mounts only appliance devices, as libguestfs does."""

    def __init__(self, mounts: dict[str, str]) -> None:
        self.mounts = mounts
        self.mounted: list[tuple[str, str]] = []

    def inspect_get_mountpoints(self, root: str) -> dict[str, str]:
        return self.mounts

    def mount_ro(self, device: str, mountpoint: str) -> None:
        if not device.startswith("/dev/sd"):
            raise RuntimeError(f"mount_ro: {device}: No such file or directory")
        self.mounted.append((device, mountpoint))


def test_fstab_names_libguestfs_cannot_mount_fall_back_to_root_and_the_resolver() -> None:
    from p2v.fix.session import GuestSession
    # libguestfs hands back a SAN guest's fstab names as they are: nothing would be mounted.
    raw = FakeRaw({"/": "/dev/mapper/mpatha-part2", "/boot": "/dev/mapper/mpatha-part1",
                   "/srv": "/dev/mapper/mpathb-part1"})
    session = GuestSession(raw)
    session.resolve_spec = {"/dev/mapper/mpatha-part1": "/dev/sda1"}.get
    session.mount_guest("/dev/sda2", readonly=True)
    assert raw.mounted == [("/dev/sda2", "/"), ("/dev/sda1", "/boot")]   # /srv: not converted
