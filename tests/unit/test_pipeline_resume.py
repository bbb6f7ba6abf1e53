"""The job's stage markers and resume logic, the disk choice and the report (pure logic).

The stages themselves are replaced by recorders here; tests/integration and tests/e2e run
the real ones.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from fake_stages import FakeStages
from schema_check import assert_all_valid, assert_valid

from p2v import pipeline
from p2v.errors import ExitCode
from p2v.job import STAGES, JobSpec
from p2v.jobdir import JobLocked, WorkDir
from p2v.jobplan import choose_disks, not_carried_over
from p2v.model import DiskInfo, DmDevice, Filesystem, Inventory, NicInfo, Partition
from p2v.pipeline import run_job
from p2v.report import JobReport, load_report


def spec(tmp_path: Path, **kw: Any) -> JobSpec:
    return JobSpec(**{"source": "ssh://root@web01", "name": "web01", "output_dir": tmp_path,
                      **kw})


def test_a_rerun_continues_at_the_first_unfinished_stage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStages(monkeypatch, fail="copy")
    events: list[dict[str, Any]] = []
    first = run_job(spec(tmp_path), events.append)
    assert not first.ok and first.failed_stage == "copy"
    assert first.exit_code == ExitCode.FAILURE
    assert "rerun the same command to resume" in (first.error or "")
    assert "\n" not in (first.error or "")
    assert fake.ran == ["inspect", "preflight", "copy"]
    wd = WorkDir(tmp_path / "web01", "web01")
    assert wd.done_stages(STAGES) == ["inspect", "preflight"]
    assert json.loads((wd.path / "report.json").read_text())["failed_stage"] == "copy"
    assert events[-1]["event"] == "job-failed" and events[-1]["stage"] == "copy"
    assert_all_valid(events, "events")
    assert_valid(json.loads((wd.path / "report.json").read_text()), "report")

    fake.ran.clear()
    events.clear()
    second = run_job(spec(tmp_path), events.append)
    assert second.ok, second.error
    assert fake.ran == ["copy", "fix", "verify", "register"]
    skipped = [e["stage"] for e in events if e["event"] == "stage-skip"]
    assert skipped == ["inspect", "preflight"]
    assert [s.stage for s in second.stages] == list(STAGES)
    assert [s.earlier_run for s in second.stages] == [True, True, False, False, False, False]
    # Every event carries the job and (but for job-level ones) the stage.
    assert all(e["job"] == "web01" and "time" in e for e in events)
    assert events[0]["event"] == "job-start" and events[0]["resume_at"] == "copy"
    assert events[-1]["event"] == "job-done"
    assert_all_valid(events, "events")
    assert_all_valid([json.loads(line) for line in
                      (wd.path / "events.jsonl").read_text().splitlines()], "events")
    assert_valid(json.loads((wd.path / "report.json").read_text()), "report")

    fake.ran.clear()
    third = run_job(spec(tmp_path))
    assert third.ok and fake.ran == []         # a finished job is not run again


def test_a_later_marker_without_an_earlier_one_is_not_trusted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStages(monkeypatch)
    wd = WorkDir(tmp_path / "web01", "web01")
    wd.create()
    for stage in ("inspect", "preflight", "fix"):   # copy missing: fix stands on nothing
        wd.mark_done(stage, 1.0)
    assert wd.first_unfinished(STAGES) == "copy"
    assert run_job(spec(tmp_path)).ok
    assert fake.ran == ["copy", "fix", "verify", "register"]


def test_a_stage_whose_record_cannot_be_read_runs_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A marker stands for a record a later stage reloads: an unreadable record is no
    reason to fail the job, only to run that stage (and those after it) again."""
    fake = FakeStages(monkeypatch, fail="fix")
    run_job(spec(tmp_path))
    fake.ran.clear()

    def unreadable(wd: WorkDir) -> Any:
        raise OSError("plan.json: No such file or directory")
    monkeypatch.setattr(pipeline.stages, "load_plan", unreadable)
    report = run_job(spec(tmp_path))
    assert report.ok, report.error
    assert fake.ran == ["preflight", "copy", "fix", "verify", "register"]
    assert [s.earlier_run for s in report.stages] == [True] + [False] * 5
    assert "the record of preflight cannot be read" in (tmp_path / "web01" / "job.log").read_text()


