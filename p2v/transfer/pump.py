"""The chunk pump copy and sync share: chunks asked of the source's reader, each checked
against the hash the source computed, written into the image, journaled in batches.

A batch is journaled only after a flush made its chunks durable, so a cut link, a kill or
Ctrl-C loses at most the batch in flight: on any interruption the pump saves what arrived
(without letting that attempt hide why it stopped) and the rerun asks only for what the
journal lacks. Writes may still be in flight when `write` returns, so one that failed is
reported later, by the flush: then only its chunks are lost, the sink naming what did not
land. A chunk that arrives corrupt is fetched once more; corrupt twice, it is an
IntegrityError. Every byte received is counted for the progress meter and drawn from the
shared bandwidth limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from p2v.errors import IntegrityError, SourceDeviceError
from p2v.ratelimit import Limiter
from p2v.sink.writer import DiskWriter
from p2v.source.extents import Extent, ranges_input
from p2v.source.protocol import Source
from p2v.source.reader import Reader, Stream
from p2v.transfer.journal import Journal
from p2v.transfer.manifest import FREE_MARK

# Chunks are journaled in batches, after a flush: at most this many bytes are re-sent
# after a cut, on top of what was in flight.
FLUSH_BYTES = 64 << 20


class Cancelled(Exception):
    """Another disk of the same copy failed: stop this one at the next chunk."""


class Meter(Protocol):
    """Progress of one disk (the CLI draws a bar from it; the default draws nothing)."""

    def update(self, done_bytes: int, wire_bytes: int) -> None:
        """done_bytes of the disk are in the image (resumed ones included)."""

    def close(self) -> None:
        """The disk is finished or failed."""


class QuietMeter:
    def update(self, done_bytes: int, wire_bytes: int) -> None:
        pass

    def close(self) -> None:
        pass


class Wire:
    """Bytes received for one disk, drawn from the bandwidth limit all disks share."""

    def __init__(self, limiter: Limiter | None = None) -> None:
        self.limiter = limiter
        self.bytes = 0

    def add(self, n: int) -> None:
        self.bytes += n
        if self.limiter is not None:
            self.limiter.consume(n)


@dataclass(frozen=True)
class ReadSpec:
    """What to ask the source's reader for: which device, read how."""

    reader: Reader
    host: str
    device: str
    size: int                          # the device's size as probed
    chunk_size: int
    compress: bool
    low_priority: bool
    skip_free: bool
    # The error when the source reports another size: {was} and {now} bytes.
    resized: str


def index_ranges(indexes: Sequence[int]) -> list[tuple[int, int]]:
    """Chunk indexes as sorted, merged half-open ranges: [3, 1, 2, 7] -> [(1, 4), (7, 8)]."""
    out: list[tuple[int, int]] = []
    for i in sorted(indexes):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


@contextmanager
def open_extents(source: Source, spec: ReadSpec, ranges: list[tuple[int, int]]
                 ) -> Iterator[Stream]:
    """The reader over `ranges`, its header checked against the device as probed."""
    argv = spec.reader.argv(spec.device, spec.chunk_size, compress=spec.compress,
                            low_priority=spec.low_priority, skip_free=spec.skip_free)
    # The ranges on stdin: scattered ones overflow a command line (issue 13).
    with source.stream(argv, stdin=ranges_input(ranges)) as raw:
        stream = spec.reader.parse(raw, spec.chunk_size, host=spec.host, device=spec.device,
                                   size=spec.size, ranges=ranges)
        if stream.chunk_size != spec.chunk_size or stream.size != spec.size:
            raise SourceDeviceError(device=spec.device, host=spec.host,
                                    detail=spec.resized.format(was=spec.size, now=stream.size))
        yield stream


@dataclass(frozen=True)
class Policy:
    """How a driver wants its chunks written and committed."""

    # Write zero chunks as zeros: a sync overwrites old data; a copy's unjournaled chunks
    # already read as zeros (fresh, or scrubbed on resume), so it writes only data.
    write_zeros: bool
    log: logging.Logger                # the driver's (job logs name it)
    rerun: str                         # "the rerun {rerun} them again"
    max_chunks: int | None = None      # commit at this many chunks too (zeros cost no bytes)
    flush_seconds: float | None = None     # and at least this often (a slow link)


