"""Watch every process's command line (and environment) for a secret while a command runs.

Event-driven: the kernel's process connector (netlink, root only) reports each exec, and the
new process's /proc/PID/cmdline and environ are read at once; after each burst of execs the
whole of /proc is read again, which also catches a command line rewritten after exec. On a
host without the connector the watcher falls back to reading /proc in a loop. The loopback
sshd's children are the source's processes, so one local watcher covers both sides.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

_NETLINK_CONNECTOR = 11
_CN_IDX_PROC = 1
_CN_VAL_PROC = 1
_PROC_CN_MCAST_LISTEN = 1
_PROC_EVENT_EXEC = 0x00000002
_NLMSG_HDR = 16      # struct nlmsghdr
_CN_MSG = 20         # struct cn_msg
# Rereading all of /proc costs a few ms; at most this often, however busy the host is.
_FULL_SCAN_EVERY = 0.25


@dataclass
class Finding:
    pid: int
    where: str          # "cmdline" or "environ"
    text: str


@dataclass
class ProcWatch:
    """Context manager: records every process whose cmdline (or environ, except the
    `exempt` pids') holds one of `secrets`, and every command line matching `keep`."""

    secrets: tuple[bytes, ...]
    keep: bytes = b""                  # command lines containing this are kept in `seen`
    exempt: set[int] = field(default_factory=set)
    findings: list[Finding] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    execs: int = 0
    scans: int = 0
    event_driven: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _sock: socket.socket | None = None

    def __enter__(self) -> ProcWatch:
        self._sock = _listen()
        self.event_driven = self._sock is not None
        self.scan_all()
        self._thread = threading.Thread(target=self._run, name="procwatch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._sock is not None:
            self._sock.close()

    def leaks(self) -> list[Finding]:
        """The findings, the exempt pids' environments left out: the watcher may read a
        new process's environ before its pid can be added to `exempt` (Popen returns
        after the exec the watcher sees)."""
        return [f for f in self.findings if not (f.where == "environ" and f.pid in self.exempt)]

    def check(self, pid: int) -> None:
        """Read one process's cmdline and environ and record what they hold."""
        for where in ("cmdline", "environ"):
            if where == "environ" and pid in self.exempt:
                continue
            try:
                data = Path(f"/proc/{pid}/{where}").read_bytes()
            except OSError:         # gone already, or a kernel thread
                continue
            if where == "cmdline" and self.keep and self.keep in data:
                self.seen.append(data.replace(b"\0", b" ").decode(errors="replace"))
            if any(s in data for s in self.secrets):
                self.findings.append(Finding(pid, where,
                                             data.replace(b"\0", b" ").decode(errors="replace")))

    def scan_all(self) -> None:
        self.scans += 1
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                self.check(int(entry.name))

    def _run(self) -> None:
        last_scan = time.monotonic()
        while not self._stop.is_set():
            if self._sock is None:
                self.scan_all()
                self._stop.wait(0.005)
                continue
            ready, _, _ = select.select([self._sock], [], [], 0.2)
            if ready:
                self._read_events()
            if time.monotonic() - last_scan > _FULL_SCAN_EVERY:
                self.scan_all()
                last_scan = time.monotonic()

    def _read_events(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:         # ENOBUFS: events were dropped; the full scan follows
                return
            offset = _NLMSG_HDR + _CN_MSG
            if len(data) < offset + 24:
                continue
            what = struct.unpack_from("=I", data, offset)[0]
            if what == _PROC_EVENT_EXEC:
                self.execs += 1
                pid = struct.unpack_from("=I", data, offset + 16)[0]
                self.check(pid)


def _listen() -> socket.socket | None:
    """A netlink socket subscribed to the process connector's events, or None."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_CONNECTOR)
        sock.bind((0, _CN_IDX_PROC))
        body = struct.pack("=I", _PROC_CN_MCAST_LISTEN)
        cn_msg = struct.pack("=IIIIHH", _CN_IDX_PROC, _CN_VAL_PROC, 0, 0, len(body), 0)
        header = struct.pack("=IHHII", _NLMSG_HDR + _CN_MSG + len(body), 3, 0, 0, 0)
        sock.send(header + cn_msg + body)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    except OSError:
        return None
    return sock
