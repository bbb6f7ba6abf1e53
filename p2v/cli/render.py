"""What the CLI shows while a command runs and when it ends: progress bars, the convert
and batch screens, the convert report."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from p2v.units import human_size

if TYPE_CHECKING:
    from p2v.batch.driver import BatchResult
    from p2v.batch.ledger import PlanItem
    from p2v.batch.manifest import Manifest
    from p2v.fix.base import FixResult
    from p2v.jobs import JobStatus
    from p2v.target.request import RegisterResult


def bar_safe_printer() -> Callable[[str], None]:
    """Messages printed above the progress bars instead of through them."""
    from tqdm import tqdm

    def say(msg: str) -> None:
        tqdm.write(f"p2v: {msg}", file=sys.stderr)
    return say


class TqdmMeter:
    """One progress bar per disk on stderr: bytes of the disk done, rate, ETA, wire bytes."""

    def __init__(self, device: str, size: int, done: int, position: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=size, initial=done, unit="B", unit_scale=True,
                         unit_divisor=1024, desc=device, position=position, leave=True,
                         file=sys.stderr, mininterval=0.5)
        self._done = done

    def update(self, done_bytes: int, wire_bytes: int) -> None:
        self._bar.update(done_bytes - self._done)
        self._done = done_bytes
        self._bar.set_postfix_str(f"wire {wire_bytes / 1048576:.0f} MiB", refresh=False)

    def close(self) -> None:
        self._bar.close()


class ConvertScreen:
    """Human progress on stderr: stage lines, one progress line per disk, messages."""

    def __init__(self, verbose: bool) -> None:
        self.tty = sys.stderr.isatty()
        self.verbose = verbose
        self.last: dict[str, float] = {}
        self.disks: dict[str, tuple[int, int, int]] = {}   # device -> done, chunks, wire
        self.open_line = False

    def _line(self, text: str) -> None:
        if self.open_line:
            print(file=sys.stderr)
            self.open_line = False
        print(f"p2v: {text}", file=sys.stderr, flush=True)

    def __call__(self, event: dict[str, object]) -> None:
        kind, stage = event.get("event"), event.get("stage")
        if kind == "stage-start":
            self._line(f"[{stage}] ...")
        elif kind == "stage-skip":
            self._line(f"[{stage}] done in an earlier run")
        elif kind == "stage-done":
            self._line(f"[{stage}] done in {event.get('seconds')} s")
        elif kind == "message":
            self._line(f"  {event.get('text')}")
        elif kind == "disk-start":
            self._line(f"  {event.get('device')} -> {event.get('image')} "
                       f"({event.get('resumed_chunks')} of {event.get('chunks')} chunks "
                       "already done)")
        elif kind == "disk-complete":
            self._line(f"  {event.get('device')}: already complete")
        elif kind == "progress":
            self._progress(event)
        elif kind == "disk-done":
            self._line(f"  {event.get('device')}: copied, "
                       f"{human_size(float(str(event.get('wire_bytes') or 0)))} sent in "
                       f"{float(str(event.get('seconds') or 0)):.0f} s")

    def _progress(self, event: dict[str, object]) -> None:
        """A bar per disk and an overall line for the job, on one refreshed line."""
        device = str(event.get("device"))
        self.disks[device] = (int(str(event.get("done_chunks") or 0)),
                              max(1, int(str(event.get("chunks") or 1))),
                              int(str(event.get("wire_bytes") or 0)))
        done = sum(d for d, _t, _w in self.disks.values())
        total = sum(t for _d, t, _w in self.disks.values())
        sent = human_size(float(sum(w for _d, _t, w in self.disks.values())))
        width = max(10, 30 // len(self.disks))
        bars = "  ".join(
            f"{name.removeprefix('/dev/')} [{'#' * (width * d // t)}"
            f"{'.' * (width - width * d // t)}] {100 * d // t:3d}%"
            for name, (d, t, _w) in self.disks.items())
        text = f"  {bars}  | job {100 * done // total:3d}%, {sent} sent"
        if self.tty:
            print(f"\r{text}\x1b[K", end="", file=sys.stderr, flush=True)
            self.open_line = True
        elif time.monotonic() - self.last.get(device, 0.0) > 10 or done == total:
            self.last[device] = time.monotonic()
            self._line(text.strip())


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
        print(f"  start it (once the source is off its network): virsh -c {domain.get('uri')} "
              f"start {report.name}")
    print(f"  clean up: p2v clean {report.name} --domain --output-dir "
          f"{Path(report.work_dir).parent}  (removes the guest and the work dir)")


class BatchScreen:
    """Human progress on stderr: one line per job and stage change, copy progress every 30 s."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], float] = {}

    def __call__(self, event: dict[str, object]) -> None:
        kind, job, stage = event.get("event"), event.get("job"), event.get("stage")
        text = None
        if kind == "batch-start":
            text = (f"batch of {event.get('total')} job(s), {event.get('to_run')} to run, "
                    f"{event.get('jobs')} at a time; state in {event.get('state_dir')}")
        elif kind == "batch-job-skip":
            text = f"[{job}] skipped: {event.get('reason')}"
        elif kind == "batch-job-placed":
            text = (f"[{job}] on worker {event.get('worker')} in {event.get('work_dir')}"
                    + (" (resuming)" if event.get("resume") else ""))
        elif kind == "batch-job-retry":
            text = (f"[{job}] worker {event.get('previous_worker')} died; try "
                    f"{event.get('try')} of {event.get('tries')} on {event.get('worker')}"
                    + (" (resuming)" if event.get("resume") else " (afresh)"))
        elif kind == "batch-job-start":
            where = (f"in {event.get('work_dir')}" if event.get("worker") else
                     "submitted to the cluster")     # --scheduler: placed later
            text = (f"[{job}] {event.get('action')} (attempt {event.get('attempt')}, "
                    f"{event.get('reason')}) {where}")
        elif kind == "stage-start":
            text = f"[{job}] {stage} ..."
        elif kind == "stage-done":
            text = f"[{job}] {stage} done in {event.get('seconds')} s"
        elif kind == "progress":
            key = (str(job), str(event.get("device")))
            done, total = int(str(event.get("done_chunks") or 0)), int(str(event.get("chunks")
                                                                          or 1))
            if time.monotonic() - self.last.get(key, 0.0) > 30 or done == total:
                self.last[key] = time.monotonic()
                text = f"[{job}] {key[1]}: {100 * done // max(1, total)}% copied"
        elif kind == "batch-job-end":
            state = event.get("state")
            text = f"[{job}] {state}" + (f": {event.get('error')}" if state != "succeeded"
                                         else f" in {event.get('seconds')} s")
        elif kind == "batch-stopping":
            running = event.get("running")
            count = len(running) if isinstance(running, list) else 0
            text = f"stopping {count} running job(s); they are resumed by the next run ..."
        if text is not None:
            print(f"p2v: {text}", file=sys.stderr, flush=True)


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
