"""A shared bandwidth limit (`--bandwidth-limit`): a token bucket every disk's reader draws on.

The receiver calls `consume(n)` after taking n bytes off the wire; when it is ahead of the
rate it sleeps, stops reading, and SSH/TCP flow control holds the source back. So the
limit caps what crosses the link, over any stretch longer than the bucket's burst
(a quarter second of traffic) plus what the SSH window buffers.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?(?:/s)?", re.IGNORECASE)
MIN_RATE = 1024.0


def parse_rate(text: str) -> float:
    """"50M" -> 52428800.0 bytes/s. Units K, M, G, T are powers of 1024; "B", "iB" and
    "/s" may follow ("50MiB/s"). A bare number is bytes per second."""
    match = _RATE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a rate: {text!r} (want e.g. 50M for 50 MiB/s, 800K, 1G)")
    rate = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if rate < MIN_RATE:
        raise ValueError(f"rate {text!r} is below the minimum of 1K (1 KiB/s)")
    return rate


class RateLimiter:
    """Token bucket for `rate` bytes/s shared by threads; at most `burst` bytes ahead."""

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = rate / 4 if burst is None else burst
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._due: float | None = None        # when the bytes consumed so far are "paid"

    def consume(self, n: int) -> float:
        """Account for n bytes; sleep as long as the rate requires. Returns the delay."""
        if n <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            due = now if self._due is None or self._due < now else self._due
            self._due = due + n / self.rate
            delay = self._due - now - self.burst / self.rate
        if delay > 0:
            self._sleep(delay)
            return delay
        return 0.0


__all__ = ["RateLimiter", "parse_rate"]
