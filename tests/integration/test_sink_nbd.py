"""The sink against the real qemu-storage-daemon on a real qcow2: what lands in the image is
exactly what was written (`qemu-img compare` against a raw file written the same way), at
any chunk size the CLI accepts, and a server that dies or stops answering gives the
sink's one-line error instead of a hang or a journal that lies."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from p2v import runner
from p2v.errors import P2VError
from p2v.sink.qcow2 import Qcow2Writer, SinkError, create_qcow2

MiB = 1 << 20
KiB = 1 << 10


def _pattern(seed: int, length: int) -> bytes:
    """Bytes no other offset repeats: a write landing in the wrong place shows."""
    block = os.urandom(MiB)
    head = seed.to_bytes(8, "little")
    return (head + block * (length // MiB + 1))[:length]


def _same(raw: Path, image: Path) -> bool:
    result = runner.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", raw, image],
                        check=False)
    return result.returncode == 0


def _write_both(writer: Qcow2Writer, raw: Path, ops: list[tuple[str, int, int]]) -> None:
    """Apply ("write"|"zero", offset, length) to the image and to the raw file alike."""
    with raw.open("r+b") as f:
        for i, (op, offset, length) in enumerate(ops):
            data = _pattern(i, length) if op == "write" else bytes(length)
            if op == "write":
                writer.write(offset, data)
            else:
                writer.zero(offset, length)
            f.seek(offset)
            f.write(data)


def _fresh(tmp_path: Path, size: int) -> tuple[Path, Path]:
    image, raw = tmp_path / "x.qcow2", tmp_path / "x.raw"
    create_qcow2(image, size)
    with raw.open("wb") as f:
        f.truncate(size)
    return image, raw


# Chunk sizes the CLI accepts (whole MiB) and odd ones a direct caller may use: over the
# server's 32 MiB request limit, between limits, not a multiple of it.
@pytest.mark.parametrize("chunk", [64 * KiB, 4 * MiB, 33 * MiB, 64 * MiB, 128 * MiB,
                                   96 * MiB + 64 * KiB])
def test_chunks_of_any_size_land_exactly_where_written(tmp_path: Path, chunk: int) -> None:
    size = 3 * chunk + 40 * MiB
    image, raw = _fresh(tmp_path, size)
    ops = [("write", 0, chunk), ("write", 2 * chunk, chunk),
           ("write", 3 * chunk, size - 3 * chunk),       # the short last chunk
           ("zero", chunk // 2, chunk),                   # across two chunks, mid-data
           ("write", chunk, chunk // 4)]                  # into a range just zeroed
    with Qcow2Writer(image) as writer:
        _write_both(writer, raw, ops)
        writer.flush()
    assert _same(raw, image)
    runner.run(["qemu-img", "check", "-q", image])


def test_overlapping_writes_queued_back_to_back_land_in_order(tmp_path: Path) -> None:
    """Writes to the same offsets, queued back to back: the last one wins, as on a disk
    (a server may answer in any order, so overlapping writes must not be in flight
    together)."""
    image, raw = _fresh(tmp_path, 64 * MiB)
    ops = [("write", (i * 3 % 16) * MiB, MiB) for i in range(48)]
    ops += [("zero", 5 * MiB, 3 * MiB), ("write", 6 * MiB, 64 * KiB)]
    with Qcow2Writer(image) as writer:
        _write_both(writer, raw, ops)
        writer.flush()
    assert _same(raw, image)


def test_zeroing_without_write_zeroes_writes_zeros(tmp_path: Path) -> None:
    image, raw = _fresh(tmp_path, 96 * MiB)
    ops = [("write", 0, 80 * MiB), ("zero", 3 * MiB, 70 * MiB + 64 * KiB)]
    with Qcow2Writer(image) as writer:
        writer.client.can_zero = False      # as a server without WRITE_ZEROES
        _write_both(writer, raw, ops)
        writer.flush()
    assert _same(raw, image)


def test_zeroing_deallocates_what_a_resume_scrubs(tmp_path: Path) -> None:
    image, _ = _fresh(tmp_path, 64 * MiB)
    with Qcow2Writer(image) as writer:
        writer.write(0, _pattern(1, 48 * MiB))
        writer.flush()
        writer.zero(0, 48 * MiB)
        writer.flush()
        assert writer.data_ranges() == []
        assert writer.read(0, 48 * MiB) == bytes(48 * MiB)


def test_a_server_killed_mid_write_is_a_one_line_sink_error(tmp_path: Path) -> None:
    image, _ = _fresh(tmp_path, 512 * MiB)
    data = _pattern(7, 4 * MiB)
    started = time.monotonic()
    with Qcow2Writer(image) as writer:
        writer.write(0, data)
        writer.flush()
        with pytest.raises(P2VError) as caught:
            for i in range(1, 100):
                writer.write(i * 4 * MiB, data)
                if i == 3:
                    writer._proc.kill()
                    writer._proc.wait()
            writer.flush()
        # Sticky: nothing later may look durable (the journal is written after a flush).
        with pytest.raises(SinkError):
            writer.flush()
    assert time.monotonic() - started < 60
    message = caught.value.message
    assert isinstance(caught.value, SinkError), message
    assert str(image) in message and "\n" not in message
    assert " at " in message and "qemu-storage-daemon exited (signal 9)" in message


def test_a_server_that_stops_answering_times_out_instead_of_hanging(tmp_path: Path) -> None:
    image, _ = _fresh(tmp_path, 256 * MiB)
    with Qcow2Writer(image, request_timeout=3) as writer:
        os.kill(writer._proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            for i in range(4):               # queued: write() does not wait for answers
                writer.write(i * MiB, _pattern(i, MiB))
            assert time.monotonic() - started < 2
            with pytest.raises(SinkError) as caught:
                writer.flush()
            assert time.monotonic() - started < 30
        finally:
            os.kill(writer._proc.pid, signal.SIGCONT)
    message = caught.value.message
    assert "did not answer within 3 s" in message and "write at 0" in message
    assert "\n" not in message


def test_a_full_disk_loses_only_the_writes_that_failed(tmp_path: Path) -> None:
    """Writes in flight when the disk fills: flush raises DestinationFull, and every write
    but the failed ones is on disk (the pump journals those: the rerun fetches the rest)."""
    mount = tmp_path / "small"
    mount.mkdir()
    runner.run(["mount", "-t", "tmpfs", "-o", "size=20m", "p2v-test-full", mount])
    try:
        image = mount / "x.qcow2"
        create_qcow2(image, 64 * MiB)
        chunks = [_pattern(i, MiB) for i in range(48)]
        with Qcow2Writer(image) as writer:
            sent = 0                                # write() returned: queued
            with pytest.raises(P2VError) as caught:
                for i, data in enumerate(chunks):
                    writer.write(i * MiB, data)
                    sent = i + 1
                writer.flush()
            assert writer.unwritten() is None      # not before a flush saved what landed
            with pytest.raises(P2VError) as again:  # as the pump's commit after the error
                writer.flush()
            lost = writer.unwritten()
        for error in (caught.value, again.value):
            assert type(error).__name__ == "DestinationFull", error.message
            assert "\n" not in error.message
        assert lost, "some write must have failed"
        landed = [i for i in range(sent)
                  if all(o >= (i + 1) * MiB or i * MiB >= o + n for o, n in lost)]
        assert len(landed) > 8
        with Qcow2Writer(image) as reopened:
            for i in landed:
                assert reopened.read(i * MiB, MiB) == chunks[i], f"chunk {i}"
    finally:
        runner.run(["umount", mount], check=False)
