"""Drive a batch: plan from the ledger, keep N jobs running, record every change, report.

The driver knows nothing about how a job runs: it hands JobSpecs to a pool (local child
processes, or Dask workers with --scheduler) and turns the pool's events, placements and
outcomes into ledger transitions, `--json` events and the batch report.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from p2v.batch.execute import JobOutcome, stage_of
from p2v.batch.htmlview import HTML_FILE, write_batch_html
from p2v.batch.ledger import Ledger, PlanItem, StateLock, decide
from p2v.batch.manifest import Manifest
from p2v.batch.pool import LocalPool, PoolDone, PoolEvent, PoolMessage, PoolPlaced
from p2v.errors import ExitCode, P2VError
from p2v.events import EventSink
from p2v.job import JobSpec
from p2v.secure import private_dir, replace_private

log = logging.getLogger(__name__)

REPORT_SCHEMA = "p2v.batch-report/1"
LEDGER_FILE = "ledger.sqlite"
# How long stopped jobs get to clean up (stop their helpers, close the appliance) before
# their process groups are killed.
STOP_GRACE = 60.0
# How often a job may be started in one run when its worker dies under it (cluster runs).
DEFAULT_TRIES = 3


class JobPool(Protocol):
    """Where jobs run: LocalPool, or DaskPool (which also has `cancel(name)` and `slots()`)."""

    @property
    def running(self) -> list[str]: ...
    def free_slots(self) -> int: ...
    def submit(self, spec: JobSpec) -> str: ...
    def poll(self, timeout: float) -> list[PoolMessage]: ...
    def stop(self, grace: float = STOP_GRACE) -> list[PoolMessage]: ...
    def close(self) -> None: ...


@dataclass
class JobResult:
    """One manifest entry after this run: a row of the summary and of the report."""

    name: str
    source: str
    action: str                     # run | resume | skip | not-started
    reason: str
    state: str                      # the ledger state after this run
    stage: str | None
    attempts: int
    seconds: float | None
    error: str | None
    exit_code: int | None
    work_dir: str
    report_path: str | None
    log: str | None
    worker: str | None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchResult:
    manifest: str
    run_id: str
    state_dir: str
    jobs_in_parallel: int
    started: float
    finished: float
    interrupted: bool
    jobs: list[JobResult]
    report_path: str | None = None
    html_report: str | None = None       # the page beside the ledger (p2v.batch.htmlview)

    @property
    def counts(self) -> dict[str, int]:
        out = {"succeeded": 0, "failed": 0, "skipped": 0, "interrupted": 0, "pending": 0}
        for job in self.jobs:
            if job.action == "skip":
                out["skipped"] += 1
            elif job.state in out:
                out[job.state] += 1
        return out

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return ExitCode.INTERRUPTED
        ok = all(j.state == "succeeded" for j in self.jobs)
        return ExitCode.OK if ok else ExitCode.FAILURE

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(schema=REPORT_SCHEMA, counts=self.counts, exit_code=self.exit_code)
        return data


def ledger_path(manifest: Manifest) -> Path:
    return manifest.state_dir / LEDGER_FILE


def plan_batch(manifest: Manifest) -> list[PlanItem]:
    """What a run would do, read from the ledger without changing anything (--dry-run)."""
    path = ledger_path(manifest)
    if not path.is_file():
        return [decide(spec, None) for spec in manifest.specs]
    with Ledger.open(path, readonly=True) as ledger:
        return ledger.plan(manifest.specs)


def _now() -> float:
    return round(time.time(), 3)


def run_batch(manifest: Manifest, *, jobs: int, events: EventSink,
              pool: JobPool | None = None, grace: float = STOP_GRACE,
              pool_factory: Callable[[str], JobPool] | None = None,
              tries: int = DEFAULT_TRIES) -> BatchResult:
    """Run every unfinished job of MANIFEST, JOBS at a time; Ctrl-C stops them cleanly.

    POOL_FACTORY(run_id) makes the pool instead (a cluster pool names its queues by run);
    TRIES bounds how often a job is started again after its worker died.
    """
    state_dir = manifest.state_dir
    emit = _batch_emitter(events)
    run_id = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    started = _now()
    with StateLock(state_dir), Ledger.open(ledger_path(manifest)) as ledger:
        recovered = ledger.recover()
        plan = ledger.plan(manifest.specs)
        for item in plan:
            ledger.enrol(item.spec)
        if pool is None:
            pool = pool_factory(run_id) if pool_factory is not None else \
                LocalPool(jobs, state_dir / "logs")
        slots = getattr(pool, "slots", None)
        jobs = slots() if callable(slots) else jobs
        logs = {item.spec.name: str(state_dir / "logs" / f"{item.spec.name}.log")
                for item in plan}
        emit({"event": "batch-start", "manifest": str(manifest.path), "run": run_id,
              "state_dir": str(state_dir), "jobs": jobs, "total": len(plan),
              "to_run": sum(1 for i in plan if i.action != "skip"),
              "recovered": recovered})
        for item in plan:
            if item.action == "skip":
                emit({"event": "batch-job-skip", "job": item.spec.name, "reason": item.reason})
        run = _Run(ledger, emit, events, run_id, tries)
        try:
            interrupted = _drive(run, plan, pool, grace)
        except P2VError:
            _write_html(state_dir, ledger)      # what the ledger knows, as the run stops
            raise
        results = [_result(item, ledger, run, logs) for item in plan]
        result = BatchResult(manifest=str(manifest.path), run_id=run_id,
                             state_dir=str(state_dir), jobs_in_parallel=jobs, started=started,
                             finished=_now(), interrupted=interrupted, jobs=results)
        result.html_report = str(state_dir / HTML_FILE)
        result.report_path = str(_write_report(result, state_dir))
        if _write_html(state_dir, ledger) is None:       # the page reads report.json
            result.html_report = None
            _write_report(result, state_dir)
        emit({"event": "batch-done", "run": run_id, "counts": result.counts,
              "exit_code": result.exit_code, "interrupted": interrupted,
              "report": result.report_path})
        return result


def _batch_emitter(forward: EventSink) -> EventSink:
    """The batch's own events in the convert event schema: event, job, stage, time first,
    then the event's own keys."""
    def emit(event: dict[str, Any]) -> None:
        full = {"event": event["event"], "job": event.get("job"), "stage": event.get("stage"),
                "time": _now()}
        full.update((k, v) for k, v in event.items() if k not in full)
        forward(full)
    return emit


