"""A real libvirtd for the demo and the tests: used when one answers, else started and stopped.

On a machine without systemd nobody starts libvirtd; this starts virtlogd and libvirtd in
the foreground as children (stopped by their pids), and makes a transient network with no
forward, no address and no DHCP, so guests registered here reach nothing. libvirt itself is
reached through p2v.target.libvirt (its only importer) and `virsh`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from p2v import runner
from p2v.errors import LibvirtUnreachable, P2VError

URI = "qemu:///system"
VIRTLOGD_SOCK = "/run/libvirt/virtlogd-sock"
# Every process using a shared daemon holds a shared lock on this file; the one that started
# the daemons stops them only when it can take the lock exclusively (nobody else uses them).
USERS_LOCK = Path("/run/p2v-testbed-libvirtd.users")


class LibvirtdStartError(P2VError):
    """libvirtd did not start: {detail}"""


def answers(uri: str = URI) -> bool:
    """True when a libvirtd answers at `uri`."""
    from p2v.target.libvirt import connect

    try:
        connect(uri).close()
        return True
    except LibvirtUnreachable:
        return False


def virtlogd_answers(path: str = VIRTLOGD_SOCK) -> bool:
    """True when something accepts connections on virtlogd's socket (a stale file does not)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(path)
            return True
        except OSError:
            return False


@dataclass
class Libvirtd:
    """libvirtd at URI; `owned` when this process started it (and so stops it).

    shared: other processes on this host (a second test run beside this one) may use the
    daemons this one starts. They then do not die with this process, and stop() leaves them
    running while anyone else holds USERS_LOCK: a run ending, or killed, must not take the
    libvirtd away from the run beside it.
    """

    uri: str = URI
    owned: bool = False
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workdir: Path | None = None
    shared: bool = False
    users_lock: Path = USERS_LOCK
    _users: IO[bytes] | None = None

    def join(self) -> None:
        """Count this process among the daemons' users (waits while a last user stops them)."""
        if self._users is None:
            self.users_lock.parent.mkdir(parents=True, exist_ok=True)
            self._users = open(self.users_lock, "ab")  # noqa: SIM115 - held until leave()
            fcntl.flock(self._users, fcntl.LOCK_SH)

    def last_user(self) -> bool:
        """True when no other process uses the daemons; then this one holds the lock alone
        (exclusively) until leave(), so nobody starts using them while they are stopped."""
        if self._users is None:
            return True
        try:
            fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def leave(self) -> None:
        if self._users is not None:
            self._users.close()  # closing the file releases its lock
            self._users = None

    def start(self) -> None:
        if self.shared:
            self.join()
        for d in ("/var/log/libvirt", "/var/run/libvirt", "/var/lib/libvirt/qemu/nvram"):
            os.makedirs(d, exist_ok=True)
        # A libvirtd left running can outlive its virtlogd; guests then fail to start with
        # "virtlogd-sock: Connection refused", so virtlogd is checked on its own.
        if not virtlogd_answers():
            Path(VIRTLOGD_SOCK).unlink(missing_ok=True)  # stale: nobody listens on it
            self.procs.append(runner.spawn(
                ["virtlogd", "-p", str(self._workdir() / "virtlogd.pid")],
                stderr=(self._workdir() / "virtlogd.err").open("wb").fileno(),
                die_with_parent=not self.shared))
            self.owned = True
            self._wait(virtlogd_answers, "virtlogd", "virtlogd.err")
        if answers(self.uri):
            return
        self.owned = True
        self.procs.append(runner.spawn(
            ["libvirtd", "-p", str(self._workdir() / "libvirtd.pid")],
            stderr=(self._workdir() / "libvirtd.err").open("wb").fileno(),
            die_with_parent=not self.shared))
        self._wait(lambda: answers(self.uri), f"libvirtd at {self.uri}", "libvirtd.err")

    def _workdir(self) -> Path:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="p2v-libvirtd-"))
        return self.workdir

    def _wait(self, ready: Callable[[], bool], what: str, errfile: str) -> None:
        """Wait for the daemon just spawned to answer; stop everything started if it dies."""
        deadline = time.monotonic() + 30
        while not ready():
            if self.procs[-1].poll() is not None or time.monotonic() > deadline:
                err = (self._workdir() / errfile).read_text(errors="replace")[-2000:]
                self.stop()
                raise LibvirtdStartError(detail=f"no answer from {what}: {err.strip()}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.procs and not self.last_user():
            # Another process on this host uses them: they stay, as a libvirtd found running
            # would (its pid and log files stay in the work dir with them).
            self.procs.clear()
            self.workdir = None
        # libvirtd first: it talks to virtlogd while shutting down.
        for proc in reversed(self.procs):
            runner.stop(proc, grace=10)
        self.procs.clear()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        self.leave()

    def __enter__(self) -> Libvirtd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def isolated_network(name: str, bridge: str, uri: str = URI) -> Iterator[str]:
    """A transient libvirt network with no forward, address or DHCP, for as long as needed."""
    runner.run(["virsh", "-c", uri, "net-destroy", name], check=False)
    with tempfile.TemporaryDirectory(prefix="p2v-net-") as tmp:
        xml = Path(tmp) / "net.xml"
        xml.write_text(f"<network><name>{name}</name><bridge name='{bridge}' stp='off'/>"
                       "</network>")
        runner.run(["virsh", "-c", uri, "net-create", str(xml)])
    try:
        yield name
    finally:
        runner.run(["virsh", "-c", uri, "net-destroy", name], check=False)





def ensure_network(name: str, bridge: str, uri: str = URI) -> bool:
    """A persistent isolated network (no forward, address or DHCP), defined and started if
    missing; returns True when it was made here. It stays, so a guest attached to it can be
    started later; remove it with `virsh net-destroy NAME; virsh net-undefine NAME`.
    """
    info = runner.run(["virsh", "-c", uri, "net-info", name], check=False)
    made = info.returncode != 0
    if made:
        with tempfile.TemporaryDirectory(prefix="p2v-net-") as tmp:
            xml = Path(tmp) / "net.xml"
            xml.write_text(f"<network><name>{name}</name><bridge name='{bridge}' stp='off'/>"
                           "</network>")
            runner.run(["virsh", "-c", uri, "net-define", str(xml)])
    state = runner.run(["virsh", "-c", uri, "net-info", name]).stdout
    active = [ln.split()[-1] for ln in state.splitlines() if ln.startswith("Active:")]
    if active != ["yes"]:
        runner.run(["virsh", "-c", uri, "net-start", name])
    return made

__all__ = ["URI", "VIRTLOGD_SOCK", "Libvirtd", "LibvirtdStartError", "answers",
           "ensure_network", "isolated_network", "virtlogd_answers"]
