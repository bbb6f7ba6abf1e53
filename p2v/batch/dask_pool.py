"""Run batch jobs on Dask distributed workers: the JobPool of `p2v batch --scheduler`.

The only module of p2v that imports dask. Each job is one task, submitted with
resources={"p2v": 1} so `dask worker --resources p2v=N` bounds the conversions a host runs
at once. The task (`run_on_worker`) works out the host's settings (output dir, libvirt URI:
see `host_settings`), tells the submitter where it runs, and runs the same job function as
the local pool in a child process (p2v.batch.jobproc), sending the job's events back through
a Dask Queue. The ledger stays with the submitter, which hears of each placement: a job
placed a second time means its worker died (Dask reschedules such a task by itself), and
the driver counts that try.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from p2v.batch.execute import JobOutcome
from p2v.batch.manifest import HostSettings
from p2v.batch.pool import PoolDone, PoolEvent, PoolMessage, PoolPlaced
from p2v.errors import ExitCode, SchedulerLost, SchedulerUnreachable
from p2v.job import JobSpec

log = logging.getLogger(__name__)

RESOURCE = "p2v"
CONNECT_TIMEOUT = 10.0
ENV_OUTPUT_DIR = "P2V_OUTPUT_DIR"
ENV_CONNECT = "P2V_CONNECT"
# How long the submitter waits for Dask's client to reconnect to a scheduler that went away.
LOST_AFTER = 60.0


def host_settings(spec: JobSpec, hosts: dict[str, HostSettings], name: str, address: str,
                  env: dict[str, str]) -> JobSpec:
    """SPEC as it runs on the worker NAME at ADDRESS: per key, the manifest's [hosts] entry
    (by worker name, then address, then the address's host), else the worker's environment
    (P2V_OUTPUT_DIR, P2V_CONNECT), else the manifest's value."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    entries = [hosts[k] for k in (name, address, host) if k and k in hosts]
    output_dir = next((e.output_dir for e in entries if e.output_dir is not None), None)
    connect = next((e.connect for e in entries if e.connect is not None), None)
    if output_dir is None and env.get(ENV_OUTPUT_DIR):
        output_dir = Path(env[ENV_OUTPUT_DIR])
    if connect is None and env.get(ENV_CONNECT):
        connect = env[ENV_CONNECT]
    return replace(spec, output_dir=output_dir or spec.output_dir,
                   connect=connect or spec.connect)


def _unwanted(key: str) -> str | None:
    """Why the submitter gave this task up (cancelled, or its client left), or None."""
    from distributed import get_worker

    try:
        task = get_worker().state.tasks.get(key)
    except Exception:  # noqa: BLE001 - an internal API: when in doubt the job goes on
        return None
    if task is None:
        return "the worker no longer holds the task"
    if task.state in ("cancelled", "released", "forgotten"):
        return f"the task was {task.state} (the submitter cancelled it or went away)"
    return None


def run_on_worker(spec: JobSpec, hosts: dict[str, HostSettings], run: str) -> tuple[str,
                                                                                   JobOutcome]:
    """The task: place the job on this worker, run it in a child process, report back."""
    from distributed import Event, Queue, get_worker

    worker = get_worker()
    key = str(worker.get_current_task())
    spec = host_settings(spec, hosts, str(worker.name), worker.address, dict(os.environ))
    events = Queue(_queue_name(run))
    stop_all, stop_job = Event(_stop_name(run)), Event(_stop_name(run, spec.name))

    def put(kind: str, payload: Any) -> None:
        events.put(json.dumps([kind, spec.name, payload], default=str))

    put("placed", {"worker": worker.address, "worker_name": str(worker.name),
                   "work_dir": str(spec.work_dir),
                   "resume": (spec.work_dir / "spec.json").is_file()})

    def on_events(batch: list[dict[str, Any]]) -> None:
        put("events", batch)

    def should_stop() -> str | None:
        if stop_all.is_set():
            return "the batch is stopping (Ctrl-C)"
        if stop_job.is_set():
            return "the batch gave up on this job"
        return _unwanted(key)

    from p2v.batch.jobproc import run_child

    return run_child(spec, spec.output_dir / ".p2v-batch" / "logs" / f"{spec.name}.log",
                     on_events, should_stop)


def _queue_name(run: str) -> str:
    return f"p2v-events-{run}"


def _stop_name(run: str, job: str | None = None) -> str:
    return f"p2v-stop-{run}" + (f"-{job}" if job else "")


def connect(address: str, timeout: float = CONNECT_TIMEOUT) -> Any:
    """A Client of the scheduler at ADDRESS, or SchedulerUnreachable (one line)."""
    import dask
    from distributed import Client

    _probe(address, timeout)
    # Dask logs its own reconnect attempts; p2v reports a lost scheduler in one line.
    logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
    dask.config.set({"distributed.comm.timeouts.connect": f"{timeout:.0f}s"})
    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SchedulerUnreachable(address=address, detail=_short(detail, address)) from None


def _probe(address: str, timeout: float) -> None:
    """A refused or unresolvable tcp:// address fails at once (Dask would retry until its
    timeout), with the system's reason."""
    import socket

    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp", "tls"):
        raise SchedulerUnreachable(address=address, detail="want tcp://HOST:PORT")
    host, _, port = rest.rstrip("/").rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise SchedulerUnreachable(address=address, detail="want tcp://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except socket.gaierror as exc:
        raise SchedulerUnreachable(address=address, detail=f"unknown host ({exc.strerror})") \
            from None
    except TimeoutError:
        raise SchedulerUnreachable(address=address,
                                   detail=f"no answer within {timeout:.0f} s") from None
    except OSError as exc:
        raise SchedulerUnreachable(address=address, detail=exc.strerror or str(exc)) from None


def _short(detail: str, address: str) -> str:
    if "Timed out" in detail or "timed out" in detail:
        return f"no answer within {CONNECT_TIMEOUT:.0f} s"
    return detail.replace(f"to {address}", "").strip() or "refused"


class DaskPool:
    """Jobs as tasks on the scheduler's workers; as many at once as they have p2v slots."""

    def __init__(self, client: Any, run: str, hosts: dict[str, HostSettings] | None = None,
                 extra: int = 0) -> None:
        from distributed import Event, Queue

        self.client = client
        self.run = run
        self.hosts = hosts or {}
        self.extra = extra
        self._queue = Queue(_queue_name(run), client=client)
        self._event = Event
        self._stop = Event(_stop_name(run), client=client)
        self._futures: dict[str, Any] = {}
        self._placed: set[str] = set()
        self.address = str(client.scheduler.address)
        self._down_since: float | None = None
        self._cancelled: set[str] = set()

    def slots(self) -> int:
        """The p2v slots of the workers connected now."""
        info = self.client.scheduler_info(n_workers=-1) if _takes_n(self.client) else \
            self.client.scheduler_info()
        return sum(int(w.get("resources", {}).get(RESOURCE, 0))
                   for w in info.get("workers", {}).values())

    @property
    def running(self) -> list[str]:
        return list(self._futures)

    def free_slots(self) -> int:
        return self.slots() + self.extra - len(self._futures)

    def submit(self, spec: JobSpec) -> str:
        """Submit SPEC's task; its worker is known when the task starts (a placed message)."""
        key = f"p2v-{self.run}-{spec.name}-{uuid.uuid4().hex[:8]}"
        self._futures[spec.name] = self.client.submit(
            run_on_worker, spec, self.hosts, self.run, key=key, pure=False,
            resources={RESOURCE: 1}, retries=0)
        return ""

    def cancel(self, name: str) -> None:
        """Stop NAME's job wherever it runs (the driver gave up on it)."""
        self._event(_stop_name(self.run, name), client=self.client).set()
        self._cancelled.add(name)
        future = self._futures.pop(name, None)
        if future is not None:
            future.cancel()

    def poll(self, timeout: float) -> list[PoolMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any(f.done() for f in self._futures.values()):
            time.sleep(0.1)
        self._check_scheduler()
        done = [(n, f) for n, f in self._futures.items() if f.done()]
        messages = self._drain()        # a task's events are queued before it returns
        for name, future in done:
            self._futures.pop(name, None)
            messages.append(self._done(name, future))
        return messages

    def _check_scheduler(self) -> None:
        """SchedulerLost once the client has been cut off from the scheduler for LOST_AFTER s."""
        status = str(self.client.status)
        if status == "running":
            self._down_since = None
            return
        now = time.monotonic()
        self._down_since = self._down_since or now
        # Dask closes a client that could not reconnect (within its timeout): that is final.
        if status in ("closing", "closed", "failed") or now - self._down_since > LOST_AFTER:
            raise SchedulerLost(address=self.address,
                                detail=f"no connection for {LOST_AFTER:.0f} s, client {status}")

    def _drain(self) -> list[PoolMessage]:
        out: list[PoolMessage] = []
        try:
            items = self._queue.get(batch=True)
        except Exception:  # noqa: BLE001 - an empty or closing queue
            return out
        for item in items or []:
            kind, name, payload = json.loads(item)
            if kind == "placed":
                self._placed.add(name)
                out.append(PoolPlaced(name, payload["worker"], payload["work_dir"],
                                      bool(payload.get("resume")),
                                      str(payload.get("worker_name") or "")))
            elif kind == "events":
                out.extend(PoolEvent(name, event) for event in payload)
        return out

    def _done(self, name: str, future: Any) -> PoolDone:
        if future.status == "finished":
            kind, outcome = future.result()
            return PoolDone(name, outcome, interrupted=kind == "interrupted")
        if future.status == "cancelled":
            if name not in self._cancelled and self.client.status != "running":
                # Not by us: Dask drops every task of a client that lost its scheduler.
                raise SchedulerLost(address=self.address,
                                    detail=f"the connection broke, client {self.client.status}")
            return PoolDone(name, JobOutcome(name=name, ok=False, stage=None,
                                             exit_code=ExitCode.INTERRUPTED,
                                             error="interrupted (cancelled)"), interrupted=True)
        exc = future.exception()
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if type(exc).__name__ == "KilledWorker":
            text = (f"every worker that ran it died (Dask's allowed-failures reached): {text}")
        return PoolDone(name, JobOutcome(name=name, ok=False, stage=None,
                                         exit_code=ExitCode.FAILURE,
                                         error=f"the cluster lost the job: {text}"))

    def stop(self, grace: float = 60.0) -> list[PoolMessage]:
        """Ctrl-C: every task's job gets SIGINT (through a Dask Event), then is cancelled."""
        self._stop.set()
        messages: list[PoolMessage] = []
        messages += self._drain()
        for name, future in list(self._futures.items()):
            if name not in self._placed:        # still waiting for a slot: nothing to stop
                future.cancel()
                del self._futures[name]
                messages.append(PoolDone(name, JobOutcome(
                    name=name, ok=False, stage=None, exit_code=ExitCode.INTERRUPTED,
                    error="interrupted before it started"), interrupted=True))
        deadline = time.monotonic() + grace + 5
        try:
            while self._futures and time.monotonic() < deadline:
                messages += self.poll(0.5)
        except KeyboardInterrupt:
            log.warning("second interrupt: cancelling the jobs now")
        for name, future in list(self._futures.items()):
            future.cancel()
            messages.append(PoolDone(name, JobOutcome(
                name=name, ok=False, stage=None, exit_code=ExitCode.INTERRUPTED,
                error="interrupted (cancelled after the grace period)"), interrupted=True))
        self._futures.clear()
        return messages + self._drain()

    def close(self) -> None:
        try:
            self._queue.close()         # the scheduler forgets this run's queue
        except Exception:  # noqa: BLE001 - a scheduler already gone
            pass
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a client of a dead scheduler
            pass


def _takes_n(client: Any) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters
