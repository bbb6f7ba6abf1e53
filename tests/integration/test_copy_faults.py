"""Faults during `p2v copy`: the link cut at random points, corrupt chunks. Every rerun
resumes, re-reads no chunk that arrived whole, and ends with an identical image."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2v import copy as copy_module
from p2v import runner
from p2v.copy import CopyRequest, copy_disks
from p2v.errors import ExitCode, IntegrityError, P2VError
from p2v.source.extents import Extent
from p2v.source.ssh import SshOptions, SshSource
from p2v.testbed.sources import LoopSource, SourceEndpoint, write_random_disk
from p2v.testbed.tcpproxy import LinkProxy

MiB = 1 << 20
CHUNK = MiB
SIZE = 96 * MiB


@pytest.fixture(scope="module")
def source_disk(tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[SourceEndpoint, Path]]:
    path = tmp_path_factory.mktemp("faults") / "disk.raw"
    write_random_disk(path, SIZE, 48 * MiB)
    with LoopSource.from_files([path]) as ep:
        yield ep, path


def open_via(ep: SourceEndpoint, port: int, known_hosts: Path) -> SshSource:
    fields = ep.known_hosts.read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{port} {fields[1]} {fields[2]}\n")
    return SshSource.open(f"ssh://{ep.user}@127.0.0.1:{port}",
                          SshOptions(identity=ep.key, known_hosts=known_hosts, use_agent=False,
                                     ssh_config=Path("/dev/null")))


def identical(raw: Path, image: Path) -> bool:
    return runner.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", raw, image],
                      check=False).returncode == 0


def test_link_cut_at_random_points_then_resumed(
        source_disk: tuple[SourceEndpoint, Path], tmp_path: Path) -> None:
    ep, raw = source_disk
    request = CopyRequest(disks=ep.disks, output_dir=tmp_path, name="cut", chunk_size=CHUNK,
                          compress=False)
    journal = tmp_path / f"cut-{Path(ep.disks[0]).name}.qcow2.journal"
    rng = random.Random(4)
    wire: list[int] = []           # bytes of whole chunks received, per run
    messages: list[str] = []
    for cut_at in sorted(rng.sample(range(2 * MiB, 46 * MiB), 3)):
        proxy = LinkProxy(ep.port, cut_after=cut_at)
        progress: list[int] = [0]
        try:
            with pytest.raises(P2VError) as info:
                with open_via(ep, proxy.port, tmp_path / "kh") as source:
                    copy_disks(source, request, emit=lambda e, p=progress: p.append(
                        int(e.get("wire_bytes", 0))))
        finally:
            proxy.close()
        assert proxy.cut and journal.exists()
        assert "\n" not in info.value.message and info.value.exit_code == ExitCode.FAILURE
        messages.append(info.value.message)
        wire.append(max(progress))
    with open_via(ep, ep.port, tmp_path / "kh") as source:
        (result,) = copy_disks(source, request)
    wire.append(result.wire_bytes)
    assert identical(raw, result.image)
    assert result.resumed_chunks > 0
    # All runs together carried the 48 MiB of data once, plus at most the chunk in flight
    # at each cut (frame headers: 49 bytes per chunk).
    frames = (SIZE // CHUNK) * 49
    assert 48 * MiB + frames <= sum(wire) + 3 * frames, (wire, messages)
    assert sum(wire) <= 48 * MiB + frames + len(messages) * (CHUNK + 49), (wire, messages)
    assert all("broke" in m and "rerun the same command" in m for m in messages), messages


def test_a_corrupt_chunk_is_fetched_again(source_disk: tuple[SourceEndpoint, Path],
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    ep, raw = source_disk
    real = copy_module.read_extents
    damaged: list[int] = []

    def damaging(*args: Any, **kwargs: Any) -> Iterator[Extent]:
        for extent in real(*args, **kwargs):
            if extent.index == 5 and not damaged:
                damaged.append(5)
                yield Extent(extent.index, extent.offset, extent.length, False,
                             extent.sha256, b"x" * extent.length, extent.wire_bytes,
                             corrupt=True)
            else:
                yield extent

    monkeypatch.setattr(copy_module, "read_extents", damaging)
    with open_via(ep, ep.port, tmp_path / "kh") as source:
        (result,) = copy_disks(source, CopyRequest(disks=ep.disks, output_dir=tmp_path,
                                                   name="c", chunk_size=CHUNK))
    assert damaged == [5] and result.refetched_chunks == 1
    assert identical(raw, result.image)


def test_a_chunk_corrupt_twice_is_an_integrity_error(
        source_disk: tuple[SourceEndpoint, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ep, _ = source_disk
    real = copy_module.read_extents

    def always_bad(*args: Any, **kwargs: Any) -> Iterator[Extent]:
        for extent in real(*args, **kwargs):
            if extent.index == 7:
                extent = Extent(7, extent.offset, extent.length, False, extent.sha256,
                                b"", extent.wire_bytes, corrupt=True)
            yield extent

    monkeypatch.setattr(copy_module, "read_extents", always_bad)
    with open_via(ep, ep.port, tmp_path / "kh") as source:
        with pytest.raises(IntegrityError) as info:
            copy_disks(source, CopyRequest(disks=ep.disks, output_dir=tmp_path, name="i",
                                           chunk_size=CHUNK))
    assert info.value.exit_code == ExitCode.INTEGRITY == 5
    journal = tmp_path / f"i-{Path(ep.disks[0]).name}.qcow2.journal"
    lines = journal.read_text().splitlines()
    assert len(lines) - 1 == SIZE // CHUNK - 1          # every other chunk is kept
    assert not (tmp_path / f"i-{Path(ep.disks[0]).name}.qcow2").exists()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    runner.run(["mount", "-t", "tmpfs", "-o", "size=24m", "p2v-test-full", mount])
    try:
        yield mount
    finally:
        runner.run(["umount", mount], check=False)


def test_destination_full_then_resumed_after_space_is_freed(
        source_disk: tuple[SourceEndpoint, Path], small_tmpfs: Path) -> None:
    ep, raw = source_disk
    request = CopyRequest(disks=ep.disks, output_dir=small_tmpfs, name="full",
                          chunk_size=CHUNK)
    with open_via(ep, ep.port, small_tmpfs.parent / "kh") as source:
        with pytest.raises(P2VError) as info:
            copy_disks(source, request)
    assert type(info.value).__name__ == "DestinationFull", info.value.message
    assert "no space left" in info.value.message and "\n" not in info.value.message
    journal = small_tmpfs / f"full-{Path(ep.disks[0]).name}.qcow2.journal"
    kept = len(journal.read_text().splitlines()) - 1
    assert kept > 0
    runner.run(["mount", "-o", "remount,size=128m", small_tmpfs])
    with open_via(ep, ep.port, small_tmpfs.parent / "kh") as source:
        (result,) = copy_disks(source, request)
    assert result.resumed_chunks == kept
    assert identical(raw, result.image)
