"""Scratch dirs: a live owner's dir is kept, a SIGKILLed owner's dir goes at the next sweep,
nothing else in the root is touched, and a root that is a symlink is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from p2v.errors import UsageError
from p2v.scratch import adopt, scratch_dir, sweep

HOLDER = """
import sys, time
from pathlib import Path
from p2v.scratch import adopt, scratch_dir
with scratch_dir("verify", Path(sys.argv[1])) as path:
    (path / "disk0.overlay").write_bytes(b"x")
    adopt(path, Path(sys.argv[2]))
    print(path, flush=True)
    time.sleep(600)
"""


def test_a_killed_owners_dir_goes_at_the_next_sweep_and_a_live_one_stays(
        tmp_path: Path) -> None:
    root = tmp_path / "scratch"
    sockets = tmp_path / "elsewhere" / "libguestfsXYZ"   # a helper's dir outside the root
    sockets.mkdir(parents=True)
    (sockets / "guestfsd.sock").write_bytes(b"")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(sockets)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        held = Path(holder.stdout.readline().strip())    # the event: its dir is made
        (root / "notes").mkdir()                          # not a scratch dir: never swept
        assert sweep(root) == [] and held.is_dir()        # its owner lives
        with scratch_dir("verify", root) as mine:
            assert held.is_dir() and mine.is_dir()
            kept = tmp_path / "elsewhere" / "kept"
            kept.mkdir()
            adopt(mine, kept)
        assert not mine.exists()                          # removed on the way out ...
        assert kept.is_dir()                              # ... its maker removes its own
        assert sockets.is_dir()
    finally:
        holder.kill()
        holder.wait()
    assert held.is_dir()                                  # a SIGKILL runs no finally ...
    with scratch_dir("kvmprobe", root) as mine:           # ... the next one sweeps it
        assert not held.exists() and mine.is_dir()
        assert not sockets.exists()                       # and what it adopted
    assert sorted(p.name for p in root.iterdir()) == [".lock", "notes"]


def test_a_root_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "scratch").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UsageError, match="symlink"):
        with scratch_dir("verify", tmp_path / "scratch"):
            pass
    assert list((tmp_path / "elsewhere").iterdir()) == []
