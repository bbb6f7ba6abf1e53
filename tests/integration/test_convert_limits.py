"""`p2v convert --bandwidth-limit --parallel` reach its copy: a real convert of two loop disks
with no operating system (so the job stops at fix by design), held to the limit on the wire."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from copy_helpers import identical
from libvirt_env import Libvirtd
from loop_sources import LoopSource, write_random_disk
from schema_check import assert_all_valid, assert_valid

from p2v import cli
from p2v.errors import ExitCode

MiB = 1 << 20


def test_convert_copies_under_its_bandwidth_limit_and_parallel(
        libvirtd: Libvirtd, isolated_network: str, guest_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    raws = [guest_dir / "limit-a.raw", guest_dir / "limit-b.raw"]
    for raw in raws:
        write_random_disk(raw, 32 * MiB, 12 * MiB)          # random: compression cannot help
    name = "p2vtest-limits"
    limit = 8 * MiB
    with LoopSource.from_files(raws) as ep:
        argv = ["convert", f"ssh://{ep.user}@{ep.host}:{ep.port}", "--name", name,
                "--identity", str(ep.key), "--known-hosts", str(ep.known_hosts),
                "--ssh-config", "/dev/null", "--output-dir", str(guest_dir), "--network",
                isolated_network, "--disk", ep.disks[0], "--disk", ep.disks[1],
                "--bandwidth-limit", "8M", "--parallel", "1"]
        code = cli.main(argv)
        err = capsys.readouterr().err
    assert code == ExitCode.FAILURE and "convert stopped at fix" in err, err
    work = guest_dir / name
    spec = json.loads((work / "spec.json").read_text())
    assert (spec["bandwidth_limit"], spec["parallel"]) == (limit, 1)
    events = assert_all_valid([json.loads(line) for line in
                               (work / "events.jsonl").read_text().splitlines()], "events")
    assert_valid(json.loads((work / "report.json").read_text()), "report")
    done = [e for e in events if e["event"] == "disk-done"]
    wire = sum(e["wire_bytes"] for e in done)
    assert wire > 24 * MiB
    starts = {e["device"]: i for i, e in enumerate(events) if e["event"] == "disk-start"}
    ends = {e["device"]: i for i, e in enumerate(events) if e["event"] == "disk-done"}
    first, second = sorted(starts, key=starts.__getitem__)
    assert ends[first] < starts[second], "--parallel 1: the second disk starts after the first"
    copy_seconds = json.loads((work / "markers" / "copy.done").read_text())["seconds"]
    # 24 MiB of random data at 8 MiB/s: at least 3 s less the bucket's quarter second.
    assert copy_seconds >= (wire - limit / 4) / limit * 0.95, (copy_seconds, wire)
    images = {e["device"]: Path(e["image"]) for e in done}
    for raw, device in zip(raws, ep.disks, strict=True):
        assert identical(raw, images[device])
