"""What the copy tests share: image comparison, a source session, a copy killed mid-way."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from p2v import runner
from p2v.demo.live import SourceEndpoint
from p2v.source.ssh import SshOptions, SshSource


def identical(raw: Path, image: Path) -> bool:
    """qemu-img compare: the qcow2 reads exactly like the raw disk."""
    return runner.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", raw, image],
                      check=False).returncode == 0


def ssh_args(ep: SourceEndpoint) -> list[str]:
    """SOURCE and the flags a CLI test logs in to a test-bed source with (strict host keys,
    no ssh_config)."""
    return [f"ssh://{ep.user}@{ep.host}:{ep.port}", "--identity", str(ep.key),
            "--known-hosts", str(ep.known_hosts), "--ssh-config", "/dev/null"]


def open_source(ep: SourceEndpoint) -> SshSource:
    """A logged-in session to a test-bed source, strict host keys, no agent or ssh_config."""
    return SshSource.open(f"ssh://{ep.user}@{ep.host}:{ep.port}",
                          SshOptions(identity=ep.key, known_hosts=ep.known_hosts,
                                     use_agent=False, ssh_config=Path("/dev/null")))


def kill_after_first_batch(argv: list[str], journal: Path, timeout: float = 120) -> int:
    """Run a `p2v copy` argv, SIGKILL it once its journal holds a chunk; return how many
    chunks the journal holds. Fails if the copy ended before it could be killed."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) > 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the copy finished before it could be killed"
    return len(journal.read_text().splitlines()) - 1


def wait_closed(path: Path, timeout: float = 60) -> None:
    """Wait until no process holds `path` open (a killed copy's qemu-storage-daemon gets
    SIGTERM from the kernel and may still flush its metadata for a moment)."""
    target = str(path.resolve())
    deadline = time.monotonic() + timeout
    while True:
        holders = []
        for fd in Path("/proc").glob("[0-9]*/fd/*"):
            try:
                if os.readlink(fd) == target:
                    holders.append(fd.parts[2])
            except OSError:
                continue
        if not holders:
            return
        assert time.monotonic() < deadline, f"{path} still open by pid(s) {holders}"
        time.sleep(0.05)
