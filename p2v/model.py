"""Frozen values passed between stages: what the source is (inventory) and what the guest can use.

Only the subset `p2v register` needs exists so far. `p2v inspect` (inventory) and `p2v fix`
(GuestCaps) will produce richer documents; their JSON readers here accept a documented
minimal subset and ignore keys they do not know, so those stages can add fields freely.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from p2v.errors import UsageError

DiskBus = Literal["virtio", "sata"]
NicModel = Literal["virtio", "e1000e", "e1000"]
Firmware = Literal["bios", "uefi"]
MachineType = Literal["q35"]

_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def _choice(data: dict[str, Any], key: str, allowed: tuple[str, ...], default: str,
            what: str) -> str:
    value = str(data.get(key, default))
    if value not in allowed:
        raise UsageError(detail=f"{what}: {key} must be one of {', '.join(allowed)}, "
                                f"not {value!r}")
    return value


def _load(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(detail=f"{what} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(detail=f"{what} must be a JSON object")
    return data


def normalise_mac(text: str, what: str = "MAC") -> str:
    mac = text.strip().lower().replace("-", ":")
    if not _MAC.fullmatch(mac):
        raise UsageError(detail=f"{what}: not a MAC address: {text!r} (want aa:bb:cc:dd:ee:ff)")
    return mac


@dataclass(frozen=True)
class GuestCaps:
    """What the converted guest can use: the fix stage's answer, the domain builder's input.

    JSON (all keys optional, defaults shown)::

        {"disk_bus": "virtio", "nic_model": "virtio", "machine": "q35", "firmware": "bios",
         "nics": [{"name": "eth0", "mac": "52:54:00:12:34:56"}]}

    nics lists the interface names the fix stage pinned to MACs (`pinned_nics`): a guest
    registered with other MACs would rename those interfaces and lose their configuration.
    disk_bus is "virtio" when the guest has virtio drivers in its boot path, else "sata"
    (the fallback every Linux and Windows since Vista boots from); nic_model likewise
    "virtio" or "e1000e" ("e1000" for Windows 7 / 2008 R2 without netkvm: no inbox e1000e
    driver there).
    """

    disk_bus: DiskBus = "virtio"
    nic_model: NicModel = "virtio"
    machine: MachineType = "q35"
    firmware: Firmware = "bios"
    pinned_nics: tuple[SourceNic, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"disk_bus": self.disk_bus, "nic_model": self.nic_model,
                                "machine": self.machine, "firmware": self.firmware}
        if self.pinned_nics:
            data["nics"] = [{"name": n.name, "mac": n.mac} for n in self.pinned_nics]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str = "guest caps") -> GuestCaps:
        return cls(
            disk_bus=cast(DiskBus, _choice(data, "disk_bus", ("virtio", "sata"), "virtio", what)),
            nic_model=cast(NicModel, _choice(data, "nic_model", ("virtio", "e1000e", "e1000"),
                                             "virtio", what)),
            machine=cast(MachineType, _choice(data, "machine", ("q35",), "q35", what)),
            firmware=cast(Firmware, _choice(data, "firmware", ("bios", "uefi"), "bios", what)),
            pinned_nics=_pinned_nics(data.get("nics", []), what),
        )

    @classmethod
    def from_json(cls, text: str, what: str = "guest caps") -> GuestCaps:
        return cls.from_dict(_load(text, what), what)


def _pinned_nics(value: Any, what: str) -> tuple[SourceNic, ...]:
    if not isinstance(value, list):
        raise UsageError(detail=f"{what}: nics must be a list of {{name, mac}} objects")
    pins = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or "name" not in item or "mac" not in item:
            raise UsageError(detail=f"{what}: nics[{index}] needs a name and a mac")
        pins.append(SourceNic(str(item["name"]), normalise_mac(str(item["mac"]),
                                                                f"{what}: nics[{index}]")))
    return tuple(pins)


@dataclass(frozen=True)
class CpuTopology:
    """The source's CPUs as sockets x cores x threads (vcpus is their product)."""

    sockets: int = 1
    cores: int = 1
    threads: int = 1

    @property
    def vcpus(self) -> int:
        return self.sockets * self.cores * self.threads

    @classmethod
    def flat(cls, vcpus: int) -> CpuTopology:
        """N vCPUs as one socket of N cores: what a guest licensed per socket expects."""
        return cls(sockets=1, cores=vcpus, threads=1)


