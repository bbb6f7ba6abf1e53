"""`p2v register --new-macs` through the CLI, with --output local (no libvirt needed)."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

SOURCE_MACS = ["52:54:00:b1:05:01", "52:54:00:b1:05:02"]


def _setup(tmp_path: Path, pinned: bool) -> tuple[Path, Path, Path]:
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"nics": [{"name": f"eth{i}", "mac": m}
                                              for i, m in enumerate(SOURCE_MACS)]}))
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"disk_bus": "virtio", "firmware": "bios",
                                "nics": [{"name": "eth0", "mac": SOURCE_MACS[0]}] if pinned
                                else []}))
    return image, inventory, caps


def _register(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2v.cli", "register", "--name", "g1",
                           "--output", "local", "--output-dir", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, timeout=120)


def _macs(tmp_path: Path) -> list[str]:
    root = ET.parse(tmp_path / "out" / "g1.xml").getroot()
    return [m.get("address", "") for m in root.iter("mac")]


def test_new_macs_replace_the_source_macs(tmp_path: Path) -> None:
    image, inventory, caps = _setup(tmp_path, pinned=False)
    proc = _register(tmp_path, "--inventory", str(inventory), "--caps", str(caps),
                     "--new-macs", str(image))
    assert proc.returncode == 0, proc.stderr
    macs = _macs(tmp_path)
    assert len(macs) == 2 and not set(macs) & set(SOURCE_MACS)


def test_new_macs_refused_for_pinned_names_unless_forced(tmp_path: Path) -> None:
    image, inventory, caps = _setup(tmp_path, pinned=True)
    proc = _register(tmp_path, "--inventory", str(inventory), "--caps", str(caps),
                     "--new-macs", str(image))
    assert proc.returncode == 2
    assert "pins interface names to MACs (eth0=52:54:00:b1:05:01)" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out" / "g1.xml").exists()
    forced = _register(tmp_path, "--inventory", str(inventory), "--caps", str(caps),
                       "--new-macs", "--force-new-macs", str(image))
    assert forced.returncode == 0, forced.stderr
    assert "warning" in forced.stderr and "eth0" in forced.stderr
    assert not set(_macs(tmp_path)) & set(SOURCE_MACS)


def test_default_keeps_the_source_macs(tmp_path: Path) -> None:
    image, inventory, caps = _setup(tmp_path, pinned=True)
    proc = _register(tmp_path, "--inventory", str(inventory), "--caps", str(caps), str(image))
    assert proc.returncode == 0, proc.stderr
    assert _macs(tmp_path) == SOURCE_MACS
