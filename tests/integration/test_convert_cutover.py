"""`p2v convert --cutover` through its real copy and sync stages, without a boot: the source
is a writable loop disk with no operating system, so the job stops at fix by design.

The before-final hook changes one chunk of the source (it runs on the source, which is this
machine): the frozen final pass must carry exactly that change, after the live pass found
nothing. The rerun resumes at fix without syncing again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from copy_helpers import identical
from libvirt_env import Libvirtd
from loop_sources import LoopSource, write_random_disk
from schema_check import assert_all_valid

from p2v import cli
from p2v.errors import ExitCode

MiB = 1 << 20


def test_cutover_syncs_the_hooks_change_then_stops_at_fix_and_resumes_there(
        libvirtd: Libvirtd, isolated_network: str, guest_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    raw = guest_dir / "cutover.raw"
    write_random_disk(raw, 32 * MiB, 8 * MiB)
    name = "p2vtest-cutover"
    trace = guest_dir / "cutover-hooks.log"
    with LoopSource.from_files([raw], writable=True) as ep:
        (device,) = ep.disks
        before = (f"dd if=/dev/urandom of={device} bs=1M count=1 seek=20 conv=notrunc,fsync "
                  f"status=none && echo before >> {trace}")
        argv = ["convert", f"ssh://{ep.user}@{ep.host}:{ep.port}", "--name", name,
                "--identity", str(ep.key), "--known-hosts", str(ep.known_hosts),
                "--ssh-config", "/dev/null", "--output-dir", str(guest_dir), "--network",
                isolated_network, "--disk", device, "--cutover", "--before-final", before,
                "--after-final", f"echo after >> {trace}"]
        code = cli.main(argv)
        err = capsys.readouterr().err
        assert code == ExitCode.FAILURE, err
        assert "convert stopped at fix" in err, err
        work = guest_dir / name
        assert (work / "markers" / "sync.done").is_file()
        assert trace.read_text() == "before\nafter\n"
        data = json.loads((work / "sync.json").read_text())
        assert [p["changed_bytes"] for p in data["live_passes"]] == [0]
        assert data["final"]["changed_bytes"] == 4 * MiB       # the hook's chunk, only
        assert data["freeze"]["frozen"] == []                  # nothing mounted from it
        image = next(work.glob("*.qcow2"))
        assert identical(raw, image)

        code = cli.main(argv)
        capsys.readouterr()
        events = assert_all_valid([json.loads(line) for line in
                                   (work / "events.jsonl").read_text().splitlines()], "events")
        last_run = events[max(i for i, e in enumerate(events) if e["event"] == "job-start"):]
        assert last_run[0]["resume_at"] == "fix"
        assert [e["stage"] for e in last_run if e["event"] == "stage-skip"] == [
            "inspect", "preflight", "copy", "sync"]
        assert trace.read_text() == "before\nafter\n"
