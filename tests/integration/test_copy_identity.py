"""`p2v copy`/`sync` know which server an image came from, and a resume leaves no stale data.

Two loop sources stand for two servers cloned from one template: one machine (so one
hostname), disks of one size reached by one device path (a symlink pointed at one or the
other loop device), different content, each behind its own sshd with its own host key.
A copy of one must never be resumed, taken as complete or synced from the other: exit 8,
one line, every file of the image as it was. And a resume after a power loss that lost
journal lines must zero what the image holds where the source is zero now.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from copy_helpers import identical, kill_after_first_batch, open_source, ssh_args, wait_closed
from loop_sources import LoopSource, write_random_disk

from p2v import cli, runner
from p2v.demo.live import SourceEndpoint
from p2v.errors import ExitCode
from p2v.transfer.copy import CopyRequest, copy_disks
from p2v.transfer.device import image_stem

MiB = 1 << 20
SIZE = 128 * MiB
DATA = 96 * MiB


@dataclass
class Clones:
    a: SourceEndpoint
    b: SourceEndpoint
    raw_a: Path
    raw_b: Path
    disk: Path                     # the one device path both "servers" have

    def point(self, ep: SourceEndpoint) -> None:
        """Make `disk` the device of `ep`'s server (as /dev/sda is on each clone)."""
        self.disk.unlink(missing_ok=True)
        self.disk.symlink_to(ep.disks[0])


@pytest.fixture(scope="module")
def clones(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clones]:
    base = tmp_path_factory.mktemp("clones")
    raw_a, raw_b = base / "a.raw", base / "b.raw"
    write_random_disk(raw_a, SIZE, DATA)
    write_random_disk(raw_b, SIZE, DATA)
    (base / "dev").mkdir()
    with LoopSource.from_files([raw_a]) as a, LoopSource.from_files([raw_b]) as b:
        assert a.known_hosts.read_text().split()[1:] != b.known_hosts.read_text().split()[1:]
        yield Clones(a, b, raw_a, raw_b, base / "dev" / "sda")



def copy_argv(ep: SourceEndpoint, out: Path, disk: Path, *extra: str) -> list[str]:
    return ["copy", *ssh_args(ep), "--output-dir", str(out), "--disk", str(disk),
            "--name", "clone", *extra]


def sync_argv(ep: SourceEndpoint, out: Path, disk: Path) -> list[str]:
    return ["sync", *ssh_args(ep), "--output-dir", str(out), "--disk", str(disk),
            "--name", "clone"]


