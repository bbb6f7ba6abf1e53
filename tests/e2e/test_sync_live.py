"""`p2v copy` then `p2v sync --freeze` of the bios fixture running as a live server while a
writer inside it keeps creating files: the frozen pass gives an image whose root filesystem
is clean without any journal replay and holds every file the writer had completed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from schema_check import assert_all_valid

from p2v import cli, runner
from p2v.demo.fixtures import FixtureImage
from p2v.demo.live import LiveSource, SourceEndpoint

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Runs in the guest: a file of random data every ~0.3 s, then its sha256 appended to a list.
WRITER = (
    "mkdir -p /root/w && cd /root/w && i=0; "
    "while :; do dd if=/dev/urandom of=f$i bs=64k count=4 2>/dev/null; "
    "sha256sum f$i >> done; i=$((i+1)); sleep 0.3; done"
)


@pytest.fixture
def private_live(bios_image: FixtureImage) -> Iterator[SourceEndpoint]:
    """Its own boot: the frozen passes and the writer must not touch the session's server."""
    with LiveSource(bios_image) as endpoint:
        yield endpoint


def ssh_args(ep: SourceEndpoint) -> list[str]:
    return [f"ssh://{ep.user}@{ep.host}:{ep.port}", "--identity", str(ep.key),
            "--known-hosts", str(ep.known_hosts), "--ssh-config", "/dev/null"]


def written(live: SourceEndpoint, more_than: int = -1, timeout: float = 60) -> int:
    """How many files the writer has completed, once that is more than MORE_THAN (polled
    over SSH with a deadline: the event is the writer getting on, not time passing)."""
    deadline = time.monotonic() + timeout
    while True:
        done = live.ssh(["sh", "-c", "cat /root/w/done 2>/dev/null"], check=False)
        count = len(done.stdout.splitlines())
        if count > more_than:
            return count
        assert time.monotonic() < deadline, f"the writer is stuck at {count} files"
        time.sleep(0.2)


def test_live_sync_freeze_with_a_writer(private_live: SourceEndpoint, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    live = private_live
    pid = live.ssh(["sh", "-c", f"setsid sh -c '{WRITER}' </dev/null >/dev/null 2>&1 & "
                                "echo $!"]).stdout.strip()
    assert pid.isdigit(), pid
    try:
        written(live, more_than=3)          # the writer is at work before the copy starts
        common = [*ssh_args(live), "--output-dir", str(tmp_path), "--name", "w"]
        t0 = time.monotonic()
        assert cli.main(["copy", *common, "--disk", "/dev/sda", "--json"]) == 0, \
            capsys.readouterr().err
        copied = time.monotonic() - t0
        assert cli.main(["sync", *common, "--json"]) == 0, capsys.readouterr().err
        capsys.readouterr()
        before = live.ssh(["cat", "/root/w/done"]).stdout.splitlines()
        t1 = time.monotonic()
        assert cli.main(["sync", *common, "--freeze", "--json"]) == 0, capsys.readouterr().err
        synced = time.monotonic() - t1
        events = assert_all_valid([json.loads(line) for line in
                                   capsys.readouterr().out.splitlines()], "events")
        # The writer went on after the thaw: the source is not left frozen.
        written(live, more_than=written(live))
    finally:
        live.ssh(["kill", "--", f"-{pid}"], check=False)
    result = events[-1]
    assert result["event"] == "sync-result"
    frozen = next(e for e in events if e["event"] == "frozen")
    assert "/" in frozen["frozen"], frozen
    print(f"copy {copied:.0f} s, frozen sync {synced:.0f} s, freeze window "
          f"{result['freeze']['freeze_s']:.1f} s, {result['changed_bytes']} bytes changed")

    raw = tmp_path / "copy.raw"
    runner.run(["qemu-img", "convert", "-O", "raw", tmp_path / "w-sda.qcow2", raw])
    loop = runner.run(["losetup", "-f", "--show", "-o", str(1 << 20), "--sizelimit",
                       str(1536 << 20), raw]).stdout.strip()
    try:
        # Frozen means clean as it is: no journal replay, no repair.
        fsck = runner.run(["e2fsck", "-fn", loop], check=False)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        listed = runner.run(["debugfs", "-R", "cat /root/w/done", loop]).stdout.splitlines()
        assert len(listed) >= len(before) > 0
        assert listed[:len(before)] == before
        dump = tmp_path / "f"
        for line in listed:
            digest, name = line.split()
            runner.run(["debugfs", "-R", f"dump /root/w/{name} {dump}", loop])
            assert runner.run(["sha256sum", dump]).stdout.split()[0] == digest, name
    finally:
        runner.run(["losetup", "-d", loop])
