"""`p2v copy` of a filesystem that is mounted and in use: what a live server's disk looks like.

Files synced just before the copy must arrive intact although the filesystem is mounted
(needs_recovery set, metadata partly in its journal) and its free space holds stale data
that the free-space skipping leaves out. The copy is judged as the guest's first boot would
see it: after a journal replay it must fsck clean and every file must match.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from loop_sources import SshServer, attach_loop, detach_loop

from p2v import cli, runner

MiB = 1 << 20


@pytest.fixture
def mounted_ext4(tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """A 256 MiB ext4 on a writable loop device, mounted, with fresh files (and deleted ones)."""
    image = tmp_path / "busy.raw"
    with image.open("wb") as f:
        f.truncate(256 * MiB)
    runner.run(["mkfs.ext4", "-q", "-b", "4096", image])
    device = attach_loop(image, writable=True)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    runner.run(["mount", device, mountpoint])
    try:
        # Stale data in free space (written, then deleted) and fresh files written after it.
        stale = mountpoint / "stale"
        stale.write_bytes(os.urandom(64 * MiB))
        os.sync()
        stale.unlink()
        sums: dict[str, str] = {}
        for n in range(4):
            data = os.urandom(8 * MiB)
            (mountpoint / f"fresh{n}").write_bytes(data)
            sums[f"fresh{n}"] = hashlib.sha256(data).hexdigest()
        os.sync()   # data and journal on disk; the bitmaps are checkpointed later
        yield device, mountpoint, sums
    finally:
        runner.run(["umount", mountpoint], check=False)
        detach_loop(device)


def test_fresh_files_on_a_mounted_ext4_arrive_intact(
        mounted_ext4: tuple[str, Path, dict[str, str]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    device, _mountpoint, sums = mounted_ext4
    out = tmp_path / "out"
    with SshServer([device]) as ep:
        argv = ["copy", f"ssh://{ep.user}@{ep.host}:{ep.port}", "--identity", str(ep.key),
                "--known-hosts", str(ep.known_hosts), "--ssh-config", "/dev/null",
                "--output-dir", str(out), "--disk", device, "--name", "busy", "--json"]
        assert cli.main(argv) == 0, capsys.readouterr().err
    images = list(out.glob("busy-*.qcow2"))
    assert len(images) == 1, images
    raw = tmp_path / "copy.raw"
    runner.run(["qemu-img", "convert", "-O", "raw", images[0], raw])
    # The copy is crash-consistent: replay its journal like a first boot would, then it
    # must be clean and every file written before the copy must match.
    fsck = runner.run(["e2fsck", "-fy", raw], check=False)
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr
    assert runner.run(["e2fsck", "-fn", raw], check=False).returncode == 0
    dump = tmp_path / "dump"
    for name, digest in sums.items():
        runner.run(["debugfs", "-R", f"dump /{name} {dump}", raw])
        assert hashlib.sha256(dump.read_bytes()).hexdigest() == digest, name
    # ... and the deleted file's 64 MiB of stale data was not sent.
    assert raw.stat().st_size == 256 * MiB
    done = [line for line in capsys.readouterr().out.splitlines() if '"disk-done"' in line]
    assert done and '"free_chunks": 0' not in done[0], done
