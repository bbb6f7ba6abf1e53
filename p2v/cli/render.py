"""What the CLI shows when a command ends: the convert report, the batch table, the results
of fix, register and jobs (live progress is p2v.cli.progress and p2v.cli.screens)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from p2v.job import IMAGE_PREFIX
from p2v.units import human_size

if TYPE_CHECKING:
    from p2v.batch.driver import BatchResult
    from p2v.batch.ledger import PlanItem
    from p2v.batch.manifest import Manifest
    from p2v.fix.base import FixResult
    from p2v.jobs import JobStatus
    from p2v.target.request import RegisterResult


def print_report(report: object) -> None:
    from p2v.report import JobReport

    assert isinstance(report, JobReport)
    domain = report.domain or {}
    state = "started" if domain.get("started") else "shut off"
    print(f"{report.name}: converted in {report.elapsed_s:.0f} s -> domain {domain.get('name')} "
          f"at {domain.get('uri')} ({state}; {domain.get('domain_type')}, "
          f"{domain.get('firmware')}, disks on {domain.get('disk_bus')}, NICs "
          f"{domain.get('nic_model')})")
    print(f"  {report.disk_choice}")
    for disk in report.disks:
        print(f"  disk {disk.device}: {human_size(disk.size)} -> {disk.image} "
              f"({human_size(disk.file_bytes)} on disk)")
    imported = report.source.startswith(IMAGE_PREFIX)      # --from-image: nothing sent
    if not imported:
        print(f"  bytes sent: {human_size(report.bytes_sent)} ({report.bytes_sent} B)")
    if report.downtime_s is not None:
        bound = f"; {report.downtime_bound}" if report.downtime_bound else ""
        print(f"  cutover: the source was frozen {report.downtime_s:.1f} s (freeze to thaw"
              f"{bound}); passes in sync.json")
    print("  time per stage: " + ", ".join(
        f"{s.stage} {s.seconds:.0f} s" + (" (earlier run)" if s.earlier_run else "")
        for s in report.stages))
    verdict = report.verdict
    if verdict is None:
        print("  boot check: skipped (--no-verify)")
    else:
        print(f"  boot check: BOOTED on {verdict.get('bus')} ({verdict.get('firmware')}, "
              f"{verdict.get('accel')}) in {float(verdict.get('elapsed_s') or 0):.0f} s, "
              f"NICs isolated; hostname {verdict.get('hostname')}, root {verdict.get('root')}")
        for line in report.network:
            print(f"    nic {line}")
        for line in list(verdict.get("evidence") or [])[-3:]:
            print(f"    | {line}")
    if report.not_carried_over:
        print("  not carried over:")
        for item in report.not_carried_over:
            print(f"    - {item}")
    print(f"  work dir: {report.work_dir} (log: job.log, report: report.json)")
    if not domain.get("started"):
        when = "" if imported else " (once the source is off its network)"
        print(f"  start it{when}: virsh -c {domain.get('uri')} start {report.name}")
    print(f"  clean up: p2v clean {report.name} --domain --output-dir "
          f"{Path(report.work_dir).parent}  (removes the guest and the work dir)")


def print_fix_result(result: FixResult) -> None:
    """`p2v fix`, for people: what it found, what it changed, the caps."""
    for line in result.verdict.summary:
        print(line)
    if result.plan.empty:
        print("nothing to do: the guest needs no change")
    else:
        print(f"{'planned' if result.dry_run else 'made'} {len(result.plan.changes)} "
              "change(s):")
        for change in result.plan.changes:
            print(f"  {change}")
    for warning in result.plan.warnings:
        print(f"warning: {warning}")
    for check in result.checks:
        print(f"checked: {check}")
    c = result.caps
    print(f"guest caps: disks {c.disk_bus}, NIC {c.nic_model}, {c.machine}, {c.firmware}"
          + (f" -> {result.caps_path}" if result.caps_path else " (dry run: nothing written)"))


def print_batch_plan(plan: Sequence[PlanItem], jobs: int, manifest: Manifest) -> None:
    """`p2v batch --dry-run`, for people: each job's action and why."""
    from p2v.batch.driver import ledger_path

    width = max(4, *(len(i.spec.name) for i in plan))
    print(f"{'NAME':<{width}}  ACTION  SOURCE / WHY")
    for i in plan:
        print(f"{i.spec.name:<{width}}  {i.action:<6}  {i.spec.source}: {i.reason}")
    todo = sum(1 for i in plan if i.action != "skip")
    print(f"{todo} job(s) to run, {len(plan) - todo} to skip, {jobs} at a time; work dirs "
          f"in {manifest.output_dir}; ledger {ledger_path(manifest)} (dry run: nothing "
          "changed)")
    if manifest.bandwidth_limit is not None:
        print(f"bandwidth: at most {manifest.bandwidth_limit / (1 << 20):.1f} MiB/s over all "
              "jobs running at once on a host")


