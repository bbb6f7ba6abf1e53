"""A loopback TCP proxy in front of a test sshd: the network link between source and host.

Loopback has no bandwidth and never breaks, so tests and benches put this between p2v and
the sshd to count what crosses the wire, pace it like a real link, or cut it at a chosen
byte. One class serves all three because they are the same pump with different knobs.
"""

from __future__ import annotations

import socket
import threading
import time


class LinkProxy:
    """127.0.0.1:port -> 127.0.0.1:target, for every connection.

    `link_bps` paces the server-to-client direction to that many bytes per second, shared by
    every connection. `cut_after` drops every connection once that many bytes in all have
    gone from server to client (`cut` then becomes True). `take()` returns and resets the
    server-to-client byte count.
    """

    def __init__(self, target: int, link_bps: float | None = None,
                 cut_after: int | None = None) -> None:
        self.target = target
        self.link_bps = link_bps
        self.cut_after = cut_after
        self.cut = False
        self.down = 0                     # server-to-client bytes since the last take()
        self._total = 0                   # server-to-client bytes ever, for cut_after
        self._link_free = 0.0             # when the modelled link is next idle (monotonic)
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port: int = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut:
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _allow(self, size: int) -> tuple[int, float]:
        """How much of a block from the server may pass, and until when to wait after it."""
        with self._lock:
            if self.cut_after is not None and self._total + size >= self.cut_after:
                size = max(0, self.cut_after - self._total)
                self.cut = True
            self._total += size
            self.down += size
            if self.link_bps:
                start = max(time.monotonic(), self._link_free)
                self._link_free = start + size / self.link_bps
            return size, self._link_free

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        try:
            while not self.cut and (block := src.recv(1 << 18)):
                if not downstream:
                    dst.sendall(block)
                    continue
                size, wait_until = self._allow(len(block))
                dst.sendall(block[:size])
                if self.cut:
                    break
                if self.link_bps:
                    time.sleep(max(0.0, wait_until - time.monotonic()))
        except OSError:
            pass
        if self.cut:
            self._drop_all()
        else:
            for s in (src, dst):
                _shut(s)

    def _drop_all(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            _shut(s)
            s.close()

    def cut_now(self) -> None:
        """Drop every connection now and refuse new ones (a link that went down)."""
        with self._lock:
            self.cut = True
        self._drop_all()

    def take(self) -> int:
        with self._lock:
            value, self.down = self.down, 0
        return value

    def close(self) -> None:
        """Stop accepting and drop every connection still open."""
        self.listener.close()
        self._drop_all()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


__all__ = ["LinkProxy"]
