"""`p2v inspect` against the fixtures running as live sources: what a real server shows."""

from __future__ import annotations

import json

import pytest
from schema_check import assert_valid

from p2v import cli
from p2v.demo.live import SourceEndpoint
from p2v.model import Inventory, SourceInventory

pytestmark = pytest.mark.e2e


def inspect(live: SourceEndpoint, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    argv = ["inspect", f"ssh://{live.user}@{live.host}:{live.port}", "--identity",
            str(live.key), "--known-hosts", str(live.known_hosts), "--ssh-config", "/dev/null",
            *extra]
    assert cli.main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def inspect_json(live: SourceEndpoint, capsys: pytest.CaptureFixture[str]) -> str:
    """`p2v inspect --json`, checked against inventory.schema.json."""
    text = inspect(live, capsys, "--json")
    assert_valid(json.loads(text), "inventory")
    return text


def test_bios_server(live_source_bios: SourceEndpoint,
                     capsys: pytest.CaptureFixture[str]) -> None:
    fixture = live_source_bios.fixture
    assert fixture is not None
    inv = Inventory.from_json(inspect_json(live_source_bios, capsys))
    assert (inv.hostname, inv.firmware, inv.boot_disk) == (fixture.hostname, "bios", "sda")
    assert inv.os.id == "debian" and inv.os.kernel
    (disk,) = inv.disks
    assert (disk.name, disk.size_bytes, disk.table) == ("sda", 2048 << 20, "dos")
    assert [(p.name, p.content) for p in disk.partitions] == [("sda1", "ext4"),
                                                              ("sda2", "swap")]
    root = next(f for f in inv.filesystems if f.mountpoint == "/")
    assert root.device == "sda1" and root.used_bytes and root.free_bytes
    (nic,) = inv.nics
    assert (nic.name, nic.mac) == (fixture.nic_name, fixture.mac)
    assert fixture.address in nic.addresses and nic.driver == "e1000e"
    assert disk.copy_bytes_estimate is not None
    assert root.used_bytes < disk.copy_bytes_estimate < disk.size_bytes // 2
    assert inv.unknown == ()


@pytest.mark.slow
def test_uefi_server_lvm_and_esp(live_source_uefi: SourceEndpoint,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    fixture = live_source_uefi.fixture
    assert fixture is not None
    text = inspect_json(live_source_uefi, capsys)
    inv = Inventory.from_json(text)
    assert (inv.hostname, inv.firmware, inv.boot_disk) == (fixture.hostname, "uefi", "sda")
    (disk,) = inv.disks
    assert disk.table == "gpt"
    esp = disk.partitions[0]
    assert esp.type == "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" and esp.content == "vfat"
    mounts = {f.mountpoint: f for f in inv.filesystems if f.mountpoint}
    assert mounts["/boot/efi"].device == "sda1" and mounts["/boot"].device == "sda2"
    root_lv = next(lv for lv in inv.lvm.lvs if lv.name == "root")
    assert root_lv.vg == "vg0" and mounts["/"].device == root_lv.device
    assert [vg.name for vg in inv.lvm.vgs] == ["vg0"]
    assert [(pv.device, pv.vg) for pv in inv.lvm.pvs] == [("sda3", "vg0")]
    (nic,) = inv.nics
    assert (nic.name, nic.mac) == ("enp0s25", fixture.mac)
    assert "10.0.2.15/24" in nic.addresses
    # register reads the same document.
    register_view = SourceInventory.from_json(text)
    assert register_view.firmware == "uefi" and register_view.nics[0].mac == fixture.mac
    assert json.loads(text)["schema"] == "p2v.inventory/1"


def test_human_table(live_source_bios: SourceEndpoint,
                     capsys: pytest.CaptureFixture[str]) -> None:
    fixture = live_source_bios.fixture
    assert fixture is not None
    out = inspect(live_source_bios, capsys)
    for expected in (fixture.hostname, "firmware bios", "/dev/sda", "[boot]", fixture.mac,
                     "10.0.2.15/24", "a copy sends at most"):
        assert expected in out
