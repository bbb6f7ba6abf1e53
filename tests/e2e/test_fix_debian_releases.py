"""p2v fix on Debian 11 and 13 servers beside the Debian 12 fixtures, each proven both ways
with real boots: as copied it fails on virtio, after `p2v fix` it boots there with its
hostname and static address.

- `bullseye`: root on md RAID1 across two disks, mdadm.conf choosing the members with a glob
  over the old names (`DEVICE /dev/sd[ab]1`), ifupdown, eth0 pinned by MAC;
- `trixie`: GPT on BIOS (bios_grub), root on the btrfs subvolume @ (`rootflags=subvol=@`,
  fstab `subvol=@`), systemd-networkd with a `.network` matched by `MACAddress=`.

All `slow`: the fixtures are not part of `make fixtures` (built here on first use, then
cached), each boot costs minutes under TCG, and the failing one waits out initramfs-tools'
root-device timeout.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_fix import Fixed, assert_boots_with_its_network, changes, p2v_fix, sha256

from p2v.demo.image import FixtureImage
from p2v.verify.boot import BootOptions, BootVerdict, verify_boot
from p2v.verify.console import next_step

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _image(variant: str) -> FixtureImage:
    from p2v.demo.fixtures import build_fixture

    return build_fixture(variant)


@pytest.fixture(scope="session")
def bullseye_image() -> FixtureImage:
    """Debian 11, md RAID1 root over two disks (hostname p2v-bullseye, NIC eth0)."""
    return _image("bullseye")


@pytest.fixture(scope="session")
def trixie_image() -> FixtureImage:
    """Debian 13, btrfs subvolume root, systemd-networkd (hostname p2v-trixie, enp0s25)."""
    return _image("trixie")


def overlays(image: FixtureImage, directory: Path) -> list[Path]:
    """A qcow2 overlay of every disk of the server (the cached images are never written)."""
    paths = []
    for index, disk in enumerate(image.disks):
        path = directory / f"{image.variant}-{index}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        str(disk), str(path)], check=True)
        paths.append(path)
    return paths


def unfixed_on_virtio(image: FixtureImage) -> BootVerdict:
    # verify_boot boots throwaway overlays of the images; initramfs-tools waits for the
    # root device for minutes under TCG before it gives up.
    verdict = verify_boot(list(image.disks), BootOptions(bus="virtio", macs=(image.mac,),
                                                         timeout=1800))
    # Shown by `pytest -rP`: which cause the console named, and the advice given with it.
    print(f"{image.variant} unfixed on virtio: reason={verdict.reason} "
          f"next_step={next_step(verdict.reason, verdict.evidence)!r} "
          f"evidence={verdict.evidence!r}")
    return verdict


def fix_and_boot(image: FixtureImage, directory: Path) -> Fixed:
    cached = sha256(image.disks[0])
    disks = overlays(image, directory)
    mac = f"{image.nic_name}={image.mac}"
    first, first_s = p2v_fix("--mac", mac, *map(str, disks))
    fixed = Fixed(image, disks[0], cached, first, first_s)
    fixed.verdict = verify_boot(disks, BootOptions(bus="virtio", macs=(image.mac,),
                                                   timeout=1200))
    return fixed


def test_bullseye_md_raid1_fails_on_virtio_before_fix(bullseye_image: FixtureImage) -> None:
    verdict = unfixed_on_virtio(bullseye_image)
    assert verdict.booted is False
    assert verdict.reason in ("md-not-assembled", "root-device-missing"), \
        (verdict.reason, verdict.evidence)
    assert any("/dev/md0" in line for line in verdict.evidence), verdict.evidence


def test_bullseye_md_raid1_boots_on_virtio_after_fix(
    bullseye_image: FixtureImage, tmp_path: Path
) -> None:
    fixed = fix_and_boot(bullseye_image, tmp_path)
    first = fixed.first
    assert first["inspection"]["kernels"][0]["boots_on_virtio"] is False
    assert ("edit", "/etc/mdadm/mdadm.conf") in changes(first), first["changes"]
    assert any(c["kind"] == "rebuild-initramfs" for c in first["changes"])
    assert_boots_with_its_network(fixed)
    assert fixed.verdict is not None and (fixed.verdict.root or "").startswith("/dev/md")
    assert sha256(bullseye_image.disks[0]) == fixed.cached_hash


def test_trixie_btrfs_subvolume_fails_on_virtio_before_fix(trixie_image: FixtureImage) -> None:
    verdict = unfixed_on_virtio(trixie_image)
    assert verdict.booted is False
    assert verdict.reason == "root-device-missing", (verdict.reason, verdict.evidence)
    assert any("/dev/sda2" in line for line in verdict.evidence), verdict.evidence


def test_trixie_btrfs_subvolume_boots_on_virtio_after_fix(
    trixie_image: FixtureImage, tmp_path: Path
) -> None:
    fixed = fix_and_boot(trixie_image, tmp_path)
    first = fixed.first
    assert {("edit", "/etc/fstab"), ("regenerate-grub", "/boot/grub/grub.cfg")} <= \
        changes(first), first["changes"]
    assert any(c["kind"] == "rebuild-initramfs" for c in first["changes"])
    assert_boots_with_its_network(fixed)
    # findmnt's SOURCE for a subvolume mount: the device and, in brackets, the subvolume.
    assert fixed.verdict is not None and fixed.verdict.root == "/dev/vda2[/@]"
    assert sha256(trixie_image.disks[0]) == fixed.cached_hash
