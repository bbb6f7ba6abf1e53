"""The demo's source server: a fixture image booted in qemu as the "physical server".

`LiveSource` gives p2v something real to convert: its own kernel, NIC name, MAC, sshd and
host key, on SATA disks. `p2v demo` and the end-to-end tests use it. It is a context manager
yielding a `SourceEndpoint` and tears everything down (processes by pid, temp dirs) even when
the body raises; `SourceBase` is that plumbing, shared with the tests' loop sources
(tests/loop_sources.py).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from p2v import runner
from p2v.accel import choose_accel
from p2v.demo.image import FixtureImage
from p2v.errors import CommandTimeout, P2VError
from p2v.verify.qemu import Machine, Nic

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Under TCG a fixture reaches a login prompt in 25-70 s; 240 s leaves room for a loaded host.
LIVE_BOOT_TIMEOUT = 240.0


class SourceStartError(P2VError):
    """the {kind} source did not start: {detail}"""


@dataclass(frozen=True)
class SourceEndpoint:
    """How to reach a source server: everything an SSH client needs, and which disks to copy.

    known_hosts holds the server's real host key for [host]:port, so clients can (and must)
    use strict host-key checking against it, exactly as p2v does against a real server.
    """

    host: str
    port: int
    user: str
    key: Path                       # client private key the server authorises
    known_hosts: Path               # holds the server's host key for [host]:port
    disks: tuple[str, ...]          # device paths on the source, boot disk first
    fixture: FixtureImage | None    # None for sources over ad-hoc disks (from_files)

    def ssh_argv(
        self,
        remote: Sequence[str] | None = None,
        *,
        known_hosts: Path | None = None,
        connect_timeout: int = 10,
    ) -> list[str]:
        """The OpenSSH client argv for this endpoint, with strict host-key checking.

        -F /dev/null and the global known_hosts set to /dev/null keep the host's own client
        configuration out of the tests; `remote` is quoted with shlex.join because the
        server runs it through the remote user's shell.
        """
        argv = [
            "ssh",
            "-F", "/dev/null",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", f"ConnectTimeout={connect_timeout}",
            "-i", str(self.key),
            "-p", str(self.port),
            "-l", self.user,
            self.host,
        ]
        if remote:
            argv += ["--", shlex.join(remote)]
        return argv

    def ssh(
        self,
        remote: Sequence[str],
        *,
        timeout: float | None = 120,
        check: bool = True,
        known_hosts: Path | None = None,
        connect_timeout: int = 10,
    ) -> runner.Result:
        """Run one command on the source and return its output."""
        argv = self.ssh_argv(remote, known_hosts=known_hosts, connect_timeout=connect_timeout)
        return runner.run(argv, timeout=timeout, check=check)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry if it was taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def known_hosts_line(host: str, port: int, public_key: str) -> str:
    """A known_hosts entry for host:port from a public key line ("type base64 [comment]")."""
    fields = public_key.split()
    if len(fields) < 2:
        raise ValueError(f"not a public key line: {public_key!r}")
    pattern = host if port == 22 else f"[{host}]:{port}"
    return f"{pattern} {fields[0]} {fields[1]}\n"


def generate_key(path: Path, comment: str) -> str:
    """Make a throwaway ed25519 key pair at path; return the public key line."""
    runner.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path])
    return path.with_name(path.name + ".pub").read_text().strip()


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, control characters stripped, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"[{path.name}: missing]"
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]", "", text)
    rest = [line for line in text.splitlines() if line.strip()][-lines:]
    return f"[{path.name}] " + (" | ".join(rest) if rest else "(empty)")


def _descendants(pid: int) -> list[int]:
    """Pids of all live descendants of pid, from /proc (children before grandchildren)."""
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat_file.read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses; ppid follows the last ')'.
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(stat_file.parent.name))
    found: list[int] = []
    queue = list(children.get(pid, []))
    while queue:
        child = queue.pop(0)
        found.append(child)
        queue += children.get(child, [])
    return found


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Stop a process we spawned and everything it forked.

    sshd forks a process per connection, and each session's command runs in a session of
    its own (setsid), so neither stopping the listener nor killing its process group ends
    a `sleep` or a stalled `cat /dev/loopN`, which would keep the loop device busy.
    """
    leftovers = _descendants(proc.pid) if proc.poll() is None else []
    for pid in reversed(leftovers):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    runner.stop(proc, grace=grace)


