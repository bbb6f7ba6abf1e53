"""Live progress on stderr: tqdm bars on a terminal, plain lines at a low rate elsewhere.

tqdm's one home. A `Term` is where the screens draw: on a terminal, bars (a disk's bytes,
rate and ETA; a stage's elapsed time) with every other line written above them; off a
terminal (CI, a log file) no bar at all, and a disk's progress as a plain line at each
10 % step or every 30 s, so a log stays readable."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any, Protocol

from p2v.units import human_size

LINE_STEP = 10          # percent between two plain progress lines of one disk
LINE_EVERY = 30.0       # seconds: a plain progress line at least this often while it moves
TICK = 1.0              # seconds between two redraws of the elapsed time on a terminal


def duration(seconds: float) -> str:
    """45s, 1m12s, 2h03m: a stage's or an ETA's time for people."""
    total = int(round(max(0.0, seconds)))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class DiskMeter(Protocol):
    """A disk's progress (the copy's `Meter`): bytes of the disk done, bytes on the wire."""

    def update(self, done_bytes: int, wire_bytes: int) -> None: ...

    def close(self) -> None: ...


class Term:
    """Where progress goes and how: bars on a terminal, plain lines elsewhere.

    `ncols` fixes the bar width (tests); None follows the terminal. `tick` is how often the
    elapsed time of bars without a total is redrawn (None: only when they change);
    `mininterval`, the least time between two redraws of a bar (tqdm's); `clock`, the
    time plain lines are paced by."""

    def __init__(self, file: IO[str] | None = None, *, tty: bool | None = None,
                 ncols: int | None = None, tick: float | None = TICK,
                 clock: Callable[[], float] = time.monotonic, mininterval: float = 0.5) -> None:
        self.file: IO[str] = file if file is not None else sys.stderr
        self.tty = self.file.isatty() if tty is None else tty
        self.ncols = ncols
        self.clock = clock
        self._mininterval = mininterval
        self._tick = tick
        self._lock = threading.Lock()
        self._ticking: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._moved: list[logging.StreamHandler[Any]] = []

    def line(self, text: str) -> None:
        """One finished line (`p2v: TEXT`), above the bars on a terminal."""
        self.write(f"p2v: {text}")

    def write(self, text: str) -> None:
        if self.tty:
            from tqdm import tqdm

            with self._lock:
                tqdm.write(text, file=self.file)
        else:
            with self._lock:
                print(text, file=self.file, flush=True)

    def _log_above_bars(self) -> None:
        """The log's records on this terminal go above the bars, not through them."""
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.file:
                handler.setStream(_AboveBars(self))
                self._moved.append(handler)

    def bar(self, desc: str, *, total: float | None = None, initial: float = 0,
            bar_format: str | None = None, ticking: bool = False, **kwargs: Any) -> Any:
        """A tqdm bar on this terminal, left off the screen once closed; TICKING: its
        elapsed time is redrawn every `tick` seconds even when nothing else changes."""
        from tqdm import tqdm

        if not self._moved:
            self._log_above_bars()
        with self._lock:
            bar = tqdm(total=total, initial=initial, desc=desc, file=self.file, leave=False,
                       ncols=self.ncols, dynamic_ncols=self.ncols is None,
                       mininterval=self._mininterval,
                       bar_format=bar_format, **kwargs)
        if ticking and self._tick is not None:
            with self._lock:
                self._ticking.append(bar)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._ticker, daemon=True,
                                                    name="p2v-progress-tick")
                    self._thread.start()
        return bar

    def close_bar(self, bar: Any) -> None:
        with self._lock:
            if bar in self._ticking:
                self._ticking.remove(bar)
            bar.close()

    def _ticker(self) -> None:
        assert self._tick is not None
        while not self._stop.wait(self._tick):
            with self._lock:
                for bar in list(self._ticking):
                    bar.refresh()

    def close(self) -> None:
        """Stop redrawing; the bars still open are taken off the screen."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for bar in list(self._ticking):
            self.close_bar(bar)
        for handler in self._moved:
            handler.setStream(self.file)
        self._moved.clear()

    def disk(self, name: str, total: int, done: int = 0) -> DiskMeter:
        """A disk's meter: a bar (bytes, rate, ETA, wire) or a plain line at each step."""
        if self.tty:
            return BarMeter(self, name, total, done)
        return LineMeter(self, name, total, done)


