"""Freeze safety under real faults, on an ext4 loop disk mounted here behind a real sshd whose
sessions find shims first on their PATH: an `fsfreeze` whose `-f` waits (a slow freeze, with
Ctrl-C landing in the middle of it) and a `nice` that records each call.

"Frozen" is asked of the kernel at the end: `fsfreeze -u` succeeds only on a frozen
filesystem (EINVAL otherwise), which also thaws whatever a failing test left frozen.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from copy_helpers import ssh_args
from loop_sources import SshServer, attach_loop, detach_loop
from schema_check import assert_all_valid

from p2v import cli, runner
from p2v.errors import ExitCode

MiB = 1 << 20


@dataclass
class Disk:
    device: str
    mnt: Path
    state: Path                     # the shims' flag files and logs
    shims: Path



def was_frozen(mnt: Path) -> bool:
    """Thaw `mnt`; True if it was frozen (fsfreeze -u on a thawed fs fails with EINVAL)."""
    result = runner.run(["env", "LC_ALL=C", "fsfreeze", "-u", mnt], check=False)
    assert result.returncode == 0 or "Invalid argument" in result.stderr, result.stderr
    return result.returncode == 0


def wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def timers_for(mnt: Path) -> str:
    """The thaw timers (of any test run) naming this mountpoint: their pids, or ''."""
    return runner.run(["pgrep", "-f", f"p2v-thaw-timer-.*{mnt}"], check=False).stdout.strip()


def write_shims(shims: Path, state: Path) -> None:
    fsfreeze, nice = shutil.which("fsfreeze"), shutil.which("nice")
    assert fsfreeze and nice
    shims.mkdir()
    # -f waits while STATE/slow exists until STATE/release does (a freeze that takes long),
    # and says when it started and when the real freeze returned.
    (shims / "fsfreeze").write_text(f"""#!/bin/sh
if [ "$1" = -f ] && [ -e {state}/slow ]; then
    : > {state}/freezing
    while [ ! -e {state}/release ]; do sleep 0.05; done
fi
{fsfreeze} "$@"; r=$?
[ "$1" = -f ] && : > {state}/froze
exit $r
""")
    (shims / "nice").write_text(f"""#!/bin/sh
echo "$*" >> {state}/nice.log
exec {nice} "$@"
""")
    for shim in shims.iterdir():
        shim.chmod(0o755)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    """A 48 MiB ext4 loop disk mounted here, with a file on it; thawed and gone at the end."""
    raw = tmp_path / "ext4.raw"
    with raw.open("wb") as f:
        f.truncate(48 * MiB)
    runner.run(["mkfs.ext4", "-q", "-b", "4096", raw])
    device = attach_loop(raw, writable=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    try:
        runner.run(["mount", device, mnt])
        (mnt / "data").write_bytes(os.urandom(8 * MiB))
        os.sync()
        write_shims(tmp_path / "shims", state)
        yield Disk(device, mnt, state, tmp_path / "shims")
    finally:
        runner.run(["fsfreeze", "-u", mnt], check=False)
        runner.run(["umount", mnt], check=False)
        detach_loop(device)


def serve(disk: Disk) -> SshServer:
    return SshServer([disk.device], session_path=f"{disk.shims}:{os.environ['PATH']}")


def test_ctrl_c_during_a_slow_fsfreeze_leaves_nothing_frozen_and_stops_the_timer_last(
        disk: Disk, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with serve(disk) as ep:
        assert cli.main(["copy", *ssh_args(ep), "--output-dir", str(out), "--name", "s",
                         "--disk", disk.device]) == 0
        (disk.state / "slow").touch()
        argv = [sys.executable, "-m", "p2v", "-v", "sync", *ssh_args(ep), "--output-dir",
                str(out), "--name", "s", "--freeze", "--freeze-timeout", "300", "--json"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            wait_for(disk.state / "freezing", 60)      # p2v is inside `fsfreeze -f`
            proc.send_signal(signal.SIGINT)
            (disk.state / "release").touch()           # the slow freeze now lands
            out_text, err = proc.communicate(timeout=60)
            assert proc.returncode == ExitCode.INTERRUPTED, err
            wait_for(disk.state / "froze", 30)         # the real fsfreeze -f has returned
            assert not was_frozen(disk.mnt), "the source was left frozen:\n" + err
            assert timers_for(disk.mnt) == "", "the thaw timer was left running"
            assert not any(json.loads(line)["event"] == "frozen"
                           for line in out_text.splitlines() if line.startswith("{"))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_frozen_pass_runs_at_normal_priority(disk: Disk, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    log = disk.state / "nice.log"
    with serve(disk) as ep:
        assert cli.main(["copy", *ssh_args(ep), "--output-dir", str(out), "--name", "n",
                         "--disk", disk.device]) == 0
        assert "-n 19" in log.read_text()          # the copy is niced: the shim is in use
        log.unlink()
        (disk.mnt / "more").write_bytes(os.urandom(4 * MiB))
        # The frozen pass (hash list and reader) is not niced: writers wait while it runs.
        capsys.readouterr()
        assert cli.main(["sync", *ssh_args(ep), "--output-dir", str(out), "--name", "n",
                         "--freeze", "--json"]) == 0, capsys.readouterr().err
        lines = capsys.readouterr().out.splitlines()
        assert_all_valid([json.loads(line) for line in lines], "events")
        done = [json.loads(line) for line in lines if '"sync-done"' in line]
        assert done and done[0]["changed_chunks"] > 0
        assert not log.exists(), f"niced while frozen: {log.read_text()}"
    assert not was_frozen(disk.mnt)
    assert timers_for(disk.mnt) == ""
