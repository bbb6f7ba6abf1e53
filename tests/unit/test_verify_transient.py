"""The boot check's transient domain: register's XML with overlays, isolated NICs and serial
logs swapped in, and nothing else changed (p2v.target.transient), plus the leftover sweep."""

from __future__ import annotations

import copy
import dataclasses
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from p2v.model import CpuTopology, GuestCaps, SourceDisk, SourceInventory, SourceNic
from p2v.target.domain import GuestDisk, NicMapping, UefiFiles, domain_xml, plan_domain
from p2v.target.transient import (
    CHECK_MEMORY_MIB,
    P2V_NS,
    QEMU_NS,
    Throwaway,
    checked_domain,
    disk_sources,
    network_xml,
    scratch_of,
    transient_xml,
)

SCRATCH = Path("/var/lib/p2v/jobs/web01/.p2v-scratch/verify-ab12cd34")
UEFI = UefiFiles(loader="/usr/share/OVMF/OVMF_CODE_4M.fd",
                 nvram="/var/lib/libvirt/qemu/nvram/web01_VARS.fd",
                 template="/usr/share/OVMF/OVMF_VARS_4M.fd")
INVENTORY = SourceInventory(
    hostname="web01", memory_mib=2048, cpu=CpuTopology(sockets=1, cores=2, threads=1),
    nics=(SourceNic("eth0", "52:54:00:12:34:56"), SourceNic("eth1", "52:54:00:12:34:57")),
    disks=(SourceDisk("sda", True), SourceDisk("sdb", False)),
)


def register_xml(**changes: Any) -> str:
    base: dict[str, Any] = dict(
        name="web01",
        disks=(GuestDisk("qcow2", "/jobs/web01/web01-sda.qcow2"),
               GuestDisk("qcow2", pool="default", volume="web01-disk1.qcow2")),
        inventory=INVENTORY, caps=GuestCaps(),
        mappings=(NicMapping("network", "lan", "eth0"), NicMapping("bridge", "br0", "eth1")),
        domain_type="qemu", serial_log="/var/log/libvirt/qemu/web01-serial0.log",
        uuid="8d1a7f0e-3c9b-4e55-9a3e-2f4b6c7d8e90",
    )
    base.update(changes)
    return domain_xml(plan_domain(**base))


def throwaway(xml: str, nvram: bool = False) -> Throwaway:
    return Throwaway(
        token="ab12cd34", scratch=SCRATCH,
        overlays={s: SCRATCH / f"disk{i}.overlay" for i, s in enumerate(disk_sources(xml))},
        console_log=SCRATCH / "console.log", report_log=SCRATCH / "report.log",
        firmware_log=SCRATCH / "firmware.log", nvram=SCRATCH / "VARS.fd" if nvram else None)


def test_disk_sources_are_files_or_pool_volumes() -> None:
    assert disk_sources(register_xml()) == ["/jobs/web01/web01-sda.qcow2",
                                            "default/web01-disk1.qcow2"]


def test_every_disk_becomes_its_overlay_on_the_same_target_and_bus() -> None:
    xml = register_xml()
    before = ET.fromstring(xml).findall("devices/disk")
    after = ET.fromstring(transient_xml(xml, throwaway(xml))).findall("devices/disk")
    assert len(after) == len(before) == 2
    for index, (old, new) in enumerate(zip(before, after, strict=True)):
        assert new.get("type") == "file" and new.get("device") == "disk"
        assert new.find("driver").attrib == {"name": "qemu", "type": "qcow2"}  # type: ignore[union-attr]
        assert new.find("source").attrib == {"file": str(SCRATCH / f"disk{index}.overlay")}  # type: ignore[union-attr]
        assert new.find("target").attrib == old.find("target").attrib  # type: ignore[union-attr]
        assert ET.tostring(new.find("boot") if new.find("boot") is not None else ET.Element("x")) \
            == ET.tostring(old.find("boot") if old.find("boot") is not None else ET.Element("x"))


def test_every_nic_goes_to_the_checks_network_with_its_mac_and_model() -> None:
    xml = register_xml()
    before = ET.fromstring(xml).findall("devices/interface")
    after = ET.fromstring(transient_xml(xml, throwaway(xml))).findall("devices/interface")
    assert [n.find("mac").get("address") for n in after] == [  # type: ignore[union-attr]
        "52:54:00:12:34:56", "52:54:00:12:34:57"]
    for old, new in zip(before, after, strict=True):
        assert new.get("type") == "network"
        assert [s.attrib for s in new.iterfind("source")] == [{"network": "p2v-verify-ab12cd34"}]
        assert new.find("model").attrib == old.find("model").attrib  # type: ignore[union-attr]


