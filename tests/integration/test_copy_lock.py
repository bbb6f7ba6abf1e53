"""Standalone `p2v copy` and `p2v sync` take the lock convert holds on a job's images: two
runs never write one image at once; the second one refuses with JobLocked's one line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from copy_helpers import identical
from loop_sources import LoopSource, write_random_disk
from schema_check import assert_all_valid

from p2v import cli
from p2v.demo.live import SourceEndpoint
from p2v.errors import ExitCode
from p2v.jobdir import WorkDir

MiB = 1 << 20


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SourceEndpoint, Path]]:
    raw = tmp_path_factory.mktemp("lock") / "d.raw"
    write_random_disk(raw, 32 * MiB, 12 * MiB)
    with LoopSource.from_files([raw]) as ep:
        yield ep, raw


def args(ep: SourceEndpoint, command: str, out: Path, name: str, *extra: str) -> list[str]:
    disks = [arg for d in ep.disks for arg in ("--disk", d)] if command == "copy" else []
    return [command, f"ssh://{ep.user}@{ep.host}:{ep.port}", "--identity", str(ep.key),
            "--known-hosts", str(ep.known_hosts), "--ssh-config", "/dev/null",
            "--output-dir", str(out), "--name", name, *disks, *extra]


def refused_line(err: str, out: Path, name: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"p2v: error: another p2v run is working on job {name!r} right now "
                     f"({out / f'.{name}.lock'}); wait for it to finish"], err


def test_a_second_copy_into_the_same_images_refuses(source: tuple[SourceEndpoint, Path],
                                                   tmp_path: Path) -> None:
    ep, raw = source
    # The same request twice: without the lock the second one would resume the first's
    # journal and write into its image while it runs.
    argv = [sys.executable, "-m", "p2v.cli", *args(ep, "copy", tmp_path, "two"),
            "--chunk-size", "1"]
    # Slow (3 MiB/s over 12 MiB of data): still copying when the second one starts.
    first = subprocess.Popen([*argv, "--bandwidth-limit", "3M", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None
        for line in first.stdout:                 # the lock is held before the disk starts
            if json.loads(line)["event"] == "disk-start":
                break
        second = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first copy ended before the second one started"
        assert second.returncode == ExitCode.USAGE, second.stderr
        refused_line(second.stderr, tmp_path, "two")
        rest, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    done = assert_all_valid([json.loads(line) for line in rest.splitlines()], "events")
    image = Path(next(e["image"] for e in done if e["event"] == "disk-done"))
    assert identical(raw, image)
    # Only the first copy's image and manifest: the second one wrote nothing.
    assert sorted(p.name for p in tmp_path.glob("two*")) == [image.name,
                                                          image.name + ".manifest.json"]


def test_copy_and_sync_into_a_running_jobs_work_dir_refuse(
        source: tuple[SourceEndpoint, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ep, raw = source
    wd = WorkDir(tmp_path / "job", "job")
    assert cli.main(args(ep, "copy", wd.path, "job")) == 0
    capsys.readouterr()
    image = next(wd.path.glob("job-*.qcow2"))
    before = image.stat().st_mtime_ns
    with wd:                                  # what `p2v convert` holds while it runs
        for command in ("copy", "sync"):
            assert cli.main(args(ep, command, wd.path, "job")) == ExitCode.USAGE
            refused_line(capsys.readouterr().err, wd.path, "job")
        # Another name in the same dir is other images: not locked out.
        assert cli.main(args(ep, "copy", wd.path, "other")) == 0
    assert image.stat().st_mtime_ns == before
    # The job gone, the lock goes with it.
    assert cli.main(args(ep, "sync", wd.path, "job")) == 0
    assert identical(raw, image)
