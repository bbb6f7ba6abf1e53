"""The NBD client the sink writes through, on libnbd (Debian's python3-libnbd).

This module is libnbd's only importer (an import-linter contract). Writes and zeroings
go out asynchronously, several in flight within a byte budget, so the server works while
the next chunk arrives; each request is cut to the server's largest (qemu's NBD server
drops the connection on a write over 32 MiB), so any chunk size works. A request's
failure is reported by the next call, naming the request, and sticks: once one failed,
every later call (a flush above all) raises, so a caller that journals after `flush`
never journals a chunk whose write did not land. That flush still makes durable what did
land, if the connection works, and `unwritten` then names the only ranges lost.

Completions are polled (`aio_command_completed`), never delivered by callback: an
exception raised inside a libnbd callback (Ctrl-C) is printed and lost there.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

try:
    import nbd
except ImportError:  # pragma: no cover - depends on the host
    nbd = None

FALLBACK_MAX_REQUEST = 32 << 20     # a server advertising no limit: qemu's own
LIBNBD_MAX_REQUEST = 64 << 20       # libnbd refuses larger reads and writes itself
ZERO_REQUEST = 1 << 30              # WRITE_ZEROES carries no payload: far larger pieces
MAX_IN_FLIGHT = 8                   # requests
# Write payload in flight, held in memory until answered: per disk copied at once, so
# small (copy.MAX_PARALLEL counts it); 4 MiB chunks still overlap 4 deep.
IN_FLIGHT_BYTES = 16 << 20
_POLL_MS = 1000


class NbdError(OSError):
    """An NBD request failed: errno is the server's (or libnbd's) code; `where` names the
    request ("write at 1048576")."""

    def __init__(self, code: int, reason: str, where: str) -> None:
        super().__init__(code, reason)
        self.where = where

    def __str__(self) -> str:
        return f"{self.where}: {self.strerror}"


@dataclass(frozen=True)
class _Request:
    what: str                   # "write", "zeroing", "flush"
    offset: int
    length: int
    payload: int                # bytes it carries (the budget)
    buf: object                 # kept alive until the server answered

    @property
    def where(self) -> str:
        return self.what if self.what == "flush" else f"{self.what} at {self.offset}"


def _from_libnbd(exc: nbd.Error, where: str) -> NbdError:
    """The server's answer as errno and its text; libnbd's own complaint as it words it
    ("invalid state: CLOSED: ..."), less the name of the call."""
    code = exc.errnum or errno.EIO
    text = exc.string or ""
    reason = os.strerror(code) if "command failed" in text or not text else \
        text.split(": ", 1)[-1]
    return NbdError(code, reason, where)


def available() -> bool:
    """Whether the libnbd binding imports (python3-libnbd, seen through the venv)."""
    return nbd is not None


def connect(socket_path: Path, export: str, timeout: float) -> nbd.NBD:
    """A handle connected to the export on `socket_path` (NbdError if not within
    `timeout` seconds: a server that accepts and then says nothing hangs no one)."""
    handle = nbd.NBD()
    handle.set_handle_name("p2v-sink")
    handle.set_export_name(export)
    deadline = time.monotonic() + timeout
    try:
        handle.aio_connect_unix(str(socket_path))
        while handle.aio_is_connecting():
            if time.monotonic() > deadline:
                raise NbdError(errno.ETIMEDOUT, f"no NBD handshake within {timeout:.0f} s",
                               "connect")
            handle.poll(_POLL_MS)
        if not handle.aio_is_ready():
            raise NbdError(errno.ECONNREFUSED, "the NBD handshake failed", "connect")
    except nbd.Error as exc:
        raise _from_libnbd(exc, "connect") from None
    return handle


class NbdClient:
    """One connection to a writable export: `pwrite`, `zero`, `flush`, `pread`, `close`.

    `timeout`: seconds a request may go unanswered before the connection is given up."""

    def __init__(self, socket_path: Path, export: str = "", timeout: float = 300, *,
                 max_in_flight: int = MAX_IN_FLIGHT,
                 in_flight_bytes: int = IN_FLIGHT_BYTES) -> None:
        self.timeout = timeout
        self.max_in_flight, self.in_flight_bytes = max_in_flight, in_flight_bytes
        self._h: nbd.NBD | None = connect(socket_path, export, timeout)
        self.size: int = self._h.get_size()
        self.max_request = min(self._h.get_block_size(nbd.SIZE_MAXIMUM)
                               or FALLBACK_MAX_REQUEST, LIBNBD_MAX_REQUEST)
        self.can_zero: bool = self._h.can_zero()
        self._flight: dict[int, _Request] = {}
        self._bytes = 0
        self._failure: NbdError | None = None
        self._failed: list[_Request] = []       # the server answered these with an error
        self._usable = True                     # False once the connection itself failed
        self._salvaged = False
        self._zeros = b""

    def unwritten(self) -> list[tuple[int, int]] | None:
        """After a flush raised: the (offset, length) ranges whose requests failed, every
        other write sent being on stable storage; None when nothing can be promised."""
        if not self._salvaged:
            return None
        return sorted((r.offset, r.length) for r in self._failed)

    def _handle(self) -> nbd.NBD:
        if self._h is None:
            raise NbdError(errno.EBADF, "the NBD connection is closed", "request")
        return self._h

    def _check(self) -> None:
        """Raise the first failure again: once one request failed, no new one is taken."""
        if self._failure is not None:
            first = self._failure
            raise NbdError(first.errno or errno.EIO, first.strerror or "failed", first.where)

    def _fail(self, exc: NbdError, *, connection: bool = True) -> NbdError:
        """Record a failure; `connection`: of the link itself (nothing more will work),
        not a request the server refused."""
        if self._failure is None:
            self._failure = exc
        if connection:
            self._usable = False
        return exc

    def _reap(self) -> int:
        """Retire every answered request, recording those that failed; returns how many."""
        handle = self._handle()
        done = 0
        for cookie, request in list(self._flight.items()):
            try:
                finished = handle.aio_command_completed(cookie)
            except nbd.Error as exc:
                finished = True
                self._failed.append(request)
                self._fail(_from_libnbd(exc, request.where), connection=False)
            if finished:
                del self._flight[cookie]
                self._bytes -= request.payload
                done += 1
        return done

    def _oldest(self) -> str:
        first = next(iter(self._flight.values()), None)
        return "waiting for the NBD server" if first is None else first.where

    def _fits(self, request: _Request) -> bool:
        """Room in the budget, and no request in flight overlaps it: a server may answer
        in any order, so two overlapping writes in flight could land either way round."""
        if not self._flight:
            return True
        end = request.offset + request.length
        return (len(self._flight) < self.max_in_flight
                and self._bytes + request.payload <= self.in_flight_bytes
                and all(r.offset >= end or request.offset >= r.offset + r.length
                        for r in self._flight.values()))

    def _idle(self) -> bool:
        return not self._flight and not self._handle().aio_in_flight()

    def _wait(self, ready: Callable[[], bool], *, strict: bool = True) -> None:
        """Poll the connection until `ready()`; raise a timeout when no answer came for
        `timeout` seconds, and (`strict`) the first failure as soon as it is known."""
        handle = self._handle()
        deadline = time.monotonic() + self.timeout
        while True:
            if self._reap():
                deadline = time.monotonic() + self.timeout
            if strict:
                self._check()
            if ready():
                return
            if time.monotonic() > deadline:
                raise self._fail(NbdError(errno.ETIMEDOUT, "the NBD server did not answer "
                                          f"within {self.timeout:.0f} s", self._oldest()))
            try:
                handle.poll(_POLL_MS)
            except nbd.Error as exc:
                raise self._fail(_from_libnbd(exc, self._oldest())) from None

    def _issue(self, request: _Request, *, strict: bool = True) -> None:
        """Send one request (at most max_request long) once `_fits` lets it."""
        self._wait(lambda: self._fits(request), strict=strict)
        handle = self._handle()
        try:
            if request.what == "write":
                cookie = handle.aio_pwrite(request.buf, request.offset)
            elif request.what == "zeroing":
                cookie = handle.aio_zero(request.length, request.offset)
            else:
                cookie = handle.aio_flush()
        except nbd.Error as exc:
            raise self._fail(_from_libnbd(exc, request.where)) from None
        self._flight[cookie] = request
        self._bytes += request.payload

    def pwrite(self, data: bytes, offset: int) -> None:
        """Queue `data` for `offset`: in flight when this returns, durable after `flush`."""
        view = memoryview(data)
        step = self.max_request
        for start in range(0, len(data), step):
            piece = view[start:start + step]
            self._issue(_Request("write", offset + start, len(piece), len(piece), piece))

    def zero(self, offset: int, length: int) -> None:
        """Queue making the range read as zeros: WRITE_ZEROES where the server takes it
        (it may deallocate the range; no fast-zero flag, so it never refuses for being
        slow), else writes of zeros."""
        end = offset + length
        if self.can_zero:
            while offset < end:
                n = min(ZERO_REQUEST, end - offset)
                self._issue(_Request("zeroing", offset, n, 0, None))
                offset += n
            return
        if len(self._zeros) < min(self.max_request, length):
            self._zeros = bytes(min(self.max_request, max(length, 1 << 20)))
        zeros = memoryview(self._zeros)
        while offset < end:
            n = min(len(zeros), end - offset)
            self._issue(_Request("write", offset, n, n, zeros[:n]))
            offset += n

    def drain(self) -> None:
        """Wait until every request was answered; raise the first that failed."""
        self._wait(self._idle)

    def flush(self) -> None:
        """Every request so far is answered and on stable storage when this returns (a
        flush covers only writes answered before it was sent: hence the drain first).

        After a failure it raises, but first still flushes what did land if the link
        works, so that `unwritten` can name the only ranges lost."""
        try:
            self.drain()
            self._issue(_Request("flush", 0, 0, 0, None))
            self.drain()
        except NbdError:
            self._salvage()
            raise

    def _salvage(self) -> None:
        if self._salvaged or not self._usable or self._h is None:
            return
        try:
            self._wait(self._idle, strict=False)
            self._issue(_Request("flush", 0, 0, 0, None), strict=False)
            self._wait(self._idle, strict=False)
        except NbdError:
            return
        self._salvaged = self._usable and all(r.what != "flush" for r in self._failed)

    def pread(self, length: int, offset: int) -> bytes:
        """The bytes at `offset`, as written (every write in flight answered first)."""
        self.drain()
        out = bytearray()
        try:
            while len(out) < length:
                n = min(self.max_request, length - len(out))
                out += self._handle().pread(n, offset + len(out))
        except nbd.Error as exc:
            raise self._fail(_from_libnbd(exc, f"read at {offset + len(out)}"),
                             connection=False) from None
        return bytes(out)

    def close(self) -> None:
        """Disconnect: requests in flight are answered first, unless one failed."""
        if self._h is None:
            return
        try:
            if self._failure is None and not self._h.aio_is_dead():
                self.drain()
                self._h.shutdown()
        except (nbd.Error, NbdError):
            pass
        finally:
            self._h = None               # libnbd closes the socket with the handle
            self._flight.clear()
            self._bytes = 0

    def __enter__(self) -> NbdClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
