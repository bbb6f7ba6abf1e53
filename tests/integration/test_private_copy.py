"""A real `p2v copy` from a loop source, run under umask 000: the image, its .part and
journal while copying, its manifest and the dirs holding them are its owner's only."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from copy_helpers import identical, kill_after_first_batch
from loop_sources import LoopSource, write_random_disk
from tcpproxy import LinkProxy

from p2v.demo.live import SourceEndpoint
from p2v.errors import ExitCode

MiB = 1 << 20


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(scope="module")
def small_source(tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[SourceEndpoint, Path]]:
    path = tmp_path_factory.mktemp("src") / "disk.raw"
    write_random_disk(path, 64 * MiB, 24 * MiB)
    with LoopSource.from_files([path]) as ep:
        yield ep, path


@pytest.fixture(scope="module")
def large_source(tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[SourceEndpoint, Path]]:
    """More data than one journal batch (64 MiB): a copy of it can be killed between its
    first batch and its end, which a disk of one batch cannot."""
    path = tmp_path_factory.mktemp("big") / "disk.raw"
    write_random_disk(path, 128 * MiB, 96 * MiB)
    with LoopSource.from_files([path]) as ep:
        yield ep, path


def copy_argv(ep: SourceEndpoint, out: Path, port: int | None = None,
              known_hosts: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "p2v.cli", "copy",
            f"ssh://{ep.user}@{ep.host}:{port or ep.port}",
            "--identity", str(ep.key), "--known-hosts", str(known_hosts or ep.known_hosts),
            "--ssh-config", "/dev/null", "--output-dir", str(out), "--disk", ep.disks[0],
            "--name", "web01", "--chunk-size", "1", "--no-compress"]


def test_copy_under_umask_000_writes_only_private_files(
        large_source: tuple[SourceEndpoint, Path], tmp_path: Path) -> None:
    ep, raw = large_source
    out = tmp_path / "jobs" / "web01"            # neither exists: p2v creates both
    image = out / f"web01-{Path(ep.disks[0]).name}.qcow2"
    # The killed run goes over a link paced to 16 MiB/s: its last 32 MiB take 2 s after
    # the first batch is journaled, so the kill lands mid-copy even on a loaded machine.
    proxy = LinkProxy(ep.port, link_bps=16 * MiB)
    fields = ep.known_hosts.read_text().split()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{ep.host}]:{proxy.port} {fields[1]} {fields[2]}\n")
    old = os.umask(0)                            # the children inherit it
    try:
        kill_after_first_batch(copy_argv(ep, out, proxy.port, known_hosts),
                               image.with_name(image.name + ".journal"))
        proxy.close()
        # Killed mid-copy: what lies on disk now is the server's data too.
        assert mode(out.parent) == mode(out) == 0o700
        for suffix in (".part", ".journal"):
            assert mode(image.with_name(image.name + suffix)) == 0o600, suffix
        done = subprocess.run(copy_argv(ep, out), capture_output=True, text=True)
    finally:
        os.umask(old)
        proxy.close()
    assert done.returncode == 0, done.stderr
    assert identical(raw, image)
    files = sorted(p.name for p in out.iterdir())
    assert files == [image.name, image.name + ".manifest.json"]
    for path in out.iterdir():
        assert mode(path) == 0o600, path
    assert mode(out.parent) == mode(out) == 0o700


@pytest.mark.parametrize("kind", ["symlink", "foreign"])
def test_a_planted_output_dir_or_image_is_refused(
        small_source: tuple[SourceEndpoint, Path], tmp_path: Path, kind: str) -> None:
    """A symlink, or a path owned by `nobody`, where the copy would write: one line, exit 2,
    nothing written through it."""
    ep, _raw = small_source
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    image = out / f"web01-{Path(ep.disks[0]).name}.qcow2.part"
    for planted, what in ((out, "output dir"), (image, "image")):
        if planted == image:
            out.mkdir(exist_ok=True)
        if kind == "symlink":
            planted.symlink_to(elsewhere / "x")
        else:
            planted.mkdir() if planted == out else planted.write_bytes(b"")
            os.chown(planted, 65534, -1)
        done = subprocess.run(copy_argv(ep, out), capture_output=True, text=True)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == ExitCode.USAGE, done.stderr
        assert len(lines) == 1 and lines[0].startswith(f"p2v: error: {what} {planted} is ")
        assert list(elsewhere.iterdir()) == []
        if planted == out:
            planted.unlink() if kind == "symlink" else planted.rmdir()


def test_a_killed_copys_nbd_socket_dir_is_swept_by_the_next_copy(
        small_source: tuple[SourceEndpoint, Path], tmp_path: Path) -> None:
    """SIGKILL runs no cleanup: the socket dir of the killed copy's qemu-storage-daemon
    stays; the resuming copy removes it (its owner is dead) and leaves none of its own."""
    ep, raw = small_source
    out = tmp_path / "out"
    state = Path(os.environ.get("TMPDIR", "/tmp")) / f"p2v-st-{os.getpid()}"
    env = {**os.environ, "P2V_STATE_DIR": str(state)}
    scratch = state / "scratch"
    image = out / f"web01-{Path(ep.disks[0]).name}.qcow2"
    proc = subprocess.Popen(copy_argv(ep, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    try:
        # Killed as soon as its qemu-storage-daemon has a socket dir (a small copy may
        # otherwise end before a journal line can be seen).
        while proc.poll() is None and not any(scratch.glob("nbd-*/nbd.sock")):
            time.sleep(0.002)
        proc.kill()
        assert proc.wait() == -9, "the copy finished before it could be killed"
        left = sorted(p.name for p in scratch.glob("nbd-*"))
        assert len(left) == 1, left
        done = subprocess.run(copy_argv(ep, out), capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        assert identical(raw, image)
        assert sorted(p.name for p in scratch.glob("nbd-*")) == []
    finally:
        shutil.rmtree(state, ignore_errors=True)
