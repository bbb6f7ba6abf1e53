"""The batch ledger: one SQLite file recording every job's state, so a rerun knows what to do.

Only the process that runs the batch writes it (locally, and later when jobs run on other
conversion hosts): workers report events, the ledger stays on the submitting machine. A job
moves pending -> running -> succeeded | failed | interrupted, and back to running on the next
attempt; `plan` turns a row and the manifest's spec into run, resume or skip.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from p2v.errors import BatchBusy, LedgerError
from p2v.job import LATER_FIELDS, JobSpec
from p2v.secure import private_dir

State = Literal["pending", "running", "succeeded", "failed", "interrupted"]
Action = Literal["run", "resume", "skip"]
STATES: tuple[State, ...] = ("pending", "running", "succeeded", "failed", "interrupted")
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    spec TEXT NOT NULL,             -- the JobSpec as JSON
    spec_hash TEXT NOT NULL,        -- sha256 of that JSON: a changed entry is run again
    state TEXT NOT NULL,
    stage TEXT,                     -- the last stage the job reached
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,                    -- where the last attempt ran (host:pid)
    work_dir TEXT NOT NULL,
    report_path TEXT,
    error TEXT,                     -- one line, as p2v convert would print it
    error_class TEXT,
    exit_code INTEGER,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    worker TEXT,
    state TEXT NOT NULL,
    stage TEXT,
    error TEXT,
    started_at REAL NOT NULL,
    finished_at REAL
);
"""


def spec_hash(spec: JobSpec) -> str:
    """A stable digest of everything the job is asked to do.

    The batch's shared bandwidth limit is not part of it (changing it reruns nothing), and a
    field added later counts only once it is set, so older ledgers' rows still match."""
    data = spec.to_dict()
    defaults = {f.name: f.default for f in fields(JobSpec)}
    data.pop("host_bandwidth_limit", None)
    for key in LATER_FIELDS:
        default = defaults[key]
        if key in data and data[key] in (default, list(default) if isinstance(default, tuple)
                                         else default):
            del data[key]
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class JobRow:
    """One job as the ledger knows it."""

    name: str
    source: str
    spec_hash: str
    state: State
    stage: str | None
    attempts: int
    worker: str | None
    work_dir: str
    report_path: str | None
    error: str | None
    error_class: str | None
    exit_code: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PlanItem:
    """What a run of the batch will do with one manifest entry, and why."""

    spec: JobSpec
    action: Action
    reason: str
    previous: JobRow | None


def decide(spec: JobSpec, row: JobRow | None) -> PlanItem:
    """Run, resume or skip: pure, from the ledger row and the manifest's spec."""
    if row is None:
        return PlanItem(spec, "run", "new", None)
    changed = row.spec_hash != spec_hash(spec)
    if row.state == "succeeded":
        if not changed:
            return PlanItem(spec, "skip", "succeeded in an earlier run", row)
        return PlanItem(spec, "run", "its manifest entry changed since it succeeded", row)
    if row.state == "failed":
        why = f"failed at {row.stage or 'start'}: {row.error or 'no reason recorded'}"
        return PlanItem(spec, "run", f"retry ({why})" + (", entry changed" if changed else ""),
                        row)
    if row.state in ("interrupted", "running"):
        return PlanItem(spec, "resume", f"interrupted at {row.stage or 'start'}"
                        + (", entry changed" if changed else ""), row)
    return PlanItem(spec, "run", "not started yet", row)