def test_console_and_a_second_report_port_log_to_the_scratch_dir() -> None:
    xml = register_xml()
    root = ET.fromstring(transient_xml(xml, throwaway(xml)))
    serials = root.findall("devices/serial")
    assert [s.find("target").get("port") for s in serials] == ["0", "1"]  # type: ignore[union-attr]
    assert [s.get("type") for s in serials] == ["pty", "pty"]
    assert [s.find("log").get("file") for s in serials] == [  # type: ignore[union-attr]
        str(SCRATCH / "console.log"), str(SCRATCH / "report.log")]
    # The console is still the first serial port, as register defines it.
    assert root.find("devices/console/target").attrib == {"type": "serial", "port": "0"}  # type: ignore[union-attr]
    args = [a.get("value") for a in root.iterfind(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")]
    assert args == ["-chardev", f"file,id=p2vfwlog,path={SCRATCH / 'firmware.log'}", "-device",
                    "isa-debugcon,iobase=0x402,chardev=p2vfwlog"]


def test_the_name_is_prefixed_the_uuid_left_to_libvirt_and_the_scratch_dir_recorded() -> None:
    xml = register_xml()
    out = transient_xml(xml, throwaway(xml))
    root = ET.fromstring(out)
    assert root.findtext("name") == "p2v-verify-ab12cd34"
    assert root.find("uuid") is None
    assert "web01" in (root.findtext("description") or "")
    assert scratch_of(out) == SCRATCH
    assert scratch_of(xml) is None
    assert checked_domain(out) == "web01"   # whose check it is, for a test run beside another
    assert checked_domain(xml) is None


def test_a_uefi_domain_gets_a_scratch_nvram_and_keeps_loader_and_template() -> None:
    xml = register_xml(caps=GuestCaps(firmware="uefi"), uefi=UEFI)
    root = ET.fromstring(transient_xml(xml, throwaway(xml, nvram=True)))
    assert root.findtext("os/nvram") == str(SCRATCH / "VARS.fd")
    assert root.find("os/nvram").get("template") == UEFI.template  # type: ignore[union-attr]
    assert root.findtext("os/loader") == UEFI.loader
    with pytest.raises(ValueError, match="NVRAM"):
        transient_xml(xml, throwaway(xml))


def test_a_disk_without_an_overlay_is_refused() -> None:
    xml = register_xml()
    t = throwaway(xml)
    missing = Throwaway(t.token, t.scratch, {}, t.console_log, t.report_log)
    with pytest.raises(ValueError, match="no overlay"):
        transient_xml(xml, missing)


def _without_the_swaps(root: ET.Element) -> ET.Element:
    """The tree minus everything transient_xml is meant to change."""
    root = copy.deepcopy(root)
    for tag in ("name", "uuid", "description", "metadata", f"{{{QEMU_NS}}}commandline"):
        for el in root.findall(tag):
            root.remove(el)
    devices = root.find("devices")
    assert devices is not None
    for disk in devices.iterfind("disk"):
        disk.attrib.pop("type")
        disk.remove(disk.find("source"))  # type: ignore[arg-type]
        disk.find("driver").attrib.pop("type")  # type: ignore[union-attr]
    for nic in devices.iterfind("interface"):
        nic.attrib.pop("type")
        nic.remove(nic.find("source"))  # type: ignore[arg-type]
    serials = devices.findall("serial")
    for extra in serials[1:]:
        if extra.find("target").get("port") == "1":  # type: ignore[union-attr]
            devices.remove(extra)
    for log in devices.iterfind("serial/log"):
        log.attrib.pop("file")
    nvram = root.find("os/nvram")
    if nvram is not None:
        nvram.text = None
    for el in root.iter():
        el.tail = None
        if el.text is not None and not el.text.strip():
            el.text = None
    return root


@pytest.mark.parametrize("variant", ["bios", "uefi", "sata", "no-nic-source"])
def test_nothing_else_changes(variant: str) -> None:
    changes: dict[str, Any] = {
        "bios": {},
        "uefi": {"caps": GuestCaps(firmware="uefi"), "uefi": UEFI},
        "sata": {"caps": GuestCaps(disk_bus="sata", nic_model="e1000e", machine="q35")},
        "no-nic-source": {"inventory": SourceInventory(hostname="x"), "mappings": ()},
    }[variant]
    xml = register_xml(**changes)
    t = throwaway(xml, nvram=variant == "uefi")
    out = transient_xml(xml, t)
    before = ET.tostring(_without_the_swaps(ET.fromstring(xml)))
    after = ET.tostring(_without_the_swaps(ET.fromstring(out)))
    assert after == before


def test_the_network_has_no_forward_no_address_and_a_short_bridge() -> None:
    t = throwaway(register_xml())
    root = ET.fromstring(network_xml(t))
    assert root.findtext("name") == "p2v-verify-ab12cd34"
    assert root.find("forward") is None and root.find("ip") is None and root.find("dns") is None
    bridge = root.find("bridge")
    assert bridge is not None and bridge.get("name") == "p2vvab12cd34"
    assert len(str(bridge.get("name"))) <= 15


@pytest.mark.skipif(not shutil.which("virt-xml-validate"), reason="libvirt-clients not installed")
@pytest.mark.parametrize("uefi", [False, True])
def test_the_transient_xml_validates_against_libvirts_schema(uefi: bool, tmp_path: Path) -> None:
    xml = (register_xml(caps=GuestCaps(firmware="uefi"), uefi=UEFI) if uefi
           else register_xml())
    for name, text, kind in (("d.xml", transient_xml(xml, throwaway(xml, nvram=uefi)), "domain"),
                             ("n.xml", network_xml(throwaway(xml)), "network")):
        (tmp_path / name).write_text(text)
        result = subprocess.run(["virt-xml-validate", str(tmp_path / name), kind],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- the leftover sweep
class FakeDom:
    def __init__(self, name: str, scratch: Path | None) -> None:
        self._name = name
        meta = (f"<metadata><p2v:verify xmlns:p2v='{P2V_NS}' scratch='{scratch}'/></metadata>"
                if scratch else "")
        self.xml = f"<domain><name>{name}</name>{meta}</domain>"
        self.destroyed = False

    def name(self) -> str:
        return self._name

    def XMLDesc(self, _flags: int) -> str:  # noqa: N802 - libvirt's name
        return self.xml

    def destroy(self) -> None:
        self.destroyed = True


class FakeNet(FakeDom):
    pass


class FakeConn:
    def __init__(self, domains: list[FakeDom], networks: list[FakeNet]) -> None:
        self.domains, self.networks = domains, networks

    def listAllDomains(self, _flags: int) -> list[FakeDom]:  # noqa: N802
        return self.domains

    def listAllNetworks(self, _flags: int) -> list[FakeNet]:  # noqa: N802
        return self.networks


def test_sweep_takes_dead_checks_and_orphan_networks_only() -> None:
    pytest.importorskip("libvirt")
    from p2v.target.libvirt import sweep_transient

    alive, dead = Path("/scratch/verify-alive000"), Path("/scratch/verify-dead0000")
    domains = [FakeDom("p2v-verify-alive000", alive), FakeDom("p2v-verify-dead0000", dead),
               FakeDom("web01", None)]
    networks = [FakeNet("p2v-verify-alive000", None), FakeNet("p2v-verify-dead0000", None),
                FakeNet("p2v-verify-gone0000", None), FakeNet("default", None)]
    removed = sweep_transient(FakeConn(domains, networks), lambda p: p == alive)
    assert removed == ["p2v-verify-dead0000", "p2v-verify-dead0000", "p2v-verify-gone0000"]
    assert [d.destroyed for d in domains] == [False, True, False]
    assert [n.destroyed for n in networks] == [False, True, True, False]


def _memory(xml: str) -> list[tuple[str, str | None]]:
    root = ET.fromstring(xml)
    return [(root.find(t).text or "", root.find(t).get("unit"))  # type: ignore[union-attr]
            for t in ("memory", "currentMemory")]


def test_a_big_servers_memory_is_capped_for_the_check_and_a_small_ones_kept() -> None:
    # A 23 GiB source (the test bed's loop sources report the host's RAM): two checks at
    # once could not start on a 24 GiB conversion host ("cannot set up guest memory").
    big = dataclasses.replace(INVENTORY, memory_mib=23 * 1024)
    xml = register_xml(inventory=big)
    assert _memory(xml) == [(str(23 * 1024), "MiB")] * 2
    assert _memory(transient_xml(xml, throwaway(xml))) == [(str(CHECK_MEMORY_MIB), "MiB")] * 2
    small = register_xml()
    assert _memory(transient_xml(small, throwaway(small))) == _memory(small) == \
        [("2048", "MiB")] * 2


def test_memory_in_kib_by_default_is_read_as_kib() -> None:
    xml = register_xml()
    root = ET.fromstring(xml)
    for tag in ("memory", "currentMemory"):
        element = root.find(tag)
        assert element is not None
        element.text, element.attrib = str(8 * 1024 * 1024), {}   # 8 GiB in KiB
    capped = transient_xml(ET.tostring(root, encoding="unicode"), throwaway(xml))
    assert _memory(capped) == [(str(CHECK_MEMORY_MIB), "MiB")] * 2
