"""`p2v convert`: one job, inspect -> preflight -> copy -> fix -> verify -> register, resumable.

`run_job(spec)` is the whole job as one top-level, picklable call: `p2v convert` runs it in
its own process, `p2v batch` in worker processes. It reads as the job: each stage (p2v.stages,
p2v.preflight) is called with the values it needs and returns its own. A stage that an
earlier run finished is not run again: its marker in the job's work dir (p2v.jobdir) says so
and its value is reloaded from the record it wrote, so a rerun of the same spec continues at
the first stage without a marker (the copy itself resumes mid-disk through its journal).

The boot check runs before anything is registered, on a throwaway overlay of the fixed
images with every NIC off any network: a guest that does not boot is never defined, and a
failure in any stage leaves no domain defined (a half-done register is undone) and keeps the
work dir. Errors are P2VErrors: run_job catches them and returns a failed JobReport that
names the stage and how to resume, so one job's failure never escapes into a batch.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from types import TracebackType
from typing import Any, TypeVar, cast

from p2v import image_import, preflight, stages
from p2v.errors import ExitCode, P2VError, WorkDirMismatch
from p2v.events import EventSink
from p2v.job import ALL_STAGES, JobSpec, name_problem, stages_for
from p2v.jobdir import WorkDir, read_json, write_json
from p2v.libvirt_uri import default_uri
from p2v.report import JobReport, JobValues, StageTime, build_report
from p2v.secure import open_private

log = logging.getLogger(__name__)

EVENT_SCHEMA = "p2v.events/1"
# JobSpec fields a rerun must share with the run that made the work dir: the rest (memory,
# networks, --start, ...) only affect stages not run yet and may change between runs.
# new_macs: the MACs fix pinned; images, in_place: which files the guest's disks are.
_SAME_JOB = ("source", "disks", "full", "new_macs", "images", "in_place")

T = TypeVar("T")

# What the report shows of each stage, reloaded when this run did not reach it; the first
# three whenever their record exists (as they were before a later stage failed).
_REPORTED: dict[str, Callable[[WorkDir], Any]] = {
    "inspect": lambda wd: stages.load_inventory(wd), "preflight": lambda wd: stages.load_plan(wd),
    "copy": lambda wd: stages.load_disks(wd), "sync": lambda wd: stages.load_sync(wd),
    "verify": lambda wd: stages.load_verdict(wd), "register": lambda wd: stages.load_domain(wd)}
_ALWAYS_REPORTED = ("inspect", "preflight", "copy")
# What a missing, truncated or foreign record raises when it is loaded.
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, P2VError)


def run_job(spec: JobSpec, events: EventSink | None = None) -> JobReport:
    """Run (or continue) one conversion job; never raises a P2VError: the report says.

    `events` receives every event (docs/user/convert.md, schema p2v.events/1) as a dict; the same
    events are appended to the work dir's events.jsonl. KeyboardInterrupt is re-raised after
    the work dir is left consistent (markers only ever mark finished stages).
    """
    started = time.monotonic()
    if not spec.connect:        # a batch without `connect`: resolved where the job runs
        spec = replace(spec, connect=default_uri())
    problem = name_problem(spec.name)
    if problem is not None:
        return _refused(spec, problem, ExitCode.USAGE, started)
    wd = WorkDir(spec.work_dir, spec.name)
    try:
        with wd, _job_log_handler(wd), _Run(spec, wd, events, started) as run:
            run.begin()
            ctx = run.ctx
            if spec.images:
                inv, plan, disks = run.step("import", lambda: image_import.run(ctx),
                                            image_import.load)
                run.values.update(inspect=inv, preflight=plan, copy=disks)
            else:
                inv = run.step("inspect", lambda: stages.inspect(ctx), stages.load_inventory)
                plan = run.step("preflight", lambda: preflight.run(ctx, inv), stages.load_plan)
                disks = run.step("copy", lambda: stages.copy(ctx, plan), stages.load_disks)
            if spec.cutover:
                run.step("sync", lambda: stages.sync(ctx, plan), stages.load_sync)
            caps = run.step("fix", lambda: stages.fix(ctx, inv, plan, disks), stages.load_caps)
            run.step("verify", lambda: stages.verify(ctx, inv, plan, disks, caps),
                     stages.load_verdict)
            run.step("register", lambda: stages.register(ctx, inv, plan, disks, caps),
                     stages.load_domain)
        return run.report
    except P2VError as exc:
        # The work dir itself could not be set up (locked, unwritable): nothing ran.
        return _refused(spec, exc.message, exc.exit_code, started)


def _recorded(wd: WorkDir, load: Callable[[WorkDir], T]) -> T | None:
    """The stage's value from its record, or None if the record is missing or unreadable."""
    try:
        return load(wd)
    except _UNREADABLE as exc:
        wd.log(f"a stage record cannot be read: {exc}")
        return None


