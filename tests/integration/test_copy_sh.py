"""`p2v copy` from a source without python3 (only sh, coreutils and gzip on PATH): the sh/dd
reader gives an identical image, verified chunk by chunk, and resumes after a kill."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from copy_helpers import identical, kill_after_first_batch, open_source
from loop_sources import LoopSource, attach_loop, detach_loop, write_random_disk
from schema_check import assert_all_valid

from p2v import cli, runner
from p2v.demo.live import SourceEndpoint
from p2v.source.extents import ranges_input
from p2v.source.shreader import read_sh_extents, read_sh_header, sh_reader_argv
from p2v.transfer.copy import CopyRequest, copy_disks

MiB = 1 << 20
SIZE = 128 * MiB + 3 * 512          # a short last chunk
RANDOM = 80 * MiB


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sh_only_bin(directory: Path) -> Path:
    """A PATH of sh, gzip and coreutils only: no python3, no util-linux (blockdev, ionice)."""
    directory.mkdir()
    listing = runner.run(["dpkg", "-L", "coreutils"]).stdout.split()
    tools = [Path(p) for p in listing if "/bin/" in p] + [Path("/bin/sh"), Path("/bin/gzip")]
    for tool in tools:
        if tool.is_file() and not (directory / tool.name).exists():
            (directory / tool.name).symlink_to(tool.resolve())
    assert not (directory / "python3").exists() and not (directory / "blockdev").exists()
    return directory


@pytest.fixture(scope="module")
def sh_source(tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[SourceEndpoint, Path]]:
    base = tmp_path_factory.mktemp("sh")
    path = base / "disk.raw"
    write_random_disk(path, SIZE, RANDOM)
    with path.open("r+b") as f:
        f.seek(100 * MiB)
        f.write((b"compressible text " * MiB)[: 8 * MiB])
        f.seek(SIZE - 100)
        f.write(b"the last, short chunk")
    with LoopSource.from_files([path], session_path=str(sh_only_bin(base / "bin"))) as ep:
        yield ep, path


def copy_argv(ep: SourceEndpoint, out: Path, *extra: str) -> list[str]:
    return ["copy", f"ssh://{ep.user}@{ep.host}:{ep.port}", "--identity", str(ep.key),
            "--known-hosts", str(ep.known_hosts), "--ssh-config", "/dev/null",
            "--output-dir", str(out), "--disk", ep.disks[0], *extra]


def test_source_has_no_python(sh_source: tuple[SourceEndpoint, Path]) -> None:
    ep, _ = sh_source
    result = ep.ssh(["sh", "-c", "command -v python3 || echo none; command -v dd"])
    assert result.stdout.split()[0] == "none" and result.stdout.split()[1].endswith("dd")


def test_sh_copy_is_identical_verified_and_skips_zeros(
        sh_source: tuple[SourceEndpoint, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ep, raw = sh_source
    before = sha256(raw)
    assert cli.main(copy_argv(ep, tmp_path, "--name", "sh", "--chunk-size", "1",
                              "--json")) == 0
    events = assert_all_valid([json.loads(line) for line in capsys.readouterr().out.splitlines()],
                              "events")
    start = next(e for e in events if e["event"] == "disk-start")
    done = next(e for e in events if e["event"] == "disk-done")
    assert start["reader"] == "sh" and done["reader"] == "sh"
    assert identical(raw, Path(done["image"]))
    assert sha256(raw) == before
    # Zeros never cross; random data once (plus a line or two per chunk); text gzipped.
    assert RANDOM < done["wire_bytes"] < RANDOM + 2 * MiB
    manifest = json.loads(Path(done["manifest"]).read_text())
    assert manifest["reader"] == "sh" and manifest["size"] == SIZE
    # No zstd on this source: gzip, the text (and the mostly zero last chunk) compressed,
    # the random data as it is.
    assert manifest["wire_codec"] == "gzip"
    assert manifest["wire_chunks"] == {"compressed": 8 + 1, "raw": 80}
    assert manifest["data_chunks"] == 80 + 8 + 1 and manifest["zero_chunks"] == 129 - 89
    assert manifest["chunk_hashes"][0] == hashlib.sha256(raw.read_bytes()[:MiB]).hexdigest()


def test_killed_sh_copy_resumes_to_the_same_image(
        sh_source: tuple[SourceEndpoint, Path], tmp_path: Path) -> None:
    ep, raw = sh_source
    argv = [sys.executable, "-m", "p2v.cli", *copy_argv(ep, tmp_path, "--name", "k",
                                                        "--chunk-size", "1", "--no-compress")]
    journaled = kill_after_first_batch(
        argv, tmp_path / f"k-{Path(ep.disks[0]).name}.qcow2.journal")
    assert 0 < journaled < 129
    with open_source(ep) as source:
        (result,) = copy_disks(source, CopyRequest(disks=ep.disks, output_dir=tmp_path,
                                                   name="k", chunk_size=MiB, compress=False))
    assert result.reader == "sh"
    assert result.resumed_chunks >= journaled
    assert result.read_chunks == 129 - result.resumed_chunks
    assert identical(raw, result.image)


def test_a_failed_read_never_passes_as_zeros(tmp_path: Path) -> None:
    """dd failing on one chunk of an all-zero disk: that chunk is not reported as zeros."""
    disk = tmp_path / "zeros.raw"
    with disk.open("wb") as f:
        f.truncate(4 * MiB)
    tools = sh_only_bin(tmp_path / "bin")
    (tools / "dd").unlink()
    failing = tools / "dd"          # fails reading chunk 2, like a bad sector would
    failing.write_text('#!/bin/sh\ncase " $* " in *" skip=2 "*) exit 1 ;; esac\n'
                       'exec /bin/dd "$@"\n')
    failing.chmod(0o755)
    device = attach_loop(disk)
    try:
        proc = subprocess.run(sh_reader_argv(device, MiB, low_priority=False),
                              input=ranges_input([(0, 4)]), capture_output=True,
                              env={"PATH": str(tools)}, timeout=60)
    finally:
        detach_loop(device)
    buffered, size, chunk, _ = read_sh_header(io.BytesIO(proc.stdout))
    seen = [(e.index, e.zero, e.corrupt) for e in read_sh_extents(buffered, chunk)]
    # Chunk 2 arrives as data that fails its check (fetched again, then exit 5), never as
    # zeros the image would silently hold.
    assert seen == [(0, True, False), (1, True, False), (2, False, True), (3, True, False)]
