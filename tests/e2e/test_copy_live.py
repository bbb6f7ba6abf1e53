"""`p2v copy` from the bios fixture running as a live server (its own python3 and sshd)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from schema_check import assert_all_valid

from p2v import cli, runner
from p2v.demo.live import SourceEndpoint

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_live_bios_server_disk(live_source_bios: SourceEndpoint, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    live = live_source_bios
    fixture = live.fixture
    assert fixture is not None
    argv = ["copy", f"ssh://{live.user}@{live.host}:{live.port}", "--identity", str(live.key),
            "--known-hosts", str(live.known_hosts), "--ssh-config", "/dev/null",
            "--disk", "/dev/sda", "--output-dir", str(tmp_path), "--no-compress", "--json"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    events = assert_all_valid([json.loads(line) for line in
                               capsys.readouterr().out.splitlines()], "events")
    done = next(e for e in events if e["event"] == "disk-done")
    image = tmp_path / f"{fixture.hostname}-sda.qcow2"   # the name is the source's hostname
    assert done["image"] == str(image)
    assert done["free_chunks"] > 0 and done["wire_bytes"] < (2048 << 20) // 2
    runner.run(["qemu-img", "check", "-q", image])
    raw = tmp_path / "copy.raw"
    runner.run(["qemu-img", "convert", "-O", "raw", image, raw])
    with raw.open("rb") as copied, Path(fixture.disks[0]).open("rb") as source:
        assert copied.read(512) == source.read(512)       # MBR and boot code
    # A copy of a mounted filesystem is crash-consistent: recent metadata may still sit in
    # the ext4 journal, so replay it (as the guest's first boot would) before reading files.
    loop = runner.run(["losetup", "-f", "--show", "-o", str(1 << 20), "--sizelimit",
                       str(1536 << 20), raw]).stdout.strip()
    try:
        fsck = runner.run(["e2fsck", "-fy", loop], check=False)
        assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr   # 1: journal replayed
        hostname = runner.run(["debugfs", "-R", "cat /etc/hostname", loop]).stdout
    finally:
        runner.run(["losetup", "-d", loop])
    assert hostname.strip() == fixture.hostname
