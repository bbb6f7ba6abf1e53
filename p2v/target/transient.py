"""Turn the domain XML register will define into the boot check's throwaway transient domain.

Pure (ElementTree only): the machine type, firmware, disk bus and targets, boot order, NIC
models and MACs, CPUs and every other device stay exactly as register defines them.
Only what must not be the real guest's changes: memory is capped at CHECK_MEMORY_MIB (a
server's RAM does not decide whether it boots, and a conversion host runs several checks
at once: two checks of a 23 GiB source could not both start on a 24 GiB host), the name
(prefix `p2v-verify-`, so a leftover is recognised), no UUID (libvirt picks one: the real
guest's may be defined already), the disks become qcow2 overlays, every NIC goes to the
check's own isolated network, the NVRAM is a scratch copy, the console log goes to the
scratch dir, a second serial port (ttyS1) logs the probe's report, and the firmware's
debug port (0x402) is logged for the diagnosis.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PREFIX = "p2v-verify-"
BRIDGE_PREFIX = "p2vv"           # + the 8-character token: within Linux's 15 characters
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
P2V_NS = "http://p2v.invalid/verify/1"   # the scratch dir, for the leftover sweep

# Enough for any server OS p2v converts to boot to its login (Windows Server wants 2 GiB).
CHECK_MEMORY_MIB = 4096
_MIB_PER_UNIT = {"b": 1 / 2**20, "bytes": 1 / 2**20, "KB": 1000 / 2**20, "k": 1 / 1024,
                 "KiB": 1 / 1024, "MB": 10**6 / 2**20, "M": 1, "MiB": 1, "GB": 10**9 / 2**20,
                 "G": 1024, "GiB": 1024, "TB": 10**12 / 2**20, "T": 2**20, "TiB": 2**20}

ET.register_namespace("qemu", QEMU_NS)
ET.register_namespace("p2v", P2V_NS)


@dataclass(frozen=True)
class Throwaway:
    """Where the check's transient domain keeps what it writes (all in one scratch dir)."""

    token: str                      # names the domain, network and bridge of one check
    scratch: Path
    overlays: Mapping[str, Path]    # disk source (file path, or pool/volume) -> its overlay
    console_log: Path
    report_log: Path
    firmware_log: Path | None = None
    nvram: Path | None = None

    @property
    def name(self) -> str:
        return PREFIX + self.token

    @property
    def network(self) -> str:
        return PREFIX + self.token

    @property
    def bridge(self) -> str:
        return BRIDGE_PREFIX + self.token


def disk_sources(xml: str) -> list[str]:
    """Each disk's source as `transient_xml` keys it: the file path, or pool/volume."""
    return [_source_key(d) for d in ET.fromstring(xml).iterfind("devices/disk[@device='disk']")]


def _source_key(disk: ET.Element) -> str:
    source = disk.find("source")
    if source is None:
        return ""
    if source.get("file"):
        return str(source.get("file"))
    return f"{source.get('pool')}/{source.get('volume')}"


def network_xml(t: Throwaway) -> str:
    """A transient network with no <forward> and no <ip>: a bare bridge, no DHCP, no NAT."""
    root = ET.Element("network")
    ET.SubElement(root, "name").text = t.network
    ET.SubElement(root, "bridge", name=t.bridge, stp="off", delay="0")
    return ET.tostring(root, encoding="unicode")


def _replace_child(parent: ET.Element, tag: str, **attrs: str) -> ET.Element:
    """Put a fresh <tag attrs/> where the old one was (or at the end)."""
    old = parent.find(tag)
    new = ET.Element(tag, attrs)
    if old is None:
        parent.append(new)
    else:
        parent.insert(list(parent).index(old), new)
        parent.remove(old)
    return new


def _disks(devices: ET.Element, t: Throwaway) -> None:
    for disk in devices.iterfind("disk[@device='disk']"):
        key = _source_key(disk)
        if key not in t.overlays:
            raise ValueError(f"no overlay for the domain's disk {key!r}")
        disk.set("type", "file")
        driver = disk.find("driver")
        if driver is None:
            driver = ET.SubElement(disk, "driver", name="qemu")
        driver.set("type", "qcow2")
        _replace_child(disk, "source", file=str(t.overlays[key]))


