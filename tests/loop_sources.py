"""The tests' and benchmarks' loop sources: disks as loop devices behind a private sshd.

`LoopSource` / `SshServer` serve disks attached as loop devices through a private sshd on
127.0.0.1. It starts in well under a second and reads at host speed, so copy tests and
benchmarks use it: it measures p2v, not an emulated CPU. (The demo's `LiveSource`, a fixture
booted in qemu, is p2v.demo.live.)
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from p2v import runner
from p2v.demo.image import FixtureImage
from p2v.demo.live import (
    LOOPBACK,
    SourceBase,
    SourceEndpoint,
    SourceStartError,
    free_port,
    generate_key,
    known_hosts_line,
    log_tail,
    stop_process,
)

log = logging.getLogger(__name__)

SSHD = "/usr/sbin/sshd"


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



# ---------------------------------------------------------------------------------------------
# sshd on loopback


class SshServer(SourceBase):
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
            stack.callback(stop_process, proc)
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
            last_error = log_tail(log_path)
            stop_process(proc)
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


class LoopSource(SourceBase):
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