@dataclass(frozen=True)
class SourceNic:
    """One network interface of the source: its name inside the OS and its MAC."""

    name: str
    mac: str


@dataclass(frozen=True)
class SourceDisk:
    """One disk of the source, in source order; boot marks the disk the firmware boots."""

    name: str
    boot: bool = False


@dataclass(frozen=True)
class SourceInventory:
    """What the source machine is, as far as registering its guest needs.

    Minimal JSON accepted now (every key optional; `p2v inspect` will write a superset)::

        {
          "hostname": "web01",
          "firmware": "bios" | "uefi",
          "memory_mib": 4096,
          "cpu": {"sockets": 1, "cores": 4, "threads": 2},   # or "cpus": 8
          "nics": [{"name": "eth0", "mac": "52:54:00:12:34:56"}],
          "disks": [{"name": "sda", "boot": true}, {"name": "sdb"}]
        }
    """

    hostname: str | None = None
    firmware: Firmware | None = None
    memory_mib: int | None = None
    cpu: CpuTopology | None = None
    nics: tuple[SourceNic, ...] = ()
    disks: tuple[SourceDisk, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.hostname is not None:
            data["hostname"] = self.hostname
        if self.firmware is not None:
            data["firmware"] = self.firmware
        if self.memory_mib is not None:
            data["memory_mib"] = self.memory_mib
        if self.cpu is not None:
            data["cpu"] = {"sockets": self.cpu.sockets, "cores": self.cpu.cores,
                           "threads": self.cpu.threads}
        data["nics"] = [{"name": n.name, "mac": n.mac} for n in self.nics]
        data["disks"] = [{"name": d.name, "boot": d.boot} for d in self.disks]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str = "inventory") -> SourceInventory:
        try:
            cpu: CpuTopology | None = None
            if isinstance(data.get("cpu"), dict):
                c = data["cpu"]
                cpu = CpuTopology(int(c.get("sockets", 1)), int(c.get("cores", 1)),
                                  int(c.get("threads", 1)))
            elif data.get("cpus") is not None:
                cpu = CpuTopology.flat(int(data["cpus"]))
            if cpu is not None and min(cpu.sockets, cpu.cores, cpu.threads) < 1:
                raise ValueError("cpu counts must be positive")
            memory = int(data["memory_mib"]) if data.get("memory_mib") is not None else None
            if memory is not None and memory < 1:
                raise ValueError("memory_mib must be positive")
            nics = tuple(
                SourceNic(str(n["name"]), normalise_mac(str(n["mac"]), f"{what}: nic {n['name']}"))
                for n in data.get("nics", [])
            )
            disks = tuple(SourceDisk(str(d.get("name", f"disk{i}")), bool(d.get("boot", False)))
                          for i, d in enumerate(data.get("disks", [])))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(detail=f"{what}: unreadable field ({exc})") from None
        firmware = data.get("firmware")
        if firmware is not None:
            firmware = _choice(data, "firmware", ("bios", "uefi"), "bios", what)
        names = [n.name for n in nics]
        if len(set(names)) != len(names):
            raise UsageError(detail=f"{what}: NIC names repeat: {', '.join(names)}")
        hostname = data.get("hostname")
        return cls(hostname=str(hostname) if hostname is not None else None,
                   firmware=cast(Firmware | None, firmware), memory_mib=memory, cpu=cpu,
                   nics=nics, disks=disks)

    @classmethod
    def from_json(cls, text: str, what: str = "inventory") -> SourceInventory:
        return cls.from_dict(_load(text, what), what)


__all__ = [
    "CpuTopology", "DiskBus", "Firmware", "GuestCaps", "NicModel", "SourceDisk",
    "SourceInventory", "SourceNic", "normalise_mac",
]


