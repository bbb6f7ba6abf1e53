"""--bandwidth-limit: rate parsing and the token bucket (on a fake clock)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from p2v.ratelimit import RateLimiter, parse_rate

MiB = 1 << 20


@pytest.mark.parametrize("text, rate", [("50M", 50 * MiB), ("50MiB/s", 50 * MiB),
                                        ("800k", 800 * 1024), ("1G", 1 << 30),
                                        ("1.5M", 1.5 * MiB), ("100000", 100000),
                                        ("2 MB/s", 2 * MiB)])
def test_parse_rate(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "fast", "-5M", "10X", "0", "100", "M50", "5M/h"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def test_bucket_holds_the_rate_after_its_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10 * MiB, clock=clock, sleep=clock.sleep)   # burst: 2.5 MiB
    for _ in range(100):
        limiter.consume(MiB)
    # 100 MiB at 10 MiB/s: 10 s, less the quarter second the bucket lets run ahead.
    assert clock.now - 100.0 == pytest.approx(10 - 0.25)


def test_idle_time_is_not_saved_up_beyond_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(MiB, burst=MiB, clock=clock, sleep=clock.sleep)
    clock.now += 3600                        # an hour idle
    assert limiter.consume(MiB) == 0         # the burst passes at once
    assert limiter.consume(MiB) == pytest.approx(1.0)
    assert limiter.consume(0) == 0


def test_threads_share_one_limit() -> None:
    delays: list[float] = []
    limiter = RateLimiter(4 * MiB, burst=0, clock=lambda: 100.0, sleep=delays.append)
    threads = [threading.Thread(target=lambda: [limiter.consume(MiB) for _ in range(10)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 40 MiB from 4 threads at 4 MiB/s, all at one instant: each MiB waits 0.25 s longer
    # than the one before, none lost to a race: the last waits 10 s.
    assert sorted(delays) == pytest.approx([0.25 * k for k in range(1, 41)])


# ------------------------------------------------------------------ the batch's shared bucket
def _draw(path: str, rate: float, total: int, chunk: int, start: float) -> None:
    """A job process drawing TOTAL bytes from the shared bucket (after START, to line up)."""
    import time

    from p2v.ratelimit import SharedRateLimiter

    while time.monotonic() < start:
        time.sleep(0.005)
    limiter = SharedRateLimiter(Path(path), rate)
    for _ in range(total // chunk):
        limiter.consume(chunk)


def test_processes_sharing_one_bucket_stay_under_the_rate_together(tmp_path: Path) -> None:
    import multiprocessing
    import time

    rate, each, chunk = 4 * MiB, 2 * MiB, 64 << 10
    bucket = tmp_path / "bandwidth.bucket"
    ctx = multiprocessing.get_context("spawn")
    start = time.monotonic() + 1.0          # both processes begin at once, after spawning
    procs = [ctx.Process(target=_draw, args=(str(bucket), rate, each, chunk, start))
             for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    elapsed = time.monotonic() - start
    assert [p.exitcode for p in procs] == [0, 0, 0]
    # 6 MiB at 4 MiB/s over all three: at least 1.5 s less the quarter-second burst. Each
    # alone at the rate would be done in half a second.
    assert elapsed >= (3 * each - rate / 4) / rate * 0.95, elapsed
    assert elapsed < 60


def test_a_bucket_from_another_boot_or_unreadable_starts_afresh(tmp_path: Path) -> None:
    import json
    import time

    from p2v.ratelimit import SharedRateLimiter

    bucket = tmp_path / "bandwidth.bucket"
    slept: list[float] = []
    # An hour of debt, written in another boot (its monotonic clock meant something else).
    bucket.write_text(json.dumps({"boot": "another-boot", "due": time.monotonic() + 3600}))
    limiter = SharedRateLimiter(bucket, MiB, sleep=slept.append)
    assert limiter.consume(1024) == 0.0 and slept == []
    bucket.write_text("garbage")
    assert SharedRateLimiter(bucket, MiB, sleep=slept.append).consume(1024) == 0.0
    # The same boot's debt is honoured: a second process sees the first one's bytes.
    other = SharedRateLimiter(bucket, MiB, sleep=slept.append)
    assert other.consume(MiB) > 0.5
    limiter.close()
    other.close()


def test_a_job_limit_and_the_shared_one_both_apply(tmp_path: Path) -> None:
    from p2v.ratelimit import BothLimits, SharedRateLimiter, job_limiter

    assert job_limiter(None, None) is None
    assert isinstance(job_limiter(MiB, None), RateLimiter)
    shared = job_limiter(None, (tmp_path / "b", 2 * MiB))
    assert isinstance(shared, SharedRateLimiter)
    both = job_limiter(MiB, (tmp_path / "b", 2 * MiB))
    assert isinstance(both, BothLimits) and len(both.limits) == 2
