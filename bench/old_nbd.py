"""The sink's NBD client before libnbd (one request at a time, writes up to 32 MiB), kept
only so bench/sink can measure the libnbd client against it. Nothing in p2v imports it.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from pathlib import Path
from types import TracebackType

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2
OPT_EXPORT_NAME = 1
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
CMD_WRITE_ZEROES = 6
FLAG_SEND_WRITE_ZEROES = 1 << 6     # transmission flag: the server takes WRITE_ZEROES
MAX_WRITE_REQUEST = 32 << 20        # qemu's NBD server refuses larger READ/WRITE payloads
MAX_ZEROES_REQUEST = 1 << 30        # well inside the 32-bit length, in whole clusters


class NbdError(OSError):
    """An NBD request failed; errno is the server's error code."""


class NbdClient:
    def __init__(self, socket_path: Path, export: str = "", timeout: float = 300) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(socket_path))
        self._handle = 0
        self._broken = False
        self.size, self.flags = self._handshake(export)

    def _recv(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise NbdError(errno.ECONNRESET, "NBD server closed the connection")
            data += chunk
        return bytes(data)

    def _handshake(self, export: str) -> tuple[int, int]:
        if self._recv(8) != NBDMAGIC or self._recv(8) != IHAVEOPT:
            raise NbdError(errno.EPROTO, "not a newstyle NBD server")
        (server_flags,) = struct.unpack(">H", self._recv(2))
        no_zeroes = bool(server_flags & FLAG_NO_ZEROES)
        self.sock.sendall(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (FLAG_NO_ZEROES if no_zeroes
                                                                    else 0)))
        name = export.encode()
        self.sock.sendall(IHAVEOPT + struct.pack(">II", OPT_EXPORT_NAME, len(name)) + name)
        size, flags = struct.unpack(">QH", self._recv(10))
        if not no_zeroes:
            self._recv(124)
        return size, flags

    def _request(self, command: int, offset: int, length: int, payload: bytes = b"") -> bytes:
        # A request cut short (Ctrl-C, a signal, a timeout) leaves the stream mid-message:
        # nothing more may be sent or read on it, or a stale reply would be taken for new.
        if self._broken:
            raise NbdError(errno.EPIPE, "NBD connection unusable after an interrupted request")
        self._broken = True
        self._handle += 1
        header = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, command, self._handle, offset, length)
        self.sock.sendall(header + payload if len(payload) < 65536 else header)
        if len(payload) >= 65536:
            self.sock.sendall(payload)
        magic, error, handle = struct.unpack(">IIQ", self._recv(16))
        if magic != SIMPLE_REPLY_MAGIC or handle != self._handle:
            raise NbdError(errno.EPROTO, "unexpected NBD reply")
        if error:
            self._broken = False                # the reply is complete: the stream is in step
            raise NbdError(error, f"NBD request failed: {os.strerror(error)}")
        data = self._recv(length) if command == CMD_READ else b""
        self._broken = False
        return data

    @property
    def broken(self) -> bool:
        """True after a request was interrupted: the connection can carry nothing more."""
        return self._broken

    def pwrite(self, data: bytes, offset: int) -> None:
        self._request(CMD_WRITE, offset, len(data), data)

    def write_zeroes(self, offset: int, length: int) -> None:
        """The range reads as zeros afterwards (the server may deallocate it).

        Any length: sent in pieces a server takes (a request's length is 32 bits, and a
        plain WRITE, for a server without WRITE_ZEROES, carries its bytes).
        """
        native = bool(self.flags & FLAG_SEND_WRITE_ZEROES)
        piece = MAX_ZEROES_REQUEST if native else MAX_WRITE_REQUEST
        end = offset + length
        while offset < end:
            n = min(piece, end - offset)
            if native:
                self._request(CMD_WRITE_ZEROES, offset, n)
            else:
                self._request(CMD_WRITE, offset, n, bytes(n))
            offset += n

    def pread(self, length: int, offset: int) -> bytes:
        return self._request(CMD_READ, offset, length)

    def flush(self) -> None:
        self._request(CMD_FLUSH, 0, 0)

    def close(self) -> None:
        try:
            self._handle += 1
            self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, self._handle,
                                          0, 0))
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> NbdClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
