"""The copy's reader for sources without python3: POSIX sh, dd and coreutils only.

Slower than the python3 reader (`extents.py`) and skipping less, but every chunk is still
hashed on the source and checked here, and it feeds the same journal, so a copy resumes
the same way whichever reader ran before. Per chunk, `SH_READER`:

1. reads the chunk through `tr -d '\\000' | head -c 1`: if no non-zero byte comes out, only
   a `Z` line is sent (on data the pipe stops at the first non-zero byte);
2. otherwise reads it again and sends it through `tee`: one copy goes to stdout (through
   `gzip -1` when the source has gzip and a 64 KiB sample of the chunk shrinks by 10 %),
   the other into `sha256sum`, whose answer follows the data. The hash therefore covers
   exactly the bytes sent, even if the live source changed them since step 1.
   The compressor is `zstd -q -1` where the source has zstd and this host can decompress
   it (`p2v.source.codec`), else `gzip -1`; a chunk goes through it when a 64 KiB sample
   of the chunk shrinks by 5 %, as it is otherwise. Nothing can hold the compressed chunk
   on the source (no files written), so the sample decides, not the whole chunk.

Free filesystem space is not parsed (no bitmap reading in sh): it is sent unless zero.
Nothing is written on the source; the device is opened by `dd if=` (read-only).

Stream (all lines end in \\n): `P2VSH2 SIZE CHUNK CODEC` (zstd, gzip or none), then per
chunk `Z INDEX LENGTH` or `D INDEX LENGTH R|G|S`, the raw bytes, one gzip member or one
zstd frame, `H SHA256`; finally `E`.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator, Sequence
from typing import IO

from p2v.errors import StreamError
from p2v.source import remote
from p2v.source.codec import frame_end, unzstd
from p2v.source.extents import Extent, FrameCheck

SH_MAGIC = b"P2VSH2"
SH_CODECS = ("zstd", "gzip", "none")

# $1: mode (probe|read|hash); $2: device. probe prints "SIZE PYTHON3 GZIP ZSTD" (1/0
# flags); exit 3: no such path, 4: not a block device, 6: size unknown.
# read: $3 chunk size, $4 codec (zstd: gzip where the source lacks zstd; gzip; none), the
# ranges "a-b,c-d" on stdin (argv could not hold a busy server's: 128 KiB per argument).
# hash: $3 chunk size.
SH_READER = remote.script("shreader.sh")


def sh_argv(mode: str, device: str, *args: str) -> list[str]:
    return ["sh", "-c", SH_READER, "p2v-sh", mode, device, *args]


def sh_reader_argv(device: str, chunk_size: int, codec: str = "gzip",
                   low_priority: bool = True) -> list[str]:
    """The source-side command of the sh reader (under nice/ionice unless told otherwise);
    its ranges go on stdin (`extents.ranges_input`). codec: one of SH_CODECS."""
    if codec not in SH_CODECS:
        raise ValueError(f"unknown codec {codec!r}")
    argv = sh_argv("read", device, str(chunk_size), codec)
    if not low_priority:
        return argv
    wrapper = ('if command -v ionice >/dev/null 2>&1; then exec nice -n 19 ionice -c 3 "$@"; '
               'else exec nice -n 19 "$@"; fi')
    return ["sh", "-c", wrapper, "p2v-reader", *argv]


class _Buffered:
    """A byte stream with lines, exact reads and push-back (for the end of a gzip member)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.buf = bytearray()

    def _fill(self, want: int = 1 << 16) -> bool:
        block = self.stream.read(want)
        if not block:
            return False
        self.buf += block
        return True

    def line(self, limit: int = 256) -> bytes:
        while b"\n" not in self.buf:
            if len(self.buf) > limit:
                raise ValueError("garbled stream (no line where one was expected)")
            if not self._fill(limit):
                raise EOFError("stream ended inside a line")
        end = self.buf.index(b"\n") + 1
        if end > limit:
            raise ValueError("garbled stream (line too long)")
        text = bytes(self.buf[:end])
        del self.buf[:end]
        return text

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill(max(n - len(self.buf), 1 << 16)):
                raise EOFError("stream ended inside a chunk")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def gzip_member(self, limit: int) -> tuple[bytes, int]:
        """One gzip member's content (at most `limit` bytes) and its size on the wire."""
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out = bytearray()
        wire = 0
        while not inflate.eof:
            if not self.buf and not self._fill():
                raise EOFError("stream ended inside a gzip member")
            block = bytes(self.buf)
            self.buf.clear()
            # Never more than limit + 1 bytes out: a small member can inflate a thousandfold.
            out += inflate.decompress(block, limit + 1 - len(out))
            if len(out) > limit:
                raise ValueError("gzip member larger than its chunk")
            rest = inflate.unused_data             # what follows the member
            wire += len(block) - len(rest)
            self.buf[:0] = rest
        return bytes(out), wire

    def zstd_frame(self, limit: int) -> tuple[bytes, int]:
        """One zstd frame's content (b"" unless exactly `limit` bytes) and its size on the
        wire. The frame is found by its block headers: the sh reader cannot send a length."""
        most = limit + (limit >> 10) + 64      # a frame of `limit` bytes, stored, fits
        while (end := frame_end(self.buf)) is None:
            if len(self.buf) > most:
                raise ValueError("zstd frame larger than its chunk")
            if not self._fill():
                raise EOFError("stream ended inside a zstd frame")
        frame = bytes(self.buf[:end])
        del self.buf[:end]
        return unzstd(frame, limit) or b"", end


