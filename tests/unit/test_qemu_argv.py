"""The qemu command line the boot check and the live source use."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2v.errors import InputNotFound
from p2v.verify.qemu import Machine, Nic


def test_sata_disks_and_onboard_nic_like_a_physical_board(tmp_path: Path) -> None:
    m = Machine(disks=(Path("/a.qcow2"), Path("/b.qcow2")), serial_log=tmp_path / "s.log",
                bus="sata", nics=(Nic("52:54:00:b1:05:01", "e1000e", "user:2222"),))
    argv = m.argv()
    assert argv[0] == "qemu-system-x86_64"
    assert "ahci,id=ahci0" in argv
    assert "ide-hd,drive=drv0,bus=ahci0.0,bootindex=0" in argv
    assert "ide-hd,drive=drv1,bus=ahci0.1,bootindex=1" in argv
    assert "e1000e,netdev=net0,mac=52:54:00:b1:05:01,addr=0x19" in argv
    netdev = argv[argv.index("-netdev") + 1]
    # Only loopback is ever forwarded to the guest's sshd.
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in netdev


def test_isolated_nic_reaches_no_network(tmp_path: Path) -> None:
    m = Machine(disks=(Path("/a.qcow2"),), serial_log=tmp_path / "s.log",
                nics=(Nic("52:54:00:00:00:01"), Nic("52:54:00:00:00:02")))
    argv = m.argv()
    netdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]
    assert netdevs == ["hubport,id=net0,hubid=0", "hubport,id=net1,hubid=1"]
    assert not any(a.startswith("user") for a in netdevs)
    assert "virtio-blk-pci,drive=drv0,bootindex=0" in argv


def test_uefi_needs_a_variable_store(tmp_path: Path) -> None:
    m = Machine(disks=(Path("/a"),), serial_log=tmp_path / "s", firmware="uefi")
    with pytest.raises(InputNotFound, match="UEFI variable store"):
        m.argv()
    vars_fd = tmp_path / "VARS.fd"
    argv = Machine(disks=(Path("/a"),), serial_log=tmp_path / "s", firmware="uefi",
                   nvram=vars_fd).argv()
    assert f"if=pflash,format=raw,unit=1,file={vars_fd}" in argv
    assert any("readonly=on" in a and "OVMF_CODE" in a for a in argv)


def test_the_report_port_is_the_second_serial_port(tmp_path: Path) -> None:
    """ttyS0 is the console (a getty may take it); the boot report gets ttyS1 to itself."""
    m = Machine(disks=(Path("/a"),), serial_log=tmp_path / "console",
                report_log=tmp_path / "report")
    argv = m.argv()
    serials = [argv[i + 1] for i, a in enumerate(argv) if a == "-serial"]
    assert serials == [f"file:{tmp_path / 'console'}", f"file:{tmp_path / 'report'}"]
    plain = Machine(disks=(Path("/a"),), serial_log=tmp_path / "console").argv()
    assert plain.count("-serial") == 1
