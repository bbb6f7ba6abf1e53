"""Golden-file tests of the domain XML builder, and the planning rules behind it.

Regenerate the golden files after an intended change with
`P2V_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/target` and review the diff.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from p2v.errors import UsageError
from p2v.model import CpuTopology, GuestCaps, SourceDisk, SourceInventory, SourceNic
from p2v.target.domain import (
    DomainSpec,
    GuestDisk,
    NicMapping,
    UefiFiles,
    attach_nics,
    disk_target,
    domain_xml,
    plan_domain,
)

GOLDEN = Path(__file__).parent / "golden"
UUID = "8d1a7f0e-3c9b-4e55-9a3e-2f4b6c7d8e90"
UEFI = UefiFiles(
    loader="/usr/share/OVMF/OVMF_CODE_4M.fd",
    nvram="/var/lib/libvirt/qemu/nvram/web01_VARS.fd",
    template="/usr/share/OVMF/OVMF_VARS_4M.fd",
)
WEB01 = SourceInventory(
    hostname="web01", memory_mib=2048, cpu=CpuTopology(sockets=1, cores=2, threads=2),
    nics=(SourceNic("eth0", "52:54:00:12:34:56"),),
)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.xml"
    if os.environ.get("P2V_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; run with P2V_UPDATE_GOLDEN=1 once"
    assert text == path.read_text()


def spec(**changes: object) -> DomainSpec:
    base: dict[str, object] = dict(
        name="web01", disks=(GuestDisk("qcow2", "/var/lib/libvirt/images/web01-sda.qcow2"),),
        inventory=WEB01, caps=GuestCaps(), mappings=(NicMapping("network", "lan"),),
        domain_type="kvm", serial_log="/var/log/libvirt/qemu/web01-serial0.log", uuid=UUID,
    )
    base.update(changes)
    return plan_domain(**base)  # type: ignore[arg-type]


def test_bios_virtio_golden() -> None:
    check_golden("bios", domain_xml(spec()))


def test_uefi_golden() -> None:
    check_golden("uefi", domain_xml(spec(caps=GuestCaps(firmware="uefi"), uefi=UEFI)))


def test_multi_disk_golden_puts_the_boot_disk_first() -> None:
    inventory = SourceInventory(
        hostname="db01", memory_mib=8192, cpu=CpuTopology(2, 4, 1),
        nics=(SourceNic("eno1", "00:25:90:aa:bb:01"),),
        disks=(SourceDisk("sda"), SourceDisk("sdb", boot=True), SourceDisk("sdc")),
    )
    disks = (
        GuestDisk("qcow2", "/images/db01-sda.qcow2"),
        GuestDisk("raw", "/images/db01-sdb.raw"),
        GuestDisk("qcow2", pool="guests", volume="db01-sdc.qcow2"),
    )
    xml = domain_xml(spec(name="db01", inventory=inventory, disks=disks))
    check_golden("multi-disk", xml)
    root = ET.fromstring(xml)
    targets = [(d.find("target").get("dev"), d.find("source").attrib)  # type: ignore[union-attr]
               for d in root.iter("disk")]
    assert targets[0] == ("vda", {"file": "/images/db01-sdb.raw"})
    assert [t[0] for t in targets] == ["vda", "vdb", "vdc"]


def test_multi_nic_golden_keeps_macs_and_maps_by_name_or_mac() -> None:
    inventory = SourceInventory(
        hostname="gw01", memory_mib=1024,
        nics=(SourceNic("eth0", "00:16:3e:00:00:01"), SourceNic("eth1", "00:16:3e:00:00:02"),
              SourceNic("eth2", "00:16:3e:00:00:03")),
    )
    mappings = (
        NicMapping.parse("network", "eth0=lan"),
        NicMapping.parse("bridge", "00:16:3E:00:00:02=br-dmz"),
        NicMapping.parse("network", "backup"),
    )
    xml = domain_xml(spec(name="gw01", inventory=inventory, mappings=mappings))
    check_golden("multi-nic", xml)
    seen = [(i.get("type"), i.find("mac").get("address"),  # type: ignore[union-attr]
             i.find("source").attrib)  # type: ignore[union-attr]
            for i in ET.fromstring(xml).iter("interface")]
    assert seen == [
        ("network", "00:16:3e:00:00:01", {"network": "lan"}),
        ("bridge", "00:16:3e:00:00:02", {"bridge": "br-dmz"}),
        ("network", "00:16:3e:00:00:03", {"network": "backup"}),
    ]


def test_sata_fallback_golden() -> None:
    caps = GuestCaps(disk_bus="sata", nic_model="e1000e")
    disks = (GuestDisk("qcow2", "/images/old-0.qcow2"), GuestDisk("qcow2", "/images/old-1.qcow2"))
    xml = domain_xml(spec(caps=caps, disks=disks, domain_type="qemu"))
    check_golden("sata", xml)
    root = ET.fromstring(xml)
    assert {t.get("bus") for t in root.iter("target") if t.get("bus")} == {"sata"}
    assert root.find("devices/interface/model").get("type") == "e1000e"  # type: ignore[union-attr]
    assert root.get("type") == "qemu"
    assert root.find("cpu").get("mode") == "maximum"  # type: ignore[union-attr]


def test_flags_override_inventory() -> None:
    planned = spec(memory_mib=4096, vcpus=3)
    assert planned.memory_mib == 4096
    assert (planned.cpu.sockets, planned.cpu.cores, planned.cpu.threads) == (1, 3, 1)
    root = ET.fromstring(domain_xml(planned))
    assert root.findtext("vcpu") == "3"
    assert root.find("memory").text == "4096"  # type: ignore[union-attr]


def test_without_inventory_one_nic_on_the_default_network_and_defaults() -> None:
    planned = spec(inventory=SourceInventory(), mappings=())
    assert planned.memory_mib == 1024 and planned.cpu.vcpus == 1
    (nic,) = planned.nics
    assert (nic.mac, nic.kind, nic.source) == (None, "network", "default")
    assert ET.fromstring(domain_xml(planned)).find("devices/interface/mac") is None


def test_unknown_mapping_key_names_the_source_nics() -> None:
    with pytest.raises(UsageError, match="eth9.*eth0 \\(52:54:00:12:34:56\\)"):
        attach_nics(WEB01.nics, [NicMapping.parse("network", "eth9=lan")])


def test_a_nic_mapped_twice_is_refused() -> None:
    with pytest.raises(UsageError, match="more than once"):
        attach_nics(WEB01.nics, [NicMapping.parse("network", "eth0=lan"),
                                 NicMapping.parse("bridge", "52:54:00:12:34:56=br0")])


def test_uefi_without_files_is_refused() -> None:
    with pytest.raises(UsageError, match="UEFI"):
        spec(caps=GuestCaps(firmware="uefi"))


def test_disk_target_names() -> None:
    assert [disk_target("virtio", i) for i in (0, 1, 25, 26)] == ["vda", "vdb", "vdz", "vdaa"]
    assert disk_target("sata", 2) == "sdc"


def test_every_element_is_declared_not_concatenated() -> None:
    # A name with XML metacharacters must come out escaped, not break the document.
    root = ET.fromstring(domain_xml(spec(name="a<b>&'c\"")))
    assert root.findtext("name") == "a<b>&'c\""


@pytest.mark.skipif(not shutil.which("virt-xml-validate"), reason="libvirt-clients not installed")
@pytest.mark.parametrize("name", ["bios", "uefi", "multi-disk", "multi-nic", "sata"])
def test_golden_files_validate_against_libvirts_schema(name: str) -> None:
    result = subprocess.run(["virt-xml-validate", str(GOLDEN / f"{name}.xml"), "domain"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
