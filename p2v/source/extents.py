"""Reading a source disk as a stream of verified extents (the copy's data path, source side).

A small Python program (`READER`) runs on the source under `python3 -B -c`: it opens the
device read-only, reads the requested chunks, and for each sends a frame: all-zero chunks
as a header only; others with their sha256 (computed on the source, over the raw bytes)
and the bytes, compressed when that pays: with zstd where the source has it (Python 3.14's
compression.zstd, the zstandard module or the zstd binary) and this host can decompress
it (`p2v.source.codec`), else zlib. The header names the codec; each frame's kind says
whether that chunk was compressed. Incompressible data is recognised from a 64 KiB
sample of each chunk and sent as it is, so compression never slows a fast link much (a
chunk that does not shrink by 5 % is sent raw).

`read_extents` parses the stream on this side, decompresses, checks every hash and yields
`Extent`s; a chunk whose bytes do not match its hash is yielded as `corrupt` so the caller
can fetch it again.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from p2v.errors import StreamError
from p2v.source import remote
from p2v.source.codec import unzstd

MAGIC = b"P2VSTRM2"
_HEAD = struct.Struct(">8sQI4s")        # magic, device size, chunk size, codec
_FRAME = struct.Struct(">BQI32sI")      # kind, index, raw length, sha256, payload length
KIND_ZERO, KIND_RAW, KIND_ZLIB, KIND_END, KIND_FREE, KIND_ZSTD = 0, 1, 2, 3, 4, 5
CODECS = ("zstd", "zlib", "none")       # what the python3 reader's header may name
_PACKED = {KIND_ZLIB: "zlib", KIND_ZSTD: "zstd"}

# Free space the copy may skip (runs on the source, stdlib only): ext2/3/4 block bitmaps,
# XFS free-space B+trees and swap areas, on the whole device and on each of its partitions
# (from /sys), and on an LVM2 PV there: extents no LV uses, and the same filesystems on its
# plain linear LVs, read through their extent maps; all of that inside the data area of an
# in-sync md RAID1 member too. Anything it does not understand counts as used. Returns
# sorted, merged (start, end) byte ranges.
FREEMAP = remote.script("freemap.py")

# Runs on the source. Only the standard library; Python 3.2+; reads, never writes.
READER = FREEMAP + remote.script("reader.py")


@dataclass(frozen=True)
class Extent:
    """One chunk of a source disk, verified against the hash the source computed."""

    index: int
    offset: int
    length: int
    zero: bool
    sha256: str | None          # None for zero chunks
    data: bytes                 # b"" for zero chunks
    wire_bytes: int             # frame + payload as sent
    corrupt: bool = False       # the bytes did not match sha256
    free: bool = False          # not read: free space of a filesystem, or swap (zero=True)
    packed: bool = False        # sent compressed (with the stream's codec)


def format_ranges(ranges: Sequence[tuple[int, int]]) -> str:
    """[(0, 10), (12, 20)] -> "0-10,12-20" (half-open chunk index ranges)."""
    return ",".join(f"{a}-{b}" for a, b in ranges if b > a)


def missing_ranges(done: set[int], count: int) -> list[tuple[int, int]]:
    """The half-open ranges of chunk indexes in [0, count) not in `done`."""
    ranges: list[tuple[int, int]] = []
    start: int | None = None
    for i in range(count):
        if i in done:
            if start is not None:
                ranges.append((start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        ranges.append((start, count))
    return ranges


def ranges_input(ranges: Sequence[tuple[int, int]]) -> bytes:
    """What a reader is sent on stdin: its chunk ranges (argv could not hold them all)."""
    return format_ranges(ranges).encode("ascii") + b"\n"


def reader_argv(device: str, chunk_size: int, codec: str = "zlib",
                low_priority: bool = True, skip_free: bool = False) -> list[str]:
    """The source-side command: the reader under python3 -B (no bytecode written there),
    at idle I/O and lowest CPU priority unless told otherwise (the source is a live
    server); its ranges go on stdin (`ranges_input`). codec: what this host accepts
    ("zstd": zstd, else zlib, where the source has it; "zlib"; "none"). skip_free: chunks
    wholly inside ext2/3/4 free space or a swap area (past its header page) are not read."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}")
    argv = ["python3", "-B", "-c", READER, device, str(chunk_size), codec,
            "1" if skip_free else "0"]
    if not low_priority:
        return argv
    # ionice is util-linux and nearly always there, but a missing one must not stop a copy.
    wrapper = ('if command -v ionice >/dev/null 2>&1; then exec nice -n 19 ionice -c 3 "$@"; '
               'else exec nice -n 19 "$@"; fi')
    return ["sh", "-c", wrapper, "p2v-reader", *argv]


