"""Build the libvirt domain XML of a converted guest, declared with ElementTree (no libvirt here).

`plan_domain` turns the inputs (images, source inventory, guest caps, flags) into a
`DomainSpec`; `domain_xml` turns a spec into XML. Both are pure, so the XML can be checked
against golden files and written by `--output local` on a host without libvirt.
"""

from __future__ import annotations

import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from p2v.errors import UsageError
from p2v.model import CpuTopology, GuestCaps, SourceInventory, SourceNic, normalise_mac

DomainType = Literal["kvm", "qemu"]
NicKind = Literal["network", "bridge"]

DEFAULT_MEMORY_MIB = 1024
# What a source NIC without a mapping is attached to: libvirt's stock NAT network.
DEFAULT_NETWORK = "default"
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"
VNC_LISTEN = "127.0.0.1"


@dataclass(frozen=True)
class GuestDisk:
    """One disk of the guest: a file, or a volume of a libvirt storage pool."""

    format: str                     # "qcow2" or "raw": the driver type libvirt opens it with
    path: str | None = None         # type='file'
    pool: str | None = None         # type='volume' (with volume)
    volume: str | None = None


@dataclass(frozen=True)
class GuestNic:
    """One NIC of the guest; mac None lets libvirt pick one (only when the source had none)."""

    mac: str | None
    kind: NicKind
    source: str                     # libvirt network name or host bridge name
    source_nic: str | None = None   # the source NIC it replaces (name), for messages


@dataclass(frozen=True)
class UefiFiles:
    """OVMF code (read-only), the guest's own NVRAM file and the template it starts from."""

    loader: str
    nvram: str
    template: str


@dataclass(frozen=True)
class DomainSpec:
    name: str
    uuid: str
    memory_mib: int
    cpu: CpuTopology
    caps: GuestCaps
    disks: tuple[GuestDisk, ...]
    nics: tuple[GuestNic, ...]
    domain_type: DomainType = "qemu"
    uefi: UefiFiles | None = None
    serial_log: str | None = None
    description: str | None = None


# ---------------------------------------------------------------- planning
@dataclass(frozen=True)
class NicMapping:
    """One --network/--bridge flag: SRC=TARGET (src is a NIC name or MAC), or TARGET alone."""

    kind: NicKind
    target: str
    src: str | None = None

    @classmethod
    def parse(cls, kind: NicKind, text: str) -> NicMapping:
        """SRC=TARGET, SRC:TARGET (virt-v2v's spelling; SRC may be a MAC, colons and all:
        the last colon splits) or TARGET alone."""
        sep = "=" if "=" in text else ":"
        src, found, target = text.rpartition(sep)
        if found and (not src or not target):
            raise UsageError(detail=(f"--{kind} {text!r}: want SRC={kind.upper()} or "
                                     f"{kind.upper()} (or SRC:{kind.upper()}, as virt-v2v "
                                     "spells it)"))
        if not found:
            return cls(kind, text)
        return cls(kind, target, src)

    @classmethod
    def from_flags(cls, networks: Sequence[str], bridges: Sequence[str]
                   ) -> tuple[NicMapping, ...]:
        """Every --network, then every --bridge flag, as `p2v register` and a job take them."""
        return tuple([cls.parse("network", m) for m in networks]
                     + [cls.parse("bridge", m) for m in bridges])


def _matches(src: str, nic: SourceNic) -> bool:
    if src == nic.name:
        return True
    try:
        return normalise_mac(src) == nic.mac
    except UsageError:
        return False


