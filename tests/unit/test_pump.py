"""The chunk pump copy and sync share, on a fake source (the python3 reader run locally on a
file, its stream altered at will) and an in-memory image: verified writes, batches journaled
after a flush, a corrupt chunk fetched again, what arrived saved when a stream breaks or
the disk is cancelled, every byte counted."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import IO

import pytest

from p2v.errors import IntegrityError, SourceDeviceError, StreamError
from p2v.source.reader import Python3Reader
from p2v.transfer.journal import Journal
from p2v.transfer.pump import Cancelled, Policy, Pump, ReadSpec, Wire, index_ranges

CHUNK = 64 << 10
SIZE = 4 * CHUNK + CHUNK // 2
LOG = logging.getLogger("p2v.test-pump")
_STREAMS: dict[tuple[tuple[str, ...], bytes | None], bytes] = {}


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Chunks: 0 random, 1 zero, 2 random, 3 text, 4 half a chunk of random."""
    path = tmp_path_factory.mktemp("pump") / "disk.raw"
    path.write_bytes(os.urandom(CHUNK) + bytes(CHUNK) + os.urandom(CHUNK)
                     + (b"p2v text " * CHUNK)[:CHUNK] + os.urandom(CHUNK // 2))
    return path


@dataclass
class FakeSource:
    """Runs the reader locally; `alter` may change each stream (its number, the bytes)."""

    alter: Callable[[int, bytes], bytes] = lambda n, raw: raw
    target: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(host="src"))
    stdins: list[bytes] = field(default_factory=list)
    argvs: list[list[str]] = field(default_factory=list)

    @contextmanager
    def stream(self, argv: Sequence[str], *, timeout: float | None = 300, root: bool = True,
               stdin: bytes | None = None) -> Iterator[IO[bytes]]:
        self.argvs.append(list(argv))
        self.stdins.append(stdin or b"")
        key = (tuple(argv), stdin)
        if key not in _STREAMS:             # the reader is slow to start on a busy machine
            _STREAMS[key] = subprocess.run(list(argv), input=stdin, capture_output=True,
                                           check=True).stdout
        raw = _STREAMS[key]
        yield io.BytesIO(self.alter(len(self.stdins) - 1, raw))


@dataclass
class FakeWriter:
    """An image in memory; `flushed` is what a flush made durable."""

    image: bytearray = field(default_factory=lambda: bytearray(SIZE))
    flushes: int = 0
    zeroed: list[tuple[int, int]] = field(default_factory=list)

    def write(self, offset: int, data: bytes) -> None:
        self.image[offset:offset + len(data)] = data

    def zero(self, offset: int, length: int) -> None:
        self.image[offset:offset + length] = bytes(length)
        self.zeroed.append((offset, length))

    def flush(self) -> None:
        self.flushes += 1

    def data_ranges(self) -> list[tuple[int, int]]:
        return [(0, SIZE)]

    def unwritten(self) -> list[tuple[int, int]] | None:
        return None


@dataclass
class FailingWriter(FakeWriter):
    """Writes are queued (an NBD sink with several in flight): the one at `bad` fails, and
    the flush after it raises; `lost` is what the sink then vouches was not written."""

    bad: int = 2 * CHUNK
    lost: list[tuple[int, int]] | None = None

    def write(self, offset: int, data: bytes) -> None:
        if offset == self.bad:
            self.lost = [(offset, len(data))]
        else:
            super().write(offset, data)

    def flush(self) -> None:
        self.flushes += 1
        if self.lost is not None:
            raise OSError(28, "No space left on device")

    def unwritten(self) -> list[tuple[int, int]] | None:
        return self.lost


@dataclass
class Limiter:
    taken: int = 0

    def consume(self, n: int) -> None:
        self.taken += n


def spec(disk: Path, size: int = SIZE) -> ReadSpec:
    return ReadSpec(Python3Reader(), "src", str(disk), size, CHUNK, compress=True,
                    low_priority=False, skip_free=False, resized="resized {was} -> {now}")


def pump(source: FakeSource, disk: Path, writer: FakeWriter, journal: Journal, *,
         policy: Policy | None = None, wire: Wire | None = None, size: int = SIZE,
         cancel: threading.Event | None = None, progress: Callable[[], None] = lambda: None
         ) -> Pump:
    return Pump(source, spec(disk, size), writer, journal, wire or Wire(),  # type: ignore[arg-type]
                policy or Policy(write_zeros=False, log=LOG, rerun="copies"),
                progress=progress, cancel=cancel)


def new_journal(tmp_path: Path) -> Journal:
    return Journal.create(tmp_path / "j", {"schema": "test"})


def flip_first_chunk(times: int) -> Callable[[int, bytes], bytes]:
    """Flip a bit of the first chunk's payload in the first `times` streams (chunk 0 is
    random, sent raw: its payload follows the 24-byte header and a 49-byte frame)."""
    def alter(n: int, raw: bytes) -> bytes:
        if n >= times:
            return raw
        out = bytearray(raw)
        out[24 + 49 + 100] ^= 0x10
        return bytes(out)
    return alter


def test_every_chunk_is_written_verified_and_journaled(disk: Path, tmp_path: Path) -> None:
    source, writer, journal = FakeSource(), FakeWriter(), new_journal(tmp_path)
    limiter, progressed = Limiter(), []
    wire = Wire(limiter)  # type: ignore[arg-type]
    p = pump(source, disk, writer, journal, wire=wire, progress=lambda: progressed.append(1))
    p.run([(0, 5)])
    assert bytes(writer.image) == disk.read_bytes()
    assert sorted(journal.done) == [0, 1, 2, 3, 4] and journal.done[1] is None
    assert Journal.load(journal.path).done == journal.done          # durable, on disk
    assert p.read == 5 and p.refetched == 0 and writer.flushes == 1 and progressed == [1]
    assert wire.bytes == limiter.taken > 2 * CHUNK and not writer.zeroed
    # The text went compressed (zstd: this host has zstandard or the zstd binary, and so
    # does the "source"), the random chunks as they are.
    assert (p.codec, p.packed, p.raw) == ("zstd", 1, 3)
    # The ranges went on stdin, never on the command line.
    assert source.stdins == [b"0-5\n"] and not any("0-5" in a for a in source.argvs[0])


def test_a_sync_writes_zero_chunks_as_zeros(disk: Path, tmp_path: Path) -> None:
    writer = FakeWriter(image=bytearray(b"\xff" * SIZE))
    pump(FakeSource(), disk, writer, new_journal(tmp_path),
         policy=Policy(write_zeros=True, log=LOG, rerun="sends")).run([(1, 2)])
    assert writer.zeroed == [(CHUNK, CHUNK)] and writer.image[CHUNK:2 * CHUNK] == bytes(CHUNK)


def test_a_chunk_corrupt_once_is_fetched_again(disk: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    source, writer = FakeSource(alter=flip_first_chunk(1)), FakeWriter()
    journal = new_journal(tmp_path)
    p = pump(source, disk, writer, journal)
    p.run([(0, 5)])
    assert p.refetched == 1 and p.read == 6 and bytes(writer.image) == disk.read_bytes()
    assert source.stdins[1] == b"0-1\n"
    assert "1 chunk(s) of " in caplog.text and "fetching them again" in caplog.text


def test_a_chunk_corrupt_twice_is_an_integrity_error(disk: Path, tmp_path: Path) -> None:
    journal = new_journal(tmp_path)
    with pytest.raises(IntegrityError) as info:
        pump(FakeSource(alter=flip_first_chunk(2)), disk, FakeWriter(), journal).run([(0, 5)])
    assert "chunk 0 " in info.value.message
    assert sorted(journal.done) == [1, 2, 3, 4]                 # every other chunk is kept


def test_a_broken_stream_keeps_what_arrived(disk: Path, tmp_path: Path) -> None:
    cut = FakeSource(alter=lambda n, raw: raw[:20 + 49 + CHUNK + 49 + 49])   # 0, 1, then 2 cut
    journal = new_journal(tmp_path)
    with pytest.raises(StreamError):
        pump(cut, disk, FakeWriter(), journal).run([(0, 5)])
    assert sorted(journal.done) == [0, 1]


def test_a_cancelled_disk_stops_at_the_next_chunk_and_saves_its_batch(
        disk: Path, tmp_path: Path) -> None:
    cancel = threading.Event()
    journal = new_journal(tmp_path)
    wire = Wire()
    p = pump(FakeSource(), disk, FakeWriter(), journal, cancel=cancel, wire=wire)
    p.meter = SimpleNamespace(update=lambda done, _: cancel.set() if done >= 2 * CHUNK
                              else None)  # type: ignore[assignment]
    with pytest.raises(Cancelled):
        p.run([(0, 5)])
    assert sorted(journal.done) == [0, 1] and p.read == 2


def test_a_batch_is_journaled_at_the_chunk_limit(disk: Path, tmp_path: Path) -> None:
    writer, journal = FakeWriter(), new_journal(tmp_path)
    pump(FakeSource(), disk, writer, journal,
         policy=Policy(write_zeros=False, log=LOG, rerun="copies", max_chunks=2)).run([(0, 5)])
    assert writer.flushes == 3 and len(journal.done) == 5


def test_a_device_of_another_size_is_refused(disk: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceDeviceError, match=f"resized {SIZE + CHUNK} -> {SIZE}"):
        pump(FakeSource(), disk, FakeWriter(), new_journal(tmp_path),
             size=SIZE + CHUNK).run([(0, 1)])


def test_index_ranges() -> None:
    assert index_ranges([3, 1, 2, 7]) == [(1, 4), (7, 8)]
    assert index_ranges([]) == []


def test_a_failed_write_in_flight_costs_only_its_own_chunk(disk: Path, tmp_path: Path) -> None:
    """The failure surfaces at the flush, after later chunks were sent too: those the sink
    vouches for are journaled, the failed one is not (the rerun fetches it)."""
    writer, journal = FailingWriter(), new_journal(tmp_path)
    with pytest.raises(OSError, match="No space left"):
        pump(FakeSource(), disk, writer, journal).run([(0, 5)])
    assert sorted(journal.done) == [0, 1, 3, 4]
    assert sorted(Journal.load(journal.path).done) == [0, 1, 3, 4]


def test_a_flush_that_vouches_for_nothing_journals_nothing(disk: Path, tmp_path: Path) -> None:
    writer, journal = FailingWriter(), new_journal(tmp_path)
    writer.unwritten = lambda: None  # type: ignore[method-assign]
    with pytest.raises(OSError):
        pump(FakeSource(), disk, writer, journal).run([(0, 5)])
    assert journal.done == {}
