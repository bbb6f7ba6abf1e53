"""`p2v copy` from loop sources over a real sshd: identical images, resume after a kill,
an untouched source, and one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from copy_helpers import kill_after_first_batch
from loop_sources import LoopSource, write_random_disk
from schema_check import assert_all_valid

from p2v import cli, runner
from p2v.demo.image import FixtureImage
from p2v.demo.live import SourceEndpoint
from p2v.errors import ExitCode
from p2v.sink.qcow2 import Qcow2Writer, create_qcow2
from p2v.source.ssh import SshOptions, SshSource
from p2v.transfer.copy import CopyRequest, copy_disks

MiB = 1 << 20


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


def identical(raw: Path, image: Path) -> bool:
    result = runner.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", raw, image],
                        check=False)
    return result.returncode == 0


def open_source(ep: SourceEndpoint) -> SshSource:
    return SshSource.open(f"ssh://{ep.user}@{ep.host}:{ep.port}",
                          SshOptions(identity=ep.key, known_hosts=ep.known_hosts,
                                     use_agent=False, ssh_config=Path("/dev/null")))


def copy_argv(ep: SourceEndpoint, out: Path, *extra: str, disk: str | None = None
              ) -> list[str]:
    return ["copy", f"ssh://{ep.user}@{ep.host}:{ep.port}", "--identity", str(ep.key),
            "--known-hosts", str(ep.known_hosts), "--ssh-config", "/dev/null",
            "--output-dir", str(out), "--disk", disk or ep.disks[0], *extra]


@pytest.fixture(scope="module")
def random_source(tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[SourceEndpoint, Path, str]]:
    """256 MiB: 96 MiB random, then zeros, with 8 MiB of text at 200 MiB."""
    path = tmp_path_factory.mktemp("src") / "disk.raw"
    write_random_disk(path, 256 * MiB, 96 * MiB)
    with path.open("r+b") as f:
        f.seek(200 * MiB)
        f.write((b"compressible text " * MiB)[: 8 * MiB])
    with LoopSource.from_files([path]) as ep:
        yield ep, path, sha256(path)


def test_qcow2_writer_round_trip(tmp_path: Path) -> None:
    image = tmp_path / "x.qcow2"
    create_qcow2(image, 8 * MiB)
    data = os.urandom(MiB)
    with Qcow2Writer(image) as writer:
        assert writer.size == 8 * MiB
        writer.write(3 * MiB, data)
        writer.flush()
        assert writer.read(3 * MiB, MiB) == data
        assert writer.read(0, MiB) == bytes(MiB)
    runner.run(["qemu-img", "check", "-q", image])


def test_copy_is_identical_sends_only_data_and_leaves_the_source_alone(
        random_source: tuple[SourceEndpoint, Path, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ep, raw, before = random_source
    assert cli.main(copy_argv(ep, tmp_path, "--name", "w1", "--json")) == 0
    events = assert_all_valid([json.loads(line) for line in capsys.readouterr().out.splitlines()],
                              "events")
    done = next(e for e in events if e["event"] == "disk-done")
    image = tmp_path / f"w1-{Path(ep.disks[0]).name}.qcow2"
    assert done["image"] == str(image) and image.is_file()
    assert identical(raw, image)
    assert sha256(raw) == before
    # Zeros never cross; random data crosses once (plus frame headers); text compresses.
    assert 96 * MiB < done["wire_bytes"] < 96 * MiB * 1.05
    manifest = json.loads(Path(done["manifest"]).read_text())
    assert manifest["schema"] == "p2v.manifest/1" and manifest["size"] == 256 * MiB
    assert manifest["data_chunks"] == 26 and manifest["zero_chunks"] == 38
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob("*.journal"))
    # Image on disk: about the data, not the virtual size.
    assert image.stat().st_size < 110 * MiB
    # A rerun finds it complete and sends nothing.
    assert cli.main(copy_argv(ep, tmp_path, "--name", "w1")) == 0
    assert "already complete" in capsys.readouterr().err


@pytest.mark.parametrize("chunk_mib", ["64", "96"])
def test_chunks_over_the_nbd_request_limit_copy_identically(
        random_source: tuple[SourceEndpoint, Path, str], tmp_path: Path,
        chunk_mib: str) -> None:
    """--chunk-size above qemu's 32 MiB NBD request limit (the sink cuts each write to
    it); 96 MiB: the last chunk is short and not a multiple of the limit."""
    ep, raw, _ = random_source
    assert cli.main(copy_argv(ep, tmp_path, "--name", "big", "--chunk-size", chunk_mib)) == 0
    image = tmp_path / f"big-{Path(ep.disks[0]).name}.qcow2"
    assert identical(raw, image)
    runner.run(["qemu-img", "check", "-q", image])


def test_killed_copy_resumes_to_the_same_image(
        random_source: tuple[SourceEndpoint, Path, str], tmp_path: Path) -> None:
    ep, raw, before = random_source
    argv = [sys.executable, "-m", "p2v.cli", *copy_argv(ep, tmp_path, "--name", "k",
                                                        "--chunk-size", "1", "--no-compress")]
    journaled = kill_after_first_batch(
        argv, tmp_path / f"k-{Path(ep.disks[0]).name}.qcow2.journal")
    assert 0 < journaled < 256
    assert not (tmp_path / f"k-{Path(ep.disks[0]).name}.qcow2").exists()  # not presented
    with open_source(ep) as source:
        (result,) = copy_disks(source, CopyRequest(disks=ep.disks, output_dir=tmp_path,
                                                   name="k", chunk_size=MiB, compress=False))
    assert result.resumed_chunks >= journaled
    assert result.read_chunks == 256 - result.resumed_chunks
    assert identical(raw, result.image)
    assert sha256(raw) == before


def test_missing_device_and_not_a_block_device(
        random_source: tuple[SourceEndpoint, Path, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ep = random_source[0]
    assert cli.main(copy_argv(ep, tmp_path, disk="/dev/nonexistent")) == ExitCode.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["p2v: error: /dev/nonexistent on 127.0.0.1: no such device"]
    assert cli.main(copy_argv(ep, tmp_path, disk="/etc/hostname")) == ExitCode.USAGE
    assert "not a block device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("variant", ["bios", "uefi"])
def test_fixture_disks_copy_identically(variant: str, request: pytest.FixtureRequest,
                                        tmp_path: Path) -> None:
    """--full: each fixture's disks (MBR/ext4/swap; GPT/ESP/LVM) -> qcow2 identical to the
    source, partitions visible to the reader."""
    image: FixtureImage = request.getfixturevalue(f"{variant}_image")
    with LoopSource(image, partitions=True) as ep, open_source(ep) as source:
        results = copy_disks(source, CopyRequest(disks=ep.disks, output_dir=tmp_path,
                                                 name=variant, full=True))
    for raw, result in zip(image.disks, results, strict=True):
        assert identical(Path(raw), result.image)
        assert result.wire_bytes < Path(raw).stat().st_size // 2
        runner.run(["qemu-img", "check", "-q", result.image])


def _attach_partition(raw: Path, start: int, size: int) -> str:
    return runner.run(["losetup", "-f", "--show", "-r", "-o", str(start), "--sizelimit",
                       str(size), raw]).stdout.strip()


def _file_sums(device: str, mountpoint: Path) -> str:
    mountpoint.mkdir()
    runner.run(["mount", "-o", "ro,noload", device, mountpoint])
    try:
        files = sorted(str(p.relative_to(mountpoint)) for p in mountpoint.rglob("*")
                       if p.is_file() and not p.is_symlink())
        return "\n".join(f"{sha256(mountpoint / f)}  {f}" for f in files)
    finally:
        runner.run(["umount", mountpoint])


def test_default_copy_skips_free_ext4_blocks_and_swap(bios_image: FixtureImage,
                                                      tmp_path: Path) -> None:
    """Without --full only used blocks cross: the root ext4 fscks clean, every file matches
    the source, the swap keeps its header (UUID, label), and far less is sent."""
    raw = Path(bios_image.disks[0])
    with LoopSource(bios_image, partitions=True) as ep, open_source(ep) as source:
        (result,) = copy_disks(source, CopyRequest(disks=ep.disks, output_dir=tmp_path,
                                                   name="used"))
    assert result.free_chunks > 0
    assert result.wire_bytes < 0.4 * raw.stat().st_size
    copied = tmp_path / "copied.raw"
    runner.run(["qemu-img", "convert", "-O", "raw", result.image, copied])
    root = (1 << 20, 1536 << 20)                 # sda1 of fixtures/bios.toml
    loops = [_attach_partition(copied, *root), _attach_partition(raw, *root)]
    try:
        fsck = runner.run(["e2fsck", "-fn", loops[0]], check=False)
        assert fsck.returncode == 0, fsck.stdout
        assert _file_sums(loops[0], tmp_path / "a") == _file_sums(loops[1], tmp_path / "b")
    finally:
        for loop in loops:
            runner.run(["losetup", "-d", loop], check=False)
    swap_uuid = runner.run(["blkid", "-p", "-o", "value", "-s", "UUID", "-O",
                            str(1537 << 20), raw]).stdout
    assert swap_uuid and runner.run(["blkid", "-p", "-o", "value", "-s", "UUID", "-O",
                                     str(1537 << 20), copied]).stdout == swap_uuid
