"""An NBD write cut short by Ctrl-C must not poison what follows (real qemu-storage-daemon).

Interrupting a request mid-message used to leave the stream out of step: the next flush
read a stale reply and the copy ended in "unexpected NBD reply" instead of a clean stop.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from p2v.sink.nbd import NbdError
from p2v.sink.qcow2 import Qcow2Writer, create_qcow2

MiB = 1 << 20


def test_a_write_interrupted_mid_request_leaves_the_connection_refusing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "x.qcow2"
    create_qcow2(image, 16 * MiB)
    data = os.urandom(MiB)
    with Qcow2Writer(image) as writer:
        writer.write(0, data)
        writer.flush()
        real = writer.client.sock

        class CutAfterHeader:
            """The socket, but a signal lands right after the request header is sent."""

            def __getattr__(self, name: str) -> object:
                return getattr(real, name)

            def sendall(self, payload: bytes) -> None:
                real.sendall(payload)
                raise KeyboardInterrupt

        writer.client.sock = CutAfterHeader()  # type: ignore[assignment]
        with pytest.raises(KeyboardInterrupt):
            writer.client.pwrite(data, MiB)
        writer.client.sock = real
        assert writer.client.broken
        with pytest.raises(NbdError) as caught:
            writer.client.flush()
        assert caught.value.errno == errno.EPIPE
    # What was flushed before the interruption is intact in the image.
    with Qcow2Writer(image) as again:
        assert again.read(0, MiB) == data
