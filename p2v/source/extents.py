"""Reading a source disk as a stream of verified extents (the copy's data path, source side).

A small Python program (`READER`) runs on the source under `python3 -c`: it opens the
device read-only, reads the requested chunks, and for each sends a frame: all-zero chunks
as a header only; others with their sha256 (computed on the source, over the raw bytes)
and the bytes, zlib-compressed when that pays. Incompressible data is recognised from a
64 KiB sample of each chunk and sent as it is, so compression never slows a fast link
much (a chunk that does not shrink by 10 % is sent raw).

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

MAGIC = b"P2VSTRM1"
_HEAD = struct.Struct(">8sQI")          # magic, device size, chunk size
_FRAME = struct.Struct(">BQI32sI")      # kind, index, raw length, sha256, payload length
KIND_ZERO, KIND_RAW, KIND_ZLIB, KIND_END = 0, 1, 2, 3

# Runs on the source. Only the standard library; Python 3.2+; reads, never writes.
READER = r"""
import hashlib, os, struct, sys, zlib
dev, chunk, ranges, level = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
fd = os.open(dev, os.O_RDONLY)
size = os.lseek(fd, 0, 2)
out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
frame = struct.Struct(">BQI32sI")
out.write(struct.pack(">8sQI", b"P2VSTRM1", size, chunk))
zero = bytes(chunk)
nozero = b"\0" * 32
for part in ranges.split(","):
    if not part:
        continue
    a, b = part.split("-")
    for i in range(int(a), int(b)):
        off = i * chunk
        if off >= size:
            break
        n = min(chunk, size - off)
        data = os.pread(fd, n, off) if hasattr(os, "pread") else None
        if data is None:
            os.lseek(fd, off, 0)
            data = os.read(fd, n)
        if len(data) != n:
            sys.stderr.write("short read at %d\n" % off)
            sys.exit(5)
        if data == zero[:n]:
            out.write(frame.pack(0, i, n, nozero, 0))
            continue
        digest = hashlib.sha256(data).digest()
        payload, kind = data, 1
        # A 64 KiB sample decides: incompressible data costs ~2 % of a compression.
        if level and len(zlib.compress(data[:65536], level)) < 0.9 * min(n, 65536):
            packed = zlib.compress(data, level)
            if len(packed) < n * 0.9:
                payload, kind = packed, 2
        out.write(frame.pack(kind, i, n, digest, len(payload)))
        out.write(payload)
out.write(frame.pack(3, 0, 0, nozero, 0))
out.flush()
"""


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


def reader_argv(device: str, chunk_size: int, ranges: Sequence[tuple[int, int]],
                compress: bool = True, low_priority: bool = True) -> list[str]:
    """The source-side command: the reader under python3, at idle I/O and lowest CPU
    priority unless told otherwise (the source is a live server)."""
    argv = ["python3", "-c", READER, device, str(chunk_size), format_ranges(ranges),
            "1" if compress else "0"]
    if not low_priority:
        return argv
    # ionice is util-linux and nearly always there, but a missing one must not stop a copy.
    wrapper = ('if command -v ionice >/dev/null 2>&1; then exec nice -n 19 ionice -c 3 "$@"; '
               'else exec nice -n 19 "$@"; fi')
    return ["sh", "-c", wrapper, "p2v-reader", *argv]


def _read_exact(stream: IO[bytes], n: int, what: str) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise EOFError(f"stream ended inside {what}")
        data += chunk
    return bytes(data)


def read_header(stream: IO[bytes]) -> tuple[int, int]:
    """(device size, chunk size) from the stream's header."""
    magic, size, chunk = _HEAD.unpack(_read_exact(stream, _HEAD.size, "the header"))
    if magic != MAGIC:
        raise ValueError(f"bad stream magic {magic!r}")
    return size, chunk


def read_extents(stream: IO[bytes], chunk_size: int, host: str = "source",
                 device: str = "disk") -> Iterator[Extent]:
    """Parse frames until the end frame; raise StreamError if the stream breaks."""
    try:
        while True:
            kind, index, length, digest, plen = _FRAME.unpack(
                _read_exact(stream, _FRAME.size, "a frame header"))
            if kind == KIND_END:
                return
            offset = index * chunk_size
            if kind == KIND_ZERO:
                yield Extent(index, offset, length, True, None, b"", _FRAME.size)
                continue
            payload = _read_exact(stream, plen, f"chunk {index}")
            if kind == KIND_ZLIB:
                try:
                    data = zlib.decompress(payload)
                except zlib.error:
                    data = b""
            elif kind == KIND_RAW:
                data = payload
            else:
                raise ValueError(f"unknown frame kind {kind}")
            expected = digest.hex()
            ok = len(data) == length and hashlib.sha256(data).hexdigest() == expected
            yield Extent(index, offset, length, False, expected, data, _FRAME.size + plen,
                         corrupt=not ok)
    except (EOFError, ValueError, OSError, struct.error) as exc:
        raise StreamError(host=host, device=device, detail=str(exc) or type(exc).__name__
                          ) from None


__all__ = ["Extent", "READER", "format_ranges", "missing_ranges", "read_extents",
           "read_header", "reader_argv"]
