"""A conversion job's work directory: its files, per-stage markers, log, events and lock.

Layout (docs/user/convert.md)::

    <output-dir>/<name>/
      spec.json            the JobSpec the job runs (rewritten by each run)
      job.log              human-readable log, appended by every run
      events.jsonl         every event of every run (the `--json` schema)
      inventory.json       p2v.inventory/1 of the source       (inspect)
      plan.json            disks, MACs, what will not carry over (preflight)
      <name>-<dev>.qcow2   the images (+ .part/.journal while copying; .manifest.json)
      caps.json            GuestCaps from fix                   (fix)
      fix.json, verify.json, register.json   each stage's full result
      markers/<stage>.done JSON: the stage finished, when, in how many seconds
      report.json          the final JobReport (also written on failure)
      report.html          `p2v report WORKDIR`'s page, when asked for
      .lock                held (flock) while a run owns the job
      .<name>.lock         held too: the lock a standalone copy/sync of these images takes

A marker is written atomically after everything its stage produced is durable, so a stage
without one is unfinished and is run again; each stage is safe to run again.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from p2v.errors import UsageError
from p2v.secure import open_private, private_dir


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a reader sees the old file or the whole new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open_private(tmp, "w") as out:   # 0600: inventory, caps, reports name the server
        out.write(json.dumps(data, indent=2) + "\n")
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_regular_json(path: Path) -> Any:
    """The JSON in a regular file, or None when it is missing, not a regular file (see
    read_regular) or not JSON: for readers that must list what they can and go on."""
    raw = read_regular(path)
    try:
        return json.loads(raw) if raw is not None else None
    except ValueError:
        return None


def read_regular(path: Path, tail: int | None = None) -> bytes | None:
    """The file's bytes (its last `tail`), or None unless it is a regular file: a FIFO or a
    device planted in a work dir must not make a reader (`p2v jobs`, `p2v report`) hang."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        if tail is not None and info.st_size > tail:
            os.lseek(fd, info.st_size - tail, os.SEEK_SET)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    except OSError:
        return None
    finally:
        os.close(fd)


class JobLocked(UsageError):
    """another p2v run is working on job {name!r} right now ({lock}); wait for it to finish"""


class WorkDir:
    """The files of one job; `with WorkDir(...)` holds the job's lock."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = Path(path)
        self.name = name
        self._lock: IO[str] | None = None
        self._images_lock: IO[str]

    # ------------------------------------------------------------------ paths
    @property
    def markers(self) -> Path:
        return self.path / "markers"

    def file(self, name: str) -> Path:
        return self.path / name

    def marker(self, stage: str) -> Path:
        return self.markers / f"{stage}.done"

    # ------------------------------------------------------------------ lifecycle
    def create(self) -> None:
        # 0700: the images hold the server's secrets. register grants the qemu user (only)
        # the search bit it needs to reach them (p2v.secure.grant_qemu).
        private_dir(self.path.parent, "output dir", tighten=False)
        private_dir(self.path, "work dir")
        private_dir(self.markers, "work dir")

    def __enter__(self) -> WorkDir:
        self.create()
        lock = _hold(self.path / ".lock", self.name)
        try:
            # The lock a standalone `p2v copy`/`sync` into this dir under this name takes.
            self._images_lock = _hold(images_lock_path(self.path, self.name), self.name)
        except BaseException:
            lock.close()
            raise
        self._lock = lock
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._lock is not None:
            self._images_lock.close()
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    # ------------------------------------------------------------------ markers
    def is_done(self, stage: str) -> bool:
        return self.marker(stage).is_file()

    def mark_done(self, stage: str, seconds: float, result: dict[str, Any] | None = None) -> None:
        write_json(self.marker(stage), {"stage": stage, "seconds": round(seconds, 1),
                                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                        "result": result or {}})

    def marker_data(self, stage: str) -> dict[str, Any]:
        data = read_json(self.marker(stage))
        return data if isinstance(data, dict) else {}

    def clear(self, stages: Iterable[str]) -> None:
        for stage in stages:
            self.marker(stage).unlink(missing_ok=True)

    def done_stages(self, stages: Sequence[str]) -> list[str]:
        """The stages with a marker, in pipeline order."""
        return [s for s in stages if self.is_done(s)]

    def first_unfinished(self, stages: Sequence[str]) -> str | None:
        """Where a rerun starts: the first stage without a marker (None: the job is done).

        A later stage's marker never counts when an earlier one is missing: a stage is only
        valid on top of what the stages before it produced.
        """
        for stage in stages:
            if not self.is_done(stage):
                return stage
        return None

    # ------------------------------------------------------------------ log and events
    def log(self, text: str) -> None:
        with open_private(self.file("job.log"), "a") as out:
            out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def record_event(self, event: dict[str, Any]) -> None:
        with open_private(self.file("events.jsonl"), "a") as out:
            out.write(json.dumps(event) + "\n")


def _hold(path: Path, name: str) -> IO[str]:
    """PATH flock'ed (the kernel drops it when this process dies) with our pid in it."""
    while True:
        lock = open_private(path, "a+", "lock")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise JobLocked(name=name, lock=str(path)) from None
        try:
            if os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        lock.close()        # its holder removed it as we opened it: lock the new one
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def images_lock_path(output_dir: Path, name: str) -> Path:
    """The lock on the images NAME-*.qcow2 in OUTPUT_DIR (a job's work dir holds one too)."""
    return Path(output_dir) / f".{name}.lock"


@contextmanager
def images_lock(output_dir: Path, name: str) -> Iterator[None]:
    """Hold the lock on NAME's images in OUTPUT_DIR: what a standalone copy or sync takes,
    so it never writes an image that a convert or another copy is writing (JobLocked)."""
    if not name or Path(name).name != name or name in (".", ".."):
        raise UsageError(detail=f"--name {name!r}: a name, not a path")
    output_dir = Path(output_dir)
    made = not output_dir.exists()
    path = images_lock_path(output_dir, name)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        lock = _hold(path, name)
    except OSError as exc:
        raise UsageError(detail=f"--output-dir {output_dir}: {exc.strerror or exc}; give a "
                                "directory you can write") from None
    try:
        yield
    finally:
        # Removed while still held (a run that opened it meanwhile sees another inode and
        # retries): a refused or failed run leaves the dir as it found it.
        path.unlink(missing_ok=True)
        lock.close()
        if made:
            with suppress(OSError):
                output_dir.rmdir()        # only if it stayed empty


__all__ = ["JobLocked", "WorkDir", "images_lock", "images_lock_path", "read_json",
           "read_regular", "write_json"]