# ---------------------------------------------------------------------------------------------
# The full inventory `p2v inspect` writes (schema p2v.inventory/1, docs/user/inventory.md).
#
# Its JSON is a superset of SourceInventory's: hostname, firmware, memory_mib, cpu
# {sockets, cores, threads}, nics [{name, mac}] and disks [{name, boot}] mean the same there,
# so `p2v register --inventory` reads `p2v inspect --json` output as it is. Every value a
# source could not give is null (unknown), never guessed.

INVENTORY_SCHEMA = "p2v.inventory/1"


@dataclass(frozen=True)
class OsInfo:
    """/etc/os-release and uname: what the source runs."""

    id: str | None = None              # debian, rhel, sles, ...
    version_id: str | None = None
    pretty_name: str | None = None
    id_like: str | None = None
    kernel: str | None = None          # uname -r
    arch: str | None = None            # uname -m


@dataclass(frozen=True)
class CpuInfo:
    """/proc/cpuinfo: sockets x cores (per socket) x threads (per core) = logical CPUs."""

    sockets: int = 1
    cores: int = 1
    threads: int = 1
    model: str | None = None

    @property
    def logical(self) -> int:
        return self.sockets * self.cores * self.threads


@dataclass(frozen=True)
class Filesystem:
    """A filesystem (or swap area, LVM PV label, RAID member) found on a block device.

    device is the kernel name (sda1, dm-0, md0); used/free come from df and are known only
    for mounted filesystems.
    """

    device: str
    path: str | None = None            # /dev/sda1, /dev/mapper/vg0-root
    type: str | None = None            # ext4, xfs, vfat, swap, LVM2_member, linux_raid_member
    uuid: str | None = None
    label: str | None = None
    mountpoint: str | None = None      # "[SWAP]" for active swap
    size_bytes: int | None = None      # the filesystem's own size (df)
    used_bytes: int | None = None
    free_bytes: int | None = None


@dataclass(frozen=True)
class Partition:
    name: str                          # kernel name: sda1, nvme0n1p2
    number: int | None = None
    start_bytes: int | None = None
    size_bytes: int | None = None
    type: str | None = None            # GPT type GUID or MBR type code (lsblk PARTTYPE)
    content: str | None = None         # what is on it: ext4, swap, LVM2_member, ...


@dataclass(frozen=True)
class DiskInfo:
    """A whole disk of the source, with the bytes a copy of it will send at most."""

    name: str                          # kernel name: sda, nvme0n1, cciss!c0d0
    path: str
    size_bytes: int | None = None
    model: str | None = None
    vendor: str | None = None
    serial: str | None = None
    transport: str | None = None       # sata, sas, nvme, usb (lsblk TRAN)
    rotational: bool | None = None
    removable: bool | None = None
    read_only: bool | None = None
    table: str | None = None           # gpt, dos, or null: none/unknown
    partitions: tuple[Partition, ...] = ()
    boot: bool = False
    copy_bytes_estimate: int | None = None
    wwid: str | None = None            # sysfs device/wwid or wwid: naa.…, eui.…, t10.…


@dataclass(frozen=True)
class LvmPv:
    device: str                        # kernel name of the PV (sda3)
    vg: str | None = None
    size_bytes: int | None = None
    free_bytes: int | None = None


@dataclass(frozen=True)
class LvmVg:
    name: str
    size_bytes: int | None = None
    free_bytes: int | None = None
    pvs: tuple[str, ...] = ()


@dataclass(frozen=True)
class LvmLv:
    name: str
    vg: str
    device: str | None = None          # dm-0
    path: str | None = None            # /dev/mapper/vg0-root
    size_bytes: int | None = None


@dataclass(frozen=True)
class LvmInfo:
    pvs: tuple[LvmPv, ...] = ()
    vgs: tuple[LvmVg, ...] = ()
    lvs: tuple[LvmLv, ...] = ()


@dataclass(frozen=True)
class MdArray:
    name: str                          # md0
    level: str | None = None           # raid1, raid5, ...
    devices: tuple[str, ...] = ()      # member kernel names
    size_bytes: int | None = None


@dataclass(frozen=True)
class DmDevice:
    device: str                        # dm-0
    name: str | None = None            # vg0-root
    uuid: str | None = None            # LVM-..., CRYPT-..., mpath-...
    kind: str | None = None            # lvm, crypt, multipath, other
    slaves: tuple[str, ...] = ()
    size_bytes: int | None = None