def print_batch_result(result: BatchResult) -> None:
    """The batch's table: each job's state, stage, time and detail, then the counts."""
    width = max(4, *(len(j.name) for j in result.jobs))
    print(f"{'NAME':<{width}}  {'STATE':<11}  {'STAGE':<9}  {'TIME':>6}  DETAIL")
    for j in result.jobs:
        state = "skipped" if j.action == "skip" else (
            "not run" if j.action == "not-started" else j.state)
        seconds = f"{j.seconds:.0f} s" if j.seconds is not None and j.action != "skip" else "-"
        if j.state == "succeeded":
            summary = j.summary
            detail = (f"domain {summary.get('domain')} at {summary.get('uri')}"
                      + (", boot checked" if summary.get("booted") else "")
                      if summary else f"done earlier; {j.work_dir}")
        else:
            detail = (j.error or "") + (f" (log: {j.log})" if j.log else "")
        print(f"{j.name:<{width}}  {state:<11}  {j.stage or '-':<9}  {seconds:>6}  {detail}")
    counts = result.counts
    print(f"{counts['succeeded']} succeeded, {counts['failed']} failed, {counts['skipped']} "
          f"skipped" + (f", {counts['interrupted']} interrupted" if counts["interrupted"] else "")
          + (f", {counts['pending']} not started" if counts["pending"] else "")
          + f"; report {result.report_path}")
    if result.html_report:
        print(f"HTML report: {result.html_report}")


def print_register_result(result: RegisterResult) -> None:
    """`p2v register`, for people: what was defined (or written) where, its disks and NICs."""
    where = result.xml if result.output == "local" else result.uri
    state = "written" if result.output == "local" else (
        "started" if result.started else "defined")
    print(f"{result.name}: {state} ({where}); {result.domain_type}, {result.firmware}, "
          f"disks on {result.disk_bus}, NICs {result.nic_model}; uuid {result.uuid}")
    for disk in result.disks:
        print(f"  disk {disk}")
    for nic in result.nics:
        attached = nic.get("network") or nic.get("bridge")
        kind = "network" if nic.get("network") else "bridge"
        print(f"  nic  {nic['mac'] or '(new MAC)'} -> {kind} {attached}"
              + (f"  (was {nic['source_nic']})" if nic.get("source_nic") else ""))
    if result.serial_log:
        print(f"  console log: {result.serial_log}")


def print_jobs(directory: Path, jobs: Sequence[JobStatus]) -> None:
    """`p2v jobs`: one block per job, the command to run next last."""
    if not jobs:
        print(f"no convert jobs in {directory}")
        return
    for job in jobs:
        where = f" in {job.stage}" if job.stage and job.state != "done" else ""
        print(f"{job.name}: {job.state}{where} ({len(job.done)} of {len(job.stages)} stages "
              f"done) - {job.source}")
        if job.error:
            print(f"  error: {job.error}")
        if job.domain:
            print(f"  guest: {job.domain}")
        # A done job's command removes it (and its guest): say so, never call it "next".
        print(f"  {'remove' if job.state == 'done' else 'next'}:  {job.command}")
