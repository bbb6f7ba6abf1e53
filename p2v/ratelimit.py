"""A shared bandwidth limit (`--bandwidth-limit`): a token bucket every disk's reader draws on.

The receiver calls `consume(n)` after taking n bytes off the wire; when it is ahead of the
rate it sleeps, stops reading, and SSH/TCP flow control holds the source back. So the
limit caps what crosses the link, over any stretch longer than the bucket's burst
(a quarter second of traffic) plus what the SSH window buffers.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

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


class Limiter(Protocol):
    """What the copy's wire draws on: account for n bytes, sleeping as the rate requires."""

    def consume(self, n: int) -> float: ...


_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


class SharedRateLimiter:
    """A token bucket for `rate` bytes/s shared by every process on this host that opens the
    same bucket file (`p2v batch --bandwidth-limit`: the batch's jobs, each its own process).

    The bucket is one small JSON file: when the bytes consumed so far are "paid" (on the
    host's monotonic clock, which every process shares) and the boot it was written in. Each
    consume takes an exclusive flock, moves that time on by n/rate and writes it back; the
    sleep itself happens outside the lock. A process killed mid-job leaves at most its last
    debt in the file; a file from an earlier boot, or unreadable, starts a fresh bucket.
    """

    def __init__(self, path: Path, rate: float, burst: float | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.path = path
        self.rate = rate
        self.burst = rate / 4 if burst is None else burst
        self._sleep = sleep
        self._boot = _boot_id()
        self._lock = threading.Lock()       # flock does not exclude threads of one process
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def consume(self, n: int) -> float:
        if n <= 0:
            return 0.0
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                now = time.monotonic()
                due = self._read_due(now)
                due = max(due, now) + n / self.rate
                record = json.dumps({"boot": self._boot, "due": due}).encode()
                os.pwrite(self._fd, record.ljust(128), 0)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        delay = due - now - self.burst / self.rate
        if delay > 0:
            self._sleep(delay)
            return delay
        return 0.0

    def _read_due(self, now: float) -> float:
        try:
            data = json.loads(os.pread(self._fd, 128, 0).decode().strip() or "{}")
            due = float(data["due"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return now
        return due if data.get("boot") == self._boot else now

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


class BothLimits:
    """Every limit at once: the job's own --bandwidth-limit and the batch's shared one."""

    def __init__(self, limits: Sequence[Limiter]) -> None:
        self.limits = tuple(limits)

    def consume(self, n: int) -> float:
        return sum(limit.consume(n) for limit in self.limits)


def job_limiter(rate: float | None, shared: tuple[Path, float] | None) -> Limiter | None:
    """The limiter a copy or sync draws on: its own RATE, the SHARED (bucket, rate), both
    or neither."""
    limits: list[Limiter] = []
    if rate:
        limits.append(RateLimiter(rate))
    if shared is not None:
        limits.append(SharedRateLimiter(*shared))
    if not limits:
        return None
    return limits[0] if len(limits) == 1 else BothLimits(limits)


__all__ = ["BothLimits", "Limiter", "RateLimiter", "SharedRateLimiter", "job_limiter",
           "parse_rate"]