def _drive(run: _Run, plan: list[PlanItem], pool: JobPool, grace: float) -> bool:
    """Keep POOL full until every job of PLAN to run has ended; True when interrupted.

    The pool is closed on the way out, whatever happens."""
    todo = deque(item for item in plan if item.action != "skip")
    restore = _sigterm_as_interrupt()
    try:
        while todo or run.active:
            while todo and pool.free_slots() > 0:
                item = todo.popleft()
                run.start(item, pool)
            for message in pool.poll(0.5):
                run.handle(message, pool)
    except P2VError as exc:     # the pool itself failed: a cluster's scheduler went away
        for name in sorted(run.active):
            run.ledger.interrupt(name, f"interrupted: {exc.message}")
        raise
    except KeyboardInterrupt:
        _stop(run, plan, pool, grace)
        return True
    finally:
        restore()
        pool.close()
    return False


def _stop(run: _Run, plan: list[PlanItem], pool: JobPool, grace: float) -> None:
    """Ctrl-C: stop the running jobs (GRACE seconds to clean up) and mark them interrupted."""
    run.emit({"event": "batch-stopping", "running": sorted(run.active)})
    run.stopping = True
    for message in pool.stop(grace):
        run.handle(message, pool)
    for name in sorted(run.active):     # started but never heard from
        run.handle(PoolDone(name, JobOutcome(name=name, ok=False, stage=None,
                                             error="interrupted"), interrupted=True))
    # Ctrl-C between a job's ledger start and its process start: nothing runs it.
    for item in plan:
        row = run.ledger.get(item.spec.name)
        if row is not None and row.state == "running":
            run.ledger.interrupt(item.spec.name, "interrupted (Ctrl-C) as it started")


