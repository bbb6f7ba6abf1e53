"""p2v fix on a mirrored legacy server with LVM on md RAID1 and an XFS root, proven both
ways with real boots: as copied it fails on virtio, after `p2v fix` it boots there with its
hostname, its root on the LV and its static address.

`xfsmd` (Debian 12, BIOS, MBR on two SATA disks, grub-pc in both MBRs): /boot is ext4 on
/dev/md0 (sda1 + sdb1); /dev/md1 (sda2 + sdb2) is the only PV of vg0, whose LVs are an XFS
root and swap. mdadm.conf scans `partitions`, lvm.conf's filter accepts md arrays only.
Nothing there names the old bus, so the fix must rebuild the initramfs and leave the storage
configuration alone, and its honest storage model must accept the layout: both arrays
assembled from all their members under mdadm.conf, the PV on md1 used under the filter.

All `slow`: the fixture is not part of `make fixtures` (built here on first use, then
cached), each boot costs minutes under TCG, and the failing one waits out initramfs-tools'
root-device timeout.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_fix import assert_boots_with_its_network, changes, sha256
from test_fix_debian_releases import fix_and_boot, overlays, unfixed_on_virtio

from p2v.demo.image import FixtureImage
from p2v.errors import ExitCode
from p2v.fix.session import open_guest
from p2v.verify.boot import BootOptions, verify_boot
from p2v.verify.console import next_step

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT_LV = "/dev/mapper/vg0-root"
MDADM_CONF = "/etc/mdadm/mdadm.conf"


def test_lvm_on_md_xfs_root_fails_on_virtio_before_fix(xfsmd_image: FixtureImage) -> None:
    verdict = unfixed_on_virtio(xfsmd_image)
    print(f"unfixed: {verdict.reason} in {verdict.elapsed_s} s; {verdict.evidence[:4]}")
    assert verdict.booted is False
    # No virtio_blk in its initramfs: no disk, so no array, no VG and no root LV. The
    # console names the LV (lvm-pv-missing); mdadm's own line moves the advice to md.
    assert verdict.reason == "lvm-pv-missing", (verdict.reason, verdict.evidence)
    assert next_step(verdict.reason, verdict.evidence).startswith("mdadm found none"), \
        verdict.evidence
    assert any(ROOT_LV in line or "vg0" in line for line in verdict.evidence), verdict.evidence


def test_lvm_on_md_xfs_root_boots_on_virtio_after_fix(
    xfsmd_image: FixtureImage, tmp_path: Path
) -> None:
    fixed = fix_and_boot(xfsmd_image, tmp_path)
    first = fixed.first
    print(f"fix {fixed.first_s:.0f} s; checks {fixed.first['checks']}; "
          f"boot {fixed.verdict and fixed.verdict.elapsed_s} s")
    assert first["inspection"]["kernels"][0]["boots_on_virtio"] is False
    root = [f for f in first["inspection"]["filesystems"] if f["mountpoint"] == "/"]
    assert [f["type"] for f in root] == ["xfs"], first["inspection"]["filesystems"]
    # The storage configuration names nothing bus-bound: it is left alone. (The grub
    # defaults' GRUB_DISABLE_LINUX_UUID=true becomes false and grub.cfg is regenerated, as
    # on every fixture: a root given by kernel name would not survive.)
    assert any(c["kind"] == "rebuild-initramfs" for c in first["changes"])
    touched = {target for _, target in changes(first)}
    assert not touched & {"/etc/mdadm/mdadm.conf", "/etc/lvm/lvm.conf", "/etc/fstab",
                          "/etc/lvm/devices/system.devices"}, first["changes"]
    # The honest model accepted the layout, and said why.
    checks = first["checks"]
    assert "md array /dev/md0 assembles on virtio from /dev/vda1, /dev/vdb1 " \
           "(mdadm.conf DEVICE partitions)" in checks, checks
    assert "md array /dev/md1 assembles on virtio from /dev/vda2, /dev/vdb2 " \
           "(mdadm.conf DEVICE partitions)" in checks, checks
    assert "LVM PV /dev/md1 will be used on virtio (accepted by lvm.conf filter)" in checks, \
        checks
    assert not [w for w in first["warnings"] if "will not boot" in w], first["warnings"]
    assert_boots_with_its_network(fixed)
    assert fixed.verdict is not None and fixed.verdict.root == ROOT_LV
    assert sha256(xfsmd_image.disks[0]) == fixed.cached_hash


# Debian's mdadm.conf as some installers and admins leave it: members chosen by the SATA
# controller's by-path names, which no disk has on virtio (the controller is gone).
BY_PATH_DEVICE = "DEVICE /dev/disk/by-path/pci-0000:00:1f.2-ata-*"


def test_a_guest_the_check_rejects_is_refused_and_really_does_not_boot(
    xfsmd_image: FixtureImage, tmp_path: Path
) -> None:
    """The honest check, proven by a real boot: an array whose members mdadm.conf selects by
    the old controller's paths. The fix does all it can (virtio drivers in the initramfs,
    the same mdadm.conf in it), then refuses to call the guest fixed and says why; the boot
    on virtio then fails as it said, on the array not assembled."""
    disks = overlays(xfsmd_image, tmp_path)
    with open_guest(disks, fmt="qcow2") as session:
        session.mount_guest(session.inspect())
        conf = session.read_text(MDADM_CONF)
        assert "DEVICE partitions" in conf, conf
        session.write_text(MDADM_CONF, conf.replace("DEVICE partitions", BY_PATH_DEVICE))
    proc = subprocess.run(
        [sys.executable, "-m", "p2v.cli", "fix", "--mac",
         f"{xfsmd_image.nic_name}={xfsmd_image.mac}", *map(str, disks)],
        capture_output=True, text=True, timeout=1500)
    print(proc.stdout[-3000:], proc.stderr[-2000:])
    assert proc.returncode == ExitCode.FAILURE, (proc.returncode, proc.stderr)
    error = [line for line in proc.stderr.splitlines() if line.startswith("p2v: error:")]
    assert len(error) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "md array /dev/md1" in error[0] and "mdadm.conf" in error[0], error
    assert "pci-0000:00:1f.2-ata-*" in error[0], error
    assert "checked:" not in proc.stdout and "guest caps" not in proc.stdout, proc.stdout

    verdict = verify_boot(disks, BootOptions(bus="virtio", macs=(xfsmd_image.mac,),
                                             timeout=1800))
    print(f"rejected guest: {verdict.reason} in {verdict.elapsed_s} s; {verdict.evidence[:6]}")
    assert verdict.booted is False, verdict
    # The console names the missing LV; mdadm's "No devices listed in conf file were
    # found" moves the advice to mdadm.conf's DEVICE lines, where the cause is.
    assert verdict.reason == "lvm-pv-missing", (verdict.reason, verdict.evidence)
    step = next_step(verdict.reason, verdict.evidence)
    assert step.startswith("mdadm found none") and "DEVICE lines" in step, verdict.evidence
