"""p2v fix on the fixtures: a copied server that fails on virtio boots there after the fix,
with its NIC name and static address; --dry-run and a second run change nothing.

Each fixture is fixed once per session (an appliance run and an initramfs rebuild cost
minutes under TCG) on a qcow2 overlay of the cached image, which is never written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from schema_check import assert_valid

from p2v.demo.image import FixtureImage
from p2v.model import GuestCaps, SourceNic
from p2v.verify.boot import BootOptions, BootVerdict, verify_boot

pytestmark = pytest.mark.e2e


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def p2v_fix(*args: str) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "p2v.cli", "fix", "--json", *args],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert_valid(data["caps"], "caps")
    if data["caps_path"] is not None:       # IMAGE.caps.json, as register --caps reads it
        assert_valid(json.loads(Path(data["caps_path"]).read_text()), "caps")
    return data, time.monotonic() - started


def overlay(image: FixtureImage, directory: Path) -> Path:
    path = directory / f"{image.variant}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                    str(image.disks[0]), str(path)], check=True)
    return path


@dataclass
class Fixed:
    image: FixtureImage
    disk: Path
    cached_hash: str
    first: dict[str, Any]
    first_s: float
    verdict: BootVerdict | None = None


@dataclass
class Rerun:
    """A --dry-run on an unfixed overlay and a second fix of the fixed one (slow tests)."""
    dry_run: dict[str, Any]
    dry_run_kept_hash: bool
    second: dict[str, Any]
    second_kept_hash: bool


def fix_once(image: FixtureImage, directory: Path) -> Fixed:
    cached_hash = sha256(image.disks[0])
    disk = overlay(image, directory)
    first, first_s = p2v_fix("--mac", f"{image.nic_name}={image.mac}", str(disk))
    return Fixed(image, disk, cached_hash, first, first_s)


def rerun(fixed: Fixed, directory: Path) -> Rerun:
    mac = f"{fixed.image.nic_name}={fixed.image.mac}"
    fresh = overlay(fixed.image, directory)
    before = sha256(fresh)
    dry, _ = p2v_fix("--dry-run", "--mac", mac, str(fresh))
    dry_kept = sha256(fresh) == before
    after = sha256(fixed.disk)
    second, _ = p2v_fix("--mac", mac, str(fixed.disk))
    return Rerun(dry, dry_kept, second, sha256(fixed.disk) == after)


@pytest.fixture(scope="session")
def fixed_bios(bios_image: FixtureImage, tmp_path_factory: pytest.TempPathFactory) -> Fixed:
    fixed = fix_once(bios_image, tmp_path_factory.mktemp("fix-bios"))
    fixed.verdict = verify_boot([fixed.disk], BootOptions(bus="virtio", macs=(bios_image.mac,)))
    return fixed


@pytest.fixture(scope="session")
def rerun_bios(fixed_bios: Fixed, tmp_path_factory: pytest.TempPathFactory) -> Rerun:
    return rerun(fixed_bios, tmp_path_factory.mktemp("fix-bios-rerun"))


@pytest.fixture(scope="session")
def fixed_uefi(uefi_image: FixtureImage, tmp_path_factory: pytest.TempPathFactory) -> Fixed:
    fixed = fix_once(uefi_image, tmp_path_factory.mktemp("fix-uefi"))
    # A fresh NVRAM: what a new VM gets; the physical machine's boot entry stayed behind.
    fixed.verdict = verify_boot([fixed.disk], BootOptions(bus="virtio", firmware="uefi",
                                                          macs=(uefi_image.mac,)))
    return fixed


@pytest.fixture(scope="session")
def rerun_uefi(fixed_uefi: Fixed, tmp_path_factory: pytest.TempPathFactory) -> Rerun:
    return rerun(fixed_uefi, tmp_path_factory.mktemp("fix-uefi-rerun"))


def changes(result: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["kind"], c["target"]) for c in result["changes"]}


def assert_boots_with_its_network(fixed: Fixed) -> None:
    verdict = fixed.verdict
    assert verdict is not None
    assert verdict.booted, (verdict.reason, verdict.evidence)
    assert verdict.bus == "virtio"
    assert verdict.hostname == fixed.image.hostname
    nics = {n.name: n for n in verdict.interfaces}
    assert fixed.image.nic_name in nics, nics
    assert nics[fixed.image.nic_name].mac == fixed.image.mac
    assert fixed.image.address in nics[fixed.image.nic_name].addresses


def assert_idempotent(fixed: Fixed, again: Rerun) -> None:
    assert again.second["nothing_to_do"] is True
    assert again.second["changes"] == [] and again.second["applied"] is False
    assert again.second_kept_hash, "a run with nothing to do wrote to the image"
    assert again.second["caps"] == fixed.first["caps"]


def test_bios_fixed_boots_on_virtio_with_eth0(fixed_bios: Fixed) -> None:
    first = fixed_bios.first
    assert first["inspection"]["firmware"] == "bios"
    assert first["inspection"]["kernels"][0]["boots_on_virtio"] is False
    assert {("edit", "/etc/fstab"), ("edit", "/etc/default/grub"),
            ("regenerate-grub", "/boot/grub/grub.cfg"),
            ("create", "/etc/systemd/network/10-p2v-eth0.link")} <= changes(first)
    assert any(c["kind"] == "rebuild-initramfs" for c in first["changes"])
    assert any("will exist on virtio" in c for c in first["checks"])
    caps = GuestCaps.from_dict(first["caps"])
    pin = SourceNic(name=fixed_bios.image.nic_name, mac=fixed_bios.image.mac)
    assert caps == GuestCaps(disk_bus="virtio", nic_model="virtio", firmware="bios",
                             pinned_nics=(pin,))
    caps_file = Path(first["caps_path"])
    assert caps_file == fixed_bios.disk.with_name(fixed_bios.disk.name + ".caps.json")
    assert GuestCaps.from_json(caps_file.read_text()) == caps
    assert_boots_with_its_network(fixed_bios)
    assert fixed_bios.verdict is not None and fixed_bios.verdict.root == "/dev/vda1"
    assert sha256(fixed_bios.image.disks[0]) == fixed_bios.cached_hash


@pytest.mark.slow
def test_bios_dry_run_reports_and_changes_nothing(fixed_bios: Fixed, rerun_bios: Rerun) -> None:
    dry = rerun_bios.dry_run
    assert rerun_bios.dry_run_kept_hash
    assert dry["dry_run"] is True and dry["applied"] is False and dry["caps_path"] is None
    assert changes(dry) == changes(fixed_bios.first)
    inspection = dry["inspection"]
    assert inspection["distro"] == "debian" and inspection["family"] == "debian"
    assert inspection["bootloader"] == "grub2"
    assert {f["mountpoint"] for f in inspection["filesystems"]} >= {"/"}
    assert inspection["nic_names"] == ["eth0"]


@pytest.mark.slow
def test_bios_second_fix_has_nothing_to_do(fixed_bios: Fixed, rerun_bios: Rerun) -> None:
    assert_idempotent(fixed_bios, rerun_bios)


@pytest.mark.slow
def test_uefi_fixed_boots_on_virtio_with_a_fresh_nvram(fixed_uefi: Fixed,
                                                       rerun_uefi: Rerun) -> None:
    first = fixed_uefi.first
    assert first["inspection"]["firmware"] == "uefi"
    assert {("copy", "\\EFI\\BOOT\\BOOTX64.EFI"),
            ("create", "/etc/systemd/network/10-p2v-enp0s25.link")} <= changes(first)
    assert any(c["kind"] == "rebuild-initramfs" for c in first["changes"])
    pin = SourceNic(name=fixed_uefi.image.nic_name, mac=fixed_uefi.image.mac)
    assert GuestCaps.from_dict(first["caps"]) == GuestCaps(firmware="uefi", pinned_nics=(pin,))
    assert_boots_with_its_network(fixed_uefi)
    assert fixed_uefi.verdict is not None
    assert fixed_uefi.verdict.root == "/dev/mapper/vg0-root"
    assert rerun_uefi.dry_run_kept_hash
    assert_idempotent(fixed_uefi, rerun_uefi)
    assert sha256(fixed_uefi.image.disks[0]) == fixed_uefi.cached_hash


@pytest.mark.slow
def test_bios_fix_changes_only_the_files_it_reports(fixed_bios: Fixed) -> None:
    """virt-diff (content checksums) between the cached server image and the fixed copy:
    every file that differs is one the fix reported, or its initramfs/grub output."""
    env = dict(os.environ, LIBGUESTFS_BACKEND_SETTINGS="force_tcg")
    proc = subprocess.run(["virt-diff", "--format=raw", "-a", str(fixed_bios.image.disks[0]),
                           "--format=qcow2", "-A", str(fixed_bios.disk)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode in (0, 1), proc.stderr
    entry = re.compile(r"^[-+=] \S \d{4}\s+\d+ (/.*)$", re.MULTILINE)
    differing = set(entry.findall(proc.stdout))
    reported = {c["target"] for c in fixed_bios.first["changes"]
                if c["kind"] in ("edit", "create", "regenerate-grub")}
    initrds = {k["initrd"] for k in fixed_bios.first["inspection"]["kernels"]}
    assert differing, proc.stdout
    assert differing <= reported | initrds, differing - reported - initrds
    assert reported <= differing