class _Run:
    """The jobs of this run that are under way, and the ledger/event side of each message."""

    def __init__(self, ledger: Ledger, emit: EventSink, forward: EventSink, run_id: str,
                 tries: int = DEFAULT_TRIES) -> None:
        self.ledger = ledger
        self.emit = emit            # the batch's own events
        self.forward = forward      # the jobs' events, passed on as they are (with `job`)
        self.run_id = run_id
        self.active: set[str] = set()
        self.started: set[str] = set()
        self.outcomes: dict[str, JobOutcome] = {}
        self.stages: dict[str, str] = {}
        self.stopping = False       # Ctrl-C: the jobs still running were told to stop
        self.tries = tries
        self.specs: dict[str, JobSpec] = {}
        self.workers: dict[str, str] = {}     # where each active job runs (when known)
        self.placements: dict[str, int] = {}  # starts on a worker in this run

    def start(self, item: PlanItem, pool: JobPool) -> None:
        name = item.spec.name
        attempt = self.ledger.start(item.spec, self.run_id)
        self.active.add(name)
        self.started.add(name)
        self.specs[name] = item.spec
        worker = pool.submit(item.spec)     # "" from a cluster pool: placed later
        if worker:
            self.workers[name] = worker
            self.ledger.assign(name, worker)
        self.emit({"event": "batch-job-start", "job": name, "action": item.action,
                   "reason": item.reason, "attempt": attempt, "worker": worker or None,
                   "work_dir": str(item.spec.work_dir)})

    def handle(self, message: PoolMessage, pool: JobPool | None = None) -> None:
        name = message.name
        if isinstance(message, PoolEvent):
            stage = stage_of(message.event)
            if stage is not None and stage != self.stages.get(name) and name in self.active:
                self.stages[name] = stage
                self.ledger.stage(name, stage)
            event = {**message.event, "job": name}
            if name in self.workers:
                event.setdefault("worker", self.workers[name])
            self.forward(event)
            return
        if isinstance(message, PoolPlaced):
            self.placed(message, pool)
            return
        if name not in self.active:
            return
        self.active.discard(name)
        outcome = message.outcome
        self.outcomes[name] = outcome
        stage = outcome.stage or self.stages.get(name)
        error = outcome.error
        if message.interrupted or (self.stopping and not outcome.ok):
            # A job told to stop may end in an error its stop caused (a broken stream): it
            # was interrupted all the same, and the next run resumes it.
            error = "interrupted (Ctrl-C)" if message.interrupted or not outcome.error else \
                f"interrupted (Ctrl-C); it ended with: {outcome.error}"
            self.ledger.interrupt(name, error)
            state = "interrupted"
        else:
            self.ledger.finish(name, ok=outcome.ok, stage=stage, error=outcome.error,
                               error_class=outcome.error_class, exit_code=outcome.exit_code,
                               report_path=outcome.report_path)
            state = "succeeded" if outcome.ok else "failed"
        self.emit({"event": "batch-job-end", "job": name, "state": state, "stage": stage,
                   "error": error, "exit_code": outcome.exit_code,
                   "seconds": outcome.seconds, "report": outcome.report_path,
                   "worker": self.workers.get(name)})

    def placed(self, message: PoolPlaced, pool: JobPool | None) -> None:
        """A cluster worker started the job: record where; a second start is a retry.

        Dask starts a task again on another worker when the one running it dies (up to the
        scheduler's allowed-failures): each such start is a try of its own in the ledger,
        and past TRIES the job is stopped and failed with the reason.
        """
        name = message.name
        if name not in self.active:
            return
        count = self.placements[name] = self.placements.get(name, 0) + 1
        previous = self.workers.get(name)
        self.workers[name] = message.worker
        where = {"worker": message.worker, "worker_name": message.worker_name,
                 "work_dir": message.work_dir, "resume": message.resume}
        if count == 1:
            self.ledger.assign(name, message.worker, message.work_dir)
            self.emit({"event": "batch-job-placed", "job": name, **where})
            return
        stage = self.stages.get(name)
        lost = (f"its worker {previous} died while running it (at {stage or 'start'})")
        if count > self.tries:
            error = f"{lost}; gave up after {self.tries} tries (see --tries)"
            cancel = getattr(pool, "cancel", None)
            if callable(cancel):
                cancel(name)
            self.active.discard(name)
            self.outcomes[name] = JobOutcome(name=name, ok=False, stage=stage, error=error,
                                             exit_code=ExitCode.FAILURE)
            self.ledger.finish(name, ok=False, stage=stage, error=error,
                               error_class="WorkerLost", exit_code=ExitCode.FAILURE)
            self.emit({"event": "batch-job-end", "job": name, "state": "failed",
                       "stage": stage, "error": error, "exit_code": ExitCode.FAILURE,
                       "seconds": None, "report": None, "worker": previous})
            return
        self.ledger.finish(name, ok=False, stage=stage, error=f"{lost}; retried",
                           error_class="WorkerLost", exit_code=ExitCode.FAILURE)
        attempt = self.ledger.start(self.specs[name], self.run_id)
        self.ledger.assign(name, message.worker, message.work_dir)
        self.emit({"event": "batch-job-retry", "job": name, "stage": stage,
                   "previous_worker": previous, "attempt": attempt, "try": count,
                   "tries": self.tries, **where})


