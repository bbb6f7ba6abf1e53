"""The freeze's rules as logic: the deadline margin, what is thawed after a freeze that was
cut short, when the timer is stopped, and which --freeze-timeout values are refused.

The source here is a stand-in that answers the commands Freeze sends, on a fake clock; the
same rules are proven on a real source in tests/integration/test_freeze_faults.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from p2v import cli
from p2v.errors import ExitCode, FreezeDeadline, FreezeFailed, SshFailed, UsageError
from p2v.source import freeze as freeze_mod
from p2v.source.freeze import (
    DEADLINE_MARGIN,
    FREEZE_COMMAND_TIMEOUT,
    Freeze,
    Mount,
    check_freeze_timeout,
    freeze_command_timeout,
)
from p2v.source.ssh import RemoteResult


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeSource:
    """Answers the timer, fsfreeze and in-flight commands; `slow` mounts take that many
    (fake) seconds to freeze, `hang` mounts time out, `stuck` mounts fail to thaw."""

    clock: Clock
    slow: dict[str, float] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    stuck: set[str] = field(default_factory=set)
    refuse: set[str] = field(default_factory=set)
    thawed: list[str] = field(default_factory=list)
    frozen: set[str] = field(default_factory=set)
    timer_killed: bool = False
    freeze_limits: list[float] = field(default_factory=list)
    target: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(host="src"))

    def run(self, argv: list[str], *, check: bool = True,
            timeout: float | None = 300) -> RemoteResult:
        name = argv[3] if argv[:2] == ["sh", "-c"] else ""
        if name == "p2v-timer" and argv[-1] != "kill" and argv[-1] != "check":
            return RemoteResult("timer", 0, b"4242\n", "")
        if name == "p2v-timer":
            self.timer_killed = self.timer_killed or argv[-1] == "kill"
            return RemoteResult("ctl", 0, b"", "")
        if name == "p2v-in-flight":
            return RemoteResult("busy", 1, b"", "")        # nothing still freezing
        if name.startswith("p2v-freeze-"):
            mount = argv[4]
            assert timeout is not None
            self.freeze_limits.append(timeout)
            if mount in self.refuse:
                return RemoteResult("freeze", 1, b"", "fsfreeze: Operation not supported")
            if mount in self.hang:
                self.clock.now += timeout
                self.frozen.add(mount)        # the freeze lands after p2v gave up
                raise SshFailed(host="src", detail="`fsfreeze` did not finish")
            self.clock.now += self.slow.get(mount, 0.1)
            self.frozen.add(mount)
            return RemoteResult("freeze", 0, b"", "")
        if argv[:4] == ["env", "LC_ALL=C", "fsfreeze", "-u"]:
            mount = argv[4]
            self.thawed.append(mount)
            if mount in self.stuck:
                return RemoteResult("thaw", 1, b"", "fsfreeze: unfreeze failed: I/O error")
            if mount not in self.frozen:
                return RemoteResult("thaw", 1, b"", f"fsfreeze: {mount}: unfreeze failed: "
                                                    "Invalid argument")
            self.frozen.discard(mount)
            return RemoteResult("thaw", 0, b"", "")
        raise AssertionError(f"unexpected command {argv}")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(freeze_mod.time, "monotonic", fake)
    return fake


def mounts(*names: str) -> list[Mount]:
    return [Mount(f"/dev/{n.strip('/') or 'root'}", n, "ext4") for n in names]


def test_the_command_timeout_shrinks_near_the_deadline_and_stops_at_the_margin() -> None:
    kw = {"host": "src", "mountpoint": "/srv", "timeout": 300.0}
    assert freeze_command_timeout(1000, **kw) == FREEZE_COMMAND_TIMEOUT
    assert freeze_command_timeout(20, **kw) == 20 - DEADLINE_MARGIN / 2
    assert freeze_command_timeout(DEADLINE_MARGIN, **kw) > 0
    for remaining in (DEADLINE_MARGIN - 0.01, 0.0, -3.0):
        with pytest.raises(FreezeDeadline) as info:
            freeze_command_timeout(remaining, **kw)
        assert "/srv" in info.value.message and "--freeze-timeout" in info.value.message


def test_no_mount_is_frozen_once_the_deadline_is_near(clock: Clock) -> None:
    # 10 s timer; the first freeze takes 6 s: 4 s left, under the margin, so /b is refused.
    source = FakeSource(clock, slow={"/a": 6.0})
    freeze = Freeze(source, mounts("/a", "/b"), timeout=10)  # type: ignore[arg-type]
    with pytest.raises(FreezeDeadline) as info:
        with freeze:
            pass
    assert "not freezing /b" in info.value.message
    assert source.frozen == set(), "a mount was left frozen"
    assert source.timer_killed                         # everything thawed: timer stopped
    assert all(limit <= 10 - DEADLINE_MARGIN / 2 for limit in source.freeze_limits)


def test_a_freeze_that_timed_out_is_thawed_too_and_then_the_timer_stops(clock: Clock) -> None:
    source = FakeSource(clock, hang={"/b"})
    freeze = Freeze(source, mounts("/a", "/b"), timeout=300)  # type: ignore[arg-type]
    with pytest.raises(SshFailed):
        with freeze:
            pass
    assert source.frozen == set(), "the mount whose freeze timed out stayed frozen"
    assert source.timer_killed


def test_a_thaw_that_fails_leaves_the_timer_running(clock: Clock) -> None:
    source = FakeSource(clock, stuck={"/a"})
    freeze = Freeze(source, mounts("/a", "/b"), timeout=300)  # type: ignore[arg-type]
    with freeze as report:
        assert [m.mountpoint for m in report.frozen] == ["/a", "/b"]
        with pytest.raises(FreezeFailed) as info:
            freeze.thaw()
    assert "/a" in info.value.message and "timer thaws it" in info.value.message
    assert source.frozen == {"/a"} and not source.timer_killed


def test_expired_once_the_deadline_passed(clock: Clock) -> None:
    source = FakeSource(clock)
    freeze = Freeze(source, mounts("/a"), timeout=30)  # type: ignore[arg-type]
    with freeze:
        assert not freeze.expired()
        clock.now += 30
        assert freeze.expired()


def test_a_mount_that_refused_the_freeze_is_not_thawed_by_p2v(clock: Clock) -> None:
    source = FakeSource(clock, refuse={"/fuse"})
    freeze = Freeze(source, mounts("/fuse", "/a"), timeout=300,  # type: ignore[arg-type]
                    best_effort=True)
    with freeze as report:
        assert [m.mountpoint for m, _ in report.not_frozen] == ["/fuse"]
    assert source.thawed == ["/a"] and source.frozen == set() and source.timer_killed


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.0, 9.9, 1e12])
def test_freeze_timeouts_that_are_no_usable_number_are_refused(value: float) -> None:
    with pytest.raises(UsageError) as info:
        check_freeze_timeout(value)
    assert info.value.exit_code == ExitCode.USAGE and "--freeze-timeout" in info.value.message


def test_usable_freeze_timeouts_pass() -> None:
    for value in (10.0, 300.0, 86400.0):
        check_freeze_timeout(value)


def _exit_code(argv: list[str]) -> int:
    """cli.main's exit code, whether argparse refused the value (SystemExit) or p2v did."""
    try:
        return cli.main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


@pytest.mark.parametrize("value", ["nan", "inf", "5"])
def test_convert_refuses_a_bad_freeze_timeout_before_anything_runs(
        value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    # Port 1: nothing answers there, and nothing may be dialled: refused first.
    code = _exit_code(["convert", "ssh://root@127.0.0.1:1", "--name", "g", "--output-dir",
                       str(out), "--cutover", "--freeze-timeout", value])
    err = capsys.readouterr().err
    assert code == ExitCode.USAGE, err
    assert err.count("\n") == 1 and "--freeze-timeout" in err and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("value", ["nan", "inf", "1e400"])
def test_sync_refuses_a_bad_freeze_timeout_before_connecting(
        value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = _exit_code(["sync", "ssh://root@127.0.0.1:1", "--output-dir", str(tmp_path),
                       "--freeze", f"--freeze-timeout={value}"])
    err = capsys.readouterr().err
    assert code == ExitCode.USAGE, err
    assert err.count("\n") == 1 and "--freeze-timeout" in err and "Traceback" not in err, err
