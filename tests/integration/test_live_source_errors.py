"""A live source that cannot come up says why (log tails) and leaves nothing behind.

Uses a blank disk, not a fixture: the firmware finds nothing to boot, so the failure path
runs in seconds without waiting for an image build.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from p2v.demo.image import FixtureImage
from p2v.demo.live import LiveSource, SourceStartError, generate_key


def _running(pid: int) -> bool:
    """Whether pid runs; a zombie counts as stopped (this host's pid 1 may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _blank_fixture(tmp_path: Path) -> FixtureImage:
    disk = tmp_path / "blank.raw"
    disk.write_bytes(b"")
    with disk.open("r+b") as f:
        f.truncate(64 << 20)
    key = tmp_path / "id"
    host_public = generate_key(tmp_path / "host", "host")
    generate_key(key, "client")
    return FixtureImage(
        variant="blank", directory=tmp_path, disks=(disk,), firmware="bios", nvram=None,
        hostname="blank", nic_name="eth0", mac="52:54:00:12:34:56", address="10.0.2.15/24",
        gateway="10.0.2.2", root_password="x", ssh_private_key=key,
        host_public_key=host_public, root_device="/dev/sda1",
    )


def test_timeout_names_the_firmware_log_and_cleans_up(tmp_path: Path) -> None:
    fixture = _blank_fixture(tmp_path)
    before = fixture.disks[0].read_bytes()
    source = LiveSource(fixture, memory_mib=256, boot_timeout=8, poweroff_grace=1)
    with pytest.raises(SourceStartError) as info:
        source.__enter__()
    message = str(info.value)
    assert "no SSH login within 8 s" in message
    assert "[firmware.log]" in message and "[serial.log]" in message
    assert source.pid is not None and not _running(source.pid)
    assert source.workdir is not None and not source.workdir.exists()
    assert fixture.disks[0].read_bytes() == before


def test_uefi_fixture_without_nvram_is_refused(tmp_path: Path) -> None:
    fixture = _blank_fixture(tmp_path)
    uefi = FixtureImage(**{**fixture.__dict__, "firmware": "uefi"})
    source = LiveSource(uefi)
    with pytest.raises(SourceStartError, match="no NVRAM"):
        source.__enter__()
    assert source.workdir is not None and not source.workdir.exists()
