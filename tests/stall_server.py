"""Loopback listeners that accept connections and then stall (an SSH server that hangs)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

BANNER = b"SSH-2.0-OpenSSH_9.2p1 stalls-after-banner\r\n"


@contextmanager
def stalling_listener(banner: bytes = b"",
                      connected: threading.Event | None = None) -> Iterator[int]:
    """A port that accepts, sends `banner` (if any) and then never speaks again; every
    connection is held open until the block ends. `connected` is set at each accept."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            if banner:
                conn.sendall(banner)
            if connected is not None:
                connected.set()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in held:
            conn.close()
