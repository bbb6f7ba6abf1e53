"""The test bed's link proxy counts, paces and cuts what the server sends."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from tcpproxy import LinkProxy

PAYLOAD = bytes(range(256)) * 4096          # 1 MiB


@pytest.fixture
def server() -> Iterator[int]:
    """A loopback server that sends PAYLOAD to every client, then closes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.sendall(PAYLOAD)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


def receive(port: int) -> bytes:
    chunks = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        while block := sock.recv(65536):
            chunks.append(block)
    return b"".join(chunks)


def test_counts_what_the_server_sent(server: int) -> None:
    proxy = LinkProxy(server)
    try:
        assert receive(proxy.port) == PAYLOAD
        assert receive(proxy.port) == PAYLOAD
        assert proxy.take() == 2 * len(PAYLOAD)
        assert proxy.take() == 0 and not proxy.cut
    finally:
        proxy.close()


def test_cuts_at_the_byte_asked(server: int) -> None:
    proxy = LinkProxy(server, cut_after=300_000)
    try:
        assert receive(proxy.port) == PAYLOAD[:300_000]
        assert proxy.cut
    finally:
        proxy.close()


def test_paces_to_the_link_rate(server: int) -> None:
    proxy = LinkProxy(server, link_bps=4 * len(PAYLOAD))     # 1 MiB at 4 MiB/s: >= 0.25 s
    try:
        start = time.monotonic()
        assert receive(proxy.port) == PAYLOAD
        assert time.monotonic() - start >= 0.2
    finally:
        proxy.close()
