"""p2v fix on the dracut fixture: a Debian 12 server whose initramfs is made by dracut, with
only its SATA drivers in it. It fails on virtio as copied; `p2v fix` must rebuild it with
the guest's own dracut (initramfs-tools is not there), after which it boots on virtio with
enp0s25 carrying its static address.

All `slow`: the fixture is not part of `make fixtures` (building it from scratch costs
about 5 minutes, which would push a fresh machine's `make test` towards its 30-minute
budget), so it is built on first use here and cached; the failing boot waits out dracut's
root-device timeout (rd.retry=180 counts loop rounds, each far slower than its 0.5 s under
TCG: about 10 minutes here). The default suite covers the family choice with unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_fix import (
    Fixed,
    Rerun,
    assert_boots_with_its_network,
    assert_idempotent,
    changes,
    fix_once,
    overlay,
    p2v_fix,
    rerun,
    sha256,
)

from p2v.demo.image import FixtureImage
from p2v.model import GuestCaps, SourceNic
from p2v.verify.boot import BootOptions, BootVerdict, verify_boot

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def dracut_image() -> FixtureImage:
    """The cached dracut fixture (hostname p2v-dracut, NIC enp0s25); built on first use."""
    from p2v.demo.fixtures import build_fixture

    return build_fixture("dracut")


@dataclass
class DryRun:
    result: dict[str, Any]
    kept_hash: bool


@pytest.fixture(scope="session")
def dracut_dry_run(dracut_image: FixtureImage,
                   tmp_path_factory: pytest.TempPathFactory) -> DryRun:
    disk = overlay(dracut_image, tmp_path_factory.mktemp("fix-dracut-dry"))
    before = sha256(disk)
    result, _ = p2v_fix("--dry-run", "--mac", f"{dracut_image.nic_name}={dracut_image.mac}",
                        str(disk))
    return DryRun(result, sha256(disk) == before)


@dataclass
class Before:
    verdict: BootVerdict


@pytest.fixture(scope="session")
def dracut_before(dracut_image: FixtureImage) -> Before:
    """The copied server on virtio, unfixed (verify_boot boots a throwaway overlay)."""
    return Before(verify_boot(list(dracut_image.disks),
                              BootOptions(bus="virtio", macs=(dracut_image.mac,),
                                          timeout=1500)))


@pytest.fixture(scope="session")
def fixed_dracut(dracut_image: FixtureImage, tmp_path_factory: pytest.TempPathFactory) -> Fixed:
    fixed = fix_once(dracut_image, tmp_path_factory.mktemp("fix-dracut"))
    fixed.verdict = verify_boot([fixed.disk], BootOptions(bus="virtio",
                                                          macs=(dracut_image.mac,)))
    return fixed


@pytest.fixture(scope="session")
def rerun_dracut(fixed_dracut: Fixed, tmp_path_factory: pytest.TempPathFactory) -> Rerun:
    return rerun(fixed_dracut, tmp_path_factory.mktemp("fix-dracut-rerun"))


@pytest.mark.slow
def test_dracut_guest_is_planned_with_its_own_dracut(dracut_dry_run: DryRun) -> None:
    """The distro says Debian, the guest has dracut and no initramfs-tools: dracut it is."""
    dry = dracut_dry_run.result
    assert dracut_dry_run.kept_hash
    inspection = dry["inspection"]
    assert inspection["distro"] == "debian" and inspection["family"] == "debian-dracut"
    kernel = inspection["kernels"][0]
    assert kernel["initrd"] == f"/boot/initrd.img-{kernel['version']}"
    assert kernel["boots_on_virtio"] is False
    assert kernel["virtio"]["virtio_blk"] is False          # listed with lsinitrd
    rebuild = [c for c in dry["changes"] if c["kind"] == "rebuild-initramfs"]
    assert [c["target"] for c in rebuild] == [kernel["version"]]
    assert "(dracut)" in rebuild[0]["why"]
    assert ("create", "/etc/dracut.conf.d/p2v-virtio.conf") in changes(dry)
    assert ("edit", "/etc/initramfs-tools/modules") not in changes(dry)
    assert ("regenerate-grub", "/boot/grub/grub.cfg") in changes(dry)


@pytest.mark.slow
def test_dracut_fixture_fails_on_virtio_root_device_missing(dracut_before: Before) -> None:
    verdict = dracut_before.verdict
    assert verdict.booted is False
    assert verdict.reason == "root-device-missing", (verdict.reason, verdict.evidence)
    assert any("/dev/sda1 does not exist" in line for line in verdict.evidence)
    assert any("Could not boot" in line for line in verdict.evidence)      # dracut's words


@pytest.mark.slow
def test_dracut_fixed_boots_on_virtio_with_enp0s25(fixed_dracut: Fixed,
                                                   rerun_dracut: Rerun) -> None:
    first = fixed_dracut.first
    assert first["inspection"]["family"] == "debian-dracut"
    initrd = first["inspection"]["kernels"][0]["initrd"]
    assert any(c.startswith(f"{initrd} holds virtio_pci, virtio_blk") for c in first["checks"]), \
        first["checks"]
    assert {("create", "/etc/dracut.conf.d/p2v-virtio.conf"),
            ("create", "/etc/systemd/network/10-p2v-enp0s25.link")} <= changes(first)
    pin = SourceNic(name=fixed_dracut.image.nic_name, mac=fixed_dracut.image.mac)
    assert GuestCaps.from_dict(first["caps"]) == GuestCaps(disk_bus="virtio", nic_model="virtio",
                                                           firmware="bios", pinned_nics=(pin,))
    assert_boots_with_its_network(fixed_dracut)
    assert fixed_dracut.verdict is not None and fixed_dracut.verdict.root == "/dev/vda1"
    assert rerun_dracut.dry_run_kept_hash
    assert_idempotent(fixed_dracut, rerun_dracut)
    assert sha256(Path(fixed_dracut.image.disks[0])) == fixed_dracut.cached_hash