class FrameCheck:
    """What a reader was asked for, checked frame by frame: each frame must be the next
    chunk asked (readers send them in the order asked, each once) with that chunk's length,
    and the stream must not end before the last one."""

    def __init__(self, chunk_size: int, size: int | None = None,
                 ranges: Sequence[tuple[int, int]] | None = None) -> None:
        self.chunk, self.size = chunk_size, size
        count = None if size is None else -(-size // chunk_size)
        self.asked = None if ranges is None else sum(
            max(0, (b if count is None else min(b, count)) - a) for a, b in ranges)
        self._due = None if ranges is None else (
            i for a, b in ranges for i in range(a, b if count is None else min(b, count)))
        self.seen = 0

    def check(self, index: int, length: int) -> None:
        """Raise ValueError unless (index, length) is the frame due next."""
        if self._due is not None:
            due = next(self._due, None)
            if index != due:
                raise ValueError(f"chunk {index} where "
                                 + ("no more" if due is None else f"chunk {due}")
                                 + " was asked for")
        if not 0 < length <= self.chunk:
            raise ValueError(f"chunk {index} has length {length} (chunks are {self.chunk})")
        if self.size is not None:
            want = min(self.chunk, self.size - index * self.chunk)
            if length != want:
                raise ValueError(f"chunk {index} has length {length}, not {want}")
        self.seen += 1

    def finish(self) -> None:
        """Raise ValueError if the stream ends before every chunk asked arrived."""
        if self.asked is not None and self.seen != self.asked:
            raise ValueError(f"the stream ended after {self.seen} of the {self.asked} "
                             "chunks asked for")


def _read_exact(stream: IO[bytes], n: int, what: str) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise EOFError(f"stream ended inside {what}")
        data += chunk
    return bytes(data)


def read_header(stream: IO[bytes]) -> tuple[int, int, str]:
    """(device size, chunk size, codec) from the stream's header."""
    magic, size, chunk, codec = _HEAD.unpack(_read_exact(stream, _HEAD.size, "the header"))
    if magic != MAGIC:
        raise ValueError(f"bad stream magic {magic!r}")
    name = codec.decode("ascii", "replace")
    if name not in CODECS:
        raise ValueError(f"unknown codec {codec!r} in the stream header")
    return size, chunk, name


def _inflate(payload: bytes, length: int) -> bytes | None:
    """A zlib payload's content if it is exactly `length` bytes, else None; never makes
    more than length + 1 bytes (a small payload can inflate a thousandfold)."""
    inflate = zlib.decompressobj()
    try:
        data = inflate.decompress(payload, length + 1)
    except zlib.error:
        return None
    if len(data) != length or not inflate.eof or inflate.unused_data:
        return None
    return data


def _unpack(kind: int, payload: bytes, length: int) -> bytes:
    """A frame's chunk as sent (b"" when it does not decompress to `length` bytes)."""
    if kind == KIND_RAW:
        return payload
    if kind == KIND_ZLIB:
        return _inflate(payload, length) or b""
    return unzstd(payload, length) or b""


def read_extents(stream: IO[bytes], chunk_size: int, host: str = "source",
                 device: str = "disk", *, size: int | None = None,
                 ranges: Sequence[tuple[int, int]] | None = None) -> Iterator[Extent]:
    """Parse frames until the end frame; raise StreamError if the stream breaks or a frame
    is not what was asked (size, ranges: the device's size and the ranges the reader was
    sent). A payload whose content does not match its hash is yielded as corrupt."""
    check = FrameCheck(chunk_size, size, ranges)
    try:
        while True:
            kind, index, length, digest, plen = _FRAME.unpack(
                _read_exact(stream, _FRAME.size, "a frame header"))
            if kind == KIND_END:
                check.finish()
                return
            if kind not in (KIND_ZERO, KIND_FREE, KIND_RAW, KIND_ZLIB, KIND_ZSTD):
                raise ValueError(f"unknown frame kind {kind}")
            check.check(index, length)
            offset = index * chunk_size
            if kind in (KIND_ZERO, KIND_FREE):
                if plen:
                    raise ValueError(f"zero chunk {index} with a {plen}-byte payload")
                yield Extent(index, offset, length, True, None, b"", _FRAME.size,
                             free=kind == KIND_FREE)
                continue
            # Raw payloads are the chunk; a compressed one is sent only when it is smaller.
            if plen > length or (kind == KIND_RAW and plen != length) or not plen:
                raise ValueError(f"chunk {index} of {length} bytes with a {plen}-byte payload")
            payload = _read_exact(stream, plen, f"chunk {index}")
            data = _unpack(kind, payload, length)
            expected = digest.hex()
            ok = len(data) == length and hashlib.sha256(data).hexdigest() == expected
            yield Extent(index, offset, length, False, expected, data, _FRAME.size + plen,
                         corrupt=not ok, packed=kind in _PACKED)
    except (EOFError, ValueError, OSError, struct.error) as exc:
        raise StreamError(host=host, device=device, detail=str(exc) or type(exc).__name__
                          ) from None


__all__ = ["CODECS", "Extent", "FrameCheck", "READER", "format_ranges", "missing_ranges",
           "ranges_input", "read_extents", "read_header", "reader_argv"]
