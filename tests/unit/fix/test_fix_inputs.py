"""p2v fix inputs: inventories (both schemas), --mac, usage errors (no libguestfs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2v.cli import main
from p2v.errors import ExitCode, UsageError
from p2v.fix.options import read_inventory


def test_minimal_inventory() -> None:
    facts = read_inventory(json.dumps({
        "firmware": "uefi", "nics": [{"name": "eth0", "mac": "52:54:00:AA:00:01"}],
        "disks": [{"name": "sda", "boot": True}, {"name": "sdb"}]}))
    assert facts.pins == {"eth0": "52:54:00:aa:00:01"}
    assert facts.disks == ("sda", "sdb") and facts.firmware == "uefi"


def test_full_inventory_pins_physical_nics_only() -> None:
    facts = read_inventory(json.dumps({
        "schema": "p2v.inventory/1", "firmware": "bios",
        "nics": [{"name": "enp0s25", "mac": "52:54:00:EF:10:01", "physical": True},
                 {"name": "wlan0", "mac": None, "physical": True}],
        "virtual_nics": [{"name": "br0", "mac": "52:54:00:ef:10:01", "kind": "bridge"}],
        "disks": [{"name": "nvme0n1", "path": "/dev/nvme0n1", "boot": True}]}))
    assert facts.pins == {"enp0s25": "52:54:00:ef:10:01"}
    assert facts.disks == ("nvme0n1",) and facts.firmware == "bios"


def test_bad_inventory_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        read_inventory('{"nics": [{"name": "eth0", "mac": "nope"}]}')
    with pytest.raises(UsageError):
        read_inventory("[1, 2]")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_fix_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "disk.qcow2"
    image.write_bytes(b"")
    code, err = run(["fix", str(tmp_path / "missing.qcow2")], capsys)
    assert code == ExitCode.USAGE and "not found" in err
    code, err = run(["fix", "--mac", "52:54:00:00:00:01", str(image)], capsys)
    assert code == ExitCode.USAGE and "NAME=MAC" in err
    code, err = run(["fix", "--mac", "eth0=zz", str(image)], capsys)
    assert code == ExitCode.USAGE and "not a MAC" in err
    code, err = run(["fix", "--mac", "eth0=52:54:00:00:00:01", "--mac",
                     "eth1=52:54:00:00:00:01", str(image)], capsys)
    assert code == ExitCode.USAGE and "same MAC" in err
    inventory = tmp_path / "inv.json"
    inventory.write_text('{"disks": [{"name": "sda"}, {"name": "sdb"}]}')
    code, err = run(["fix", "--inventory", str(inventory), str(image)], capsys)
    assert code == ExitCode.USAGE and "2 disk(s) but 1 image(s)" in err


def test_fix_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fix", "--help"])
    out = capsys.readouterr().out
    for word in ("--inventory", "--mac", "--dry-run", "--json", "caps.json"):
        assert word in out
