"""The cluster worker's job runner waits for an earlier try of the job to let go of its
work dir (a worker process restarted by its nanny retries the job on the same host)."""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path

from p2v.batch.jobproc import _wait_for_lock


def test_a_retry_waits_for_the_earlier_try_to_release_the_work_dir(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    lock.touch()
    held = lock.open("a")
    fcntl.flock(held.fileno(), fcntl.LOCK_EX)
    threading.Timer(1.5, lambda: fcntl.flock(held.fileno(), fcntl.LOCK_UN)).start()
    t0 = time.monotonic()
    _wait_for_lock(lock, 30)
    assert 1.0 < time.monotonic() - t0 < 10
    held.close()


def test_it_gives_up_after_the_timeout_and_does_not_wait_without_a_lock(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    lock.touch()
    with lock.open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        t0 = time.monotonic()
        _wait_for_lock(lock, 1.0)
        assert 0.9 < time.monotonic() - t0 < 5
    t0 = time.monotonic()
    _wait_for_lock(tmp_path / "new-job" / ".lock", 30)
    assert time.monotonic() - t0 < 0.5
