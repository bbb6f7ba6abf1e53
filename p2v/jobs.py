"""`p2v jobs`: every convert job in a state dir, how far it got, and the command that carries
it on (the same convert to resume it, `p2v clean` once it is done).

Read-only: a job is looked at, never locked, opened for writing or changed. Its state comes
from what its runs left: spec.json is rewritten when a run starts and report.json when it
ends, so a report older than the spec means the last run never ended (Ctrl-C, a kill).
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from p2v.job import CUTOVER_STAGES, STAGES, JobSpec, default_output_dir
from p2v.libvirt_uri import default_uri


@dataclass(frozen=True)
class JobStatus:
    """One job as `p2v jobs` shows it."""

    name: str
    work_dir: str
    source: str
    state: str                      # done, failed, interrupted, running, not started
    stage: str | None               # where it failed or stopped, or runs now
    done: tuple[str, ...]           # the stages finished, in order
    stages: tuple[str, ...]         # every stage of this job
    error: str | None               # the failed run's one-line error
    domain: str | None              # "NAME at URI" once registered
    command: str                    # what to run next (resume, or clean when done)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def convert_argv(spec: JobSpec) -> list[str]:
    """The `p2v convert` command line that runs `spec` again (a rerun resumes the job)."""
    argv = ["p2v", "convert", spec.source, "--name", spec.name]
    if spec.output_dir != default_output_dir():
        argv += ["--output-dir", str(spec.output_dir)]
    for disk in spec.disks:
        argv += ["--disk", disk]
    pairs: list[tuple[str, object | None]] = [
        ("--memory", spec.memory_mib), ("--vcpus", spec.vcpus), ("--pool", spec.pool),
        ("--identity", spec.identity), ("--known-hosts", spec.known_hosts),
        ("--ssh-config", spec.ssh_config),
        ("--connect", spec.connect if spec.connect != default_uri() else None),
        ("--verify-timeout", _seconds(spec.verify_timeout, 300.0)),
        ("--before-final", spec.before_final), ("--after-final", spec.after_final),
    ]
    if spec.cutover:
        pairs.append(("--freeze-timeout", _seconds(spec.freeze_timeout, 300.0)))
    if spec.parallel != 2:
        pairs.append(("--parallel", spec.parallel))
    if spec.bandwidth_limit is not None:
        pairs.append(("--bandwidth-limit", f"{spec.bandwidth_limit:.0f}"))     # bytes/s
    argv += [x for flag, value in pairs if value is not None for x in (flag, str(value))]
    argv += [x for net in spec.networks for x in ("--network", net)]
    argv += [x for br in spec.bridges for x in ("--bridge", br)]
    switches = [("--start", spec.start), ("--no-verify", not spec.verify),
                ("--full", spec.full), ("--no-compress", not spec.compress),
                ("--accept-new-host-key", spec.accept_new_host_key),
                ("--new-macs", spec.new_macs), ("--cutover", spec.cutover),
                ("--serial-console", spec.serial_console)]
    argv += [flag for flag, on in switches if on]
    if spec.cutover and spec.freeze != "strict":
        argv += ["--freeze", spec.freeze]
    return argv


def _seconds(value: float, default: float) -> str | None:
    return None if value == default else f"{value:g}"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _locked(path: Path) -> bool:
    """Whether a run holds the job's lock now (read-only probe: nothing is created)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def _last_event(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            return str(event.get("event"))
    return None


def job_status(work_dir: Path) -> JobStatus | None:
    """The job in `work_dir`, or None when it is not a convert job's work dir."""
    spec_data = _read(work_dir / "spec.json")
    if spec_data is None or "source" not in spec_data or "name" not in spec_data:
        return None
    spec = JobSpec.from_dict(spec_data)
    order = CUTOVER_STAGES if spec.cutover else STAGES
    done: list[str] = []
    for step in order:                   # a later marker counts only on top of the earlier
        if not (work_dir / "markers" / f"{step}.done").is_file():
            break
        done.append(step)
    nxt = order[len(done)] if len(done) < len(order) else None
    report = _read(work_dir / "report.json")
    registered = _read(work_dir / "register.json")
    domain = (f"{registered.get('name')} at {registered.get('uri')}" if registered else None)
    resume = shlex.join(convert_argv(spec))
    clean = ["p2v", "clean", spec.name, "--domain"]
    if spec.output_dir != default_output_dir():
        clean[3:3] = ["--output-dir", str(spec.output_dir)]
    state, stage, error, command = _state(work_dir, report, nxt, resume, shlex.join(clean))
    return JobStatus(name=spec.name, work_dir=str(work_dir), source=spec.source, state=state,
                     stage=stage, done=tuple(done), stages=order, error=error, domain=domain,
                     command=command)


def _state(work_dir: Path, report: dict[str, Any] | None, nxt: str | None, resume: str,
           clean: str) -> tuple[str, str | None, str | None, str]:
    """(state, stage, error, command) from the lock, the report and the markers."""
    if _locked(work_dir / ".lock"):
        return "running", nxt, None, f"(running: wait, or Ctrl-C it; then {resume})"
    ended = report is not None and _newer_or_same(work_dir / "report.json",
                                                  work_dir / "spec.json")
    if ended and report is not None and report.get("ok") and nxt is None:
        return "done", None, None, clean
    if ended and report is not None and not report.get("ok"):
        return "failed", report.get("failed_stage") or nxt, report.get("error"), resume
    if nxt is None:
        return "done", None, None, clean
    if _last_event(work_dir / "events.jsonl") is None:
        return "not started", nxt, None, resume
    return "interrupted", nxt, None, resume       # Ctrl-C, or killed: no report of its own


def _newer_or_same(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_mtime_ns >= b.stat().st_mtime_ns
    except OSError:
        return False


def list_jobs(output_dir: Path) -> list[JobStatus]:
    """Every job under `output_dir` (a dir of work dirs, like --output-dir), by name."""
    found = []
    try:
        entries = sorted(p for p in output_dir.iterdir() if p.is_dir() and not p.is_symlink())
    except FileNotFoundError:
        return []
    for path in entries:
        status = job_status(path)
        if status is not None:
            found.append(status)
    return found


__all__ = ["JobStatus", "convert_argv", "job_status", "list_jobs"]
