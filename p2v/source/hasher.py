"""Listing a source disk's chunk hashes (the sync's first pass, source side).

`p2v sync` needs to know which chunks changed since the copy without moving them: the
source reads every chunk it considers used, hashes it there and sends one short line per
chunk. Two programs give the same stream, as the copy's two readers do:

- `HASHER` under `python3 -B -c` (no bytecode written: the source may be frozen), with the
  copy's free-space parser (`extents.FREEMAP`): chunks wholly in free space are not read;
- the sh reader's `hash` mode (`shreader.SH_READER`) with sh, dd, tr and sha256sum only
  (free space is hashed like data).

Both open the device read-only and write nothing on the source. Stream, text lines:
`P2VHASH1 SIZE CHUNK`, then per chunk `INDEX Z` (all zero), `INDEX F` (free, not read) or
`INDEX SHA256`; finally `E`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO

from p2v.errors import StreamError
from p2v.source import remote
from p2v.source.extents import FREEMAP
from p2v.source.shreader import sh_argv

HASH_MAGIC = b"P2VHASH1"
ZERO, FREE = "Z", "F"

HASHER = FREEMAP + remote.script("hasher.py")

_LOW = ('if command -v ionice >/dev/null 2>&1; then exec nice -n 19 ionice -c 3 "$@"; '
        'else exec nice -n 19 "$@"; fi')


def hasher_argv(device: str, chunk_size: int, *, reader: str = "python3",
                skip_free: bool = True, low_priority: bool = True) -> list[str]:
    """The source-side command listing every chunk's hash (see the module docstring)."""
    if reader == "sh":
        argv = sh_argv("hash", device, str(chunk_size))
    else:
        argv = ["python3", "-B", "-c", HASHER, device, str(chunk_size),
                "1" if skip_free else "0"]
    return ["sh", "-c", _LOW, "p2v-hash", *argv] if low_priority else argv


_LINE = re.compile(rb"(\d+) (Z|F|[0-9a-f]{64})\n")


def read_hashes(stream: IO[bytes], chunk_size: int, size: int, *, host: str = "source",
                device: str = "disk") -> Iterator[tuple[int, str, int]]:
    """(index, "Z" | "F" | sha256 hex, wire bytes of the line) per chunk, in order; raises
    StreamError when the stream breaks or does not match the disk."""
    try:
        head = stream.readline(100)
        fields = head.split()
        if len(fields) != 3 or fields[0] != HASH_MAGIC:
            raise ValueError(f"bad hash stream header {head[:40]!r}")
        if int(fields[1]) != size or int(fields[2]) != chunk_size:
            raise ValueError(f"the device is {int(fields[1])} bytes now, {size} at the copy")
        expect = 0
        while True:
            line = stream.readline(100)
            if line == b"E\n":
                break
            match = _LINE.fullmatch(line)
            if match is None:
                raise ValueError("stream ended early" if not line
                                 else f"garbled line {line[:40]!r}")
            if int(match.group(1)) != expect:
                raise ValueError(f"chunk {int(match.group(1))} where {expect} was due")
            yield expect, match.group(2).decode(), len(line)
            expect += 1
        if expect != -(-size // chunk_size):
            raise ValueError(f"{expect} chunks listed, {-(-size // chunk_size)} expected")
    except (ValueError, OSError) as exc:
        raise StreamError(host=host, device=device, detail=f"hash list: {exc}") from None


__all__ = ["FREE", "HASHER", "ZERO", "hasher_argv", "read_hashes"]
