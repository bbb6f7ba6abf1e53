"""The batch's job function: run one JobSpec through the pipeline and say how it ended.

`execute_job` is a plain top-level function of picklable arguments returning a picklable
`JobOutcome`, so the same call runs in a local child process or on another conversion host
(a cluster worker); it never raises for a job's failure, because one job's failure must
never stop the others.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from p2v import runner
from p2v.errors import ExitCode, P2VError
from p2v.events import EventSink
from p2v.job import JobSpec

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class JobOutcome:
    """How one attempt ended: the ledger records it, the summary prints it."""

    name: str
    ok: bool
    stage: str | None                   # the last stage reached
    error: str | None = None            # one line, as `p2v convert` would print it
    error_class: str | None = None
    exit_code: int = ExitCode.OK
    report_path: str | None = None      # the job's report.json, when it was written
    seconds: float = 0.0
    worker: str = ""                    # host:pid that ran it
    summary: dict[str, Any] = field(default_factory=dict)   # a few facts from the JobReport

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def stage_of(event: dict[str, Any]) -> str | None:
    """The stage a pipeline event says the job has entered (None for every other event)."""
    stage = event.get("stage")
    if event.get("event") in ("stage-start", "stage-skip") and isinstance(stage, str):
        return stage
    return None


def _report_facts(report: Any) -> dict[str, Any]:
    """What the batch summary shows of a JobReport: the domain, the boot verdict, bytes sent."""
    facts: dict[str, Any] = {}
    domain = getattr(report, "domain", None)
    if isinstance(domain, dict):
        facts["domain"] = domain.get("name")
        facts["uri"] = domain.get("uri")
    verdict = getattr(report, "verdict", None)
    if isinstance(verdict, dict):
        facts["booted"] = verdict.get("booted")
        facts["boot_seconds"] = verdict.get("elapsed_s")
    facts["bytes_sent"] = getattr(report, "bytes_sent", None)
    facts["disks"] = [getattr(d, "image", None) for d in getattr(report, "disks", ())]
    return facts


def execute_job(spec: JobSpec, events: EventSink | None = None) -> JobOutcome:
    """Run SPEC (resuming whatever its work dir holds); KeyboardInterrupt is passed on."""
    from p2v.pipeline import run_job

    reached: list[str] = []
    begun = time.monotonic()

    def forward(event: dict[str, Any]) -> None:
        stage = stage_of(event)
        if stage is not None:
            reached.append(stage)
        if events is not None:
            events(event)

    report_file = spec.work_dir / "report.json"

    def outcome(**values: Any) -> JobOutcome:
        values.setdefault("stage", reached[-1] if reached else None)
        return JobOutcome(name=spec.name,
                          report_path=str(report_file) if report_file.is_file() else None,
                          seconds=round(time.monotonic() - begun, 1), worker=worker_id(),
                          **values)

    try:
        report = run_job(spec, events=forward)
    except P2VError as exc:     # run_job reports failures; this is a safety net
        return outcome(ok=False, error=exc.message, error_class=type(exc).__name__,
                       exit_code=exc.exit_code)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - a bug in one job must not end the batch
        log.error("job %s: unexpected error\n%s", spec.name, traceback.format_exc())
        return outcome(ok=False, error=f"unexpected error: {type(exc).__name__}: {exc} "
                                       "(the traceback is in the job's batch log)",
                       error_class=type(exc).__name__, exit_code=ExitCode.FAILURE)
    if report.ok:
        return outcome(ok=True, stage="done", summary=_report_facts(report))
    return outcome(ok=False, stage=report.failed_stage,
                   error=report.error or "the job failed without a reason",
                   exit_code=report.exit_code or ExitCode.FAILURE,
                   summary=_report_facts(report))


def start_job_process(name: str, where: str = "") -> None:
    """What a job's own process sets up first, a local child or a cluster worker's: logging
    with times, SIGTERM handled like Ctrl-C (the job's helpers stopped in order), and SIGINT
    (the batch's or the worker's stop, the parent-death signal) as KeyboardInterrupt."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    runner.interrupt_on_sigint()
    print(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} job {name} starts in pid "
          f"{os.getpid()}{where}", flush=True)


def run_in_job_process(spec: JobSpec, job: Callable[[JobSpec, EventSink], JobOutcome],
                       send: EventSink) -> tuple[str, JobOutcome]:
    """JOB(SPEC, SEND) in the job's process: ("done", its outcome), or ("interrupted", an
    outcome saying so) when it was stopped; the log's last line says which."""
    begun = time.monotonic()
    try:
        outcome = job(spec, send)
        kind = "done"
    except KeyboardInterrupt:
        outcome = JobOutcome(name=spec.name, ok=False, stage=None,  # the driver knows the stage
                             error="interrupted", exit_code=ExitCode.INTERRUPTED,
                             worker=worker_id(), seconds=round(time.monotonic() - begun, 1))
        kind = "interrupted"
    print(f"=== {kind}: {'ok' if outcome.ok else outcome.error}", flush=True)
    return kind, outcome