def attach_nics(source_nics: Sequence[SourceNic], mappings: Sequence[NicMapping]) -> tuple[
        GuestNic, ...]:
    """One guest NIC per source NIC, keeping its MAC, attached where the mappings say.

    A mapping keyed by name or MAC wins over a bare one (the default for the rest); an unmapped
    NIC goes to libvirt's "default" network. Without source NICs the guest gets one NIC on the
    default mapping with a MAC libvirt picks.
    """
    defaults = [m for m in mappings if m.src is None]
    if len(defaults) > 1:
        shown = ", ".join(f"--{m.kind} {m.target}" for m in defaults)
        raise UsageError(detail=f"only one default NIC mapping is allowed, got {shown}")
    default = defaults[0] if defaults else NicMapping("network", DEFAULT_NETWORK)
    keyed = [m for m in mappings if m.src is not None]
    for mapping in keyed:
        if not any(_matches(mapping.src or "", nic) for nic in source_nics):
            known = ", ".join(f"{n.name} ({n.mac})" for n in source_nics) or "none known"
            raise UsageError(detail=(
                f"--{mapping.kind} {mapping.src}={mapping.target}: the source has no NIC named "
                f"or with MAC {mapping.src!r}; source NICs: {known}"))
    if not source_nics:
        return (GuestNic(None, default.kind, default.target),)
    nics = []
    for nic in source_nics:
        chosen = [m for m in keyed if _matches(m.src or "", nic)]
        if len(chosen) > 1:
            shown = ", ".join(f"--{m.kind} {m.src}={m.target}" for m in chosen)
            raise UsageError(detail=f"source NIC {nic.name} is mapped more than once: {shown}")
        mapping = chosen[0] if chosen else default
        nics.append(GuestNic(nic.mac, mapping.kind, mapping.target, nic.name))
    return tuple(nics)


def boot_disk_first(disks: Sequence[GuestDisk], inventory: SourceInventory) -> tuple[
        GuestDisk, ...]:
    """Images come in source order; the inventory may say another disk is the boot disk."""
    marks = [d.boot for d in inventory.disks]
    if len(marks) != len(disks) or marks.count(True) != 1:
        return tuple(disks)
    boot = marks.index(True)
    return (disks[boot], *disks[:boot], *disks[boot + 1:])


def plan_domain(
    *,
    name: str,
    disks: Sequence[GuestDisk],
    inventory: SourceInventory,
    caps: GuestCaps,
    mappings: Sequence[NicMapping] = (),
    memory_mib: int | None = None,
    vcpus: int | None = None,
    domain_type: DomainType = "qemu",
    uefi: UefiFiles | None = None,
    serial_log: str | None = None,
    uuid: str | None = None,
) -> DomainSpec:
    """Everything the domain needs, from the source's facts overridden by flags."""
    if not disks:
        raise UsageError(detail="at least one disk image is needed")
    if caps.firmware == "uefi" and uefi is None:
        raise UsageError(detail="a UEFI guest needs the OVMF loader and an NVRAM path")
    cpu = CpuTopology.flat(vcpus) if vcpus else (inventory.cpu or CpuTopology())
    # The hostname comes from the source or an --inventory file: control characters would
    # make the XML invalid (or forge lines in logs), so they are shown escaped.
    source = f" from {_printable(inventory.hostname)}" if inventory.hostname else ""
    return DomainSpec(
        name=name,
        uuid=uuid or str(uuidlib.uuid4()),
        memory_mib=memory_mib or inventory.memory_mib or DEFAULT_MEMORY_MIB,
        cpu=cpu,
        caps=caps,
        disks=boot_disk_first(disks, inventory),
        nics=attach_nics(inventory.nics, mappings),
        domain_type=domain_type,
        uefi=uefi if caps.firmware == "uefi" else None,
        serial_log=serial_log,
        description=f"converted by p2v{source}",
    )


def _printable(text: str) -> str:
    """`text` with every non-printable character as a \\xNN / \\uNNNN escape."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# ---------------------------------------------------------------- XML
def disk_target(bus: str, index: int) -> str:
    """vda, vdb, ... vdz, vdaa (virtio) or sda, ... (sata): libvirt's own naming."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return ("vd" if bus == "virtio" else "sd") + letters


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _os(domain: ET.Element, spec: DomainSpec) -> None:
    os_el = _sub(domain, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine=spec.caps.machine)
    if spec.uefi is not None:
        _sub(os_el, "loader", spec.uefi.loader, readonly="yes", type="pflash")
        _sub(os_el, "nvram", spec.uefi.nvram, template=spec.uefi.template)