def test_a_finished_job_with_an_unreadable_record_runs_nothing_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redoing preflight onwards would try to define the guest a second time."""
    fake = FakeStages(monkeypatch)
    assert run_job(spec(tmp_path)).ok
    fake.ran.clear()

    def unreadable(wd: WorkDir) -> Any:
        raise OSError("plan.json: No such file or directory")
    monkeypatch.setattr(pipeline.stages, "load_plan", unreadable)
    events: list[dict[str, Any]] = []
    report = run_job(spec(tmp_path), events.append)
    assert report.ok and fake.ran == []
    assert [e["stage"] for e in events if e["event"] == "stage-skip"] == list(STAGES)
    assert_all_valid(events, "events")
    assert all(s.earlier_run for s in report.stages)


def test_a_refused_rerun_still_reports_what_earlier_runs_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeStages(monkeypatch, fail="fix")
    first = run_job(spec(tmp_path))
    assert first.disk_choice == "copying sda"
    report = run_job(spec(tmp_path, disks=("/dev/sdb",)))       # another job: refused
    assert not report.ok and report.disk_choice == "copying sda"


def test_a_work_dir_of_another_source_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStages(monkeypatch, fail="fix")
    run_job(spec(tmp_path))
    fake.ran.clear()
    other = JobSpec(source="ssh://root@db02", name="web01", output_dir=tmp_path)
    report = run_job(other)
    assert not report.ok and report.exit_code == ExitCode.USAGE
    assert "belongs to another job" in (report.error or "") and "db02" not in str(fake.ran)
    assert fake.ran == []
    # Changing what only later stages use (memory, --start) is a rerun, not another job.
    assert run_job(spec(tmp_path, memory_mib=2048, start=True)).ok


def test_a_bad_name_is_refused_before_any_directory_is_made(tmp_path: Path) -> None:
    report = run_job(spec(tmp_path, name="../escape"))
    assert not report.ok and report.exit_code == ExitCode.USAGE
    assert list(tmp_path.iterdir()) == []


def test_one_run_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeStages(monkeypatch)
    with WorkDir(tmp_path / "web01", "web01"):
        with pytest.raises(JobLocked):
            WorkDir(tmp_path / "web01", "web01").__enter__()
        report = run_job(spec(tmp_path))
        assert not report.ok and "another p2v run" in (report.error or "")
    assert run_job(spec(tmp_path)).ok


def test_report_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeStages(monkeypatch)
    report = run_job(spec(tmp_path))
    data = json.loads(json.dumps(report.to_dict()))
    assert JobReport.from_dict(data) == report
    assert load_report(tmp_path / "web01") == JobReport.from_dict(
        json.loads((tmp_path / "web01" / "report.json").read_text()))


def inventory() -> Inventory:
    return Inventory(
        hostname="web01", firmware="bios", boot_disk="sdb",
        disks=(
            DiskInfo("sda", "/dev/sda", 10 << 30, copy_bytes_estimate=1 << 30,
                     partitions=(Partition("sda1"),)),
            DiskInfo("sdb", "/dev/sdb", 20 << 30, copy_bytes_estimate=2 << 30,
                     partitions=(Partition("sdb1"), Partition("sdb2"))),
            DiskInfo("sdc", "/dev/sdc", 8 << 30, removable=True),
        ),
        filesystems=(Filesystem("sdb1", "/dev/sdb1", "ext4", mountpoint="/"),
                     Filesystem("dm-0", "/dev/mapper/vg-data", "xfs", mountpoint="/data")),
        dm=(DmDevice("dm-0", "vg-data", kind="lvm", slaves=("sda1",)),),
        nics=(NicInfo("eth0", "52:54:00:00:00:01", physical=True),),
        virtual_nics=(NicInfo("br0", kind="bridge"),),
    )


def test_without_disks_every_fixed_disk_is_taken_boot_disk_first() -> None:
    chosen, why, left = choose_disks(inventory(), ())
    assert [(d.device, d.boot) for d in chosen] == [("/dev/sdb", True), ("/dev/sda", False)]
    assert "never loop, ram or optical" in why
    assert len(left) == 1 and "sdc" in left[0] and "removable" in left[0]


def test_named_disks_are_taken_as_named_and_the_rest_listed() -> None:
    chosen, why, left = choose_disks(inventory(), ("/dev/sdb", "nvme9n1"))
    assert [d.device for d in chosen] == ["/dev/sdb", "/dev/nvme9n1"]
    assert "--disk" in why
    assert sorted(x.split()[1] for x in left) == ["sda", "sdc"]


def test_what_does_not_carry_over_names_a_mount_on_a_disk_left_behind() -> None:
    chosen, _why, _left = choose_disks(inventory(), ("sdb",))
    items = not_carried_over(inventory(), chosen)
    assert any(i.startswith("/data (/dev/mapper/vg-data) lives on sda") for i in items)
    assert not any(i.startswith("/ (") for i in items)
    assert any("bridge br0" in i for i in items)
    assert any("not a snapshot" in i for i in items)
    all_disks, _w, _l = choose_disks(inventory(), ())
    assert not any("/data" in i for i in not_carried_over(inventory(), all_disks))


def test_a_dual_path_lun_is_copied_once_and_its_mounts_are_carried_over() -> None:
    base = inventory()
    inv = dataclasses.replace(
        base, boot_disk="sda",
        disks=(DiskInfo("sda", "/dev/sda", 10 << 30, partitions=(Partition("sda1"),)),
               DiskInfo("sdd", "/dev/sdd", 10 << 30, partitions=(Partition("sdd1"),))),
        filesystems=(Filesystem("dm-1", "/dev/mapper/mpatha-part1", "ext4", mountpoint="/"),),
        dm=(DmDevice("dm-0", "mpatha", "mpath-3600a", "multipath", ("sda", "sdd")),
            DmDevice("dm-1", "mpatha-part1", "part1-mpath-3600a", "other", ("dm-0",))))
    chosen, _why, left = choose_disks(inv, ())
    assert [d.name for d in chosen] == ["sda"]
    assert left == ["disk sdd is another path of multipath map mpatha (the same LUN as sda): "
                    "copied once, as sda"]
    assert not any(i.startswith("/ (") for i in not_carried_over(inv, chosen))


def test_a_job_corrected_before_any_copy_starts_afresh(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A wrong disk refused at preflight is fixed in the command (or manifest) and rerun:
    # nothing was copied, so the corrected job replaces the old one from inspect on.
    fake = FakeStages(monkeypatch, fail="preflight")
    first = run_job(spec(tmp_path, disks=("/dev/sdz",)))
    assert not first.ok and first.failed_stage == "preflight"
    fake.ran.clear()
    second = run_job(spec(tmp_path, disks=("/dev/sda",)))
    assert second.ok, second.error
    assert fake.ran == list(STAGES)
    saved = json.loads((tmp_path / "web01" / "spec.json").read_text())
    assert saved["disks"] == ["/dev/sda"]


def test_a_mismatch_refused_at_the_start_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeStages(monkeypatch, fail="fix")
    run_job(spec(tmp_path))
    report = run_job(spec(tmp_path, disks=("/dev/sdb",)))
    assert not report.ok and "stopped at start" in (report.error or ""), report.error


def test_new_macs_cannot_change_once_fix_may_have_pinned_the_old_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStages(monkeypatch, fail="fix")
    run_job(spec(tmp_path))
    fake.ran.clear()
    report = run_job(spec(tmp_path, new_macs=True))
    assert not report.ok and "new_macs was False" in (report.error or ""), report.error
    assert fake.ran == []


def test_a_spec_json_from_before_new_macs_is_the_same_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeStages(monkeypatch, fail="fix")
    run_job(spec(tmp_path))
    saved = tmp_path / "web01" / "spec.json"
    old = json.loads(saved.read_text())
    for key in ("new_macs", "images", "in_place"):   # written by a p2v without the fields
        del old[key]
    saved.write_text(json.dumps(old))
    fake.ran.clear()
    assert run_job(spec(tmp_path)).ok
    assert fake.ran == ["fix", "verify", "register"]


def test_a_job_without_a_libvirt_uri_gets_the_one_virsh_would_use_where_it_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeStages(monkeypatch)
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "test:///default")
    assert run_job(spec(tmp_path, connect="")).ok
    written = json.loads((tmp_path / "web01" / "spec.json").read_text())
    assert written["connect"] == "test:///default"


def test_a_job_from_images_imports_then_resumes_at_the_first_unfinished_stage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from p2v.job import IMAGE_STAGES, image_source

    images = (tmp_path / "lab.qcow2",)
    job = spec(tmp_path, source=image_source(images), images=images)
    fake = FakeStages(monkeypatch, fail="fix")
    first = run_job(job)
    assert not first.ok and first.failed_stage == "fix"
    assert fake.ran == ["import", "fix"]        # no inspect, preflight or copy of a live source
    fake.ran.clear()
    events: list[dict[str, Any]] = []
    second = run_job(job, events.append)
    assert second.ok, second.error
    assert fake.ran == ["fix", "verify", "register"]
    assert [e["stage"] for e in events if e["event"] == "stage-skip"] == ["import"]
    assert [s.stage for s in second.stages] == list(IMAGE_STAGES)
    # The import's values reach the report as inspect, preflight and copy would.
    assert second.disk_choice == "copying sda"
    from schema_check import assert_all_valid, assert_valid

    work = tmp_path / "web01"
    assert_valid(json.loads((work / "report.json").read_text()), "report")
    assert_all_valid([json.loads(line) for line in
                      (work / "events.jsonl").read_text().splitlines()], "events")


def test_other_images_for_the_same_work_dir_are_refused_once_imported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from p2v.job import image_source

    FakeStages(monkeypatch, fail="fix")
    a, b = (tmp_path / "a.qcow2",), (tmp_path / "b.qcow2",)
    run_job(spec(tmp_path, source=image_source(a), images=a))
    other = run_job(spec(tmp_path, source=image_source(b), images=b))
    assert not other.ok and other.exit_code == ExitCode.USAGE
    assert "a.qcow2" in (other.error or "")
