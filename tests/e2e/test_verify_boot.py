"""The proof of the test bed: legacy-server fixtures boot where they should and fail where
a plain P2V copy fails, each reason named by `p2v verify`, and nothing it boots is modified."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from p2v.testbed.image import FixtureImage

pytestmark = pytest.mark.e2e


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def p2v_verify(*args: str, timeout: float = 900) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run([sys.executable, "-m", "p2v.cli", "verify", "--json", *args],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.stdout, f"no JSON on stdout; stderr: {proc.stderr}"
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def hashes(image: FixtureImage, *extra: Path) -> dict[str, str]:
    return {str(p): sha256(p) for p in (*image.disks, *extra)}


def test_bios_fixture_boots_on_sata_with_its_network(bios_image: FixtureImage) -> None:
    before = hashes(bios_image)
    rc, verdict, err = p2v_verify("--bus", "sata", "--mac", bios_image.mac,
                                  *map(str, bios_image.disks))
    assert rc == 0, (verdict["reason"], verdict["evidence"], err)
    assert verdict["booted"] is True and verdict["reason"] is None
    # The report came over the check's own port, which no getty hangs up.
    assert verdict["report_port"] == "ttyS1"
    assert verdict["firmware"] == "bios"
    assert verdict["hostname"] == bios_image.hostname
    assert verdict["root"] == bios_image.root_device
    nics = {n["name"]: n for n in verdict["interfaces"]}
    assert bios_image.nic_name in nics, nics
    assert nics[bios_image.nic_name]["mac"] == bios_image.mac
    assert bios_image.address in nics[bios_image.nic_name]["addresses"]
    assert hashes(bios_image) == before


def test_bios_fixture_fails_on_virtio_root_device_missing(bios_image: FixtureImage) -> None:
    before = hashes(bios_image)
    rc, verdict, _ = p2v_verify("--bus", "virtio", *map(str, bios_image.disks))
    assert rc == 4
    assert verdict["booted"] is False
    assert verdict["reason"] == "root-device-missing"
    assert any("/dev/sda1 does not exist" in line for line in verdict["evidence"])
    assert hashes(bios_image) == before


@pytest.mark.slow
def test_uefi_fixture_boots_on_sata_with_its_own_nvram(uefi_image: FixtureImage) -> None:
    assert uefi_image.nvram is not None
    before = hashes(uefi_image, uefi_image.nvram)
    rc, verdict, err = p2v_verify("--bus", "sata", "--nvram", str(uefi_image.nvram),
                                  "--mac", uefi_image.mac, *map(str, uefi_image.disks))
    assert rc == 0, (verdict["reason"], verdict["evidence"], err)
    assert verdict["firmware"] == "uefi"
    assert verdict["hostname"] == uefi_image.hostname
    nics = {n["name"]: n for n in verdict["interfaces"]}
    assert uefi_image.nic_name in nics, nics
    assert uefi_image.address in nics[uefi_image.nic_name]["addresses"]
    assert hashes(uefi_image, uefi_image.nvram) == before


@pytest.mark.slow
def test_uefi_fixture_with_a_fresh_nvram_finds_no_bootloader(uefi_image: FixtureImage) -> None:
    before = hashes(uefi_image)
    rc, verdict, _ = p2v_verify("--bus", "sata", "--firmware", "uefi",
                                *map(str, uefi_image.disks))
    assert rc == 4
    assert verdict["reason"] == "no-bootloader"
    assert any("Shell" in line or "No bootable" in line for line in verdict["evidence"])
    assert hashes(uefi_image) == before
