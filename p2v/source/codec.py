"""zstd on this side of the wire: whether this host can decompress it, and how.

The readers compress each chunk with the best codec the source has (zstd, else zlib or
gzip) and send it as it is where that does not pay. This module is the only importer of
`zstandard`; without it the `zstd` binary decompresses, one process per chunk; without
either, this host refuses zstd and the readers fall back to zlib (`accepts_zstd`, decided
once). `frame_end` finds where a zstd frame ends in a stream (the sh reader sends frames
without a length), whichever decoder is used.
"""

from __future__ import annotations

import functools
import logging
import subprocess
import threading
from collections.abc import Callable

from p2v import runner
from p2v.errors import CommandNotFound

log = logging.getLogger(__name__)

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BLOCK_MAX = 128 << 10            # no zstd block holds more (the format's limit)

# (frame, length) -> the frame's content if it is exactly `length` bytes, else None
Decoder = Callable[[bytes, int], "bytes | None"]


def _header_size(buf: bytes) -> int | None:
    """The size of the frame header at the start of `buf` (None: need more bytes)."""
    if len(buf) < 5:
        return None
    if buf[:4] != ZSTD_MAGIC:
        raise ValueError("not a zstd frame")
    desc = buf[4]
    if desc & 0x08:
        raise ValueError("zstd frame header with its reserved bit set")
    single = bool(desc & 0x20)
    fcs = (1 if single else 0, 2, 4, 8)[desc >> 6]
    dict_id = (0, 1, 2, 4)[desc & 0x03]
    return 5 + (0 if single else 1) + dict_id + fcs


def frame_end(buf: bytes | bytearray) -> int | None:
    """Where the zstd frame at the start of `buf` ends; None if `buf` ends before it does.
    ValueError if it is not a frame."""
    pos = _header_size(bytes(buf[:5]))
    if pos is None:
        return None
    checksum = 4 if buf[4] & 0x04 else 0
    while True:
        if len(buf) < pos + 3:
            return None
        head = int.from_bytes(buf[pos:pos + 3], "little")
        last, kind, size = head & 1, (head >> 1) & 3, head >> 3
        if kind == 3 or size > _BLOCK_MAX:
            raise ValueError("corrupt zstd block header")
        pos += 3 + (1 if kind == 1 else size)        # an RLE block holds one byte
        if last:
            end = pos + checksum
            return end if len(buf) >= end else None


def _zstandard_decoder() -> Decoder | None:
    try:
        import zstandard
    except ImportError:
        return None
    context = zstandard.ZstdDecompressor()

    def decode(frame: bytes, length: int) -> bytes | None:
        size = zstandard.frame_content_size(frame)
        if size not in (-1, length):
            return None
        try:
            # Never more than `length` out, whatever the frame claims.
            return context.decompress(frame, max_output_size=length)
        except zstandard.ZstdError:
            return None

    return decode


def _binary_decoder() -> Decoder | None:
    try:
        zstd = runner.which("zstd")
    except CommandNotFound:
        return None

    def decode(frame: bytes, length: int) -> bytes | None:
        proc = runner.spawn([zstd, "-d", "-q", "-c"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, own_session=False)
        assert proc.stdin is not None and proc.stdout is not None

        def feed() -> None:
            try:
                proc.stdin.write(frame)       # type: ignore[union-attr]
                proc.stdin.close()            # type: ignore[union-attr]
            except OSError:
                pass

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        data = proc.stdout.read(length + 1)   # never more than one byte too many
        proc.stdout.close()
        if proc.poll() is None and len(data) > length:
            proc.kill()
        writer.join()
        ok = proc.wait() == 0
        return data if ok and len(data) == length else None

    return decode


@functools.cache
def zstd_decoder() -> Decoder | None:
    """How this host decompresses zstd: the zstandard module, else the zstd binary, else
    None (decided once per process)."""
    module = _zstandard_decoder()
    decoder = module or _binary_decoder()
    log.info("zstd off the wire: %s", "the zstandard module" if module else
             "the zstd binary" if decoder else "neither zstandard nor zstd here: zlib")
    return decoder


def accepts_zstd() -> bool:
    """Whether the readers may send zstd to this host."""
    return zstd_decoder() is not None


def unzstd(frame: bytes, length: int) -> bytes | None:
    """One whole zstd frame's content if it is exactly `length` bytes, else None (corrupt,
    trailing bytes, or no decoder here)."""
    decode = zstd_decoder()
    try:
        whole = frame_end(frame) == len(frame)
    except ValueError:
        return None
    if decode is None or not whole:
        return None
    return decode(frame, length)


__all__ = ["ZSTD_MAGIC", "accepts_zstd", "frame_end", "unzstd", "zstd_decoder"]