def _refused(spec: JobSpec, message: str, code: int, started: float) -> JobReport:
    return JobReport(name=spec.name, source=spec.source, work_dir=str(spec.work_dir),
                     ok=False, error=message, exit_code=code, failed_stage="start",
                     elapsed_s=round(time.monotonic() - started, 1))


class _Run:
    """One run of one job: the stage helper, the values the stages returned, how it ended.

    As a context manager it turns a P2VError into the failed report (the stage, how to
    resume) and lets KeyboardInterrupt and internal errors through, logged.
    """

    def __init__(self, spec: JobSpec, wd: WorkDir, events: EventSink | None,
                 started: float) -> None:
        self.spec = spec
        self.ctx = stages.JobContext(spec, wd, events)
        self.order = stages_for(spec)
        self.started = started
        self.first: str | None = None
        self.earlier: set[str] = set()
        self.reached = False
        self.running: str | None = None          # the stage whose run() is under way
        self.values: dict[str, Any] = {}
        self.report = JobReport(name=spec.name, source=spec.source, work_dir=str(wd.path),
                                ok=False)

    def begin(self) -> None:
        """Check the work dir is this job's, then say where this run starts."""
        spec, wd = self.spec, self.ctx.wd
        _check_same_job(spec, wd)
        write_json(wd.file("spec.json"), spec.to_dict())
        self.earlier = set(wd.done_stages(self.order))
        self.first = wd.first_unfinished(self.order)
        wd.log(f"run starts (pid {os.getpid()}); "
               + (f"resuming at {self.first}" if self.earlier and self.first else
                  "all stages done" if self.first is None else "fresh job"))
        self.ctx.emit({"event": "job-start", "stage": None, "schema": EVENT_SCHEMA,
                       "work_dir": str(wd.path), "source": spec.source,
                       "resume_at": self.first,
                       "done": sorted(self.earlier, key=self.order.index)})

    def step(self, name: str, run: Callable[[], T], load: Callable[[WorkDir], T]) -> T:
        """The stage's value: reloaded if it and every stage before it are done, else run
        (every later marker cleared first: they stand on this stage's output)."""
        ctx, wd = self.ctx, self.ctx.wd
        ctx.stage = name
        if not self.reached and name != self.first:
            try:
                value = load(wd)
            except _UNREADABLE as exc:
                wd.log(f"the record of {name} cannot be read: {exc}")
                if self.first is None:
                    # A finished job runs nothing again: a record it cannot read is only
                    # a gap in its report, not a reason to redo (and re-register) the guest.
                    ctx.emit({"event": "stage-skip", "reason": "done in an earlier run"})
                    return cast(T, None)
            else:
                ctx.emit({"event": "stage-skip", "reason": "done in an earlier run"})
                self.values[name] = value
                return value
            ctx.say(f"the record of {name} cannot be read: running {name} and the stages "
                    "after it again")
        self.reached = True
        self.earlier -= set(self.order[self.order.index(name):])
        wd.clear(self.order[self.order.index(name):])
        ctx.emit({"event": "stage-start"})
        t0 = time.monotonic()
        self.running = name
        value = run()
        self.running = None
        seconds = time.monotonic() - t0
        wd.mark_done(name, seconds)
        ctx.emit({"event": "stage-done", "seconds": round(seconds, 1)})
        self.values[name] = value
        return value

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        ctx, wd = self.ctx, self.ctx.wd
        error: P2VError | None = None
        failed: str | None = None
        try:
            if isinstance(exc, KeyboardInterrupt):
                wd.log(f"interrupted in {ctx.stage}")
                ctx.emit({"event": "job-interrupted", "stage": ctx.stage})
                return False
            if isinstance(exc, Exception) and not isinstance(exc, P2VError):
                wd.log(f"internal error in {ctx.stage}:\n"
                       + "".join(traceback.format_exception(kind, exc, tb)))
                return False
        finally:
            ctx.close()
        if exc is not None and not isinstance(exc, P2VError):
            return False            # SystemExit and the like: nothing to report
        if isinstance(exc, P2VError):
            error, failed = exc, self.running or ctx.stage
            wd.log(f"FAILED in {failed}: {exc.message}")
        else:
            ctx.stage = None
        self.report = self._report(error, failed)
        write_json(wd.file("report.json"), self.report.to_dict())
        if error is None:
            wd.log("job done")
            ctx.emit({"event": "job-done", "stage": None, "report": self.report.to_dict()})
        else:
            ctx.emit({"event": "job-failed", "stage": failed, "error": self.report.error,
                      "exit_code": self.report.exit_code})
        return True

    def _report(self, error: P2VError | None, failed: str | None) -> JobReport:
        wd, got = self.ctx.wd, dict(self.values)
        # A run stopped early (another job's work dir, a failed stage) still reports what
        # earlier runs left: the plan, the copied disks, a verdict and domain once done.
        for stage, load in _REPORTED.items():
            if stage not in got and (stage in _ALWAYS_REPORTED or wd.is_done(stage)):
                got[stage] = _recorded(wd, load)
        times = [StageTime(s, float(wd.marker_data(s).get("seconds", 0)), s in self.earlier)
                 for s in self.order if wd.is_done(s)]
        values = JobValues(inventory=got.get("inspect"), plan=got.get("preflight"),
                           disks=got.get("copy"), sync=got.get("sync"),
                           verdict=got.get("verify"), domain=got.get("register"))
        return build_report(self.spec, wd.path, times, values, error, failed,
                            time.monotonic() - self.started)