class _AboveBars:
    """The stream a log handler writes to while bars are drawn."""

    def __init__(self, term: Term) -> None:
        self._term = term

    def write(self, text: str) -> int:
        if text.strip():
            self._term.write(text.rstrip("\n"))
        return len(text)

    def flush(self) -> None:
        pass


class BarMeter:
    """One disk's bar: bytes of the disk done (zero and free chunks count), rate, ETA, and
    the bytes that crossed the wire; its elapsed time moves on while a slow disk waits."""

    def __init__(self, term: Term, name: str, total: int, done: int) -> None:
        self._term = term
        self._bar = term.bar(name, total=total, initial=min(done, total), unit="B",
                             unit_scale=True, unit_divisor=1024, ticking=True)
        self._done = min(done, total)
        self._total = total

    def update(self, done_bytes: int, wire_bytes: int) -> None:
        done = min(done_bytes, self._total)
        self._bar.set_postfix_str(f"wire {human_size(wire_bytes)}", refresh=False)
        self._bar.update(done - self._done)
        self._done = done

    def close(self) -> None:
        self._term.close_bar(self._bar)


class LineMeter:
    """One disk's progress as plain lines: at each 10 % step or every 30 s, and at the end,
    with the rate since the meter started and the ETA at that rate."""

    def __init__(self, term: Term, name: str, total: int, done: int) -> None:
        self._term = term
        self.name = name
        self.total = max(1, total)
        self._start = self._last = term.clock()
        self._start_done = done
        self._step = self._step_of(done)
        self._lock = threading.Lock()

    def _step_of(self, done: int) -> int:
        return 100 * done // self.total // LINE_STEP

    def update(self, done_bytes: int, wire_bytes: int) -> None:
        now = self._term.clock()
        with self._lock:
            step = self._step_of(done_bytes)
            if step == self._step and now - self._last < LINE_EVERY:
                return
            self._step, self._last = step, now
        self._term.line(self.text(done_bytes, wire_bytes, now))

    def text(self, done: int, wire: int, now: float) -> str:
        elapsed = now - self._start
        rate = (done - self._start_done) / elapsed if elapsed > 0 else 0.0
        eta = (f", ETA {duration((self.total - done) / rate)}"
               if rate > 0 and done < self.total else "")
        return (f"  {self.name}: {100 * done // self.total}% of {human_size(self.total)}, "
                f"{human_size(rate)}/s{eta}, {human_size(wire)} sent")

    def close(self) -> None:
        pass


class StageLine:
    """The running stage: on a terminal a line with its elapsed time, redrawn each second;
    elsewhere one plain line as it starts. `done()` prints `STAGE done in 1m12s`,
    `failed()` `STAGE failed after 12s` (the error line follows)."""

    def __init__(self, term: Term, stage: str, prefix: str = "") -> None:
        self._term = term
        self.label = f"{prefix}{stage:<9}"
        self._started = term.clock()
        self._bar = (term.bar(f"p2v: {self.label} running ", bar_format="{desc}{elapsed}",
                              ticking=True) if term.tty else None)
        if self._bar is None:
            term.line(f"{self.label} ...")

    def close(self) -> None:
        if self._bar is not None:
            self._term.close_bar(self._bar)
            self._bar = None

    def done(self, seconds: float) -> None:
        self.close()
        self._term.line(f"{self.label} done in {duration(seconds)}")

    def failed(self) -> None:
        self.close()
        self._term.line(f"{self.label} failed after "
                        f"{duration(self._term.clock() - self._started)}")