def _cpu(domain: ET.Element, spec: DomainSpec) -> None:
    # TCG cannot pass the host CPU through; "maximum" is qemu's -cpu max there.
    mode = "host-passthrough" if spec.domain_type == "kvm" else "maximum"
    cpu = _sub(domain, "cpu", mode=mode, check="none")
    _sub(cpu, "topology", sockets=str(spec.cpu.sockets), dies="1", cores=str(spec.cpu.cores),
         threads=str(spec.cpu.threads))


def _disks(devices: ET.Element, spec: DomainSpec) -> None:
    bus = spec.caps.disk_bus
    for index, disk in enumerate(spec.disks):
        if disk.pool is not None:
            el = _sub(devices, "disk", type="volume", device="disk")
            _sub(el, "driver", name="qemu", type=disk.format)
            _sub(el, "source", pool=disk.pool, volume=disk.volume or "")
        else:
            el = _sub(devices, "disk", type="file", device="disk")
            _sub(el, "driver", name="qemu", type=disk.format)
            _sub(el, "source", file=disk.path or "")
        _sub(el, "target", dev=disk_target(bus, index), bus=bus)
        if index == 0:
            _sub(el, "boot", order="1")


def _nics(devices: ET.Element, spec: DomainSpec) -> None:
    for nic in spec.nics:
        el = _sub(devices, "interface", type=nic.kind)
        if nic.mac is not None:
            _sub(el, "mac", address=nic.mac)
        _sub(el, "source", **{nic.kind: nic.source})
        _sub(el, "model", type=spec.caps.nic_model)


def _consoles(devices: ET.Element, spec: DomainSpec) -> None:
    serial = _sub(devices, "serial", type="pty")
    if spec.serial_log is not None:
        # A copy of the console in a file: what `p2v verify` and a human read after boot.
        _sub(serial, "log", file=spec.serial_log, append="off")
    target = _sub(serial, "target", type="isa-serial", port="0")
    _sub(target, "model", name="isa-serial")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    channel = _sub(devices, "channel", type="unix")
    _sub(channel, "target", type="virtio", name=GUEST_AGENT_CHANNEL)
    graphics = _sub(devices, "graphics", type="vnc", port="-1", autoport="yes", listen=VNC_LISTEN)
    _sub(graphics, "listen", type="address", address=VNC_LISTEN)
    video = _sub(devices, "video")
    _sub(video, "model", type="vga", vram="16384", heads="1", primary="yes")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")


def domain_element(spec: DomainSpec) -> ET.Element:
    domain = ET.Element("domain", type=spec.domain_type)
    _sub(domain, "name", spec.name)
    _sub(domain, "uuid", spec.uuid)
    if spec.description:
        _sub(domain, "description", spec.description)
    _sub(domain, "memory", str(spec.memory_mib), unit="MiB")
    _sub(domain, "currentMemory", str(spec.memory_mib), unit="MiB")
    _sub(domain, "vcpu", str(spec.cpu.vcpus), placement="static")
    _os(domain, spec)
    features = _sub(domain, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _cpu(domain, spec)
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    devices = _sub(domain, "devices")
    _disks(devices, spec)
    _nics(devices, spec)
    _consoles(devices, spec)
    return domain


def domain_xml(spec: DomainSpec) -> str:
    """The domain XML, indented, ending in a newline."""
    root = domain_element(spec)
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


__all__ = [
    "DEFAULT_NETWORK", "DomainSpec", "DomainType", "GuestDisk", "GuestNic", "NicMapping",
    "UefiFiles", "attach_nics", "boot_disk_first", "disk_target", "domain_element",
    "domain_xml", "plan_domain",
]
