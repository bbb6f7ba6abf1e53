"""`p2v copy` of two disks at once (identical images, really concurrent), under a bandwidth
limit (a lower bound on the time), with progress bars on a terminal."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from copy_helpers import identical, open_source
from loop_sources import LoopSource, write_random_disk
from schema_check import assert_all_valid

from p2v import cli
from p2v.demo.live import SourceEndpoint
from p2v.errors import ExitCode, StreamError
from p2v.source import reader as reader_module
from p2v.source.extents import Extent
from p2v.transfer.copy import CopyRequest, copy_disks

MiB = 1 << 20


@pytest.fixture(scope="module")
def two_disks(tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[SourceEndpoint, list[Path]]]:
    base = tmp_path_factory.mktemp("par")
    paths = [base / "a.raw", base / "b.raw"]
    write_random_disk(paths[0], 64 * MiB, 24 * MiB)
    write_random_disk(paths[1], 48 * MiB, 16 * MiB)
    with LoopSource.from_files(paths) as ep:
        yield ep, paths


def copy_argv(ep: SourceEndpoint, out: Path, *extra: str) -> list[str]:
    disks = [arg for d in ep.disks for arg in ("--disk", d)]
    return ["copy", f"ssh://{ep.user}@{ep.host}:{ep.port}", "--identity", str(ep.key),
            "--known-hosts", str(ep.known_hosts), "--ssh-config", "/dev/null",
            "--output-dir", str(out), *disks, *extra]


def test_two_disks_copy_in_parallel(two_disks: tuple[SourceEndpoint, list[Path]],
                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                    ) -> None:
    ep, raws = two_disks
    assert cli.main(copy_argv(ep, tmp_path, "--name", "p", "--chunk-size", "1",
                              "--parallel", "2", "--json")) == 0
    events = assert_all_valid([json.loads(line) for line in capsys.readouterr().out.splitlines()],
                              "events")
    kinds = [(e["event"], e.get("device")) for e in events if e["event"] != "progress"]
    # Both disks started before either finished: they really ran at the same time.
    assert [k for k, _ in kinds[:2]] == ["disk-start", "disk-start"], kinds
    done = {e["device"]: e for e in events if e["event"] == "disk-done"}
    for raw, device in zip(raws, ep.disks, strict=True):
        assert identical(raw, Path(done[device]["image"]))


def test_bandwidth_limit_holds_the_copy_back(two_disks: tuple[SourceEndpoint, list[Path]],
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    ep, raws = two_disks
    limit = 16 * MiB
    started = time.monotonic()
    assert cli.main(copy_argv(ep, tmp_path, "--name", "l", "--bandwidth-limit", "16M",
                              "--json")) == 0
    elapsed = time.monotonic() - started
    events = assert_all_valid([json.loads(line) for line in capsys.readouterr().out.splitlines()],
                              "events")
    wire = sum(e["wire_bytes"] for e in events if e["event"] == "disk-done")
    assert wire > 40 * MiB
    # 40 MiB of random data at 16 MiB/s: at least 2.5 s less the bucket's quarter second.
    assert elapsed >= (wire - limit / 4) / limit * 0.95, (elapsed, wire)
    for raw, device in zip(raws, ep.disks, strict=True):
        image = next(Path(e["image"]) for e in events
                     if e["event"] == "disk-done" and e["device"] == device)
        assert identical(raw, image)


def test_bars_on_a_terminal(two_disks: tuple[SourceEndpoint, list[Path]], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    ep, _ = two_disks
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert cli.main(copy_argv(ep, tmp_path, "--name", "t")) == 0
    captured = capsys.readouterr()
    err = captured.err
    drawn = err.replace("\r", "\n").splitlines()
    for device in ep.disks:      # one bar per disk, with its size, rate and wire bytes
        assert any(device in line and ("/64.0M" in line or "/48.0M" in line)
                   and "B/s" in line and "wire" in line for line in drawn), err[-2000:]
        # A finished disk's bar leaves the screen; its result line says it is done.
        assert any(line.startswith(f"{device}: ") for line in captured.out.splitlines()), \
            captured.out


def test_bad_bandwidth_limit_and_parallel_are_usage_errors(
        two_disks: tuple[SourceEndpoint, list[Path]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ep, _ = two_disks
    for extra in (["--bandwidth-limit", "fast"], ["--parallel", "0"], ["--parallel", "5"]):
        with pytest.raises(SystemExit) as info:
            cli.main(copy_argv(ep, tmp_path, *extra))
        assert info.value.code == ExitCode.USAGE
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("p2v copy: error: argument --")
    assert "not a rate: 'fast'" not in last
    with pytest.raises(SystemExit):
        cli.main(copy_argv(ep, tmp_path, "--bandwidth-limit", "fast"))
    assert "not a rate: 'fast'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    # The same disk twice would write one image from two threads: refused up front.
    assert cli.main(copy_argv(ep, tmp_path, "--disk", ep.disks[0])) == ExitCode.USAGE
    assert "named twice" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_one_disk_failing_stops_the_other_and_both_resume(
        two_disks: tuple[SourceEndpoint, list[Path]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ep, raws = two_disks
    real = reader_module.read_extents
    broke = threading.Event()

    def breaking(stream: Any, chunk_size: int, host: str = "source", device: str = "disk",
                 **checks: Any) -> Iterator[Extent]:
        for n, extent in enumerate(real(stream, chunk_size, host=host, device=device,
                                        **checks)):
            if device == ep.disks[1] and n == 3:
                broke.set()
                raise StreamError(host=host, device=device, detail="cut for the test")
            if device == ep.disks[0] and n == 2:
                # The state the test is about: this disk part-way, chunks in hand, when the
                # other breaks. Held here until then: under load the other disk started
                # seconds late and this one had finished (seen: one journal, not two).
                assert broke.wait(120), "the second disk never broke"
            yield extent

    monkeypatch.setattr(reader_module, "read_extents", breaking)
    # Slow enough (8 MiB/s) that the first disk is still running when the second breaks.
    request = CopyRequest(disks=ep.disks, output_dir=tmp_path, name="f", chunk_size=MiB,
                          bandwidth_limit=8 * MiB)
    with open_source(ep) as source:
        with pytest.raises(StreamError) as info:
            copy_disks(source, request)
    assert "cut for the test" in info.value.message
    journals = sorted(tmp_path.glob("*.journal"))
    assert len(journals) == 2 and not list(tmp_path.glob("*.qcow2"))   # nothing presented
    monkeypatch.setattr(reader_module, "read_extents", real)
    with open_source(ep) as source:
        results = copy_disks(source, CopyRequest(disks=ep.disks, output_dir=tmp_path,
                                                 name="f", chunk_size=MiB))
    assert results[0].resumed_chunks > 0 and results[1].resumed_chunks == 3
    for raw, result in zip(raws, results, strict=True):
        assert identical(raw, result.image)


def test_ctrl_c_during_a_parallel_copy_keeps_both_journals(
        two_disks: tuple[SourceEndpoint, list[Path]], tmp_path: Path) -> None:
    ep, raws = two_disks
    argv = [sys.executable, "-m", "p2v.cli",
            *copy_argv(ep, tmp_path, "--name", "c", "--chunk-size", "1",
                       "--bandwidth-limit", "8M", "--json")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    parts: list[Path] = []
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "disk-start":
            parts.append(Path(event["image"] + ".part"))
        if len(parts) == 2:
            break
    # Both disks part-way: each image holds a chunk (a fresh qcow2 is far smaller than the
    # 1 MiB chunk), i.e. each disk has one to journal on the way out. No commit comes before
    # 64 MiB, so the journals cannot be what is waited for.
    deadline = time.monotonic() + 60
    while not all(p.stat().st_size > MiB for p in parts):
        assert proc.poll() is None and time.monotonic() < deadline, "no chunk arrived"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert err.strip().splitlines()[-1] == "p2v: interrupted"
    journals = sorted(tmp_path.glob("*.journal"))
    assert len(journals) == 2 and not list(tmp_path.glob("*.qcow2"))
    assert all(len(j.read_text().splitlines()) > 1 for j in journals)   # committed on the way out
    with open_source(ep) as source:
        results = copy_disks(source, CopyRequest(disks=ep.disks, output_dir=tmp_path,
                                                 name="c", chunk_size=MiB))
    assert all(r.resumed_chunks > 0 for r in results)
    for raw, result in zip(raws, results, strict=True):
        assert identical(raw, result.image)