class Pump:
    """One disk's chunks from `source` into `writer`, committed to `journal` in batches.

    `progress` is called after each commit; `meter` after each chunk; `cancel`, once set,
    stops the pump at the next chunk (raising Cancelled). `read` and `refetched` count the
    chunks received and those fetched again; `codec` is the one the source compressed
    with, `packed` and `raw` count the data chunks it sent compressed and as they are."""

    def __init__(self, source: Source, spec: ReadSpec, writer: DiskWriter, journal: Journal,
                 wire: Wire, policy: Policy, *, progress: Callable[[], None] = lambda: None,
                 meter: Meter | None = None, done_bytes: int = 0,
                 cancel: threading.Event | None = None) -> None:
        self.source, self.spec, self.writer, self.journal = source, spec, writer, journal
        self.wire, self.policy, self.progress = wire, policy, progress
        self.meter: Meter = meter if meter is not None else QuietMeter()
        self.done_bytes, self.cancel = done_bytes, cancel
        self.read = 0
        self.refetched = 0
        self.codec = "none"
        self.packed = 0
        self.raw = 0
        self._pending: list[tuple[int, str | None]] = []
        self._pending_bytes = 0
        self._last = time.monotonic()

    def run(self, ranges: list[tuple[int, int]]) -> None:
        """Every chunk of `ranges` into the image and the journal; a chunk that arrives
        corrupt is fetched once more, and raises IntegrityError if corrupt again."""
        bad = self._take(ranges)
        if not bad:
            return
        self.refetched = len(bad)
        self.policy.log.warning("%d chunk(s) of %s arrived corrupt; fetching them again",
                                len(bad), self.spec.device)
        again = self._take(index_ranges(bad))
        if again:
            raise IntegrityError(device=self.spec.device, index=again[0],
                                 offset=again[0] * self.spec.chunk_size, got="(mismatch)",
                                 expected="the source's hash")

    def _take(self, ranges: list[tuple[int, int]]) -> list[int]:
        """Read those chunks; return the indexes that arrived corrupt."""
        corrupt: list[int] = []
        try:
            with open_extents(self.source, self.spec, ranges) as stream:
                self.codec = stream.codec
                for extent in stream.extents:
                    if self.cancel is not None and self.cancel.is_set():
                        raise Cancelled
                    self.wire.add(extent.wire_bytes)
                    self.read += 1
                    self._count(extent)
                    if extent.corrupt:
                        corrupt.append(extent.index)
                        continue
                    self._put(extent)
        except BaseException:
            # Save what arrived before the interruption, but never let that attempt
            # replace the reason we stopped (Ctrl-C, a cut link, a failed disk): chunks
            # that cannot be flushed now are simply read again by the rerun.
            try:
                self._commit()
            except Exception as exc:
                self.policy.log.warning("%s: the last %d chunk(s) could not be saved (%s); "
                                        "the rerun %s them again", self.spec.device,
                                        len(self._pending), exc, self.policy.rerun)
            raise
        self._commit()
        return corrupt

    def _count(self, extent: Extent) -> None:
        if extent.packed:
            self.packed += 1
        elif not extent.zero:
            self.raw += 1

    def _put(self, extent: Extent) -> None:
        """One verified chunk into the image, committed when the batch is full."""
        if not extent.zero:
            self.writer.write(extent.offset, extent.data)
            self._pending_bytes += extent.length
        elif self.policy.write_zeros:
            self.writer.zero(extent.offset, extent.length)
            self._pending_bytes += extent.length
        self._pending.append((extent.index, FREE_MARK if extent.free else extent.sha256))
        self.done_bytes += extent.length
        self.meter.update(self.done_bytes, self.wire.bytes)
        policy = self.policy
        if (self._pending_bytes >= FLUSH_BYTES
                or (policy.max_chunks is not None and len(self._pending) >= policy.max_chunks)
                or (policy.flush_seconds is not None
                    and time.monotonic() - self._last > policy.flush_seconds)):
            self._commit()

    def _commit(self) -> None:
        if not self._pending:
            return
        try:
            self.writer.flush()
        except Exception:
            self._keep_landed()
            raise
        self._journal(self._pending, [])

    def _journal(self, chunks: list[tuple[int, str | None]],
                 rest: list[tuple[int, str | None]]) -> None:
        """Journal `chunks` (flushed); `rest` of the batch stays pending."""
        self.journal.append(chunks)
        self._pending = rest
        self._pending_bytes = 0
        self._last = time.monotonic()
        self.progress()

    def _keep_landed(self) -> None:
        """A flush failed: journal the batch's chunks the writer still vouches for (every
        write but the failed ones made durable), so the rerun fetches only the rest."""
        lost = self.writer.unwritten()
        if lost is None:
            return
        size, chunk = self.spec.size, self.spec.chunk_size

        def landed(index: int) -> bool:
            start, end = index * chunk, min((index + 1) * chunk, size)
            return all(offset >= end or start >= offset + length for offset, length in lost)

        kept = [c for c in self._pending if landed(c[0])]
        if kept:
            self._journal(kept, [c for c in self._pending if not landed(c[0])])


__all__ = ["FLUSH_BYTES", "Cancelled", "Meter", "Policy", "Pump", "QuietMeter", "ReadSpec",
           "Wire", "index_ranges", "open_extents"]
