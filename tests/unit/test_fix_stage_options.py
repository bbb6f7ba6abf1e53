"""What the fix stage hands to fix_images: the job's --virtio-win, and for an imported image
no pins, MAC changes or source disk names (fix inspects it as `p2v fix IMAGE` would)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from p2v import stages
from p2v.fix.options import FixOptions
from p2v.job import JobSpec, image_source
from p2v.jobdir import WorkDir
from p2v.jobplan import JobPlan, PlannedDisk
from p2v.model import Inventory, NicInfo
from p2v.report import DiskReport


class Captured(Exception):
    pass


def _fix_options(monkeypatch: pytest.MonkeyPatch, spec: JobSpec, inv: Inventory,
                 plan: JobPlan) -> FixOptions:
    import p2v.fix.fixer
    import p2v.fix.fsck

    got: dict[str, Any] = {}

    def fake_fix(paths: list[Path], options: FixOptions, progress: Any) -> Any:
        got["options"] = options
        raise Captured

    monkeypatch.setattr(p2v.fix.fixer, "fix_images", fake_fix)
    monkeypatch.setattr(p2v.fix.fsck, "repair_filesystems", lambda paths, progress: [])
    monkeypatch.setattr(stages, "wait_until_released", lambda paths, say: None)
    ctx = stages.JobContext(spec, WorkDir(spec.work_dir, spec.name), None)
    disks = (DiskReport("/dev/sda", str(spec.work_dir / "x.qcow2"), 1 << 30, 0, 0),)
    spec.work_dir.mkdir(parents=True)
    with pytest.raises(Captured):
        stages.fix(ctx, inv, plan, disks)
    return got["options"]


def test_a_live_job_passes_its_virtio_win_and_pins(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spec = JobSpec(source="ssh://root@win01", name="win01", output_dir=tmp_path,
                   virtio_win=tmp_path / "virtio-win.iso")
    inv = Inventory(nics=(NicInfo("eth0", "52:54:00:00:00:01", physical=True),))
    plan = JobPlan(disks=(PlannedDisk("/dev/sda", "sda", True, 1 << 30, None),),
                   pins=(("eth0", "52:54:00:00:00:01"),), firmware="bios", disk_choice="",
                   not_carried_over=())
    options = _fix_options(monkeypatch, spec, inv, plan)
    assert options.virtio_win == tmp_path / "virtio-win.iso"
    assert [(p.name, p.mac) for p in options.pins] == [("eth0", "52:54:00:00:00:01")]
    assert options.source_disks == ("sda",)


def test_an_imported_image_is_fixed_without_pins_or_source_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = (tmp_path / "lab.vmdk",)
    spec = JobSpec(source=image_source(images), name="lab01", output_dir=tmp_path,
                   images=images)
    plan = JobPlan(disks=(PlannedDisk(str(images[0]), "disk1", True, 1 << 30, None),),
                   pins=(("net1", "52:54:00:00:00:02"),), firmware="uefi", disk_choice="",
                   not_carried_over=(), pin_nics=False)
    options = _fix_options(monkeypatch, spec, Inventory(firmware="uefi"), plan)
    assert options.pins == () and not options.mac_map and options.source_disks == ()
    assert options.firmware == "uefi" and options.virtio_win is None
