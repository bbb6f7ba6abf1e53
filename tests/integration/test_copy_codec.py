"""The codec on the wire, over a real sshd from loop sources whose tools the test controls
(the PATH of every session): zstd where the source has it, through the zstandard module or
the zstd binary, for both readers; zlib or gzip where it has not; incompressible chunks
sent as they are, never larger. Every image is compared with its source (qemu-img), and
the manifest records the codec and how many chunks went compressed."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from copy_helpers import identical, kill_after_first_batch, open_source, wait_closed
from loop_sources import LoopSource, write_random_disk

from p2v import runner
from p2v.transfer.copy import CopyRequest, copy_disks

MiB = 1 << 20
SIZE = 48 * MiB
RANDOM = 16 * MiB                  # chunks 0-15: random (sent raw)
TEXT_AT, TEXT = 24 * MiB, 8 * MiB  # chunks 24-31: text (sent compressed)
FRAME = 49                         # the python3 reader's frame header


def tools_bin(directory: Path, *, python: str | None, zstd: bool) -> str:
    """A PATH of sh, gzip and coreutils, with zstd if asked, and python3: "full" (the
    system's, zstandard in its site-packages), "bare" (the same under -S: no site-packages,
    so no zstandard) or None (none at all)."""
    directory.mkdir()
    listing = runner.run(["dpkg", "-L", "coreutils"]).stdout.split()
    tools = [Path(p) for p in listing if "/bin/" in p] + [Path("/bin/sh"), Path("/bin/gzip")]
    if zstd:
        tools.append(Path(shutil.which("zstd") or "/usr/bin/zstd"))
    for tool in tools:
        if tool.is_file() and not (directory / tool.name).exists():
            (directory / tool.name).symlink_to(tool.resolve())
    if python is not None:
        shim = directory / "python3"
        flags = " -S" if python == "bare" else ""
        shim.write_text(f'#!/bin/sh\nexec /usr/bin/python3{flags} "$@"\n')
        shim.chmod(0o755)
    return str(directory)


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("codec") / "disk.raw"
    write_random_disk(path, SIZE, RANDOM)
    with path.open("r+b") as f:
        f.seek(TEXT_AT)
        f.write((b"compressible text, a line of a log " * MiB)[:TEXT])
    return path


def copy(disk: Path, out: Path, session_path: str | None, **request: Any
         ) -> tuple[Any, dict[str, Any]]:
    """Copy `disk` from a loop source with that session PATH: (the result, the manifest)."""
    with LoopSource.from_files([disk], session_path=session_path) as ep, \
            open_source(ep) as source:
        (result,) = copy_disks(source, CopyRequest(disks=ep.disks, output_dir=out,
                                                   name="c", chunk_size=MiB, **request))
    assert identical(disk, result.image)
    return result, json.loads(result.manifest.read_text())


def wire_counts(manifest: dict[str, Any]) -> tuple[str, int, int]:
    chunks = manifest["wire_chunks"]
    return manifest["wire_codec"], chunks["compressed"], chunks["raw"]


@pytest.mark.parametrize("python", ["full", "bare"])
def test_python3_reader_sends_zstd_where_the_source_has_it(
        disk: Path, tmp_path: Path, python: str) -> None:
    """full: the zstandard module; bare: no module, the zstd binary on PATH."""
    path = tools_bin(tmp_path / "bin", python=python, zstd=python == "bare")
    result, manifest = copy(disk, tmp_path / "out", path)
    assert result.reader == "python3"
    assert wire_counts(manifest) == ("zstd", TEXT // MiB, RANDOM // MiB)
    # The random chunks as they were read, the text far smaller.
    assert RANDOM < result.wire_bytes < RANDOM + TEXT // 10


def test_python3_reader_falls_back_to_zlib(disk: Path, tmp_path: Path) -> None:
    """No zstandard (python3 -S) and no zstd on PATH: zlib, recorded as such."""
    path = tools_bin(tmp_path / "bin", python="bare", zstd=False)
    result, manifest = copy(disk, tmp_path / "out", path)
    assert result.reader == "python3"
    assert wire_counts(manifest) == ("zlib", TEXT // MiB, RANDOM // MiB)
    assert RANDOM < result.wire_bytes < RANDOM + TEXT // 10


def test_no_compress_means_none(disk: Path, tmp_path: Path) -> None:
    result, manifest = copy(disk, tmp_path / "out", None, compress=False)
    assert wire_counts(manifest) == ("none", 0, (RANDOM + TEXT) // MiB)
    assert result.wire_bytes >= RANDOM + TEXT


@pytest.mark.parametrize("zstd", [True, False])
def test_sh_reader_sends_zstd_where_the_source_has_it_else_gzip(
        disk: Path, tmp_path: Path, zstd: bool) -> None:
    path = tools_bin(tmp_path / "bin", python=None, zstd=zstd)
    result, manifest = copy(disk, tmp_path / "out", path)
    assert result.reader == "sh"
    assert wire_counts(manifest) == ("zstd" if zstd else "gzip", TEXT // MiB, RANDOM // MiB)
    assert RANDOM < result.wire_bytes < RANDOM + TEXT // 10


@pytest.fixture(scope="module")
def noise(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("noise") / "noise.raw"
    write_random_disk(path, RANDOM)
    yield path


@pytest.mark.parametrize("reader", ["python3", "sh"])
def test_incompressible_data_goes_raw_never_larger(noise: Path, tmp_path: Path,
                                                   reader: str) -> None:
    """urandom, zstd on both sides: every chunk raw, the wire only the data and framing."""
    result, manifest = copy(noise, tmp_path / "out", None, reader=reader)
    chunks = RANDOM // MiB
    assert wire_counts(manifest) == ("zstd", 0, chunks)
    if reader == "python3":
        assert result.wire_bytes == RANDOM + chunks * FRAME
    else:                              # a "D" line and an "H" line per chunk
        assert RANDOM < result.wire_bytes < RANDOM + chunks * 128


def test_a_resume_records_the_codec_of_the_run_that_finished(tmp_path: Path) -> None:
    """Killed under --no-compress after its first batch, resumed with compression: the
    manifest names zstd and counts only the chunks the resuming run sent."""
    path = tmp_path / "big.raw"
    write_random_disk(path, 112 * MiB, 96 * MiB)           # chunks 96-103 text, then zeros
    with path.open("r+b") as f:
        f.seek(96 * MiB)
        f.write((b"compressible text, a line of a log " * MiB)[:8 * MiB])
    out = tmp_path / "out"
    with LoopSource.from_files([path]) as ep:
        argv = [sys.executable, "-m", "p2v.cli", "copy", f"ssh://{ep.user}@{ep.host}:{ep.port}",
                "--identity", str(ep.key), "--known-hosts", str(ep.known_hosts),
                "--ssh-config", "/dev/null", "--output-dir", str(out), "--disk", ep.disks[0],
                "--name", "r", "--chunk-size", "1", "--no-compress"]
        part = out / f"r-{Path(ep.disks[0]).name}.qcow2"
        journaled = kill_after_first_batch(argv, part.with_name(part.name + ".journal"))
        assert 0 < journaled < 96
        wait_closed(part.with_name(part.name + ".part"))
        with open_source(ep) as source:
            (result,) = copy_disks(source, CopyRequest(disks=ep.disks, output_dir=out,
                                                       name="r", chunk_size=MiB))
    assert identical(path, result.image)
    manifest = json.loads(result.manifest.read_text())
    assert result.resumed_chunks == journaled
    # This run read the rest: random chunks raw, the 8 text chunks zstd, 8 zero chunks.
    assert wire_counts(manifest) == ("zstd", 8, result.read_chunks - 8 - 8)
