"""The test bed's source servers: what p2v connects to over SSH in tests and benchmarks.

Two kinds exist because they answer different questions:

* `LoopSource` / `SshServer` serve disks attached as loop devices through a private sshd on
  127.0.0.1. It starts in well under a second and reads at host speed, so copy tests and
  benchmarks use it: it measures p2v, not an emulated CPU.
* `LiveSource` runs a fixture image in qemu as the "physical server": its own kernel, NIC
  name, MAC, sshd and host key, on SATA disks. It is slow (TCG boots take tens of seconds and
  its sshd moves ~30 MB/s) but it is the only way to test what p2v reads from a live system.

Both are context managers yielding a `SourceEndpoint`, and both tear everything down (processes
by pid, loop devices, temp dirs) even when the body raises.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

from p2v import runner
from p2v.accel import choose_accel
from p2v.errors import CommandTimeout, P2VError
from p2v.testbed.image import FixtureImage
from p2v.verify.qemu import Machine, Nic

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
SSHD = "/usr/sbin/sshd"
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


def _tail(path: Path, lines: int = 15) -> str:
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


def _stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
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


def attach_loop(path: Path, *, writable: bool = False, partitions: bool = False) -> str:
    """Attach a file as a loop device (read-only unless writable) and return /dev/loopN."""
    argv: list[str] = ["losetup", "-f", "--show"]
    if not writable:
        argv.append("-r")
    if partitions:
        argv.append("-P")
    argv.append(str(path))
    device = runner.run(argv).stdout.strip()
    if not device.startswith("/dev/loop"):
        raise SourceStartError(kind="loop", detail=f"losetup printed {device!r} for {path}")
    return device


def detach_loop(device: str) -> None:
    """Detach a loop device; a busy one is detached by the kernel once its last user closes."""
    runner.run(["losetup", "-d", device])


def make_partition_nodes(device: str) -> list[Path]:
    """Create /dev/loopNpM nodes for a partition-scanned loop device and return them.

    There is no udev on the test hosts, so the kernel's partitions show up only in sysfs;
    a stale node from an earlier loop device of the same name may point elsewhere, so any
    existing node is replaced.
    """
    name = Path(device).name
    # partx -u re-reads the table if losetup -P raced with the scan; no table is not an error.
    runner.run(["partx", "-u", device], check=False)
    nodes: list[Path] = []
    for part in sorted(Path("/sys/block", name).glob(f"{name}p*")):
        major, minor = (int(n) for n in (part / "dev").read_text().split(":"))
        node = Path("/dev", part.name)
        if node.exists() or node.is_symlink():
            node.unlink()
        os.mknod(node, 0o660 | stat.S_IFBLK, os.makedev(major, minor))
        nodes.append(node)
    return nodes


def _remove_nodes(nodes: Sequence[Path]) -> None:
    for node in nodes:
        try:
            node.unlink()
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------------------------------
# Shared start/stop plumbing


class _Source:
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
# sshd on loopback


class SshServer(_Source):
    """A private sshd on 127.0.0.1 serving the given block devices (or any paths).

    It uses its own config, host key and authorized_keys in a temp dir, and never touches
    the system sshd: its pid file is disabled and it listens on loopback only. It logs in as
    the current user (root on the test hosts, who can read the devices). `login_users` are
    other local users who may log in with the keys in their own ~/.ssh/authorized_keys (a
    non-root login for the sudo tests); the current user's login is the same either way.
    """

    kind = "sshd"
    _PORT_ATTEMPTS = 5

    def __init__(
        self,
        disks: Sequence[str | Path],
        fixture: FixtureImage | None = None,
        *,
        start_timeout: float = 15.0,
        session_path: str | None = None,
        login_users: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.disks = tuple(str(d) for d in disks)
        self.fixture = fixture
        self.start_timeout = start_timeout
        self.session_path = session_path
        self.login_users = tuple(login_users)
        if any(not re.fullmatch(r"[a-z_][a-z0-9_-]*", u) for u in self.login_users):
            raise ValueError(f"not a plain user name in {self.login_users!r}")
        self.pid: int | None = None

    def _config(self, workdir: Path, port: int, host_key: Path, authorized: Path) -> Path:
        config = workdir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "AddressFamily inet",
                    f"ListenAddress {LOOPBACK}",
                    f"HostKey {host_key}",
                    f"AuthorizedKeysFile {authorized}",
                    "PidFile none",
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    # Keys live under /tmp, which StrictModes rejects.
                    "StrictModes no",
                    "Subsystem sftp internal-sftp",
                    "LogLevel VERBOSE",
                    # A source with fewer tools (e.g. no python3): every command runs under
                    # sh with only this PATH (a forced command, so the login shell's rc
                    # files cannot add to it).
                    *([f'ForceCommand PATH={shlex.quote(self.session_path)} exec /bin/sh -c '
                       '"$SSH_ORIGINAL_COMMAND"'] if self.session_path else []),
                    # Match blocks come last: they run to the end of the file. The workdir
                    # is root's (0700), so these users' keys live in their own homes.
                    *([f"Match User {','.join(self.login_users)}",
                       "    AuthorizedKeysFile .ssh/authorized_keys"]
                      if self.login_users else []),
                    "",
                ]
            )
        )
        return config

    def _start(self, stack: ExitStack) -> SourceEndpoint:
        workdir = self._make_workdir(stack)
        host_key = workdir / "ssh_host_ed25519_key"
        host_public = generate_key(host_key, "p2v-testbed-host")
        client_key = workdir / "client_ed25519"
        authorized = workdir / "authorized_keys"
        authorized.write_text(generate_key(client_key, "p2v-testbed-client") + "\n")
        # sshd's privilege-separation directory; Debian creates it only from its init script.
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        user = pwd.getpwuid(os.getuid()).pw_name

        last_error = ""
        for _ in range(self._PORT_ATTEMPTS):
            port = free_port()
            config = self._config(workdir, port, host_key, authorized)
            runner.run([SSHD, "-t", "-f", config])
            log_path = workdir / f"sshd-{port}.log"
            with log_path.open("wb") as log_file:
                proc = runner.spawn(
                    [SSHD, "-D", "-e", "-f", config], stdout=log_file.fileno(),
                    stderr=log_file.fileno(),
                )
            stack.callback(_stop_process, proc)
            known_hosts = workdir / "known_hosts"
            known_hosts.write_text(known_hosts_line(LOOPBACK, port, host_public))
            endpoint = SourceEndpoint(
                host=LOOPBACK,
                port=port,
                user=user,
                key=client_key,
                known_hosts=known_hosts,
                disks=self.disks,
                fixture=self.fixture,
            )
            if self._wait_ready(proc, endpoint):
                self.pid = proc.pid
                log.info("sshd %d serving %s on %s:%d", proc.pid, self.disks, LOOPBACK, port)
                return endpoint
            # Exited: most likely someone took the port between free_port() and bind().
            last_error = _tail(log_path)
            _stop_process(proc)
        raise SourceStartError(kind="sshd", detail=last_error)

    def _wait_ready(self, proc: subprocess.Popen[bytes], endpoint: SourceEndpoint) -> bool:
        """True once a real login works; False if sshd exited (e.g. the port was taken)."""
        deadline = time.monotonic() + self.start_timeout
        last = "no SSH banner"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if _banner(endpoint.host, endpoint.port):
                # A full login proves the config, the key and the known_hosts entry agree;
                # it fails if another server grabbed the port first (then sshd exits).
                result = endpoint.ssh(["true"], timeout=30, check=False)
                if result.returncode == 0:
                    return True
                last = result.stderr.strip().replace("\n", " | ")
            time.sleep(0.05)
        raise SourceStartError(
            kind="sshd",
            detail=f"no SSH login on port {endpoint.port} within {self.start_timeout:.0f} s "
            f"({last[-300:]})",
        )


def _banner(host: str, port: int) -> bool:
    """Whether something on host:port speaks SSH (a listening sshd sends its banner first)."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