def _copy_started(wd: WorkDir) -> bool:
    """Whether any disk of this job has been (partly) copied into the work dir."""
    if wd.is_done("copy") or wd.is_done("import"):
        return True
    return any(p.name.endswith((".qcow2", ".qcow2.part", ".journal"))
               for p in wd.path.iterdir())


def _check_same_job(spec: JobSpec, wd: WorkDir) -> None:
    path = wd.file("spec.json")
    if not path.is_file():
        return
    old = read_json(path)
    new = spec.to_dict()
    # A key missing from an older spec.json had its field's default then.
    defaults = {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
                for f in fields(JobSpec)}      # as to_dict writes them: tuples as lists
    differs = [k for k in _SAME_JOB if old.get(k, defaults.get(k)) != new.get(k)]
    if differs and not _copy_started(wd):
        # Nothing was copied yet (e.g. a disk name was wrong and preflight refused it): the
        # corrected job simply replaces the old one, from inspect on.
        wd.clear(ALL_STAGES)
        wd.log("spec changed before any copy (" + ", ".join(differs) + "): starting afresh")
        return
    if differs:
        detail = ", ".join(f"{k} was {old.get(k)!r}" for k in differs)
        raise WorkDirMismatch(work_dir=str(wd.path), detail=detail, name=spec.name)


@contextmanager
def _job_log_handler(wd: WorkDir) -> Iterator[None]:
    """Warnings p2v's modules log (the copy's refetches, ...) go to the job's log too."""
    open_private(wd.file("job.log"), "a").close()     # 0600 before logging appends to it
    handler = logging.FileHandler(wd.file("job.log"))
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s [log] %(levelname)s %(name)s: "
                                           "%(message)s", "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("p2v")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()

