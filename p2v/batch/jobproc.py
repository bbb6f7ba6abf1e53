"""Run the job function in a child process of a cluster worker, its events as JSON lines.

A Dask worker runs tasks in threads of a (daemonic) process: a conversion there could not
be stopped, and its helpers would outlive a worker that dies. So the worker's task starts
`python -m p2v.batch.jobproc` with the JobSpec as JSON on stdin; the child runs
`execute_job` (the same job function as the local pool) and writes each event, then its
outcome, as one JSON line on stdout; its logging goes to the job's log file. The kernel sends
it SIGINT when the worker dies (PR_SET_PDEATHSIG), and SIGINT stops it as Ctrl-C stops
`p2v convert`: helpers stopped, the copy's journal kept, the work dir resumable.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2v import runner
from p2v.batch.execute import (
    JobOutcome,
    execute_job,
    run_in_job_process,
    start_job_process,
    worker_id,
)
from p2v.errors import ExitCode
from p2v.events import Event
from p2v.job import JobSpec
from p2v.secure import open_private, private_dir, private_umask

# A job's copy progress arrives many times a second: the submitter needs far fewer.
PROGRESS_EVERY = 2.0
# A retry landing where an earlier try of the job still stops (its worker process died and
# a nanny restarted it) waits that long for the work dir's lock; then the job's own
# JobLocked error says what holds it.
LOCK_WAIT = 90.0


def _outcome_from(data: dict[str, Any]) -> JobOutcome:
    return JobOutcome(**data)


def run_child(spec: JobSpec, log_path: Path, on_events: Callable[[list[Event]], None],
              should_stop: Callable[[], str | None],
              grace: float = 60.0) -> tuple[str, JobOutcome]:
    """Run SPEC in a child process; ("done"|"interrupted", outcome).

    ON_EVENTS gets the job's events in small batches; SHOULD_STOP is asked about once a
    second: when it gives a reason the child gets SIGINT, and SIGKILL (its process group)
    after GRACE seconds.
    """
    private_dir(log_path.parent, "batch log dir")
    _wait_for_lock(spec.work_dir / ".lock", LOCK_WAIT)
    begun = time.monotonic()
    with open_private(log_path, "ab") as log:
        # SIGINT if this worker dies (a Ctrl-C stop); p2v itself keeps the sudo password.
        proc = runner.spawn([sys.executable, "-m", "p2v.batch.jobproc"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                            death_signal=signal.SIGINT, own_session=False, keep_secrets=True)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(spec.to_dict()).encode())
    proc.stdin.close()
    messages = _Messages()
    stopped = _follow(proc, log_path, messages, on_events, should_stop, grace)
    code = proc.wait()
    _signal_group(proc.pid, signal.SIGKILL)     # a helper the job left behind
    if messages.outcome is not None:
        return messages.kind, messages.outcome
    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    outcome = JobOutcome(
        name=spec.name, ok=False, stage=None, worker=worker_id(),
        exit_code=ExitCode.INTERRUPTED if stopped else ExitCode.FAILURE,
        seconds=round(time.monotonic() - begun, 1),
        error="interrupted (killed after the grace period)" if stopped else
        f"the job's process ended without a result ({how}); see {log_path} on the worker")
    return ("interrupted" if stopped else "done"), outcome


class _Messages:
    """The child's stdout as it arrives: the events to pass on, and its outcome once sent."""

    def __init__(self) -> None:
        self.outcome: JobOutcome | None = None
        self.kind = "done"
        self.pending: list[Event] = []
        self._last_progress: dict[str, float] = {}
        self._buf = b""

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "outcome" in message:
                self.outcome = _outcome_from(message["outcome"])
                self.kind = message.get("kind", "done")
                continue
            event = message.get("event")
            if isinstance(event, dict) and _wanted(event, self._last_progress):
                self.pending.append(event)

    def take(self) -> list[Event]:
        pending, self.pending = self.pending, []
        return pending


def _follow(proc: subprocess.Popen[bytes], log_path: Path, messages: _Messages,
            on_events: Callable[[list[Event]], None],
            should_stop: Callable[[], str | None], grace: float) -> bool:
    """Read the child's stdout to its end, passing events on and stopping it when asked;
    True when it was asked to stop."""
    assert proc.stdout is not None
    stop_sent: float | None = None
    next_check = time.monotonic() + 1.0
    fd = proc.stdout.fileno()
    eof = False
    while not eof:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            eof = not chunk
            messages.feed(chunk)
        now = time.monotonic()
        if messages.pending and (now >= next_check or eof or len(messages.pending) > 50):
            on_events(messages.take())
        if now >= next_check:
            next_check = now + 1.0
            reason = should_stop() if stop_sent is None else None
            if reason is not None:
                stop_sent = now
                with open(log_path, "a") as note:
                    note.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} stopping the job: "
                               f"{reason}\n")
                _signal_group(proc.pid, signal.SIGINT)
        if stop_sent is not None and now - stop_sent > grace:
            _signal_group(proc.pid, signal.SIGKILL)
    if messages.pending:
        on_events(messages.take())
    return stop_sent is not None


def _wait_for_lock(lock: Path, timeout: float) -> None:
    """Until nobody holds LOCK (an earlier try of this job winding down), at most TIMEOUT s."""
    import fcntl

    if not lock.is_file():
        return
    deadline = time.monotonic() + timeout
    with open(lock, "a") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return
                time.sleep(1.0)
                continue
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return


def _wanted(event: Event, last: dict[str, float]) -> bool:
    """Every event but copy progress, which passes every PROGRESS_EVERY s and when complete."""
    if event.get("event") != "progress":
        return True
    key = str(event.get("device"))
    now = time.monotonic()
    if event.get("done_chunks") == event.get("chunks") or now - last.get(key, 0.0) >= \
            PROGRESS_EVERY:
        last[key] = now
        return True
    return False


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main() -> int:
    """The child: the spec on stdin, events and the outcome as JSON lines on stdout."""
    spec = JobSpec.from_dict(json.loads(sys.stdin.read()))
    private_umask()                     # a Dask worker's umask is not p2v's: images 0600
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                       # print() and helpers' output go to the job's log
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    start_job_process(spec.name, " (cluster worker)")

    def send(event: Event) -> None:
        # The worker gone (its pipe broken) must not fail the job's own work: the kernel's
        # SIGINT (PR_SET_PDEATHSIG) is what stops it.
        try:
            channel.write(json.dumps({"event": event}, default=str) + "\n")
        except OSError:
            pass

    kind, outcome = run_in_job_process(spec, execute_job, send)
    try:
        channel.write(json.dumps({"kind": kind, "outcome": outcome.to_dict()}, default=str)
                      + "\n")
        channel.flush()
    except OSError:
        print("=== the worker is gone: nobody reads the outcome", flush=True)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
