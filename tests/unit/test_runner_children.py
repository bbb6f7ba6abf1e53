"""runner.spawn's children die with p2v, even when p2v is SIGKILLed (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

PARENT = """
import sys, time
from p2v import runner
child = runner.spawn(["sleep", "600"])
print(child.pid, flush=True)
time.sleep(600)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"          # a zombie is dead (this container's init reaps it late)


def test_a_spawned_child_dies_with_its_sigkilled_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE,
                              text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())           # the event: the child exists
    try:
        assert _running(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while _running(child):
            assert time.monotonic() < deadline, f"child {child} outlived its parent"
            time.sleep(0.01)
    finally:
        if _running(child):
            subprocess.run(["kill", "-KILL", str(child)], check=False)