def snapshot(out: Path) -> dict[str, tuple[int, int, str]]:
    """Every file of the images in out: size, mtime and sha256."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns,
                     hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(out.glob("clone-*"))}


def refused(capsys: pytest.CaptureFixture[str], action: str) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "is not a copy of this source (host key ssh-ed25519 SHA256:" in lines[0]
    assert f"refusing to {action}: use another --output-dir or --name" in lines[0]
    assert "Traceback" not in lines[0]
    return lines[0]


def test_a_complete_copy_of_one_clone_is_neither_complete_nor_synced_for_another(
        clones: Clones, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clones.point(clones.a)
    assert cli.main(copy_argv(clones.a, tmp_path, clones.disk)) == 0
    (image,) = tmp_path.glob("clone-*.qcow2")
    assert identical(clones.raw_a, image)
    before = snapshot(tmp_path)
    capsys.readouterr()

    clones.point(clones.b)
    assert cli.main(copy_argv(clones.b, tmp_path, clones.disk)) == ExitCode.SOURCE_MISMATCH
    refused(capsys, "take it as complete")
    assert cli.main(sync_argv(clones.b, tmp_path, clones.disk)) == ExitCode.SOURCE_MISMATCH
    refused(capsys, "sync it")
    assert snapshot(tmp_path) == before and identical(clones.raw_a, image)

    # The server it came from still finds it complete, and may sync it.
    clones.point(clones.a)
    assert cli.main(copy_argv(clones.a, tmp_path, clones.disk)) == 0
    assert "already complete" in capsys.readouterr().err
    assert cli.main(sync_argv(clones.a, tmp_path, clones.disk)) == 0
    assert identical(clones.raw_a, image)


def test_a_killed_copy_of_one_clone_is_not_resumed_from_another(
        clones: Clones, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clones.point(clones.a)
    argv = [sys.executable, "-m", "p2v.cli",
            *copy_argv(clones.a, tmp_path, clones.disk, "--chunk-size", "1", "--no-compress")]
    stem = f"clone-{image_stem(str(clones.disk))}.qcow2"
    journal = tmp_path / f"{stem}.journal"
    assert kill_after_first_batch(argv, journal) > 0
    wait_closed(tmp_path / f"{stem}.part")
    before = snapshot(tmp_path)
    assert set(before) == {f"{stem}.part", f"{stem}.journal"}

    clones.point(clones.b)
    rc = cli.main(copy_argv(clones.b, tmp_path, clones.disk, "--chunk-size", "1"))
    assert rc == ExitCode.SOURCE_MISMATCH
    assert f"{stem}.part is not a copy" in refused(capsys, "resume it")
    assert snapshot(tmp_path) == before

    clones.point(clones.a)
    with open_source(clones.a) as source:
        (result,) = copy_disks(source, CopyRequest(disks=(str(clones.disk),),
                                                   output_dir=tmp_path, name="clone",
                                                   chunk_size=MiB, compress=False))
    assert result.resumed_chunks > 0 and identical(clones.raw_a, result.image)


def test_a_record_without_identity_is_refused_and_a_torn_header_starts_afresh(
        clones: Clones, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A manifest from a p2v that recorded no identity cannot tell a clone from the
    original: refused. A journal whose header a power loss tore: nothing was journaled,
    so the copy starts afresh; a garbled one is a one-line error."""
    clones.point(clones.a)
    stem = f"clone-{image_stem(str(clones.disk))}.qcow2"
    part, journal = tmp_path / f"{stem}.part", tmp_path / f"{stem}.journal"
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", part, str(SIZE)])
    journal.write_bytes(b'{"schema": "p2v.journal/1", "host": "127.0')
    assert cli.main(copy_argv(clones.a, tmp_path, clones.disk)) == 0
    image = tmp_path / stem
    assert identical(clones.raw_a, image) and not journal.exists()

    manifest_path = tmp_path / f"{stem}.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["source"]
    manifest_path.write_text(json.dumps(manifest))
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert cli.main(copy_argv(clones.a, tmp_path, clones.disk)) == ExitCode.SOURCE_MISMATCH
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "(it records no source identity: written by an older p2v)" in err[0]
    assert cli.main(sync_argv(clones.a, tmp_path, clones.disk)) == ExitCode.SOURCE_MISMATCH
    assert snapshot(tmp_path) == before

    image.unlink()
    manifest_path.unlink()
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", part, str(SIZE)])
    journal.write_bytes(b"\x93garbage\n")
    capsys.readouterr()
    assert cli.main(copy_argv(clones.a, tmp_path, clones.disk)) == ExitCode.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"p2v: error: the journal {journal} is unreadable (its first line is not "
                   f"a p2v.journal/1 journal header); remove it and {part} to copy afresh, "
                   "or use another --output-dir"]
    assert journal.read_bytes() == b"\x93garbage\n" and part.exists()


def test_a_resume_zeroes_chunks_written_but_never_journaled(tmp_path: Path) -> None:
    """SIGKILL after the first journal batch, then the journal cut back to 8 entries (what
    a power loss leaves of lines not yet durable); meanwhile the source zeroed everything
    past those 8 MiB. The resume must not keep the old data there."""
    raw = tmp_path / "disk.raw"
    write_random_disk(raw, SIZE, DATA)
    out = tmp_path / "out"
    with LoopSource.from_files([raw], writable=True) as ep:
        (device,) = ep.disks
        stem = f"stale-{Path(device).name}.qcow2"
        journal = out / f"{stem}.journal"
        argv = [sys.executable, "-m", "p2v.cli", "copy", *ssh_args(ep), "--output-dir",
                str(out), "--disk", device, "--name", "stale", "--chunk-size", "1",
                "--no-compress"]
        assert kill_after_first_batch(argv, journal) >= 64     # the first batch: 64 MiB
        wait_closed(out / f"{stem}.part")
        lines = journal.read_bytes().split(b"\n")
        journal.write_bytes(b"\n".join(lines[:9]) + b"\n")
        runner.run(["dd", "if=/dev/zero", f"of={device}", "bs=1M", "seek=8", "count=120",
                    "oflag=direct", "conv=fsync", "status=none"])
        with open_source(ep) as source:
            (result,) = copy_disks(source, CopyRequest(disks=ep.disks, output_dir=out,
                                                       name="stale", chunk_size=MiB))
        assert identical(Path(device), result.image)
        assert result.resumed_chunks == 8 and result.read_chunks == SIZE // MiB - 8
        assert result.stale_zeroed_bytes >= 56 * MiB
        assert json.loads(result.manifest.read_text())["data_chunks"] == 8
