"""`p2v convert --from-image`: a lab guest that exists only as a disk image (the bios fixture,
as a VMDK another hypervisor would have) becomes a registered libvirt guest that boots on
virtio, as a user runs it (`python -m p2v convert --json`). One boot: the verify stage's
boot check of the domain XML register then defines; the rerun is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from libvirt_env import Libvirtd, boot_checks, open_conn
from schema_check import assert_all_valid, assert_valid

from p2v.demo.image import FixtureImage
from p2v.job import IMAGE_STAGES

pytestmark = pytest.mark.e2e

JOB_TIMEOUT = 2400


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


def _convert(argv: list[str]) -> tuple[int, list[dict[str, Any]], str]:
    proc = subprocess.run([sys.executable, "-m", "p2v", "convert", *argv, "--json"],
                          capture_output=True, text=True, timeout=JOB_TIMEOUT)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


def test_convert_from_a_vmdk_image_boots_on_virtio(
        bios_image: FixtureImage, libvirtd: Libvirtd, isolated_network: str,
        guest_names: list[str], guest_dir: Path) -> None:
    name = "p2vtest-from-image"
    guest_names.append(name)
    (raw,) = bios_image.disks
    vmdk = guest_dir / "lab-bios.vmdk"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(raw), str(vmdk)],
                   check=True, timeout=600)
    before = _sha256(vmdk)
    argv = ["--from-image", str(vmdk), "--name", name, "--output-dir", str(guest_dir),
            "--network", isolated_network, "--memory", "1024", "--vcpus", "1",
            "--verify-timeout", "900"]
    code, events, err = _convert(argv)
    assert code == 0, err
    assert [e["stage"] for e in events if e["event"] == "stage-start"] == list(IMAGE_STAGES)
    (imported,) = [e for e in events if e["event"] == "image-imported"]
    assert imported["format"] == "vmdk" and imported["source_image"] == str(vmdk)
    report = events[-1]["report"]
    assert events[-1]["event"] == "job-done" and report["ok"] is True
    assert report["source"] == f"image:{vmdk}"
    assert report["disk_choice"].startswith("importing lab-bios.vmdk (2.0 GiB VMDK, boot disk)")
    said = " ".join(report["not_carried_over"])
    assert "1024 MiB (--memory)" in said and "1 vCPU(s) (--vcpus)" in said
    assert "firmware bios" in said
    # The boot check booted the domain register then defined, on virtio.
    verdict = report["verdict"]
    assert verdict["booted"] is True and verdict["bus"] == "virtio", verdict
    assert verdict["via"] == "libvirt-transient"
    assert verdict["hostname"] == bios_image.hostname
    assert not boot_checks(name)
    # The work dir's qcow2 is the guest's disk; the VMDK was only read.
    work = guest_dir / name
    image = work / f"{name}-disk1.qcow2"
    (disk,) = report["disks"]
    assert disk["device"] == str(vmdk) and disk["image"] == str(image)
    assert _sha256(vmdk) == before
    plan = json.loads((work / "plan.json").read_text())
    ((nic_name, mac),) = plan["pins"]
    assert nic_name == "net1" and plan["pin_nics"] is False
    conn = open_conn()
    try:
        dom = conn.lookupByName(name)
        assert not dom.isActive()
        root = ET.fromstring(dom.XMLDesc(0))
    finally:
        conn.close()
    assert [t.get("bus") for t in root.iterfind("devices/disk/target")] == ["virtio"]
    assert [s.get("file") for s in root.iterfind("devices/disk/source")] == [str(image)]
    (nic,) = root.iterfind("devices/interface")
    assert nic.find("model").get("type") == "virtio"  # type: ignore[union-attr]
    assert nic.find("mac").get("address") == mac  # type: ignore[union-attr]
    assert nic.find("source").get("network") == isolated_network  # type: ignore[union-attr]
    assert root.findtext("memory") == str(1024 * 1024) and root.findtext("vcpu") == "1"
    assert root.find("os/loader") is None                       # BIOS, as its table says
    assert sorted(p.stem for p in (work / "markers").glob("*.done")) == sorted(IMAGE_STAGES)
    # Every document the job left is what its schema says, as for a live conversion.
    assert_valid(json.loads((work / "report.json").read_text()), "report")
    assert_valid(json.loads((work / "inventory.json").read_text()), "inventory")
    assert_valid(json.loads((work / "caps.json").read_text()), "caps")
    assert_all_valid([json.loads(line) for line in
                      (work / "events.jsonl").read_text().splitlines()], "events")

    # The rerun of a finished job does nothing (no import, no boot) and reports the same.
    code, again, err = _convert(argv)
    assert code == 0, err
    assert [e["stage"] for e in again if e["event"] == "stage-skip"] == list(IMAGE_STAGES)
    assert again[-1]["report"]["domain"] == report["domain"]

    proc = subprocess.run([sys.executable, "-m", "p2v", "clean", name, "--output-dir",
                           str(guest_dir), "--domain"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not work.exists() and vmdk.is_file()
