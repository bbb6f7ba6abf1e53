"""Declare a qemu machine (disks, firmware, NICs, serial log) and turn it into an argv."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from p2v.errors import InputNotFound
from p2v.firmware import ovmf_code

Bus = Literal["virtio", "sata"]
Firmware = Literal["bios", "uefi"]
NicModel = Literal["virtio", "e1000e", "e1000"]

# Physical boards put their onboard NIC at 00:19.0, which systemd names enp0s25.
ONBOARD_NIC_SLOT = 0x19


@dataclass(frozen=True)
class Nic:
    mac: str
    model: NicModel = "virtio"
    # "isolated": a hub port wired to nothing (link up, no traffic leaves the guest);
    # "user:PORT": user-mode networking with guest port 22 forwarded to 127.0.0.1:PORT.
    network: str = "isolated"


@dataclass(frozen=True)
class Machine:
    disks: tuple[Path, ...]
    serial_log: Path
    report_log: Path | None = None     # a second serial port (ttyS1) for the boot report
    bus: Bus = "virtio"
    firmware: Firmware = "bios"
    nvram: Path | None = None
    nics: tuple[Nic, ...] = ()
    memory_mib: int = 1024
    vcpus: int = 1
    accel: str = "tcg"
    disk_format: str = "qcow2"
    debugcon_log: Path | None = None
    qmp_socket: Path | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)

    def argv(self) -> list[str]:
        """The qemu command line: q35, headless, console on the first serial port."""
        argv = [
            "qemu-system-x86_64",
            "-machine", f"q35,accel={self.accel}",
            "-cpu", "host" if self.accel == "kvm" else "max",
            "-m", str(self.memory_mib),
            "-smp", str(self.vcpus),
            "-display", "none",
            "-nodefaults",
            "-no-user-config",
            "-serial", f"file:{self.serial_log}",
            "-boot", "strict=on",
        ]
        if self.report_log is not None:
            argv += ["-serial", f"file:{self.report_log}"]
        if self.debugcon_log is not None:
            # SeaBIOS and OVMF log to I/O port 0x402: it shows "no bootable device".
            argv += [
                "-chardev", f"file,id=fwlog,path={self.debugcon_log}",
                "-device", "isa-debugcon,iobase=0x402,chardev=fwlog",
            ]
        if self.qmp_socket is not None:
            argv += ["-qmp", f"unix:{self.qmp_socket},server=on,wait=off"]
        if self.firmware == "uefi":
            if self.nvram is None:
                raise InputNotFound(what="UEFI variable store (--nvram)", path="(none given)")
            argv += [
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={ovmf_code()}",
                "-drive", f"if=pflash,format=raw,unit=1,file={self.nvram}",
            ]
        if self.bus == "sata":
            argv += ["-device", "ahci,id=ahci0"]
        for index, disk in enumerate(self.disks):
            drive = f"drv{index}"
            argv += ["-drive", f"file={disk},format={self.disk_format},if=none,id={drive}"]
            if self.bus == "sata":
                argv += ["-device", f"ide-hd,drive={drive},bus=ahci0.{index},bootindex={index}"]
            else:
                argv += ["-device", f"virtio-blk-pci,drive={drive},bootindex={index}"]
        for index, nic in enumerate(self.nics):
            argv += _nic_argv(index, nic)
        argv += ["-device", "virtio-rng-pci"] if self.bus == "virtio" else []
        return argv + list(self.extra)


def _nic_argv(index: int, nic: Nic) -> list[str]:
    """One NIC: its netdev (isolated hub or user-mode with SSH forwarded) and device model."""
    argv: list[str] = []
    netdev = f"net{index}"
    if nic.network == "isolated":
        argv += ["-netdev", f"hubport,id={netdev},hubid={index}"]
    elif nic.network.startswith("user:"):
        port = int(nic.network.split(":", 1)[1])
        argv += [
            "-netdev",
            f"user,id={netdev},net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:{port}-:22",
        ]
    else:
        raise ValueError(f"unknown network {nic.network!r}")
    if nic.model == "e1000e":
        slot = f",addr={ONBOARD_NIC_SLOT + index:#x}"
        argv += ["-device", f"e1000e,netdev={netdev},mac={nic.mac}{slot}"]
    elif nic.model == "e1000":
        argv += ["-device", f"e1000,netdev={netdev},mac={nic.mac}"]
    else:
        argv += ["-device", f"virtio-net-pci,netdev={netdev},mac={nic.mac}"]
    return argv
