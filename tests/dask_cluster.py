"""A real Dask cluster on loopback for the `p2v batch --scheduler` tests.

The scheduler and each worker are separate processes started with Dask's own `dask
scheduler` / `dask worker` commands, as docs/user/fleet.md tells users to; each worker has its
own output dir (P2V_OUTPUT_DIR) and one p2v slot. Each runs in its own session, so killing
a worker kills its nanny and worker process together, like a host going down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from p2v.demo.live import free_port

DASK = str(Path(sys.executable).with_name("dask"))


@dataclass
class Worker:
    name: str
    output_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Cluster:
    root: Path
    address: str = ""
    scheduler: subprocess.Popen[bytes] | None = None
    workers: dict[str, Worker] = field(default_factory=dict)

    def start(self, names: tuple[str, ...] = ("w1", "w2")) -> Cluster:
        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        log = self.root / "scheduler.log"
        self.scheduler = subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=subprocess.DEVNULL, stderr=log.open("wb"), start_new_session=True)
        for name in names:
            self.start_worker(name)
        self.wait_for(len(names))
        return self

    def start_worker(self, name: str) -> Worker:
        out = self.root / name
        out.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        env = {**os.environ, "P2V_OUTPUT_DIR": str(out)}
        proc = subprocess.Popen(
            [DASK, "worker", self.address, "--name", name, "--resources", "p2v=1",
             "--nthreads", "2", "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1",
             "--local-directory", str(self.root / f"{name}-dask")],
            stdout=subprocess.DEVNULL, stderr=log.open("ab"), env=env, start_new_session=True)
        worker = self.workers[name] = Worker(name, out, proc, log)
        return worker

    def wait_for(self, count: int, timeout: float = 90) -> None:
        """Until COUNT workers with a p2v slot are registered with the scheduler."""
        from distributed import Client

        with Client(self.address, timeout=30, set_as_default=False) as client:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                workers = client.scheduler_info(n_workers=-1)["workers"].values()
                if sum(1 for w in workers if w.get("resources", {}).get("p2v")) >= count:
                    return
                time.sleep(0.5)
        raise AssertionError(f"{count} dask workers did not register within {timeout} s")

    def kill(self, worker: Worker) -> None:
        """SIGKILL the worker's whole session (nanny and worker), as if its host died."""
        try:
            os.killpg(worker.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        worker.proc.wait(30)

    def stop(self) -> None:
        for worker in self.workers.values():
            if worker.alive:
                self.kill(worker)
        if self.scheduler is not None and self.scheduler.poll() is None:
            os.killpg(self.scheduler.pid, signal.SIGKILL)
            self.scheduler.wait(30)


@contextmanager
def running_cluster(root: Path) -> Iterator[Cluster]:
    """A scheduler and workers w1, w2 under ROOT (created), all killed afterwards."""
    cluster = Cluster(root)
    root.mkdir()
    try:
        yield cluster.start()
    finally:
        cluster.stop()
