"""The proof of the test bed: legacy-server fixtures boot where they should and fail where
a plain P2V copy fails, each reason named by `p2v verify`, and nothing it boots is modified."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from libvirt_env import Libvirtd, boot_checks, open_conn
from schema_check import assert_valid

from p2v.demo.image import FixtureImage
from p2v.target.transient import PREFIX, scratch_of

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
    return proc.returncode, assert_valid(json.loads(proc.stdout), "report/verdict"), proc.stderr


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


# In make test-slow: make test proves this failure through the registered domain's XML.
@pytest.mark.slow
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


# ---------------------------------------------------------------- through libvirt
def _verify_networks() -> set[str]:
    conn = open_conn()
    try:
        return {n.name() for n in conn.listAllNetworks() if n.name().startswith(PREFIX)}
    finally:
        conn.close()


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _register_local_virtio(image: FixtureImage, directory: Path) -> tuple[Path, Path]:
    """`p2v register --output local` of the unfixed fixture on virtio: (XML, its disk)."""
    inventory = directory / "inventory.json"
    inventory.write_text(json.dumps({
        "hostname": image.hostname, "firmware": "bios", "memory_mib": 1024, "cpus": 1,
        "nics": [{"name": image.nic_name, "mac": image.mac}]}))
    caps = directory / "caps.json"
    caps.write_text(json.dumps({"disk_bus": "virtio", "nic_model": "virtio",
                                "firmware": "bios"}))
    out = directory / "local"
    reg = subprocess.run([sys.executable, "-m", "p2v.cli", "register", "--output", "local",
                          "--output-dir", str(out), "--name", "p2vtest-vdom",
                          "--inventory", str(inventory), "--caps", str(caps),
                          str(image.disks[0])], capture_output=True, text=True, timeout=600)
    assert reg.returncode == 0, reg.stderr
    (disk,) = out.glob("p2vtest-vdom-disk0.*")
    return out / "p2vtest-vdom.xml", disk


def test_the_registered_virtio_xml_of_the_unfixed_fixture_is_booted_and_fails(
        bios_image: FixtureImage, libvirtd: Libvirtd, guest_dir: Path) -> None:
    """The check boots the domain XML register defines, so a disk bus the guest has no
    driver for (the unfixed fixture on virtio) is reported as not booting; the old check
    booted its own qemu machine and never read that XML."""
    xml, image = _register_local_virtio(bios_image, guest_dir)
    before = sha256(image)
    rc, verdict, err = p2v_verify("--domain-xml", str(xml))
    assert rc == 4, (verdict, err)
    assert verdict["via"] == "libvirt-transient"
    assert verdict["domain"].startswith(PREFIX)
    assert verdict["bus"] == "virtio" and verdict["firmware"] == "bios"
    assert verdict["reason"] == "root-device-missing"
    assert any("/dev/sda1 does not exist" in line for line in verdict["evidence"])
    assert verdict["domain"] not in boot_checks()
    assert verdict["domain"] not in _verify_networks()
    assert sha256(image) == before


def _start_and_kill(argv: list[str], guest: str) -> tuple[str, str]:
    """Run a check, SIGKILL it once its transient domain runs; (domain name, its XML)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: bool(boot_checks(guest)) or proc.poll() is not None,
              "the check's domain")
        assert proc.poll() is None, "the check ended before its domain was seen"
        ((name, xml),) = boot_checks(guest).items()
    finally:
        proc.kill()
        proc.wait()
    return name, xml


@pytest.mark.slow
def test_a_killed_check_leaves_its_domain_to_libvirt_and_its_network_to_the_next_check(
        bios_image: FixtureImage, libvirtd: Libvirtd, guest_dir: Path) -> None:
    xml, _image = _register_local_virtio(bios_image, guest_dir)
    argv = [sys.executable, "-m", "p2v.cli", "verify", "--json", "--domain-xml", str(xml)]
    guest = ET.parse(xml).getroot().findtext("name")
    assert guest
    assert not boot_checks(guest)
    first, first_xml = _start_and_kill(argv, guest)
    (disk,) = ET.fromstring(first_xml).iterfind("devices/disk")
    top = disk.find("source")
    assert top is not None and str(top.get("file")).endswith("/disk0.overlay")   # not the image
    assert disk.find("target").get("bus") == "virtio"  # type: ignore[union-attr]
    scratch = scratch_of(first_xml)
    assert scratch is not None and scratch.is_dir()
    # AUTODESTROY: libvirtd destroys the domain when the killed p2v's connection closes.
    _wait(lambda: not boot_checks(guest), "libvirt to destroy the killed check's domain",
          60)
    assert first in _verify_networks()              # a network has no autodestroy
    second, _ = _start_and_kill(argv, guest)
    # The second check swept the first one's network and scratch dir before it started.
    assert second != first and first not in _verify_networks()
    assert not scratch.exists()
    _wait(lambda: not boot_checks(guest), "libvirt to destroy the second check's domain",
          60)
    from p2v.scratch import owner_alive
    from p2v.target.libvirt import sweep_transient_at

    assert sweep_transient_at("qemu:///system", owner_alive) == [second]
    assert not _verify_networks()
