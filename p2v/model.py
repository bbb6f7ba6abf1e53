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
NicModel = Literal["virtio", "e1000e"]
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

        {"disk_bus": "virtio", "nic_model": "virtio", "machine": "q35", "firmware": "bios"}

    disk_bus is "virtio" when the guest has virtio drivers in its boot path, else "sata"
    (the fallback every Linux and Windows since Vista boots from); nic_model likewise
    "virtio" or "e1000e".
    """

    disk_bus: DiskBus = "virtio"
    nic_model: NicModel = "virtio"
    machine: MachineType = "q35"
    firmware: Firmware = "bios"

    def to_dict(self) -> dict[str, str]:
        return {"disk_bus": self.disk_bus, "nic_model": self.nic_model,
                "machine": self.machine, "firmware": self.firmware}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str = "guest caps") -> GuestCaps:
        return cls(
            disk_bus=cast(DiskBus, _choice(data, "disk_bus", ("virtio", "sata"), "virtio", what)),
            nic_model=cast(NicModel, _choice(data, "nic_model", ("virtio", "e1000e"), "virtio",
                                             what)),
            machine=cast(MachineType, _choice(data, "machine", ("q35",), "q35", what)),
            firmware=cast(Firmware, _choice(data, "firmware", ("bios", "uefi"), "bios", what)),
        )

    @classmethod
    def from_json(cls, text: str, what: str = "guest caps") -> GuestCaps:
        return cls.from_dict(_load(text, what), what)


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
