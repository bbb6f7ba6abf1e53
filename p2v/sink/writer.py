"""What the transfer needs from the image it writes a disk into, whatever the format.

`qcow2.Qcow2Writer` (qemu-storage-daemon over NBD) is the one implementation; the chunk pump
and the copy's resume are written against `DiskWriter`.
"""

from __future__ import annotations

from typing import Protocol


class DiskWriter(Protocol):
    """An open image of one disk: bytes in at offsets, durable after `flush`."""

    def write(self, offset: int, data: bytes) -> None:
        """Write `data` at `offset` (DestinationFull when the disk is full)."""

    def zero(self, offset: int, length: int) -> None:
        """Make the range read as zeros (whatever it held)."""

    def flush(self) -> None:
        """Everything written so far is durable when this returns (journal after it).

        Writes may still be in flight when `write` returns: one that failed is raised by a
        later call, and from then on every flush raises."""

    def unwritten(self) -> list[tuple[int, int]] | None:
        """After a flush raised: the (offset, length) ranges whose writes failed, every
        other write being durable (what a journal may still record); None when nothing
        written since the last good flush can be trusted."""

    def data_ranges(self) -> list[tuple[int, int]]:
        """(offset, length) of every range that may not read as zeros, as of the last
        flush: what a resume must check against its journal."""


__all__ = ["DiskWriter"]