def read_sh_header(stream: IO[bytes]) -> tuple[_Buffered, int, int, str]:
    """(the buffered stream, device size, chunk size, codec) from the sh reader's first
    line."""
    buffered = _Buffered(stream)
    fields = buffered.line().split()
    if (len(fields) != 4 or fields[0] != SH_MAGIC
            or fields[3].decode("ascii", "replace") not in SH_CODECS):
        raise ValueError(f"bad sh stream header {b' '.join(fields)[:40]!r}")
    return buffered, int(fields[1]), int(fields[2]), fields[3].decode()


def read_sh_extents(buffered: _Buffered, chunk_size: int, host: str = "source",
                    device: str = "disk", *, size: int | None = None,
                    ranges: Sequence[tuple[int, int]] | None = None) -> Iterator[Extent]:
    """Parse the sh reader's stream until `E`; raise StreamError if it breaks or a chunk is
    not what was asked (size, ranges: the device's size and the ranges the reader was sent)."""
    check = FrameCheck(chunk_size, size, ranges)
    try:
        while True:
            line = buffered.line()
            fields = line.split()
            if fields == [b"E"]:
                check.finish()
                return
            if len(fields) == 3 and fields[0] == b"Z":
                index, length = int(fields[1]), int(fields[2])
                check.check(index, length)
                yield Extent(index, index * chunk_size, length, True, None, b"", len(line))
                continue
            if len(fields) != 4 or fields[0] != b"D" or fields[3] not in (b"R", b"G", b"S"):
                raise ValueError(f"garbled stream (unexpected {line[:40]!r})")
            index, length = int(fields[1]), int(fields[2])
            check.check(index, length)
            if fields[3] == b"G":
                data, wire = buffered.gzip_member(length)
            elif fields[3] == b"S":
                data, wire = buffered.zstd_frame(length)
            else:
                data = buffered.exact(length)
                wire = length
            trailer = buffered.line()
            parts = trailer.split()
            if len(parts) != 2 or parts[0] != b"H" or len(parts[1]) != 64:
                raise ValueError(f"garbled stream (no hash after chunk {index})")
            expected = parts[1].decode()
            ok = len(data) == length and hashlib.sha256(data).hexdigest() == expected
            yield Extent(index, index * chunk_size, length, False, expected, data,
                         len(line) + wire + len(trailer), corrupt=not ok,
                         packed=fields[3] != b"R")
    except (EOFError, ValueError, OSError, zlib.error) as exc:
        raise StreamError(host=host, device=device, detail=str(exc) or type(exc).__name__
                          ) from None


__all__ = ["SH_CODECS", "SH_READER", "read_sh_extents", "read_sh_header", "sh_argv",
           "sh_reader_argv"]