def _nics(devices: ET.Element, t: Throwaway) -> None:
    for nic in devices.iterfind("interface"):
        nic.set("type", "network")
        _replace_child(nic, "source", network=t.network)


def _serials(devices: ET.Element, t: Throwaway) -> None:
    serials = list(devices.iterfind("serial"))
    if serials:
        first = serials[0]
    else:
        first = ET.SubElement(devices, "serial", type="pty")
        target = ET.SubElement(first, "target", type="isa-serial", port="0")
        ET.SubElement(target, "model", name="isa-serial")
    _replace_child(first, "log", file=str(t.console_log), append="off")
    ports = [int(str(s.find("target").get("port", i)))  # type: ignore[union-attr]
             if s.find("target") is not None else i for i, s in enumerate(serials)]
    report = ET.Element("serial", type="pty")
    ET.SubElement(report, "log", file=str(t.report_log), append="off")
    target = ET.SubElement(report, "target", type="isa-serial", port=str(max(ports, default=0) + 1))
    ET.SubElement(target, "model", name="isa-serial")
    last = serials[-1] if serials else first
    devices.insert(list(devices).index(last) + 1, report)


def _qemu_escape(path: Path) -> str:
    return str(path).replace(",", ",,")     # qemu's option syntax doubles a literal comma


def transient_xml(xml: str, t: Throwaway) -> str:
    """The domain XML `xml` made into the boot check's throwaway domain (see the module)."""
    root = ET.fromstring(xml)
    name = root.find("name")
    real = name.text if name is not None else "?"
    _replace_child(root, "name").text = t.name
    uuid = root.find("uuid")
    if uuid is not None:
        root.remove(uuid)
    _replace_child(root, "description").text = f"p2v boot check of {real} (transient)"
    # Right after the description: libvirt wants <metadata> before the resources.
    metadata = ET.Element("metadata")
    ET.SubElement(metadata, f"{{{P2V_NS}}}verify", domain=str(real), scratch=str(t.scratch))
    old = root.find("metadata")
    if old is not None:
        root.remove(old)
    root.insert(list(root).index(root.find("description")) + 1, metadata)  # type: ignore[arg-type]
    nvram = root.find("os/nvram")
    if nvram is not None:
        if t.nvram is None:
            raise ValueError("a UEFI domain's check needs a scratch NVRAM path")
        nvram.text = str(t.nvram)
    _cap_memory(root)
    devices = root.find("devices")
    if devices is None:
        raise ValueError("the domain XML has no <devices>")
    _disks(devices, t)
    _nics(devices, t)
    _serials(devices, t)
    if t.firmware_log is not None:
        # SeaBIOS and OVMF log to I/O port 0x402 ("No bootable device" shows there only).
        cmdline = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
        for arg in ("-chardev", f"file,id=p2vfwlog,path={_qemu_escape(t.firmware_log)}",
                    "-device", "isa-debugcon,iobase=0x402,chardev=p2vfwlog"):
            ET.SubElement(cmdline, f"{{{QEMU_NS}}}arg", value=arg)
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def _cap_memory(root: ET.Element) -> None:
    for tag in ("memory", "currentMemory"):
        element = root.find(tag)
        if element is None or not (element.text or "").strip():
            continue
        unit = element.get("unit", "KiB")
        if unit not in _MIB_PER_UNIT:
            raise ValueError(f"the domain XML's <{tag}> has an unknown unit {unit!r}")
        if int(element.text or "0") * _MIB_PER_UNIT[unit] > CHECK_MEMORY_MIB:
            element.text = str(CHECK_MEMORY_MIB)
            element.set("unit", "MiB")


def _verify_metadata(xml: str, key: str) -> str | None:
    found = ET.fromstring(xml).find(f"metadata/{{{P2V_NS}}}verify")
    return found.get(key) if found is not None else None


def scratch_of(xml: str) -> Path | None:
    """The scratch dir a (leftover) check's domain XML names in its metadata, if any."""
    scratch = _verify_metadata(xml, "scratch")
    return Path(scratch) if scratch else None


def checked_domain(xml: str) -> str | None:
    """The name of the guest a check's domain XML is the check of, if it names one."""
    return _verify_metadata(xml, "domain")


__all__ = ["PREFIX", "Throwaway", "checked_domain", "disk_sources", "network_xml", "scratch_of",
           "transient_xml"]
