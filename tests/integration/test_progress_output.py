"""What real runs print, in fresh processes: `p2v copy` and `p2v sync` from a loop source
over the private sshd (no guest is booted): -q before or after the subcommand prints
nothing, an error under -q is its one line, off a terminal progress is plain lines, and
on a terminal (a pty) the copy draws a bar with its rate and ETA."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from copy_helpers import ssh_args
from loop_sources import LoopSource, write_random_disk

from p2v.demo.live import SourceEndpoint

MiB = 1 << 20


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SourceEndpoint]:
    """64 MiB: 48 MiB random, then zeros."""
    path = tmp_path_factory.mktemp("src") / "disk.raw"
    write_random_disk(path, 64 * MiB, 48 * MiB)
    with LoopSource.from_files([path]) as ep:
        yield ep



def p2v(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2v", *argv], capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_copy_and_sync_print_nothing(source: SourceEndpoint, tmp_path: Path,
                                           where: str) -> None:
    def quiet(*argv: str) -> list[str]:
        return ["-q", *argv] if where == "before" else [*argv, "-q"]

    out = tmp_path / "out"
    copy = p2v(*quiet("copy", *ssh_args(source), "--output-dir", str(out), "--name", "q",
                      "--disk", source.disks[0]))
    assert (copy.returncode, copy.stdout, copy.stderr) == (0, "", "")
    assert (out / f"q-{Path(source.disks[0]).name}.qcow2").is_file()     # it did copy
    sync = p2v(*quiet("sync", *ssh_args(source), "--output-dir", str(out), "--name", "q"))
    assert (sync.returncode, sync.stdout, sync.stderr) == (0, "", "")


def test_an_error_under_quiet_is_its_one_line(source: SourceEndpoint, tmp_path: Path) -> None:
    argv = ["copy", *ssh_args(source), "--output-dir", str(tmp_path), "--name", "e",
            "--disk", "/dev/nosuchdisk"]
    loud, proc = p2v(*argv), p2v("-q", *argv)
    assert proc.returncode == loud.returncode != 0       # -q changes no exit code
    assert proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("p2v: error: ") and "/dev/nosuchdisk" in line, line
    assert loud.stderr.strip().splitlines()[-1] == line


def test_quiet_with_verbose_is_refused_before_anything_runs(source: SourceEndpoint,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = p2v("-q", "copy", *ssh_args(source), "--output-dir", str(out), "--disk",
               source.disks[0], "-v")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "-q/--quiet and -v/--verbose" in line, line
    assert not out.exists()


def test_off_a_terminal_the_copy_prints_plain_progress_lines(source: SourceEndpoint,
                                                             tmp_path: Path) -> None:
    proc = p2v("copy", *ssh_args(source), "--output-dir", str(tmp_path), "--name", "p",
               "--disk", source.disks[0], "--chunk-size", "1")
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr     # no bar in a log
    progress = [line for line in proc.stderr.splitlines() if "% of 64.0 MiB" in line]
    assert progress, proc.stderr
    assert len(progress) <= 11, progress                # at most one per tenth (and the end)
    assert re.fullmatch(r"p2v:   /dev/loop\d+: 100% of 64\.0 MiB, [\d.]+ [KMG]?i?B/s, "
                        r"[\d.]+ [KMG]?i?B sent", progress[-1]), progress[-1]
    assert "bytes on the wire" in proc.stdout           # the result, on stdout


def _read_pty(master: int, proc: subprocess.Popen[str], timeout: float) -> str:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:             # EIO: every writer of the pty has closed it
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks).decode(errors="replace")


def _run_on_pty(p2v_args: list[str]) -> tuple[int, str, str]:
    """`python -m p2v ARGS` with stderr on a 120x40 pseudo-terminal: (exit code, what the
    terminal showed, stdout)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    with subprocess.Popen([sys.executable, "-m", "p2v", *p2v_args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=slave, text=True) as proc:
        os.close(slave)
        try:
            screen = _read_pty(master, proc, timeout=120)
        finally:
            os.close(master)
        out = proc.stdout.read() if proc.stdout else ""
        return proc.wait(timeout=60), screen, out


def test_on_a_terminal_the_copy_draws_a_bar_with_rate_and_eta(source: SourceEndpoint,
                                                              tmp_path: Path) -> None:
    code, screen, out = _run_on_pty(
        ["copy", *ssh_args(source), "--output-dir", str(tmp_path), "--name", "t", "--disk",
         source.disks[0], "--chunk-size", "1",
         "--bandwidth-limit", "12M"])               # about 4 s: several redraws
    assert code == 0, screen
    name = Path(source.disks[0]).name
    # e.g. "/dev/loop3:  40%|####      | 25.6M/64.0M [00:02<00:03, 12.0MB/s, wire 25.7 MiB]"
    bars = re.findall(rf"/dev/{name}: +\d+%\|[^|]*\| [\d.]+[KMG]?/64\.0M "
                      r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+[KMG]?B/s, wire [\d.]+ [KMG]?i?B\]", screen)
    assert bars, screen
    assert any(re.search(r"<00:0[1-9]", bar) for bar in bars), bars       # a real ETA
    assert f"/dev/{name} -> " in screen                     # the disk's line above the bar
    assert "bytes on the wire" in out


DEAD_URI = "qemu:///system?socket=/nonexistent/p2v-test/libvirt-sock"


def convert_argv(ep: SourceEndpoint, out: Path, *extra: str) -> list[str]:
    return ["convert", *ssh_args(ep), "--name", "pv", "--output-dir", str(out),
            "--connect", DEAD_URI, "--disk", ep.disks[0], *extra]


def test_convert_off_a_terminal_prints_each_stage_with_its_time_then_the_error(
        source: SourceEndpoint, tmp_path: Path) -> None:
    """A real job that stops at preflight (no libvirt there): stage lines, no bar."""
    proc = p2v(*convert_argv(source, tmp_path))
    assert proc.returncode != 0 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert "\r" not in proc.stderr
    assert lines[0] == "p2v: inspect   ..."
    assert re.fullmatch(r"p2v: inspect   done in \d+s", lines[lines.index(
        "p2v: preflight ...") - 1]), lines
    assert re.fullmatch(r"p2v: preflight failed after \d+s", lines[-2]), lines
    assert lines[-1].startswith("p2v: error: ") and "libvirt" in lines[-1], lines


def test_convert_quiet_prints_only_the_error(source: SourceEndpoint, tmp_path: Path) -> None:
    proc = p2v(*convert_argv(source, tmp_path, "-q"))
    assert proc.returncode != 0 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("p2v: error: ") and "libvirt" in line, line


def fleet(ep: SourceEndpoint, tmp_path: Path) -> Path:
    manifest = tmp_path / "fleet.toml"
    manifest.write_text(f"""
output_dir = "{tmp_path / 'jobs'}"
connect = "{DEAD_URI}"
[defaults]
identity = "{ep.key}"
known_hosts = "{ep.known_hosts}"
verify = false
[[server]]
name = "pv1"
source = "ssh://{ep.user}@{ep.host}:{ep.port}"
disks = ["{ep.disks[0]}"]
""")
    return manifest


def test_batch_quiet_prints_one_error_line_per_failed_job(source: SourceEndpoint,
                                                          tmp_path: Path) -> None:
    proc = p2v("batch", str(fleet(source, tmp_path)), "-q")
    assert proc.returncode == 1 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("p2v: error: pv1: ") and "(log: " in line, line


def test_batch_on_a_terminal_draws_the_overall_bar(source: SourceEndpoint,
                                                   tmp_path: Path) -> None:
    code, screen, out = _run_on_pty(["batch", str(fleet(source, tmp_path))])
    assert code == 1, screen
    assert re.search(r"batch: 0/1 job\(s\) done \|", screen), screen
    assert re.search(r"  pv1 (inspect|preflight) +\d\d:\d\d", screen), screen   # its live line
    assert "p2v: [pv1] failed: " in screen
    assert out.splitlines()[0].split() == ["NAME", "STATE", "STAGE", "TIME", "DETAIL"]


def test_quiet_register_prints_nothing_and_still_writes_the_guest(tmp_path: Path) -> None:
    image = tmp_path / "a.raw"
    image.write_bytes(bytes(1 << 20))
    out = tmp_path / "out"
    proc = p2v("register", "-q", "--name", "t1", str(image), "--output", "local",
               "--output-dir", str(out))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert (out / "t1.xml").is_file()
