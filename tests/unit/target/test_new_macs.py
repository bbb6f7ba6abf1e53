"""--new-macs: fresh MACs for a guest whose source is still live, refused where names are pinned."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2v.errors import UsageError
from p2v.model import GuestCaps, SourceInventory, SourceNic
from p2v.target.request import RegisterRequest, check_request, fresh_mac, with_new_macs

SOURCE = SourceInventory(nics=(SourceNic("eth0", "52:54:00:b1:05:01"),
                               SourceNic("eth1", "52:54:00:b1:05:02")))
IMAGE = Path("disk.qcow2")
PINNED = GuestCaps(pinned_nics=(SourceNic("eth0", "52:54:00:b1:05:01"),))


def test_caps_json_keeps_pinned_nics() -> None:
    text = PINNED.to_json()
    assert '"nics"' in text
    assert GuestCaps.from_json(text) == PINNED
    assert "nics" not in GuestCaps().to_dict()


def test_caps_refuses_a_pin_without_a_mac() -> None:
    with pytest.raises(UsageError, match=r"nics\[0\] needs a name and a mac"):
        GuestCaps.from_json('{"nics": [{"name": "eth0"}]}')


def test_new_macs_refused_when_the_guest_pins_names() -> None:
    request = RegisterRequest("g", images=(IMAGE,), inventory=SOURCE, caps=PINNED,
                              new_macs=True)
    with pytest.raises(UsageError, match=r"pins interface names to MACs \(eth0=52:54:00:b1:05:01\)"
                       r".*--force-new-macs"):
        check_request(request)
    # Without pins there is nothing to lose: accepted.
    check_request(RegisterRequest("g", images=(IMAGE,), inventory=SOURCE, new_macs=True))


def test_force_needs_new_macs() -> None:
    request = RegisterRequest("g", images=(IMAGE,), force_new_macs=True)
    with pytest.raises(UsageError, match="--force-new-macs goes with --new-macs"):
        check_request(request)


def test_forced_new_macs_replace_every_source_mac_and_warn() -> None:
    said: list[str] = []
    request = RegisterRequest("g", images=(), inventory=SOURCE, caps=PINNED, new_macs=True,
                              force_new_macs=True)
    out = with_new_macs(request, said.append)
    old = {n.mac for n in SOURCE.nics}
    new = [n.mac for n in out.inventory.nics]
    assert [n.name for n in out.inventory.nics] == ["eth0", "eth1"]
    assert not old & set(new) and len(set(new)) == 2
    assert all(m.startswith("52:54:00:") for m in new)
    assert any("warning" in line and "eth0" in line for line in said)


def test_fresh_macs_are_valid_and_vary() -> None:
    macs = {fresh_mac() for _ in range(50)}
    assert len(macs) > 45
    assert all(len(m) == 17 and m.count(":") == 5 for m in macs)