def _result(item: PlanItem, ledger: Ledger, run: _Run, logs: dict[str, str]) -> JobResult:
    name = item.spec.name
    row = ledger.get(name)
    assert row is not None
    outcome = run.outcomes.get(name)
    action = item.action if item.action == "skip" or name in run.started else "not-started"
    log = logs[name] if Path(logs[name]).is_file() else None
    seconds = (outcome.seconds if outcome is not None else
               round(row.finished_at - row.started_at, 1)
               if row.finished_at and row.started_at else None)
    return JobResult(name=name, source=item.spec.source, action=action, reason=item.reason,
                     state=row.state, stage=row.stage, attempts=row.attempts, seconds=seconds,
                     error=row.error, exit_code=row.exit_code, work_dir=row.work_dir,
                     report_path=row.report_path, log=log, worker=row.worker,
                     summary=outcome.summary if outcome is not None else {})


def _write_report(result: BatchResult, state_dir: Path) -> Path:
    """The run's report, kept per run under reports/ and as report.json (the latest)."""
    reports = state_dir / "reports"
    private_dir(reports, "batch state dir")
    path = reports / f"{result.run_id}.json"
    result.report_path = str(path)
    text = json.dumps(result.to_dict(), indent=2) + "\n"
    for target in (path, state_dir / "report.json"):
        replace_private(target, text)
    return path


def _write_html(state_dir: Path, ledger: Ledger) -> str | None:
    """The batch's HTML report beside its ledger; a page that cannot be written is a warning,
    never the batch's failure (the ledger and report.json hold the same facts)."""
    try:
        return str(write_batch_html(state_dir, ledger))
    except (OSError, ValueError, P2VError) as exc:
        log.warning("the HTML report could not be written to %s: %s",
                    state_dir / HTML_FILE, exc)
        return None


def _sigterm_as_interrupt() -> Callable[[], None]:
    """SIGTERM to the batch stops it like Ctrl-C (jobs stopped, ledger updated)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)
    return restore
