"""Run job functions in local child processes and bring their events and outcomes back.

Each job gets its own process (multiprocessing "spawn": a fresh interpreter, so what a job
needs is pickled exactly as it would be for a cluster worker), in its own process group so
a terminal's Ctrl-C reaches only the batch, which then stops the jobs itself: SIGINT first
(the job cleans up as `p2v convert` does on Ctrl-C), SIGKILL to the group after a grace.
A job's stdout and stderr go to its batch log file.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.process
import os
import queue as queue_mod
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2v import runner
from p2v.batch.execute import (
    EventSink,
    JobOutcome,
    execute_job,
    run_in_job_process,
    start_job_process,
)
from p2v.errors import ExitCode
from p2v.job import JobSpec
from p2v.secure import private_dir

log = logging.getLogger(__name__)

JobFunction = Callable[[JobSpec, EventSink | None], JobOutcome]


@dataclass(frozen=True)
class PoolEvent:
    """An event a running job emitted."""

    name: str
    event: dict[str, Any]


@dataclass(frozen=True)
class PoolDone:
    """A job ended (its outcome), or was stopped (interrupted=True)."""

    name: str
    outcome: JobOutcome
    interrupted: bool = False


@dataclass(frozen=True)
class PoolPlaced:
    """A job started on a worker (a cluster pool says where; a second one means a retry)."""

    name: str
    worker: str                 # the worker's address
    work_dir: str               # the job's work dir there
    resume: bool = False        # that work dir held an earlier attempt's progress
    worker_name: str = ""


PoolMessage = PoolEvent | PoolDone | PoolPlaced


def _stop_with_parent(parent: int) -> None:
    """SIGINT when the batch process dies, even by SIGKILL: an orphaned job stops as on
    Ctrl-C instead of holding its work dir against the rerun."""
    runner.set_parent_death_signal(signal.SIGINT, parent)


def _child_main(job_fn: JobFunction, spec: JobSpec, channel: Any, log_path: str,
                parent: int) -> None:
    """Entry point of a job's process."""
    os.setpgid(0, 0)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    start_job_process(spec.name)

    def send(event: dict[str, Any]) -> None:
        channel.put(("event", spec.name, event))

    def job(job_spec: JobSpec, events: EventSink) -> JobOutcome:
        _stop_with_parent(parent)       # inside the job: a stop this early is an interrupt
        return job_fn(job_spec, events)

    kind, outcome = run_in_job_process(spec, job, send)
    if os.getppid() == parent:
        channel.put((kind, spec.name, outcome))
        # The queue's feeder thread hands the message over before the process ends.
        channel.close()
        channel.join_thread()
    else:
        channel.cancel_join_thread()    # nobody reads any more: do not wait for a reader
    os._exit(ExitCode.INTERRUPTED if kind == "interrupted" else ExitCode.OK)


class LocalPool:
    """Up to `slots` jobs at once, each in its own child process on this machine."""

    def __init__(self, slots: int, log_dir: Path, job_fn: JobFunction = execute_job) -> None:
        self.slots = slots
        self.log_dir = log_dir
        self.job_fn = job_fn
        self._ctx = multiprocessing.get_context("spawn")
        self._channel = self._ctx.Queue()
        self._procs: dict[str, multiprocessing.process.BaseProcess] = {}
        self._ended: set[str] = set()     # names whose outcome came through the channel
        self._stopping = False

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    @property
    def running(self) -> list[str]:
        return list(self._procs)

    def free_slots(self) -> int:
        return self.slots - len(self._procs)

    def submit(self, spec: JobSpec) -> str:
        """Start SPEC's job; returns the worker id (host:pid) it runs as."""
        private_dir(self.log_dir, "batch log dir")
        proc = self._ctx.Process(target=_child_main, name=f"p2v-job-{spec.name}",
                                 args=(self.job_fn, spec, self._channel,
                                       str(self.log_path(spec.name)), os.getpid()))
        proc.start()
        self._procs[spec.name] = proc
        return f"{os.uname().nodename}:{proc.pid}"

    def poll(self, timeout: float) -> list[PoolMessage]:
        """Messages that arrived within TIMEOUT; a child that died silently becomes a failure."""
        messages = self._drain(timeout)
        for name, proc in list(self._procs.items()):
            if proc.is_alive():
                continue
            proc.join()
            if name not in self._ended:
                # Its last words may still be in the pipe: the child flushes before it exits.
                messages += self._drain(0.2)
            if name not in self._ended:
                code = proc.exitcode
                how = (f"killed by signal {-code}" if code is not None and code < 0
                       else f"exit code {code}")
                messages.append(PoolDone(name, JobOutcome(
                    name=name, ok=False, stage=None,
                    exit_code=ExitCode.INTERRUPTED if self._stopping else ExitCode.FAILURE,
                    error=f"the job's process ended without a result ({how}); see "
                          f"{self.log_path(name)}"), interrupted=self._stopping))
            self._procs.pop(name, None)
            self._ended.discard(name)
        return messages

    def _drain(self, timeout: float) -> list[PoolMessage]:
        out: list[PoolMessage] = []
        deadline = time.monotonic() + timeout
        while True:
            wait = max(0.0, deadline - time.monotonic()) if not out else 0.0
            try:
                kind, name, payload = self._channel.get(timeout=wait) if wait else \
                    self._channel.get_nowait()
            except queue_mod.Empty:
                return out
            if kind == "event":
                out.append(PoolEvent(name, payload))
            else:
                self._ended.add(name)
                out.append(PoolDone(name, payload, interrupted=kind == "interrupted"))

    def stop(self, grace: float = 60.0) -> list[PoolMessage]:
        """Stop every running job: SIGINT, then SIGKILL to its process group after GRACE s.

        Returns the messages that arrived meanwhile, with a PoolDone(interrupted) for each job
        that had to be killed.
        """
        self._stopping = True
        groups = [proc.pid for proc in self._procs.values()]
        for proc in self._procs.values():
            _signal(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + grace
        messages: list[PoolMessage] = []
        try:
            while self._procs and time.monotonic() < deadline:
                messages += self.poll(0.2)
        except KeyboardInterrupt:
            log.warning("second interrupt: killing the jobs now")
        for name, proc in list(self._procs.items()):
            _killpg(proc.pid)
            proc.join(10)
            if name not in self._ended:
                messages.append(PoolDone(name, JobOutcome(
                    name=name, ok=False, stage=None, exit_code=ExitCode.INTERRUPTED,
                    error="interrupted (killed after the grace period)"), interrupted=True))
            self._procs.pop(name, None)
        # A helper a job left behind is still in the job's process group: none may outlive it.
        for pgid in groups:
            _killpg(pgid)
        messages += self._drain(0.0)
        return messages

    def close(self) -> None:
        self._channel.close()
        self._channel.join_thread()


def _signal(pid: int | None, sig: int) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _killpg(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