class Ledger:
    """The jobs table and its transitions. Open it with `Ledger.open(path)`."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> Ledger:
        try:
            if readonly:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            else:
                conn = sqlite3.connect(path)
            conn.row_factory = sqlite3.Row
            if not readonly:
                with conn:
                    conn.executescript(_SCHEMA)
                    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                                 (str(SCHEMA_VERSION),))
            found = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.Error as exc:
            raise LedgerError(path=str(path), detail=str(exc)) from None
        if found is None or found[0] != str(SCHEMA_VERSION):
            raise LedgerError(path=str(path),
                              detail=f"schema {found[0] if found else 'missing'}, "
                                     f"this p2v reads {SCHEMA_VERSION}")
        return cls(conn, path)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    def get(self, name: str) -> JobRow | None:
        row = self.conn.execute(
            "SELECT * FROM jobs WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        values = {k: row[k] for k in row.keys() if k != "spec"}
        return JobRow(**values)

    def rows(self) -> list[JobRow]:
        names = [r[0] for r in self.conn.execute("SELECT name FROM jobs ORDER BY name")]
        return [row for row in (self.get(n) for n in names) if row is not None]

    def attempts(self, name: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute(
            "SELECT * FROM attempts WHERE name = ? ORDER BY id", (name,))]

    def plan(self, specs: tuple[JobSpec, ...] | list[JobSpec]) -> list[PlanItem]:
        return [decide(spec, self.get(spec.name)) for spec in specs]

    # ------------------------------------------------------------------ transitions
    def _state(self, name: str) -> str | None:
        row = self.conn.execute("SELECT state FROM jobs WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def _require(self, name: str, allowed: tuple[str, ...], change: str) -> None:
        state = self._state(name)
        if state not in allowed:
            raise ValueError(f"ledger: job {name!r} cannot go {change} from state {state}")

    def enrol(self, spec: JobSpec) -> None:
        """Record a manifest entry (pending when new; its spec updated otherwise)."""
        now = time.time()
        with self.conn:
            self.conn.execute(
                "INSERT INTO jobs (name, source, spec, spec_hash, state, work_dir, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)"
                " ON CONFLICT(name) DO NOTHING",
                (spec.name, spec.source, json.dumps(spec.to_dict()), spec_hash(spec),
                 str(spec.work_dir), now, now))

    def start(self, spec: JobSpec, run_id: str, worker: str | None = None) -> int:
        """A new attempt begins: running, attempts + 1; returns the attempt number."""
        self.enrol(spec)
        self._require(spec.name, ("pending", "failed", "interrupted", "succeeded"), "running")
        now = time.time()
        with self.conn:
            self.conn.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, source = ?,"
                " spec = ?, spec_hash = ?, work_dir = ?, worker = ?, started_at = ?,"
                " finished_at = NULL, error = NULL, error_class = NULL, exit_code = NULL,"
                " updated_at = ? WHERE name = ?",
                (spec.source, json.dumps(spec.to_dict()), spec_hash(spec), str(spec.work_dir),
                 worker, now, now, spec.name))
            attempt = int(self.conn.execute(
                "SELECT attempts FROM jobs WHERE name = ?", (spec.name,)).fetchone()[0])
            self.conn.execute(
                "INSERT INTO attempts (name, attempt, run_id, worker, state, stage, started_at)"
                " VALUES (?, ?, ?, ?, 'running', (SELECT stage FROM jobs WHERE name = ?), ?)",
                (spec.name, attempt, run_id, worker, spec.name, now))
        return attempt

    def assign(self, name: str, worker: str, work_dir: str | None = None) -> None:
        """The running job's attempt runs as WORKER (host:pid, or a cluster worker's address),
        in WORK_DIR when that is not the manifest's (a conversion host's own output dir)."""
        self._require(name, ("running",), "to a worker")
        with self.conn:
            self.conn.execute("UPDATE jobs SET worker = ?, work_dir = COALESCE(?, work_dir),"
                              " updated_at = ? WHERE name = ?",
                              (worker, work_dir, time.time(), name))
            self._update_attempt(name, worker=worker)

    def stage(self, name: str, stage: str, worker: str | None = None) -> None:
        """The running job reached STAGE."""
        self._require(name, ("running",), f"to stage {stage}")
        now = time.time()
        with self.conn:
            self.conn.execute(
                "UPDATE jobs SET stage = ?, worker = COALESCE(?, worker), updated_at = ?"
                " WHERE name = ?", (stage, worker, now, name))
            self._update_attempt(name, stage=stage)

    def finish(self, name: str, *, ok: bool, stage: str | None = None,
               error: str | None = None, error_class: str | None = None,
               exit_code: int | None = None, report_path: str | None = None) -> None:
        """The running job ended: succeeded or failed (with its one-line error)."""
        self._end(name, "succeeded" if ok else "failed", stage=stage, error=error,
                  error_class=error_class, exit_code=exit_code, report_path=report_path)

    def interrupt(self, name: str, reason: str = "interrupted (Ctrl-C)") -> None:
        """The running job was stopped from outside; the next run resumes it."""
        self._end(name, "interrupted", error=reason)

    def _end(self, name: str, state: State, *, stage: str | None = None,
             error: str | None = None, error_class: str | None = None,
             exit_code: int | None = None, report_path: str | None = None) -> None:
        self._require(name, ("running",), state)
        now = time.time()
        with self.conn:
            self.conn.execute(
                "UPDATE jobs SET state = ?, stage = COALESCE(?, stage), error = ?,"
                " error_class = ?, exit_code = ?, report_path = COALESCE(?, report_path),"
                " finished_at = ?, updated_at = ? WHERE name = ?",
                (state, stage, error, error_class, exit_code, report_path, now, now, name))
            self._update_attempt(name, state=state, stage=stage, error=error, finished_at=now)

    def _update_attempt(self, name: str, **values: Any) -> None:
        sets = ", ".join(f"{k} = COALESCE(?, {k})" for k in values)
        self.conn.execute(
            f"UPDATE attempts SET {sets} WHERE id = (SELECT MAX(id) FROM attempts"  # noqa: S608
            " WHERE name = ?)", (*values.values(), name))

    def recover(self) -> list[str]:
        """Jobs left running by a batch process that died: mark them interrupted."""
        names = [r[0] for r in self.conn.execute(
            "SELECT name FROM jobs WHERE state = 'running'")]
        for name in names:
            self.interrupt(name, "interrupted (the batch process that ran it ended)")
        return names


class StateLock:
    """The batch state directory's lock: one batch process per output directory at a time."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "lock"
        self._fd: int | None = None

    def __enter__(self) -> StateLock:
        private_dir(self.state_dir, "batch state dir")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise BatchBusy(pid=holder, state_dir=str(self.state_dir)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
