"""What the stages need from a source server, whatever carries the commands there.

`SshSource` (paramiko) is the one implementation; the transfer, the freeze and the disk
identity are written against `Source`, so they depend on these few calls and not on an SSH
library, and a test can stand in for the server with a small fake.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import IO, Protocol


@dataclass(frozen=True)
class RemoteResult:
    """A finished command on the source: its exit status and output."""

    command: str
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")


class SourceTarget(Protocol):
    """Where the source is: the address messages name."""

    @property
    def host(self) -> str:
        """The address connected to (ssh_config HostName applied)."""


class Source(Protocol):
    """A logged-in session on the source server; commands run as root unless root=False."""

    @property
    def target(self) -> SourceTarget:
        """Where the session is logged in."""

    def run(self, argv: Sequence[str], *, timeout: float | None = 300, check: bool = True,
            root: bool = True) -> RemoteResult:
        """Run argv and return its output; check: a non-zero exit raises
        RemoteCommandFailed."""

    def stream(self, argv: Sequence[str], *, timeout: float | None = 300, root: bool = True,
               stdin: bytes | None = None) -> AbstractContextManager[IO[bytes]]:
        """Run argv with `stdin` sent first and give its stdout as a binary file; on
        leaving the block a non-zero exit raises RemoteCommandFailed (unless the block
        itself raised)."""

    def host_key(self) -> str:
        """The server's host key as "TYPE SHA256:…": what identifies the machine."""


__all__ = ["RemoteResult", "Source", "SourceTarget"]
