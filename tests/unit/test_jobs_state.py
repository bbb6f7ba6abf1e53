"""`p2v jobs` reads work dirs without touching them: a held lock is seen in /proc/locks (a
real flock of this process), a FIFO planted in a work dir does not hang the listing, and a
state dir that cannot be read is one line."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path

import pytest

from p2v.errors import UsageError
from p2v.jobs import _locked, list_jobs


def _job(root: Path, name: str) -> Path:
    work = root / name
    (work / "markers").mkdir(parents=True)
    (work / "spec.json").write_text(json.dumps({"source": "ssh://root@web01", "name": name,
                                                "output_dir": str(root)}))
    return work


def test_a_held_lock_is_seen_without_taking_it(tmp_path: Path) -> None:
    work = _job(tmp_path, "web01")
    lock = work / ".lock"
    lock.write_text("")
    assert not _locked(lock)
    with lock.open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert _locked(lock)
        (status,) = list_jobs(tmp_path)
        assert status.state == "running" and status.stage == "inspect"
        # And the probe left it alone: the holder can still drop and retake it at once.
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not _locked(lock)


def test_fifos_in_a_work_dir_do_not_hang_the_listing(tmp_path: Path) -> None:
    work = _job(tmp_path, "web01")
    os.mkfifo(work / ".lock")
    os.mkfifo(work / "events.jsonl")
    os.mkfifo(work / "report.json")
    other = tmp_path / "db01"
    other.mkdir()
    os.mkfifo(other / "spec.json")
    found: list[object] = []
    thread = threading.Thread(target=lambda: found.append(list_jobs(tmp_path)), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "p2v jobs hung on a FIFO"
    (jobs,) = found
    assert [j.name for j in jobs] == ["web01"]          # db01's "spec" is no file: skipped
    assert jobs[0].state == "not started"


def test_a_spec_that_cannot_be_read_is_shown_not_fatal(tmp_path: Path) -> None:
    work = _job(tmp_path, "web01")
    (work / "spec.json").write_text(json.dumps({"source": "s", "name": "web01"}))  # no dir
    _job(tmp_path, "web02")
    jobs = {j.name: j for j in list_jobs(tmp_path)}
    assert jobs["web01"].state == "unreadable" and "spec.json" in (jobs["web01"].error or "")
    assert jobs["web02"].state == "not started"


def test_a_state_dir_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(UsageError, match=f"cannot read {not_a_dir}: "):
        list_jobs(not_a_dir)
