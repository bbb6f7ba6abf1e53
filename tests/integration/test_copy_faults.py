"""Faults during `p2v copy`: the link cut at random points, corrupt chunks. Every rerun
resumes, re-reads no chunk that arrived whole, and ends with an identical image."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from loop_sources import LoopSource, write_random_disk
from tcpproxy import LinkProxy

from p2v import cli, runner
from p2v.demo.live import SourceEndpoint
from p2v.errors import ExitCode, P2VError
from p2v.source.ssh import SshOptions, SshSource
from p2v.transfer.copy import CopyRequest, copy_disks

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


# A real fault on the source: its `python3` is a wrapper that runs the real reader and pipes
# its stream through FLIPPER, which flips one bit in the payload of a chosen chunk *after*
# the reader hashed it. The control file says which chunk and how often: "once 5" (then
# it turns itself off), "always 7" or "off"; every flip is logged, so the test knows the
# fault really happened on the wire.
FLIPPER = r"""
import os, struct, sys
control = sys.argv[1]
src, out = sys.stdin.buffer, sys.stdout.buffer
def exact(n):
    data = b""
    while len(data) < n:
        got = src.read(n - len(data))
        if not got:
            break
        data += got
    return data
head = exact(24)
out.write(head)
if head[:8] != b"P2VSTRM2":                 # not the copy's reader: pass it through
    while True:
        block = src.read(1 << 16)
        if not block:
            break
        out.write(block)
    out.flush()
    sys.exit(0)
mode, target = (open(control).read().split() + ["off", "-1"])[:2]
frame = struct.Struct(">BQI32sI")
while True:
    h = exact(frame.size)
    out.write(h)
    if len(h) < frame.size:
        break
    kind, index, length, digest, plen = frame.unpack(h)
    if kind == 3:
        break
    payload = exact(plen)
    if plen and mode != "off" and index == int(target):
        payload = bytearray(payload)
        payload[plen // 2] ^= 0x10
        with open(control + ".log", "a") as log:
            log.write("%d\n" % index)
        if mode == "once":
            with open(control + ".new", "w") as new:
                new.write("off")
            os.rename(control + ".new", control)
            mode = "off"
    out.write(bytes(payload))
out.flush()
"""


@pytest.fixture(scope="module")
def flipping_source(tmp_path_factory: pytest.TempPathFactory, source_disk: tuple[
        SourceEndpoint, Path]) -> Iterator[tuple[SourceEndpoint, Path, Path]]:
    """The same disk behind a second sshd whose sessions find the flipping python3 first."""
    _, raw = source_disk
    shim = tmp_path_factory.mktemp("flip")
    (shim / "flipper.py").write_text(FLIPPER)
    control = shim / "control"
    control.write_text("off")
    wrapper = shim / "python3"
    wrapper.write_text(f"#!/bin/sh\n/usr/bin/python3 \"$@\" | exec /usr/bin/python3 -B "
                       f"{shim / 'flipper.py'} {control}\n")
    wrapper.chmod(0o755)
    path = f"{shim}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    with LoopSource.from_files([raw], session_path=path) as ep:
        yield ep, raw, control


def flips(control: Path) -> list[int]:
    log = control.with_name("control.log")
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def test_a_chunk_corrupted_on_the_wire_is_fetched_again(
        flipping_source: tuple[SourceEndpoint, Path, Path], tmp_path: Path) -> None:
    ep, raw, control = flipping_source
    control.write_text("once 5")
    before = flips(control)
    with open_via(ep, ep.port, tmp_path / "kh") as source:
        (result,) = copy_disks(source, CopyRequest(disks=ep.disks, output_dir=tmp_path,
                                                   name="c", chunk_size=CHUNK))
    assert flips(control)[len(before):] == [5] and control.read_text() == "off"
    assert result.refetched_chunks == 1
    assert identical(raw, result.image)


def test_a_chunk_corrupted_every_time_is_an_integrity_error(
        flipping_source: tuple[SourceEndpoint, Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ep, _, control = flipping_source
    control.write_text("always 7")
    before = flips(control)
    fields = ep.known_hosts.read_text().split()
    (tmp_path / "kh").write_text(f"[127.0.0.1]:{ep.port} {fields[1]} {fields[2]}\n")
    try:
        code = cli.main(["copy", f"ssh://{ep.user}@127.0.0.1:{ep.port}", "--identity",
                         str(ep.key), "--known-hosts", str(tmp_path / "kh"), "--ssh-config",
                         "/dev/null", "--output-dir", str(tmp_path), "--name", "i",
                         "--chunk-size", "1", "--disk", ep.disks[0]])
    finally:
        control.write_text("off")
    assert code == ExitCode.INTEGRITY == 5
    assert flips(control)[len(before):] == [7, 7]           # the first read and the refetch
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "integrity failure" in last and "chunk 7 " in last and "Traceback" not in err, err
    journal = tmp_path / f"i-{Path(ep.disks[0]).name}.qcow2.journal"
    lines = journal.read_text().splitlines()
    assert len(lines) - 1 == SIZE // CHUNK - 1          # every other chunk is kept
    # Not presented as complete: no image under its final name, no manifest.
    assert not (tmp_path / f"i-{Path(ep.disks[0]).name}.qcow2").exists()
    assert not list(tmp_path.glob("*.manifest.json"))


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
