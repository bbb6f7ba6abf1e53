"""The source-side readers behind one interface, and the one place that picks one.

Two programs read a source disk for the copy and the sync: the python3 reader
(`extents.py`: skips free filesystem space; zstd on the wire where the source has it, else
zlib) and the POSIX sh reader (`shreader.py`: dd and coreutils only; zstd or gzip when the
source has them). zstd is asked for only when this host can decompress it
(`codec.accepts_zstd`). Both take their chunk
ranges on stdin and send a header and then every chunk asked for with its source-side
hash; `Reader` is what the transfer needs from either: the command to run and the parser
of what it sends. `choose_reader` holds the rules (the --reader option, what the source
can run), so copy and sync cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Protocol

from p2v.errors import SourceDeviceError, StreamError
from p2v.source.codec import accepts_zstd
from p2v.source.extents import Extent, read_extents, read_header, reader_argv
from p2v.source.shreader import read_sh_extents, read_sh_header, sh_reader_argv

PYTHON3, SH = "python3", "sh"
READERS = ("auto", PYTHON3, SH)     # what --reader accepts


@dataclass(frozen=True)
class Stream:
    """A reader's stream once its header is read: the device and chunk size the source
    reports, the codec it compresses with ("zstd", "zlib", "gzip" or "none"; each extent
    says whether it was), then the verified extents (corrupt ones flagged, see `Extent`)."""

    size: int
    chunk_size: int
    codec: str
    extents: Iterator[Extent]


class Reader(Protocol):
    """One source-side reader: how to start it and how to read what it sends."""

    @property
    def name(self) -> str:
        """"python3" or "sh": recorded in the manifest, shown to the user."""

    def argv(self, device: str, chunk_size: int, *, compress: bool, low_priority: bool,
             skip_free: bool) -> list[str]:
        """The command reading `device`; its chunk ranges go on stdin
        (`extents.ranges_input`). skip_free: leave out free filesystem space, where the
        reader can tell."""

    def parse(self, raw: IO[bytes], chunk_size: int, *, host: str, device: str, size: int,
              ranges: Sequence[tuple[int, int]]) -> Stream:
        """The header, then the extents of `ranges`; StreamError when no header came."""


def _no_header(host: str, device: str, exc: Exception) -> StreamError:
    return StreamError(host=host, device=device, detail=f"no stream header ({exc})")


@dataclass(frozen=True)
class Python3Reader:
    """`extents.READER` under python3 -B: skips free space, zlib where it pays."""

    @property
    def name(self) -> str:
        return PYTHON3

    def argv(self, device: str, chunk_size: int, *, compress: bool, low_priority: bool,
             skip_free: bool) -> list[str]:
        codec = ("zstd" if accepts_zstd() else "zlib") if compress else "none"
        return reader_argv(device, chunk_size, codec=codec, low_priority=low_priority,
                           skip_free=skip_free)

    def parse(self, raw: IO[bytes], chunk_size: int, *, host: str, device: str, size: int,
              ranges: Sequence[tuple[int, int]]) -> Stream:
        try:
            got_size, got_chunk, codec = read_header(raw)
        except (EOFError, ValueError, OSError) as exc:
            raise _no_header(host, device, exc) from None
        return Stream(got_size, got_chunk, codec, read_extents(raw, chunk_size, host=host,
                                                        device=device, size=size,
                                                        ranges=ranges))


@dataclass(frozen=True)
class ShReader:
    """`shreader.SH_READER`: sh, dd and coreutils; zstd or gzip only where the source has
    them."""

    gzip: bool = False                 # the source has gzip (the probe says)
    zstd: bool = False                 # and zstd

    @property
    def name(self) -> str:
        return SH

    def argv(self, device: str, chunk_size: int, *, compress: bool, low_priority: bool,
             skip_free: bool) -> list[str]:
        # No free-space parsing in sh: skip_free cannot apply.
        return sh_reader_argv(device, chunk_size, codec=self.codec(compress),
                              low_priority=low_priority)

    def codec(self, compress: bool) -> str:
        """The codec to ask of the source: zstd where both sides can, else gzip."""
        if compress and self.zstd and accepts_zstd():
            return "zstd"
        return "gzip" if compress and self.gzip else "none"

    def parse(self, raw: IO[bytes], chunk_size: int, *, host: str, device: str, size: int,
              ranges: Sequence[tuple[int, int]]) -> Stream:
        try:
            buffered, got_size, got_chunk, codec = read_sh_header(raw)
        except (EOFError, ValueError, OSError) as exc:
            raise _no_header(host, device, exc) from None
        return Stream(got_size, got_chunk, codec, read_sh_extents(buffered, chunk_size, host=host,
                                                           device=device, size=size,
                                                           ranges=ranges))


def choose_reader(requested: str, *, python3: bool, gzip: bool, host: str, device: str,
                  preferred: str = PYTHON3, zstd: bool = False) -> Reader:
    """The reader for one device: `requested` (--reader: "auto", "python3" or "sh"), with
    "auto" meaning `preferred` (a sync keeps the reader its copy used) where the source has
    python3 and sh where it has not; asking for python3 on a source without it is an error.
    python3, gzip, zstd: what the device probe found on the source."""
    if requested == PYTHON3 and not python3:
        raise SourceDeviceError(device=device, host=host,
                                detail="the source has no python3 (leave the reader to auto)")
    name = preferred if requested == "auto" else requested
    if name == SH or not python3:
        return ShReader(gzip=gzip, zstd=zstd)
    return Python3Reader()


__all__ = ["PYTHON3", "READERS", "SH", "Python3Reader", "Reader", "ShReader", "Stream",
           "choose_reader"]