# ---------------------------------------------------------------------------------------------
# Loop devices


class SourceBase:
    """Context-manager plumbing: every resource registers its undo on an ExitStack.

    If starting fails halfway, what was already started is undone before the error
    propagates; on exit the stack unwinds in reverse order even if the body raised.
    """

    kind = "source"

    def __init__(self) -> None:
        self._stack: ExitStack | None = None
        self.endpoint: SourceEndpoint | None = None
        self.workdir: Path | None = None

    def _start(self, stack: ExitStack) -> SourceEndpoint:
        raise NotImplementedError

    def _make_workdir(self, stack: ExitStack) -> Path:
        workdir = Path(tempfile.mkdtemp(prefix=f"p2v-{self.kind}-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        self.workdir = workdir
        return workdir

    def __enter__(self) -> SourceEndpoint:
        if self._stack is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        stack = ExitStack()
        try:
            self.endpoint = self._start(stack)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self.endpoint

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def ssh(
        self, remote: Sequence[str], *, timeout: float | None = 120, check: bool = True
    ) -> runner.Result:
        """Run a command on the running source (see SourceEndpoint.ssh)."""
        if self.endpoint is None or self._stack is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return self.endpoint.ssh(remote, timeout=timeout, check=check)





# ---------------------------------------------------------------------------------------------
# A fixture running in qemu


class LiveSource(SourceBase):
    """A fixture image booted in qemu as the physical server p2v converts.

    The machine looks like the fixture's physical box: SATA/AHCI disks, an e1000e NIC with
    the fixture's MAC at the onboard slot, a VGA adapter, its own UEFI NVRAM. Disks are
    throwaway qcow2 overlays over the cached raw images, so the cache is never written.
    Guest port 22 is forwarded to a free port on 127.0.0.1, and the endpoint's known_hosts
    holds the host key baked into the image, so a client that trusts the wrong machine fails.
    """

    kind = "live"
    _PORT_ATTEMPTS = 3

    def __init__(
        self,
        image: FixtureImage,
        memory_mib: int = 1024,
        vcpus: int = 1,
        *,
        boot_timeout: float = LIVE_BOOT_TIMEOUT,
        poweroff_grace: float = 15.0,
    ) -> None:
        super().__init__()
        self.image = image
        self.memory_mib = memory_mib
        self.vcpus = vcpus
        self.boot_timeout = boot_timeout
        self.poweroff_grace = poweroff_grace
        self.pid: int | None = None
        self.boot_seconds: float | None = None   # qemu start to first successful SSH login

    def _logs(self) -> list[Path]:
        assert self.workdir is not None
        return [self.workdir / n for n in ("qemu.log", "serial.log", "firmware.log")]

    def _log_tails(self) -> str:
        return " ;; ".join(log_tail(p, 5 if p.name != "serial.log" else 20) for p in self._logs())

    def _start(self, stack: ExitStack) -> SourceEndpoint:
        image = self.image
        workdir = self._make_workdir(stack)
        overlays, nvram, key = self._prepare(workdir)
        accel = choose_accel()
        disks = tuple(f"/dev/sd{chr(ord('a') + i)}" for i in range(len(overlays)))

        for _ in range(self._PORT_ATTEMPTS):
            port = free_port()
            known_hosts = workdir / "known_hosts"
            known_hosts.write_text(known_hosts_line(LOOPBACK, port, image.host_public_key))
            endpoint = SourceEndpoint(
                host=LOOPBACK, port=port, user="root", key=key, known_hosts=known_hosts,
                disks=disks, fixture=image,
            )
            machine = self._machine(workdir, overlays, nvram, port, accel)
            started = time.monotonic()
            with (workdir / "qemu.log").open("wb") as qemu_log:
                proc = runner.spawn(
                    machine.argv(), stdout=qemu_log.fileno(), stderr=qemu_log.fileno()
                )
            self.pid = proc.pid
            stack.callback(self._shutdown, proc, endpoint)
            if self._wait_ssh(proc, endpoint, started):
                self.boot_seconds = time.monotonic() - started
                log.info(
                    "live source %s (qemu pid %d, %s) answered SSH on port %d after %.1f s",
                    image.variant, proc.pid, accel, port, self.boot_seconds,
                )
                return endpoint
            # qemu exited at once because the forwarded port was taken: try another one.
            stop_process(proc)
        raise SourceStartError(kind="live", detail=self._log_tails())

    def _prepare(self, workdir: Path) -> tuple[list[Path], Path | None, Path]:
        """The machine's own files in WORKDIR: (disk overlays, NVRAM copy, client key)."""
        image = self.image
        overlays: list[Path] = []
        for index, disk in enumerate(image.disks):
            overlay = workdir / f"disk{index}.qcow2"
            runner.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                 "-b", Path(disk).resolve(), overlay]
            )
            overlays.append(overlay)
        nvram: Path | None = None
        if image.firmware == "uefi":
            if image.nvram is None:
                raise SourceStartError(kind="live", detail=f"{image.variant} has no NVRAM")
            nvram = workdir / "nvram.fd"
            shutil.copyfile(image.nvram, nvram)
        # A private copy with 0600: ssh refuses a key whose cache file is group-readable.
        key = workdir / "client_key"
        shutil.copyfile(image.ssh_private_key, key)
        key.chmod(0o600)
        return overlays, nvram, key

    def _machine(self, workdir: Path, overlays: list[Path], nvram: Path | None, port: int,
                 accel: str) -> Machine:
        """The fixture's physical box as a qemu machine, guest port 22 forwarded to PORT."""
        return Machine(
            disks=tuple(overlays),
            serial_log=workdir / "serial.log",
            bus="sata",
            firmware=self.image.firmware,
            nvram=nvram,
            nics=(Nic(mac=self.image.mac, model="e1000e", network=f"user:{port}"),),
            memory_mib=self.memory_mib,
            vcpus=self.vcpus,
            accel=accel,
            disk_format="qcow2",
            debugcon_log=workdir / "firmware.log",
            # Physical boards have a graphics adapter, and the fixtures (no serial
            # console, like a real server) never reached SSH without one under TCG.
            extra=("-device", "VGA"),
        )

    def _wait_ssh(
        self, proc: subprocess.Popen[bytes], endpoint: SourceEndpoint, started: float
    ) -> bool:
        """Poll until root SSH with strict host-key checking works.

        Returns False only if qemu could not set up its port forward (retry on another
        port); any other exit, a host-key mismatch or the timeout raises with the log tails.
        """
        deadline = started + self.boot_timeout
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                qemu_log = self._logs()[0].read_text(errors="replace")
                if "host forwarding rule" in qemu_log:
                    return False
                raise SourceStartError(
                    kind="live",
                    detail=f"qemu exited with code {proc.returncode}: {self._log_tails()}",
                )
            # Until the guest's sshd listens, slirp accepts the connection and then holds it
            # without a banner: bound each probe so the deadline is kept.
            remaining = max(1, min(5, int(deadline - time.monotonic())))
            try:
                result = endpoint.ssh(
                    ["true"], timeout=remaining + 20, check=False, connect_timeout=remaining
                )
            except CommandTimeout:
                last = "ssh timed out"
            else:
                if result.returncode == 0:
                    return True
                last = result.stderr.strip()
                if "Host key verification failed" in last:
                    raise SourceStartError(
                        kind="live",
                        detail="the guest's host key is not the fixture's host_public_key: "
                        + last.replace("\n", " | ")[-500:],
                    )
            time.sleep(2.0)
        raise SourceStartError(
            kind="live",
            detail=f"no SSH login within {self.boot_timeout:.0f} s (last: {last[-200:]}); "
            + self._log_tails(),
        )

    def _shutdown(self, proc: subprocess.Popen[bytes], endpoint: SourceEndpoint) -> None:
        """Ask the guest to power off (brief), then stop qemu by pid whatever happened.

        The poweroff is only tried once SSH worked: a guest that never answered would just
        cost another connect timeout.
        """
        if proc.poll() is None and self.boot_seconds is not None:
            try:
                endpoint.ssh(["poweroff"], timeout=10, check=False)
                proc.wait(self.poweroff_grace)
            except (CommandTimeout, subprocess.TimeoutExpired):
                pass
            except P2VError as exc:  # e.g. ssh missing; qemu is stopped below regardless
                log.warning("poweroff over ssh failed: %s", exc)
        stop_process(proc)




__all__ = ["LiveSource", "SourceBase", "SourceEndpoint", "SourceStartError", "free_port",
           "generate_key", "known_hosts_line", "log_tail", "stop_process"]
