"""The bulk stream through an OpenSSH `ssh` child: decryption in C, outside p2v's GIL.

paramiko keeps the session, the inventory and every control command; only
`SshSource.stream()` (the readers' data) may run here instead. The child trusts nothing
paramiko did not verify first: it reads a private known_hosts file (in a scratch dir,
p2v.scratch) holding exactly the host keys the paramiko login accepted, one per hop, with
StrictHostKeyChecking=yes and its host key algorithms pinned to those keys' types; it reads
no config file (`-F /dev/null`: p2v already resolved ssh_config, p2v.source.sshconfig) and
never prompts (BatchMode). Each ProxyJump hop is a ProxyCommand `ssh -W` of its own, so a
hop's user, port, identities and proxy are its own too (`ssh -J` would pass none of the -o
options on). The sudo password goes to the remote sudo on the child's stdin, as over
paramiko; no secret is ever on a command line.

No paramiko here (p2v.source.ssh is its only importer): the hops come in as `Hop`.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import select
import shlex
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from p2v import runner
from p2v.errors import (
    CommandNotFound,
    CommandTimeout,
    DataChannelHostKey,
    P2VError,
    RemoteCommandFailed,
    SshFailed,
    UsageError,
)
from p2v.scratch import scratch_dir

log = logging.getLogger(__name__)

PARAMIKO, OPENSSH, AUTO = "paramiko", "openssh", "auto"
DATA_CHANNELS = (PARAMIKO, OPENSSH, AUTO)
DATA_CHANNEL_ENV = "P2V_DATA_CHANNEL"
SERVER_ALIVE_INTERVAL = 15
# ssh's own exit status when it failed (connect, host key, login), not the command's.
SSH_ERROR = 255
PIPE_BYTES = 1 << 20

# paramiko names an RSA host key ssh-rsa; OpenSSH would then offer only SHA-1 signatures.
_ALGORITHMS = {"ssh-rsa": "rsa-sha2-512,rsa-sha2-256,ssh-rsa"}

# Every option a user's config could have changed, set to what p2v needs.
_FIXED = (
    "BatchMode=yes", "StrictHostKeyChecking=yes", "CheckHostIP=no", "UpdateHostKeys=no",
    "HashKnownHosts=no", "GlobalKnownHostsFile=/dev/null", "Compression=no",
    "PreferredAuthentications=publickey", "PasswordAuthentication=no",
    "KbdInteractiveAuthentication=no", "GSSAPIAuthentication=no", "HostbasedAuthentication=no",
    "ForwardAgent=no", "ForwardX11=no", "ClearAllForwardings=yes", "PermitLocalCommand=no",
    "ControlMaster=no", "ControlPath=none", "RequestTTY=no", "EscapeChar=none",
    "LogLevel=ERROR", f"ServerAliveInterval={SERVER_ALIVE_INTERVAL}", "ServerAliveCountMax=4",
)


@dataclass(frozen=True)
class Hop:
    """One login of the chain as paramiko made it, outermost first; the last is the source.

    key_type and key_base64: the host key paramiko verified for it. identities: the key
    files it may offer (empty: OpenSSH's default ~/.ssh/id_*); agent: whether ssh-agent's
    keys may be offered too. proxy_command: only the first hop's, tokens expanded.
    """

    host: str
    port: int
    user: str
    key_type: str
    key_base64: str
    identities: tuple[Path, ...] = ()
    agent: bool = False
    proxy_command: str | None = None
    connect_timeout: float = 15.0

    @property
    def pattern(self) -> str:
        """How known_hosts names the hop, as OpenSSH looks it up."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def _escape(text: str) -> str:
    """A value ssh expands %-tokens in (IdentityFile, UserKnownHostsFile, ProxyCommand),
    kept literal: p2v already expanded it."""
    return text.replace("%", "%%")


def known_hosts_text(hops: Sequence[Hop]) -> str:
    """The private known_hosts: exactly the keys paramiko verified, one line per hop."""
    return "".join(f"{h.pattern} {h.key_type} {h.key_base64}\n" for h in hops)


def _hop_options(hop: Hop, known_hosts: Path) -> list[str]:
    opts = [*_FIXED, f"UserKnownHostsFile={_escape(str(known_hosts))}",
            f"HostKeyAlgorithms={_ALGORITHMS.get(hop.key_type, hop.key_type)}",
            f"HostName={hop.host}", f"Port={hop.port}", f"User={hop.user}",
            f"ConnectTimeout={max(1, round(hop.connect_timeout))}",
            *(f"IdentityFile={_escape(str(p))}" for p in hop.identities)]
    if not hop.agent:
        opts += ["IdentityAgent=none", "IdentitiesOnly=yes"]
    return [w for opt in opts for w in ("-o", opt)]


def hop_argv(ssh: str, hops: Sequence[Hop], known_hosts: Path,
             extra: Sequence[str] = ()) -> list[str]:
    """ssh's argv logging in to hops[-1] through the ones before it (each earlier hop a
    `ssh -W host:port` ProxyCommand), `extra` options last, up to the host."""
    *before, hop = hops
    argv = [ssh, "-F", "/dev/null", "-T", *_hop_options(hop, known_hosts)]
    if before:
        address = f"[{hop.host}]" if ":" in hop.host else hop.host      # IPv6
        forward = hop_argv(ssh, before, known_hosts, ["-W", f"{address}:{hop.port}"])
        argv += ["-o", "ProxyCommand=" + _escape(shlex.join(forward))]
    elif hop.proxy_command is not None:
        argv += ["-o", "ProxyCommand=" + _escape(hop.proxy_command)]
    return [*argv, *extra, "--", hop.host]


def command_argv(ssh: str, hops: Sequence[Hop], known_hosts: Path, command: str
                 ) -> list[str]:
    """The whole argv: `command` (already quoted, shlex.join) runs on the source."""
    return [*hop_argv(ssh, hops, known_hosts), command]


def _tail(text: str, lines: int = 3) -> str:
    rest = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(rest[-lines:]) or "(no output)"


class LoginRefused(Exception):
    """The child could not log in where paramiko could: p2v falls back to paramiko."""


class _TimedPipe(io.RawIOBase):
    """The child's stdout, each read waiting at most `timeout` (as a paramiko channel's).

    The pipe is widened to PIPE_BYTES where the kernel allows, so a read takes a MiB at a
    time rather than the default 64 KiB: fewer trips through the interpreter per byte."""

    def __init__(self, pipe: IO[bytes], timeout: float | None) -> None:
        self._pipe, self._fd = pipe, pipe.fileno()
        self._timeout_ms = None if timeout is None else max(1, round(timeout * 1000))
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        try:
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass        # over /proc/sys/fs/pipe-max-size for a non-root user: 64 KiB it is

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:    # type: ignore[override]
        if not self._poll.poll(self._timeout_ms):
            raise TimeoutError
        return os.readv(self._fd, [buffer])

    def fileno(self) -> int:
        return self._fd


def _login_refusal(stderr: str) -> str | None:
    """Why a failed child did not log in (then paramiko carries the stream), or None."""
    for line in stderr.splitlines():
        if "Permission denied" in line or "Too many authentication failures" in line:
            return line.strip()
    return None


def _host_key_refused(stderr: str) -> bool:
    return ("Host key verification failed" in stderr
            or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr
            or "No matching host key" in stderr or "no matching host key" in stderr)


class SshChild:
    """Streams over OpenSSH children logged in to the hops paramiko verified.

    `check()` logs in once (raising LoginRefused where OpenSSH cannot, or
    DataChannelHostKey where it reached another host key); `stream()` then runs one
    command per child. close() removes the private known_hosts."""

    def __init__(self, ssh: str, hops: Sequence[Hop]) -> None:
        self.ssh, self.hops = ssh, tuple(hops)
        # A scratch dir: held while p2v lives, swept by the next run after a SIGKILL.
        self._scratch = ExitStack()
        directory = self._scratch.enter_context(scratch_dir("sshchild"))
        self.known_hosts = directory / "known_hosts"
        self.known_hosts.write_text(known_hosts_text(self.hops))

    @classmethod
    def find(cls, hops: Sequence[Hop]) -> SshChild:
        """The child over `hops`; LoginRefused when there is no ssh binary."""
        try:
            ssh = runner.which("ssh")
        except CommandNotFound:
            raise LoginRefused("no OpenSSH client (ssh) on PATH") from None
        return cls(ssh, hops)

    @property
    def host(self) -> str:
        return self.hops[-1].host

    def argv(self, command: str) -> list[str]:
        return command_argv(self.ssh, self.hops, self.known_hosts, command)

    def check(self) -> None:
        """Log in once and run `exit 0`: proves the child reaches the verified host."""
        timeout = sum(h.connect_timeout for h in self.hops) + 15.0
        try:
            result = runner.run(self.argv("exit 0"), timeout=timeout, check=False)
        except CommandTimeout:
            raise LoginRefused(f"ssh did not log in within {timeout:.0f} s") from None
        if result.returncode == 0:
            return
        self.refuse(result.stderr)
        raise LoginRefused(f"ssh exited with status {result.returncode}: "
                           f"{_tail(result.stderr)}")

    def refuse(self, stderr: str) -> None:
        """Raise for what ssh's stderr says: another host key, or a refused login."""
        if _host_key_refused(stderr):
            hop = next((h for h in self.hops if h.pattern in stderr), self.hops[-1])
            raise DataChannelHostKey(host=hop.pattern, key_type=hop.key_type,
                                     detail=_tail(stderr))
        why = _login_refusal(stderr)
        if why is not None:
            raise LoginRefused(why)

    def close(self) -> None:
        self._scratch.close()

    @contextmanager
    def stream(self, command: str, *, shown: str, stdin: bytes,
               timeout: float | None) -> Iterator[IO[bytes]]:
        """Run `command` (quoted) with `stdin` fed to it (the sudo password first, when
        there is one) and yield its stdout; on leaving, a non-zero exit raises
        RemoteCommandFailed (with the stderr tail), as SshSource.stream does."""
        err = tempfile.TemporaryFile()
        proc = runner.spawn(self.argv(command), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=err)
        feeder = threading.Thread(target=_feed, args=(proc, stdin), daemon=True,
                                  name="p2v-sshchild-stdin")
        feeder.start()
        try:
            assert proc.stdout is not None
            out = io.BufferedReader(_TimedPipe(proc.stdout, timeout), 1 << 20)
            try:
                yield out
            except P2VError:
                # The stream broke: if the command itself failed, its stderr says why.
                code = _wait(proc, 2.0)
                if code is not None and code > 0:
                    self._failed(shown, code, err)
                raise
            while out.read(1 << 20):
                pass        # what the reader left unread: ssh must not block on it
            code = _wait(proc, timeout)
            if code is None:
                raise TimeoutError
            if code != 0:
                self._failed(shown, code, err)
        except TimeoutError:
            raise SshFailed(host=self.host,
                            detail=f"`{shown}` stalled for {timeout or 0:.0f} s") from None
        finally:
            runner.stop(proc, grace=2.0)
            runner.kill_group(proc)
            feeder.join(5.0)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
            err.close()

    def _failed(self, shown: str, code: int, err: IO[bytes]) -> None:
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
        if code == SSH_ERROR:
            try:
                self.refuse(text)
            except LoginRefused as exc:
                raise SshFailed(host=self.host, detail="the OpenSSH data channel could "
                                f"not log in: {exc}") from None
        raise RemoteCommandFailed(command=shown, host=self.host, returncode=code,
                                  stderr_tail=_tail(text))


def _feed(proc: subprocess.Popen[bytes], data: bytes) -> None:
    """Write the child's stdin, then close it (the remote side sees EOF)."""
    assert proc.stdin is not None
    try:
        if data:
            proc.stdin.write(data)
        proc.stdin.close()
    except (OSError, ValueError):
        pass            # the command ended first: its exit status says why


def _wait(proc: subprocess.Popen[bytes], timeout: float | None) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def data_channel_setting(value: str | None) -> str:
    """The data channel asked for: `value`, else $P2V_DATA_CHANNEL, else paramiko (the
    default until the channel benchmark has been run; docs/dev/performance.md)."""
    chosen = (value or os.environ.get(DATA_CHANNEL_ENV) or PARAMIKO).strip().lower()
    if chosen not in DATA_CHANNELS:
        raise UsageError(detail=f"data channel {chosen!r} ({DATA_CHANNEL_ENV}) is not one "
                                f"of {', '.join(DATA_CHANNELS)}; unset it or pick one")
    return chosen


__all__ = ["AUTO", "DATA_CHANNELS", "DATA_CHANNEL_ENV", "OPENSSH", "PARAMIKO", "Hop",
           "LoginRefused", "SshChild", "command_argv", "data_channel_setting", "hop_argv",
           "known_hosts_text"]
