"""The register inputs: GuestCaps/inventory JSON, request checks, CLI usage errors (no libvirt)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2v.cli import main
from p2v.errors import UsageError
from p2v.model import CpuTopology, GuestCaps, SourceInventory, SourceNic
from p2v.target.domain import NicMapping
from p2v.target.request import RegisterRequest, check_request, volume_names


def test_guest_caps_round_trip_and_defaults() -> None:
    caps = GuestCaps(disk_bus="sata", nic_model="e1000e", firmware="uefi")
    assert GuestCaps.from_json(caps.to_json()) == caps
    assert GuestCaps.from_json("{}") == GuestCaps()
    # Keys the fix stage may add later are ignored.
    assert GuestCaps.from_json('{"disk_bus": "sata", "virtio_drivers": []}').disk_bus == "sata"


@pytest.mark.parametrize("text, match", [
    ('{"disk_bus": "ide"}', "disk_bus must be one of virtio, sata"),
    ('{"firmware": "coreboot"}', "firmware must be one of bios, uefi"),
    ("[1]", "must be a JSON object"),
    ("{", "not valid JSON"),
])
def test_guest_caps_refuses_bad_values(text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        GuestCaps.from_json(text)


def test_inventory_minimal_subset() -> None:
    inv = SourceInventory.from_json(json.dumps({
        "hostname": "web01", "firmware": "uefi", "memory_mib": 2048, "cpus": 4,
        "nics": [{"name": "eth0", "mac": "00-25-90-AA-BB-01"}],
        "disks": [{"name": "sda"}, {"name": "sdb", "boot": True}],
        "kernel": "ignored: p2v inspect will write more",
    }))
    assert inv.cpu == CpuTopology(1, 4, 1) and inv.memory_mib == 2048
    assert inv.nics == (SourceNic("eth0", "00:25:90:aa:bb:01"),)
    assert [d.boot for d in inv.disks] == [False, True]
    assert SourceInventory.from_json(inv.to_json()) == inv
    assert SourceInventory.from_json("{}") == SourceInventory()


@pytest.mark.parametrize("data, match", [
    ({"nics": [{"name": "eth0", "mac": "nope"}]}, "not a MAC address"),
    ({"nics": [{"name": "eth0"}]}, "unreadable field"),
    ({"memory_mib": 0}, "memory_mib must be positive"),
    ({"cpu": {"sockets": 0}}, "cpu counts must be positive"),
    ({"nics": [{"name": "e", "mac": "52:54:00:00:00:01"},
               {"name": "e", "mac": "52:54:00:00:00:02"}]}, "NIC names repeat"),
])
def test_inventory_refuses_bad_fields(data: dict[str, object], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        SourceInventory.from_dict(data)


def test_request_caps_fall_back_to_the_inventory_firmware() -> None:
    request = RegisterRequest(name="a", images=(Path("x"),),
                              inventory=SourceInventory(firmware="uefi"))
    assert request.guest_caps() == GuestCaps(firmware="uefi")


@pytest.mark.parametrize("changes, match", [
    ({"name": "../etc"}, "--name"),
    ({"name": "-x"}, "--name"),
    ({"output": "local"}, "--output local needs --output-dir"),
    ({"output": "local", "output_dir": Path("/tmp"), "start": True}, "need --output libvirt"),
    ({"nvram": Path("/nonexistent")}, "--nvram needs a UEFI guest"),
])
def test_request_checks(changes: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"name": "web01", "images": (Path("x"),)}
    base.update(changes)
    with pytest.raises(UsageError, match=match):
        check_request(RegisterRequest(**base))  # type: ignore[arg-type]


def test_nic_mapping_parse() -> None:
    assert NicMapping.parse("network", "lan") == NicMapping("network", "lan")
    assert NicMapping.parse("bridge", "eth0=br0") == NicMapping("bridge", "br0", "eth0")
    with pytest.raises(UsageError, match="want SRC=BRIDGE or BRIDGE"):
        NicMapping.parse("bridge", "eth0=")


@pytest.mark.parametrize("text, want", [
    ("eth0:default", NicMapping("network", "default", "eth0")),
    ("52:54:00:7e:57:01:lan", NicMapping("network", "lan", "52:54:00:7e:57:01")),
    ("52:54:00:7e:57:01=lan", NicMapping("network", "lan", "52:54:00:7e:57:01")),
    ("eth0=net:with:colons", NicMapping("network", "net:with:colons", "eth0")),
    ("default", NicMapping("network", "default")),
])
def test_nic_mapping_takes_virt_v2v_colon_spelling(text: str, want: NicMapping) -> None:
    assert NicMapping.parse("network", text) == want


@pytest.mark.parametrize("text", ["eth0:", ":default", "="])
def test_nic_mapping_with_an_empty_side_is_refused(text: str) -> None:
    with pytest.raises(UsageError, match="want SRC=NETWORK or NETWORK"):
        NicMapping.parse("network", text)


def test_volume_names_follow_source_order() -> None:
    from p2v.target.request import ImageInfo

    images = [ImageInfo(Path("a"), "qcow2", 1, 1, None), ImageInfo(Path("b"), "raw", 1, 1, None)]
    assert volume_names("web01", images) == ["web01-disk0.qcow2", "web01-disk1.raw"]


@pytest.mark.parametrize("argv, match", [
    (["--memory", "0"], "--memory must be positive"),
    (["--inventory", "/nonexistent.json"], "inventory not found"),
    (["--network", "=x"], "want SRC=NETWORK or NETWORK"),
])
def test_cli_usage_errors_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], match: str,
) -> None:
    image = tmp_path / "a.raw"
    image.write_bytes(bytes(1 << 20))
    code = main(["register", "--name", "t", str(image), "--output", "local",
                 "--output-dir", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("p2v: error: ") and match in line


def test_cli_missing_image_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["register", "--name", "t", str(tmp_path / "none.qcow2"), "--output", "local",
                 "--output-dir", str(tmp_path)])
    assert code == 2
    assert "disk image not found" in capsys.readouterr().err
