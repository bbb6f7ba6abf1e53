"""-v and --log-file work before or after the subcommand, on a real register (--output local:
no libvirt needed) in a fresh process."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest


def _register(tmp_path: Path, before: list[str], after: list[str]
              ) -> subprocess.CompletedProcess[str]:
    image = tmp_path / "a.raw"
    image.write_bytes(bytes(1 << 20))
    out = tmp_path / "out"
    return subprocess.run(
        [sys.executable, "-m", "p2v", *before, "register", "--name", "t1", str(image),
         "--output", "local", "--output-dir", str(out), *after],
        capture_output=True, text=True, timeout=120, env={**os.environ, "P2V_ACCEL": "tcg"})


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_and_log_file_work_on_either_side_of_the_subcommand(
    tmp_path: Path, where: str,
) -> None:
    log = tmp_path / "p2v.log"
    flags = ["-vv", "--log-file", str(log)]
    proc = _register(tmp_path, flags if where == "before" else [],
                     flags if where == "after" else [])
    assert proc.returncode == 0, proc.stderr
    assert "p2v: DEBUG: run: /usr/bin/qemu-img info" in proc.stderr, proc.stderr    # -vv: debug
    text = log.read_text()
    assert " p2v: DEBUG: p2v.runner: run: /usr/bin/cp --sparse=always" in text, text


def test_the_log_file_gets_debug_lines_without_v(tmp_path: Path) -> None:
    log = tmp_path / "p2v.log"
    proc = _register(tmp_path, [], ["--log-file", str(log)])
    assert proc.returncode == 0, proc.stderr
    assert "DEBUG" not in proc.stderr, proc.stderr
    assert " p2v: DEBUG: p2v.runner: run: /usr/bin/qemu-img info" in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_a_log_file_that_cannot_be_written_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = _register(tmp_path, [], ["--log-file", str(tmp_path / "no" / "such" / "dir.log")])
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("p2v: error: --log-file ") and "writable" in line, line
    assert not (tmp_path / "out").exists()                  # nothing done
