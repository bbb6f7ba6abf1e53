"""An ssh_config ProxyCommand, run as OpenSSH runs it, as the socket SSH is spoken over.

OpenSSH runs `$SHELL -c "exec COMMAND"` (tokens already expanded) and speaks SSH over its
stdin and stdout. Here those are one end of a socket pair; the SSH transport gets the
other end, a real socket, so its timeouts work as over TCP. The command dies with p2v
(runner.spawn) and is stopped on close.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile

from p2v import runner

log = logging.getLogger(__name__)


class ProxyCommand:
    """A running ProxyCommand: `sock` is the transport's end; close() stops the command.

    Start it from the thread that keeps the session: the kernel signals the command when
    the thread that forked it ends (runner.spawn's die-with-parent).
    """

    def __init__(self, command: str) -> None:
        self.command = command
        ours, theirs = socket.socketpair()
        self._stderr = tempfile.TemporaryFile()
        shell = os.environ.get("SHELL") or "/bin/sh"
        try:
            self._proc: subprocess.Popen[bytes] = runner.spawn(
                [shell, "-c", f"exec {command}"], stdin=theirs.fileno(),
                stdout=theirs.fileno(), stderr=self._stderr)
        except BaseException:
            ours.close()
            self._stderr.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        log.debug("ProxyCommand %d: %s", self._proc.pid, command)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def failure(self, wait: float = 1.0) -> str | None:
        """Why the command is gone (its status and stderr tail), or None while it runs.
        `wait`: how long to give one that is ending (its EOF can come before its exit)."""
        try:
            code = self._proc.wait(wait)
        except subprocess.TimeoutExpired:
            return None
        self._stderr.seek(0)
        lines = [line.strip() for line in
                 self._stderr.read().decode("utf-8", "replace").splitlines() if line.strip()]
        tail = " | ".join(lines[-3:]) or "no output"
        return f"ProxyCommand `{self.command}` exited with status {code}: {tail}"

    def close(self) -> None:
        self.sock.close()
        runner.stop(self._proc, grace=2.0)
        self._stderr.close()