class LoopSource(_Source):
    """A fixture's disks (or any raw files) as loop devices behind a private loopback sshd.

    Attached read-only unless writable=True — which writes the files themselves, so pass a
    copy (`copy_fixture`) for a cached fixture. partitions=True scans partition tables and
    creates the /dev/loopNpM nodes that udev would (tests that read partitions need them).
    session_path: the PATH of every SSH session (a source without python3, say).
    login_users: other local users who may log in with their own authorized_keys (SshServer).
    """

    kind = "loop"

    def __init__(
        self,
        image: FixtureImage | None,
        writable: bool = False,
        partitions: bool = False,
        *,
        files: Sequence[Path] | None = None,
        session_path: str | None = None,
        login_users: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if files is None:
            if image is None:
                raise ValueError("LoopSource needs a fixture image or files")
            files = image.disks
        self.image = image
        self.files = tuple(Path(f) for f in files)
        self.writable = writable
        self.partitions = partitions
        self.session_path = session_path
        self.login_users = tuple(login_users)
        self.loop_devices: tuple[str, ...] = ()
        self.partition_nodes: tuple[Path, ...] = ()
        self.sshd_pid: int | None = None

    @classmethod
    def from_files(
        cls, files: Sequence[str | Path], *, writable: bool = False, partitions: bool = False,
        session_path: str | None = None,
    ) -> LoopSource:
        """A loop source over ad-hoc raw files (e.g. a 2 GiB disk of random data for a bench)."""
        return cls(None, writable, partitions, files=[Path(f) for f in files],
                   session_path=session_path)

    def _start(self, stack: ExitStack) -> SourceEndpoint:
        devices: list[str] = []
        nodes: list[Path] = []
        for path in self.files:
            if not path.exists():
                raise SourceStartError(kind="loop", detail=f"no such disk file: {path}")
            device = attach_loop(path, writable=self.writable, partitions=self.partitions)
            stack.callback(detach_loop, device)
            devices.append(device)
            if self.partitions:
                made = make_partition_nodes(device)
                stack.callback(_remove_nodes, made)
                nodes += made
        self.loop_devices = tuple(devices)
        self.partition_nodes = tuple(nodes)
        server = SshServer(devices, self.image, session_path=self.session_path,
                           login_users=self.login_users)
        endpoint = stack.enter_context(server)
        self.sshd_pid = server.pid
        self.workdir = server.workdir
        return endpoint


# ---------------------------------------------------------------------------------------------
# A fixture running in qemu


class LiveSource(_Source):
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
        return " ;; ".join(_tail(p, 5 if p.name != "serial.log" else 20) for p in self._logs())

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
            _stop_process(proc)
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
        _stop_process(proc)


# ---------------------------------------------------------------------------------------------
# Helpers for tests and benchmarks


def copy_fixture(image: FixtureImage, directory: Path) -> FixtureImage:
    """A private copy of a fixture (sparse disks, NVRAM) that tests may write to.

    The cached images are shared by every test; anything that writes (a writable loop
    source, a fix-up run) works on a copy.
    """
    directory.mkdir(parents=True, exist_ok=True)
    disks: list[Path] = []
    for disk in image.disks:
        dest = directory / Path(disk).name
        runner.run(["cp", "--sparse=always", "--reflink=auto", disk, dest])
        disks.append(dest)
    nvram: Path | None = None
    if image.nvram is not None:
        nvram = directory / image.nvram.name
        shutil.copyfile(image.nvram, nvram)
    return replace(image, directory=directory, disks=tuple(disks), nvram=nvram)


def write_random_disk(
    path: Path, size: int, random_bytes: int | None = None, *, chunk: int = 4 << 20
) -> str:
    """Create a raw disk of `size` bytes whose first `random_bytes` are random, rest zeros.

    Returns the sha256 of the whole disk, which is what a copy must reproduce. Random data
    is incompressible, so benchmarks cannot be flattered by compression.
    """
    random_bytes = size if random_bytes is None else min(random_bytes, size)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        written = 0
        while written < random_bytes:
            block = os.urandom(min(chunk, random_bytes - written))
            out.write(block)
            digest.update(block)
            written += len(block)
        out.truncate(size)
    zeros = bytes(chunk)
    remaining = size - random_bytes
    while remaining > 0:
        n = min(chunk, remaining)
        digest.update(zeros[:n])
        remaining -= n
    return digest.hexdigest()


__all__ = [
    "LiveSource",
    "LoopSource",
    "SourceEndpoint",
    "SourceStartError",
    "SshServer",
    "attach_loop",
    "copy_fixture",
    "detach_loop",
    "free_port",
    "known_hosts_line",
    "make_partition_nodes",
    "write_random_disk",
]
