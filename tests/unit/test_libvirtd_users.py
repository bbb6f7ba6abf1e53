"""The shared test libvirtd's users lock: the run that started the daemons stops them only
when no other run on the host still holds the lock (real flock on a real file)."""

from __future__ import annotations

from pathlib import Path

from p2v.demo.libvirtd import Libvirtd


def _two_runs(lock: Path) -> tuple[Libvirtd, Libvirtd]:
    """The run that starts the daemons and a run beside it, both joined as users."""
    starter = Libvirtd(shared=True, users_lock=lock)
    other = Libvirtd(shared=True, users_lock=lock)
    starter.join()
    other.join()
    return starter, other


def test_the_starter_is_the_last_user_only_once_the_other_run_has_left(tmp_path: Path) -> None:
    lock = tmp_path / "users"
    starter, other = _two_runs(lock)
    assert starter.last_user() is False  # the run beside it still uses the daemons
    other.leave()
    assert starter.last_user() is True
    # Now exclusive: a run arriving while the daemons are stopped waits, it does not join.
    newcomer = Libvirtd(shared=True, users_lock=lock)
    assert newcomer.last_user() is True  # not joined: not a user at all
    starter.leave()
    newcomer.join()
    assert newcomer.last_user() is True


def test_a_daemon_another_run_uses_is_left_running(tmp_path: Path) -> None:
    import subprocess

    lock = tmp_path / "users"
    starter, other = _two_runs(lock)
    # A real process standing for the daemon this run started.
    daemon = subprocess.Popen(["sleep", "60"])
    starter.procs.append(daemon)
    try:
        starter.stop()
        assert daemon.poll() is None, "the daemon another run uses was stopped"
        assert starter.procs == []
    finally:
        daemon.kill()
        daemon.wait()
        other.leave()
    starter2 = Libvirtd(shared=True, users_lock=lock)
    starter2.join()
    alone = subprocess.Popen(["sleep", "60"])
    starter2.procs.append(alone)
    starter2.stop()
    assert alone.poll() is not None, "the last user left its daemon running"
