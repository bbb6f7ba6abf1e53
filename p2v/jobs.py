"""`p2v jobs`: every convert job in a state dir, how far it got, and the command that carries
it on (the same convert to resume it, `p2v clean` once it is done).

Read-only: a job is looked at, never locked, opened for writing or changed (whether a run
holds its lock is read from /proc/locks, so a starting run is never refused because of us).
Its state comes from what its runs left: spec.json is rewritten when a run starts and
report.json when it ends, so a report older than the spec means the last run never ended
(Ctrl-C, a kill).
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from p2v.errors import UsageError
from p2v.job import JobSpec, default_output_dir, stages_for
from p2v.jobdir import read_regular, read_regular_json


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
    """The `p2v convert` command line that runs `spec` again (a rerun resumes the job).

    A batch's host-wide bandwidth limit has no convert flag: run alone, the job keeps only
    its own --bandwidth-limit."""
    if spec.images:
        argv = ["p2v", "convert", "--from-image", *map(str, spec.images), "--name", spec.name]
    else:
        argv = ["p2v", "convert", spec.source, "--name", spec.name]
    if spec.output_dir != default_output_dir():
        argv += ["--output-dir", str(spec.output_dir)]
    for disk in spec.disks:
        argv += ["--disk", disk]
    pairs: list[tuple[str, object | None]] = [
        ("--memory", spec.memory_mib), ("--vcpus", spec.vcpus), ("--pool", spec.pool),
        ("--identity", spec.identity), ("--known-hosts", spec.known_hosts),
        ("--ssh-config", spec.ssh_config), ("--virtio-win", spec.virtio_win),
        # Always: the shell the command is pasted into may pick another default libvirt.
        ("--connect", spec.connect or None),
        ("--verify-timeout", _seconds(spec.verify_timeout, 300.0)),
        ("--before-final", spec.before_final), ("--after-final", spec.after_final),
    ]
    if spec.cutover:
        pairs.append(("--freeze-timeout", _seconds(spec.freeze_timeout, 300.0)))
    if spec.parallel != 2:
        pairs.append(("--parallel", spec.parallel))
    if spec.bandwidth_limit is not None:
        pairs.append(("--bandwidth-limit", _number(spec.bandwidth_limit)))     # bytes/s
    argv += [x for flag, value in pairs if value is not None for x in (flag, str(value))]
    argv += [x for net in spec.networks for x in ("--network", net)]
    argv += [x for br in spec.bridges for x in ("--bridge", br)]
    switches = [("--start", spec.start), ("--no-verify", not spec.verify),
                ("--full", spec.full), ("--no-compress", not spec.compress),
                ("--accept-new-host-key", spec.accept_new_host_key),
                ("--new-macs", spec.new_macs), ("--cutover", spec.cutover),
                ("--serial-console", spec.serial_console), ("--in-place", spec.in_place)]
    argv += [flag for flag, on in switches if on]
    if spec.cutover and spec.freeze != "strict":
        argv += ["--freeze", spec.freeze]
    return argv


def _number(value: float) -> str:
    """`value` as a plain decimal that parses back to the same float (no exponent)."""
    if float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.17f}".rstrip("0")


def _seconds(value: float, default: float) -> str | None:
    return None if value == default else _number(value)


def _read(path: Path) -> dict[str, Any] | None:
    data = read_regular_json(path)
    return data if isinstance(data, dict) else None


def _locked(path: Path, locks: Path = Path("/proc/locks")) -> bool:
    """Whether a run holds the job's lock (an flock WRITE lock on it in /proc/locks)."""
    try:
        info = os.stat(path, follow_symlinks=False)
        table = locks.read_text()
    except OSError:
        return False
    want = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF" ("->" marks a blocked waiter)
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE" \
                and fields[5] == want:
            return True
    return False


def _last_event(path: Path) -> str | None:
    raw = read_regular(path, tail=65536)
    for line in reversed(raw.splitlines() if raw else []):
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
    try:
        spec = JobSpec.from_dict(spec_data)
        resume = shlex.join(convert_argv(spec))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return JobStatus(name=str(spec_data.get("name")), work_dir=str(work_dir),
                         source=str(spec_data.get("source")), state="unreadable", stage=None,
                         done=(), stages=(), error=f"spec.json cannot be read: {exc}",
                         domain=None, command=f"(look at {work_dir / 'spec.json'})")
    order = stages_for(spec)
    done: list[str] = []
    for step in order:                   # a later marker counts only on top of the earlier
        if not (work_dir / "markers" / f"{step}.done").is_file():
            break
        done.append(step)
    nxt = order[len(done)] if len(done) < len(order) else None
    report = _read(work_dir / "report.json")
    registered = _read(work_dir / "register.json")
    domain = (f"{registered.get('name')} at {registered.get('uri')}" if registered else None)
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
        return "running", nxt, None, f"(running now: wait for it; if it stops, {resume})"
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
    except OSError as exc:
        raise UsageError(detail=(f"cannot read {output_dir}: {exc.strerror}; run p2v jobs as "
                                 "the user that ran the jobs, or give --output-dir")) from None
    for path in entries:
        status = job_status(path)
        if status is not None:
            found.append(status)
    return found


__all__ = ["JobStatus", "convert_argv", "job_status", "list_jobs"]
