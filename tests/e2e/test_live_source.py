"""A fixture running as a live source is the "physical server" p2v meets: reached over SSH
with strict host-key checking, it shows the fixture's identity, NIC and SATA disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2v.demo.live import SourceEndpoint

pytestmark = pytest.mark.e2e


# The uefi server boots only for `make test-slow` (its inspect test is slow too).
@pytest.fixture(params=["bios", pytest.param("uefi", marks=pytest.mark.slow)])
def live(request: pytest.FixtureRequest) -> SourceEndpoint:
    endpoint: SourceEndpoint = request.getfixturevalue(f"live_source_{request.param}")
    return endpoint


def test_strict_host_key_login_shows_fixture_hostname(live: SourceEndpoint) -> None:
    assert live.fixture is not None
    assert live.ssh(["hostname"]).stdout.strip() == live.fixture.hostname


def test_unknown_host_key_is_refused(live: SourceEndpoint, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    result = live.ssh(["true"], check=False, known_hosts=empty)
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr


def test_nic_has_fixture_mac_and_address(live: SourceEndpoint) -> None:
    fixture = live.fixture
    assert fixture is not None
    links = json.loads(live.ssh(["ip", "-j", "addr", "show", "dev", fixture.nic_name]).stdout)
    (link,) = links
    assert link["address"].lower() == fixture.mac.lower()
    addresses = {f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]}
    assert fixture.address in addresses
    assert fixture.address.startswith("10.0.2.15/")


def test_disk_is_sata_sda(live: SourceEndpoint) -> None:
    names = live.ssh(["lsblk", "-dno", "NAME"]).stdout.split()
    assert "sda" in names
    assert live.disks[0] == "/dev/sda"
    assert live.ssh(["blockdev", "--getsize64", "/dev/sda"]).stdout.strip().isdigit()
