"""Ctrl-C while the sink waits on the NBD server must stop the copy, not poison the writer
(real qemu-storage-daemon).

The pump saves what arrived when interrupted: it flushes, then journals. So a signal that
lands while writes are in flight must come through as KeyboardInterrupt (libnbd would
swallow one raised inside its callbacks; the client polls instead), and the flush after it
must still wait for every write already sent and make it durable.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2v.sink.qcow2 import Qcow2Writer, create_qcow2

MiB = 1 << 20
CHUNK = 4 * MiB


class CtrlCInPoll:
    """The libnbd handle, but a signal lands in the first wait for the server's answer."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.fired = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def poll(self, timeout: int) -> int:
        result: int = self.real.poll(timeout)  # type: ignore[attr-defined]
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt
        return result


def test_ctrl_c_with_writes_in_flight_then_flush_keeps_every_write_sent(
        tmp_path: Path) -> None:
    image = tmp_path / "x.qcow2"
    create_qcow2(image, 256 * MiB)
    chunks = [os.urandom(CHUNK) for _ in range(40)]
    sent = 0
    with Qcow2Writer(image) as writer:
        handle = CtrlCInPoll(writer.client._h)
        writer.client._h = handle  # type: ignore[assignment]
        with pytest.raises(KeyboardInterrupt):
            for i, data in enumerate(chunks):   # more than the in-flight budget: it waits
                writer.write(i * CHUNK, data)
                sent = i + 1
        assert handle.fired and 0 < sent < len(chunks)
        writer.client._h = handle.real  # type: ignore[assignment]
        writer.flush()
    with Qcow2Writer(image) as again:
        for i in range(sent):
            assert again.read(i * CHUNK, CHUNK) == chunks[i], f"chunk {i}"
        assert again.read(sent * CHUNK, CHUNK) == bytes(CHUNK)
