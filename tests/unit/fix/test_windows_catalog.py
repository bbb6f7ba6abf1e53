"""The virtio-win driver catalog: every shipped entry is sound, bad entries are named, and
picking drivers for a Windows version is right (including the SATA/e1000 fallback)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from p2v.fix.windows.catalog import CATALOG_PATH, CatalogError, load_catalog, parse_catalog
from p2v.model import GuestCaps, SourceInventory, SourceNic
from p2v.target.domain import GuestDisk, NicMapping, domain_xml, plan_domain

CATALOG = load_catalog()
# virtio device type of each device: modern PCI ID = 0x1040 + type, legacy subsystem = type.
VIRTIO_TYPES = {"virtio-net": 1, "virtio-blk": 2, "virtio-serial": 3, "virtio-balloon": 5,
                "virtio-rng": 4, "virtio-scsi": 8}
LEGACY_IDS = {"virtio-net": 0x1000, "virtio-blk": 0x1001, "virtio-balloon": 0x1002,
              "virtio-serial": 0x1003, "virtio-scsi": 0x1004, "virtio-rng": 0x1005}


@pytest.mark.parametrize("driver", CATALOG.drivers, ids=lambda d: d.name)
def test_every_driver_entry_is_sound(driver: object) -> None:
    from p2v.fix.windows.catalog import Driver

    assert isinstance(driver, Driver)
    assert driver.sys_file.lower() == f"{driver.sys_file.rsplit('.', 1)[0].lower()}.sys"
    assert driver.inf_file.lower().endswith(".inf")
    assert any(f.lower().endswith(".cat") for f in driver.files)
    ids = [re.fullmatch(r"PCI\\VEN_([0-9A-F]{4})&DEV_([0-9A-F]{4})(?:&SUBSYS_([0-9A-F]{4})"
                        r"([0-9A-F]{4}))?.*", p) for p in driver.pci]
    assert all(ids)
    if driver.device in VIRTIO_TYPES:
        vtype = VIRTIO_TYPES[driver.device]
        devs = {int(m.group(2), 16) for m in ids if m}
        assert {m.group(1) for m in ids if m} == {"1AF4"}
        assert devs == {LEGACY_IDS[driver.device], 0x1040 + vtype}
        legacy = next(m for m in ids if m and int(m.group(2), 16) == LEGACY_IDS[driver.device])
        assert int(legacy.group(3), 16) == vtype       # legacy subsystem id = device type
    else:
        assert {m.group(1) for m in ids if m} == {"1B36"}  # QXL: Red Hat's qemu vendor id
    assert driver.boot_critical == (driver.device in ("virtio-blk", "virtio-scsi"))
    if driver.boot_critical:
        assert driver.group == "SCSI miniport"
    known = {w.dir for w in CATALOG.windows}
    assert set(driver.windows) <= known


@pytest.mark.parametrize("version", CATALOG.windows, ids=lambda w: w.dir)
def test_every_windows_entry_gets_storage_and_network(version: object) -> None:
    from p2v.fix.windows.catalog import WindowsVersion

    assert isinstance(version, WindowsVersion)
    names = {d.name for d in CATALOG.drivers_for(version, "amd64")}
    assert {"viostor", "vioscsi", "netkvm", "balloon", "viorng", "vioser"} <= names
    assert len(names & {"qxl", "qxldod"}) == 1
    assert CATALOG.version_for(version.major, version.minor, version.variant,
                               version.min_build or None) == version


@pytest.mark.parametrize(("nt", "variant", "build", "expect"), [
    ((6, 1), "client", 7601, "w7"), ((6, 1), "server", 7601, "2k8R2"),
    ((6, 3), "server", 9600, "2k12R2"), ((10, 0), "server", 14393, "2k16"),
    ((10, 0), "server", 17763, "2k19"), ((10, 0), "server", 20348, "2k22"),
    ((10, 0), "server", 26100, "2k25"), ((10, 0), "server", 26200, "2k25"),
    ((10, 0), "client", 19045, "w10"), ((10, 0), "client", 22631, "w11"),
    ((10, 0), "server", None, "2k25"), ((5, 2), "server", 3790, None),
    ((6, 0), "server", 6002, None),
])
def test_version_lookup(nt: tuple[int, int], variant: str, build: int | None,
                        expect: str | None) -> None:
    found = CATALOG.version_for(nt[0], nt[1], variant, build)
    assert (found.dir if found else None) == expect


def test_windows_7_gets_the_xddm_qxl_and_2019_the_display_only_one() -> None:
    w7 = CATALOG.version_for(6, 1, "client", 7601)
    k19 = CATALOG.version_for(10, 0, "server", 17763)
    assert w7 is not None and k19 is not None
    assert "qxl" in {d.name for d in CATALOG.drivers_for(w7, "amd64")}
    assert "qxldod" in {d.name for d in CATALOG.drivers_for(k19, "amd64")}
    assert not w7.uses_driver_database and k19.uses_driver_database
    assert (w7.fallback_nic, k19.fallback_nic) == ("e1000", "e1000e")


def _mutate(old: str, new: str) -> str:
    text = CATALOG_PATH.read_text()
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(("old", "new", "words"), [
    ('name = "viostor"\n', "", ["driver[0]", "'name'"]),
    ('service = "netkvm"', 'service = 5', ["netkvm", "service must be a str"]),
    ('"PCI\\\\VEN_1AF4&DEV_1001&SUBSYS_00021AF4&REV_00"', '"PCI\\\\VEN_1AF4&DEV_01"',
     ["viostor", "pci", "not a PCI hardware ID"]),
    ('windows = ["2k8R2", "w7", "2k12"', 'windows = ["2k8R2", "w7x", "2k12"',
     ["viostor", "'w7x'"]),
    ('files = ["viostor.sys", "viostor.inf", "viostor.cat"]',
     'files = ["viostor.sys", "viostor.cat"]', ["viostor", "no .inf file"]),
    ('boot_critical = true\ngroup = "SCSI miniport"\nclass_guid = "{4D36E97B',
     'boot_critical = "yes"\ngroup = "SCSI miniport"\nclass_guid = "{4D36E97B',
     ["viostor", "boot_critical must be a bool"]),
    ('archs = ["amd64", "x86"]', 'archs = ["amd64", "sparc"]', ["viostor", "'sparc'"]),
    ('variant = "client"', 'variant = "desktop"', ["windows[1] (w7)", "variant"]),
    ('database = "critical-device-database"\nfallback_nic = "e1000"\npnputil = "legacy"\n\n'
     '[[windows]]\ndir = "w7"',
     'database = "driver-database"\nfallback_nic = "e1000"\npnputil = "legacy"\n\n'
     '[[windows]]\ndir = "w7"', ["2k8R2", "critical-device-database"]),
    ('schema = "p2v.drivers/1"', 'schema = "p2v.drivers/9"', ["schema"]),
    ('class_guid = "{4D36E972-E325-11CE-BFC1-08002BE10318}"', 'class_guid = "net"',
     ["netkvm", "class_guid"]),
    ('group = "Video"\noptional = true', 'group = "Video"\noptional = true\nfoo = 1',
     ["qxl", "unknown field 'foo'"]),
])
def test_a_bad_entry_is_named(old: str, new: str, words: list[str]) -> None:
    with pytest.raises(CatalogError) as err:
        parse_catalog(_mutate(old, new), "virtio-win.toml")
    message = str(err.value)
    assert message.startswith("driver catalog virtio-win.toml: ")
    for word in words:
        assert word in message
    assert err.value.exit_code == 2


def test_domain_xml_follows_windows_fallback_caps() -> None:
    """GuestCaps drive register: a Windows 7 fallback gets SATA disks and an e1000 NIC."""
    caps = GuestCaps.from_json('{"disk_bus": "sata", "nic_model": "e1000"}')
    spec = plan_domain(name="w7", disks=(GuestDisk("qcow2", "/img/w7.qcow2"),),
                       inventory=SourceInventory(nics=(SourceNic("nic0", "52:54:00:00:00:07"),)),
                       caps=caps, mappings=(NicMapping("network", "lan"),), uuid="u")
    root = ET.fromstring(domain_xml(spec))
    assert root.find("devices/disk/target").get("bus") == "sata"  # type: ignore[union-attr]
    assert root.find("devices/interface/model").get("type") == "e1000"  # type: ignore[union-attr]