@dataclass(frozen=True)
class NicInfo:
    """A network interface; `physical` ones (with a device behind them) become guest NICs."""

    name: str
    mac: str | None = None
    driver: str | None = None
    addresses: tuple[str, ...] = ()    # CIDR: 10.0.2.15/24, fe80::1/64
    state: str | None = None           # up, down, unknown
    mtu: int | None = None
    speed_mbps: int | None = None
    physical: bool = False
    kind: str | None = None            # bridge, bond, or null
    master: str | None = None          # the bridge/bond it is enslaved to


@dataclass(frozen=True)
class Inventory:
    """What `p2v inspect` learned about a running source (schema p2v.inventory/1)."""

    hostname: str | None = None
    firmware: Firmware | None = None
    os: OsInfo = field(default_factory=OsInfo)
    cpu: CpuInfo | None = None
    memory_mib: int | None = None      # MemTotal rounded up to 128 MiB (installed RAM)
    machine: dict[str, str] = field(default_factory=dict)   # DMI: sys_vendor, product_name...
    disks: tuple[DiskInfo, ...] = ()
    filesystems: tuple[Filesystem, ...] = ()
    lvm: LvmInfo = field(default_factory=LvmInfo)
    md: tuple[MdArray, ...] = ()
    dm: tuple[DmDevice, ...] = ()
    nics: tuple[NicInfo, ...] = ()     # physical interfaces, in ifindex order
    virtual_nics: tuple[NicInfo, ...] = ()   # bridges, bonds, VLANs, tunnels (not lo)
    boot_disk: str | None = None
    copy_bytes_estimate: int | None = None
    unknown: tuple[str, ...] = ()      # what could not be read, and why

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"schema": INVENTORY_SCHEMA}
        data.update(_plain(self))
        if self.cpu is not None:
            data["cpu"]["logical"] = self.cpu.logical
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def source_inventory(self) -> SourceInventory:
        """The subset `p2v register` uses (the same reading as SourceInventory.from_dict)."""
        return SourceInventory.from_dict(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str = "inventory") -> Inventory:
        schema = data.get("schema")
        if schema != INVENTORY_SCHEMA:
            raise UsageError(detail=f"{what}: schema is {schema!r}, want {INVENTORY_SCHEMA!r}")
        try:
            return cast(Inventory, _from_plain(cls, data))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(detail=f"{what}: unreadable field ({exc})") from None

    @classmethod
    def from_json(cls, text: str, what: str = "inventory") -> Inventory:
        return cls.from_dict(_load(text, what), what)


def _plain(value: Any) -> Any:
    """Dataclasses to dicts, tuples to lists (dataclasses.asdict keeps tuples)."""
    if hasattr(value, "__dataclass_fields__"):
        return {f: _plain(getattr(value, f)) for f in value.__dataclass_fields__}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _from_plain(kind: Any, value: Any) -> Any:
    """The inverse of _plain for the inventory's field types; unknown keys are ignored."""
    import types
    import typing

    if value is None:
        return None
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        return _from_plain(inner[0], value) if len(inner) == 1 else value
    if origin is tuple:
        (item, *_rest) = typing.get_args(kind)
        return tuple(_from_plain(item, v) for v in value)
    if origin is dict:
        return {str(k): str(v) for k, v in value.items()}
    if origin is Literal:
        return str(value)
    if hasattr(kind, "__dataclass_fields__"):
        hints = typing.get_type_hints(kind)
        known = {k: _from_plain(hints[k], v) for k, v in dict(value).items()
                 if k in kind.__dataclass_fields__ and k in hints}
        return kind(**known)
    if kind is bool:
        return bool(value)
    if kind is int:
        return int(value)
    if kind is str:
        return str(value)
    return value


__all__ += [
    "CpuInfo", "DiskInfo", "DmDevice", "Filesystem", "INVENTORY_SCHEMA", "Inventory",
    "LvmInfo", "LvmLv", "LvmPv", "LvmVg", "MdArray", "NicInfo", "OsInfo", "Partition",
]
