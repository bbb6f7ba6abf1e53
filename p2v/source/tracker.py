"""Tracking the writes to the source's disks between sync passes, with nothing installed.

A sync pass that knows which chunks were written since the last one reads only those, so
its time (and the frozen window of the final pass) follows what changed, not the disk's
size. The kernel already sees every write: the `block:block_rq_complete` tracepoint fires
when a request to a disk completes, after its data is on the device. p2v runs
`remote/blktrace.sh` over its SSH session; it makes a tracing instance of its own
(`instances/p2v-HEX`: the server's own tracer is untouched; tracefs mounted if it was
not, and unmounted again), traces the writes (and discards, write-zeroes) of the copied
disks' whole-disk devices (what device-mapper, md or a partition above write ends there)
and streams the instance's `trace_pipe` back, where `Intervals` folds the sector ranges
into dirty chunk indexes.

A pass starts with `WriteTracker.cut()`: a numbered marker goes into the trace, and the
writes seen before it are that pass's dirty chunks; the ones after it belong to the next
pass. Every event before the marker completed before it was written, so before the pass
reads anything: a write during any window of a pass (before, during or after its chunk is
read) lands in this pass's set or the next one's. The final pass cuts after the freeze,
which has written out the frozen filesystems: nothing is missed.

Never missing a write comes before tracking: a cut is *lost*, and that pass rehashes every
used chunk as before, whenever the trace may have a hole: the buffer overran (`[LOST N
EVENTS]`, or the per-CPU `overrun`/`dropped events` counters grew), a numbered heartbeat
is missing (tracing was switched off), the stream stalled or ended (a dropped session, a
killed reader), tracing is not available or not permitted, or a device cannot be traced
(a bio-based device such as device-mapper or md given as the disk). The first pass after
the copy is always rehashed: the writes before the tracer started are not known.

Clean-up does not depend on p2v: the instance is removed (and tracefs unmounted if p2v
mounted it) by a detached watchdog on the source when the stream ends (a killed p2v: the
reader dies writing the next heartbeat into the closed link), on `close()`, and in any case
`grace` seconds after p2v's last renewal (a cut link), like the thaw timer of a freeze.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO

from p2v.errors import P2VError
from p2v.source import remote
from p2v.source.protocol import Source

log = logging.getLogger(__name__)

TRACER = remote.script("blktrace.sh")
WATCHDOG = remote.script("blktrace_watchdog.sh")
CONTROL = remote.script("blktrace_ctl.sh")

DEFAULT_GRACE = 30            # s: the source cleans up this long after p2v's last renewal
RENEW_EVERY = 5.0             # s between renewals
DEFAULT_BUFFER_KB = 1024      # per CPU, in the source's memory while tracking
WAIT_TIMEOUT = 30.0           # s for the tracer to start, or a cut's marker to come back
STALL_TIMEOUT = 30.0          # s without a line (heartbeats come each second): a stall
SECTOR = 512

NOT_SINCE_COPY = "the first pass after the copy: writes before tracking started are unknown"

_EVENT = re.compile(r"block_rq_complete: (\d+),(\d+) (\S+) \(.*?\) (\d+) \+ (\d+)")
_MARK = re.compile(r"tracing_mark_write: p2v-([0-9a-f]+)-(live|beat|cut) (\d+)")
_LOST = re.compile(r"CPU:(\d+) \[LOST (\d+) EVENTS\]")
_COUNTER = re.compile(r"^(overrun|dropped events): (\d+)$", re.M)
# The watchdog's exit status, as the tracer reports it when the stream ends ("E DOG
# READER"); 0 (stopped) and 5 (the reader ended first) name the reader's own status.
_ENDED = {"3": "tracing was switched off on the source (a heartbeat could not be written)",
          "4": "p2v did not renew the tracer's watchdog in time"}


@dataclass(frozen=True)
class Cut:
    """One device's writes between two cuts: the dirty chunk indexes, or None (lost: the
    pass rehashes every used chunk) with why."""

    device: str
    chunks: frozenset[int] | None
    why: str | None = None

    @property
    def tracked(self) -> bool:
        return self.chunks is not None


@dataclass(frozen=True)
class TracedDisk:
    """A copied device as the trace sees it: its whole disk's major:minor and its first
    sector there (a partition's start), or None with why it cannot be traced."""

    device: str
    chunk_size: int
    dev: tuple[int, int] | None
    offset: int = 0               # sectors
    why: str | None = None


def parse_disk(line: str, chunk_sizes: Mapping[str, int]) -> TracedDisk | None:
    """A "D DEVICE MAJ:MIN OFFSET 1" / "D DEVICE - 0 0 WHY" line of the tracer's header."""
    fields = line.split(" ", 5)
    if len(fields) < 5 or fields[0] != "D" or fields[1] not in chunk_sizes:
        return None
    chunk = chunk_sizes[fields[1]]
    if fields[2] == "-":
        return TracedDisk(fields[1], chunk, None, why=" ".join(fields[5:]) or "not traced")
    major, _, minor = fields[2].partition(":")
    return TracedDisk(fields[1], chunk, (int(major), int(minor)), int(fields[3]))


def chunk_span(disk: TracedDisk, sector: int, count: int) -> range:
    """The chunk indexes of `disk` that a write of `count` sectors at `sector` (of the
    whole disk) touches; empty when it is outside the device."""
    start = (sector - disk.offset) * SECTOR
    end = start + count * SECTOR
    if count <= 0 or end <= 0:
        return range(0)
    return range(max(start, 0) // disk.chunk_size, (end - 1) // disk.chunk_size + 1)


@dataclass
class Intervals:
    """The dirty chunks of the interval under way, per device, and whether it may have a
    hole (`why`). Pure bookkeeping: the reader thread feeds it, `cut` closes an interval."""

    disks: list[TracedDisk]
    why: str | None = NOT_SINCE_COPY
    dirty: dict[str, set[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dirty = {d.device: set() for d in self.disks}
        self._by_dev: dict[tuple[int, int], list[TracedDisk]] = {}
        for disk in self.disks:
            if disk.dev is not None:
                self._by_dev.setdefault(disk.dev, []).append(disk)

    def write(self, dev: tuple[int, int], sector: int, count: int) -> None:
        for disk in self._by_dev.get(dev, ()):
            self.dirty[disk.device].update(chunk_span(disk, sector, count))

    def lose(self, why: str) -> None:
        """The interval under way may miss writes: its pass rehashes."""
        if self.why is None:
            self.why = why

    def cut(self) -> dict[str, Cut]:
        """Close the interval under way: its cuts, and a fresh interval begins."""
        cuts = {}
        for disk in self.disks:
            why = disk.why or self.why
            chunks = None if why else frozenset(self.dirty[disk.device])
            cuts[disk.device] = Cut(disk.device, chunks, why)
            self.dirty[disk.device] = set()
        self.why = None
        return cuts


def lost_counters(stats: str) -> int:
    """The per-CPU `overrun` and `dropped events` counters of an instance, summed."""
    return sum(int(m.group(2)) for m in _COUNTER.finditer(stats))


def all_lost(disks: Mapping[str, int], why: str) -> dict[str, Cut]:
    return {device: Cut(device, None, why) for device in disks}


class WriteTracker:
    """`with WriteTracker(source, {device: chunk_size}) as tracker:` writes are tracked
    inside the block; `tracker.cut()` at the start of each pass. Never raises for tracing
    trouble: a tracker that cannot track answers every cut with a lost one (and why)."""

    def __init__(self, source: Source, chunk_sizes: Mapping[str, int], *,
                 grace: int = DEFAULT_GRACE, buffer_kb: int = DEFAULT_BUFFER_KB) -> None:
        self.source = source
        self.chunk_sizes = dict(chunk_sizes)
        self.grace = grace
        self.buffer_kb = buffer_kb
        self.hex = secrets.token_hex(6)
        self.instance: str | None = None
        self.mounted = False
        self.disks: list[TracedDisk] = []
        self._intervals: Intervals | None = None
        self._dog: str | None = None
        self._cuts: dict[int, dict[str, Cut]] = {}
        self._cut_number = 0
        self._lost_count = 0
        self._beat = 0
        self._dead: str | None = None
        self._live = False
        self._closing = threading.Event()
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None
        self._renewer: threading.Thread | None = None

    @property
    def host(self) -> str:
        return self.source.target.host

    @property
    def dead(self) -> str | None:
        """Why tracking stopped for good (None while it runs)."""
        return self._dead

    def __enter__(self) -> WriteTracker:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Start the tracer on the source and wait until it traces (or failed)."""
        self._reader = threading.Thread(target=self._read, name="p2v-tracker", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + WAIT_TIMEOUT
        with self._changed:
            while not self._live and self._dead is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._dead = "the tracer did not start in time"
                    break
                self._changed.wait(left)
        if self._dead is not None:
            log.warning("writes on %s are not tracked (%s): every pass rehashes the used "
                        "chunks", self.host, self._dead)
            return
        self._renewer = threading.Thread(target=self._renew, name="p2v-tracker-renew",
                                         daemon=True)
        self._renewer.start()
        traced = [d.device for d in self.disks if d.dev is not None]
        log.info("tracking writes to %s on %s (tracing instance %s)", ", ".join(traced),
                 self.host, self.instance)
        for disk in self.disks:
            if disk.dev is None:
                log.warning("%s on %s: writes not tracked (%s); its passes rehash",
                            disk.device, self.host, disk.why)

    def _argv(self) -> list[str]:
        return ["sh", "-c", TRACER, "p2v-trace", self.hex, str(self.grace),
                str(self.buffer_kb), WATCHDOG, *self.chunk_sizes]

    def _read(self) -> None:
        """The reader thread: the tracer's header, then every line of the trace."""
        try:
            with self.source.stream(self._argv(), timeout=STALL_TIMEOUT) as raw:
                self._header(raw)
                for line in _lines(raw):
                    self._line(line)
                why = "the trace stream ended"
        except P2VError as exc:
            why = exc.message
        except TrackerUnavailable as exc:
            why = str(exc)
        except Exception as exc:        # a thread must not die silently: lost, not missed
            why = f"the trace stream broke ({exc})"
        with self._changed:
            self._dead = self._dead or why
            if not self._closing.is_set():
                log.warning("write tracking on %s stopped: %s; the next pass rehashes",
                            self.host, self._dead)
            self._changed.notify_all()

    def _header(self, raw: IO[bytes]) -> None:
        """P2VTRACE1, the D lines, then T (or X: the tracer could not start)."""
        lines = _lines(raw)
        first = next(lines, "")
        if first != "P2VTRACE1":
            raise TrackerUnavailable(f"the tracer sent {first[:40]!r}")
        for line in lines:
            if line.startswith("X "):
                raise TrackerUnavailable(line[2:])
            if line.startswith("T "):
                _, self.instance, mounted = line.split(" ")
                self.mounted = mounted == "1"
                with self._changed:
                    self._intervals = Intervals(self.disks)
                return
            disk = parse_disk(line, self.chunk_sizes)
            if disk is not None:
                self.disks.append(disk)
        raise TrackerUnavailable("the tracer's header ended early")

    def _line(self, line: str) -> None:
        """One line of the trace into the interval under way."""
        assert self._intervals is not None
        event = _EVENT.search(line)
        with self._changed:
            if line.startswith("E "):
                dog, _, status = line[2:].partition(" ")
                self._dead = self._dead or _ENDED.get(
                    dog, f"the tracer's reader on the source ended (status {status})")
                self._changed.notify_all()
                return
            if event is not None:
                self._intervals.write((int(event.group(1)), int(event.group(2))),
                                      int(event.group(4)), int(event.group(5)))
                return
            lost = _LOST.search(line)
            if lost is not None:
                self._intervals.lose(f"the trace buffer overran ({lost.group(2)} events "
                                     f"lost on CPU {lost.group(1)})")
                return
            mark = _MARK.search(line)
            if mark is None or mark.group(1) != self.hex:
                return
            kind, number = mark.group(2), int(mark.group(3))
            if kind == "live":
                self._dog, self._live = str(number), True
            elif kind == "beat":
                if number != self._beat + 1:
                    self._intervals.lose(f"heartbeats {self._beat + 1}..{number - 1} of the "
                                         "trace are missing (lost events, or tracing was "
                                         "switched off)")
                self._beat = number
            else:
                self._cuts[number] = self._intervals.cut()
            self._changed.notify_all()

    def cut(self) -> dict[str, Cut]:
        """The writes since the last cut, per device (see the module docstring): a marker
        into the trace, read back, then the instance's loss counters checked."""
        if self._dead is not None or self.instance is None:
            return all_lost(self.chunk_sizes, self._dead or "not tracking")
        self._cut_number += 1
        number = self._cut_number
        detail = ""
        try:
            status = self._mark(number)
        except P2VError as exc:
            status, detail = -1, exc.message
        if status == 4:         # no marker: this interval goes on into the next pass's
            return all_lost(self.chunk_sizes, "the devices' page cache could not be "
                                              "written out before the cut")
        if status != 0:
            return self._give_up("cannot write a marker into the trace" + (
                f" ({detail})" if status == -1 else f" (exit status {status})"))
        cuts = self._wait_cut(number)
        if cuts is None:
            return self._give_up(self._dead or "the cut's marker did not come back in time")
        why = self._check_losses()
        if why is not None:
            with self._changed:
                assert self._intervals is not None
                self._intervals.lose(why)       # a loss now may hide the next writes too
            # The counters are the surer account (a missing heartbeat may be one lost event),
            # but a device that cannot be traced, or the first pass, keep their own reason.
            kept = {d.device: d.why for d in self.disks if d.why}
            return {d: Cut(d, None, kept.get(d) or (c.why if c.why == NOT_SINCE_COPY
                                                    else why))
                    for d, c in cuts.items()}
        return cuts

    def _mark(self, number: int) -> int:
        """Write the traced devices' page cache out, then cut marker NUMBER into the
        trace; the control script's exit status (4: a device could not be flushed)."""
        assert self.instance is not None
        traced = [d.device for d in self.disks if d.dev is not None]
        return self.source.run(["sh", "-c", CONTROL, "p2v-trace-ctl", self._dog or "0",
                                f"p2v-trace-watchdog-{self.hex}", "mark", self.instance,
                                f"p2v-{self.hex}-cut {number}", *traced],
                               check=False, timeout=120).returncode

    def _wait_cut(self, number: int) -> dict[str, Cut] | None:
        deadline = time.monotonic() + WAIT_TIMEOUT
        with self._changed:
            while number not in self._cuts and self._dead is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
            return self._cuts.pop(number, None)

    def _check_losses(self) -> str | None:
        """Why the trace may have a hole by now (counters grew, tracing off), or None."""
        assert self.instance is not None
        try:
            result = self.source.run(["sh", "-c", 'cat "$1"/per_cpu/cpu*/stats && echo '
                                      '"on $(cat "$1/tracing_on") $(cat "$1/events/block/'
                                      'block_rq_complete/enable")"', "p2v-trace-stats",
                                      self.instance], timeout=60)
        except P2VError as exc:
            return f"cannot read the trace's counters ({exc.message})"
        count = lost_counters(result.text)
        lost, self._lost_count = count - self._lost_count, count
        if lost > 0:
            return (f"the trace buffer overran ({lost} events lost; the tracer's buffer is "
                    f"{self.buffer_kb} KiB per CPU)")
        if "on 1 1" not in result.text:
            return "tracing was switched off on the source"
        return None

    def _give_up(self, why: str) -> dict[str, Cut]:
        log.warning("write tracking on %s stopped: %s; passes rehash from now on",
                    self.host, why)
        with self._changed:
            self._dead = self._dead or why
        self._stop_remote()
        return all_lost(self.chunk_sizes, why)

    def _control(self, action: str, *args: str) -> bool:
        result = self.source.run(["sh", "-c", CONTROL, "p2v-trace-ctl", self._dog or "0",
                                  f"p2v-trace-watchdog-{self.hex}", action, *args],
                                 check=False, timeout=60)
        return result.returncode == 0

    def _renew(self) -> None:
        """Keep the watchdog's deadline ahead while p2v is here."""
        while not self._closing.wait(RENEW_EVERY):
            try:
                if not self._control("renew"):
                    with self._changed:
                        self._dead = self._dead or "the watchdog on the source is gone"
                    return
            except P2VError as exc:
                log.debug("renewing the tracer's watchdog on %s: %s", self.host, exc.message)

    def _stop_remote(self) -> None:
        if self._dog is None:
            return
        try:
            self._control("stop")
        except P2VError as exc:
            log.warning("could not stop tracing on %s (%s): it stops by itself within %d s",
                        self.host, exc.message, self.grace)

    def close(self) -> None:
        """Tracing off and the instance removed on the source (by its watchdog), now."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._stop_remote()
        if self._reader is not None:
            self._reader.join(timeout=10)
        with self._changed:
            self._dead = self._dead or "tracking ended"


class TrackerUnavailable(Exception):
    """The tracer could not start on the source (the passes rehash; never shown as an
    error of its own)."""


def _lines(raw: IO[bytes]) -> Iterator[str]:
    for line in raw:
        yield line.decode("utf-8", "replace").rstrip("\n")


__all__ = ["DEFAULT_BUFFER_KB", "DEFAULT_GRACE", "NOT_SINCE_COPY", "Cut", "Intervals",
           "TracedDisk", "WriteTracker", "chunk_span", "lost_counters", "parse_disk"]
