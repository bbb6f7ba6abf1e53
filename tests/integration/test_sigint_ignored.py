"""p2v started with SIGINT ignored (under `nohup`, or from a non-interactive shell's `&`)
still stops on SIGINT: SIGINT is p2v's own stop signal (Ctrl-C, a batch stopping its jobs,
a job's parent-death signal), and a job that ignored it would run on after its batch died."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from stall_server import BANNER, stalling_listener

from p2v.errors import ExitCode


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_sigint_stops_p2v_even_when_it_was_started_with_sigint_ignored(
        tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    connected = threading.Event()
    with stalling_listener(BANNER, connected) as port:
        # The SSH handshake stalls: p2v waits up to its 15 s connect timeout.
        proc = subprocess.Popen(
            [sys.executable, "-m", "p2v.cli", "inspect", f"ssh://root@127.0.0.1:{port}",
             "--known-hosts", str(known), "--ssh-config", "/dev/null"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=_ignore_sigint)  # noqa: PLW1509 - the state under test
        try:
            assert connected.wait(60), "p2v never connected"
            sent = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
    took = time.monotonic() - sent
    assert proc.returncode == ExitCode.INTERRUPTED, (proc.returncode, err)
    assert err.strip().splitlines() == ["p2v: interrupted"], err
    assert took < 10, f"stopped only after {took:.1f} s (the connect timeout, not SIGINT)"
