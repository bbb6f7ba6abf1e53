#!/usr/bin/env python3
"""bench/sink: the sink's libnbd client vs the hand-written one it replaced, and vs
`qemu-img convert` writing the same data (the ceiling: qemu's own block layer, no NBD).

Run from the repo: `bench/sink [--gib N] [--chunk-mib M] [--dir DIR]`. Needs no root.

Each contender writes N GiB (default 2) into a fresh qcow2 on DIR (default: a temp dir
under /var/tmp, a real disk, not tmpfs) as the copy does: chunk after chunk in order,
a flush every 64 MiB (pump.FLUSH_BYTES, the journal's commit points) and at the end. The
data is random (a 64 MiB pool, each chunk a different slice of it), so qcow2 cannot take
a shortcut and generating it costs nothing inside the timing. The old client cannot send
a write over 32 MiB: with --chunk-mib above 32 it is left out.

Prints MB/s per contender and the new/old and new/qemu-img ratios; results go to
bench/results/sink.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from old_nbd import NbdClient as OldClient  # noqa: E402

from p2v import runner  # noqa: E402
from p2v.sink.qcow2 import Qcow2Writer, create_qcow2  # noqa: E402
from p2v.transfer.pump import FLUSH_BYTES  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
POOL = 64 * MiB
RESULTS = ROOT / "bench" / "results" / "sink.json"


class OldWriter(Qcow2Writer):
    """Qcow2Writer (same daemon, same options) talking through the old client."""

    def _connect(self, timeout: float) -> OldClient:
        deadline = time.monotonic() + timeout
        while True:
            if self.socket_path.exists():
                try:
                    return OldClient(self.socket_path, "disk0")
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise SystemExit("qemu-storage-daemon did not start")
            time.sleep(0.05)


def chunks(pool: bytes, total: int, chunk: int) -> list[tuple[int, memoryview]]:
    """(offset, data) of every chunk: each a different slice of the pool."""
    view = memoryview(pool + pool[:chunk])
    out = []
    for i, offset in enumerate(range(0, total, chunk)):
        start = (i * 4099 * 4096) % POOL
        out.append((offset, view[start:start + min(chunk, total - offset)]))
    return out


def through_sink(opener: Callable[[Path], Qcow2Writer], image: Path, total: int,
                 data: list[tuple[int, memoryview]]) -> float:
    """Seconds to write and flush every chunk as the pump does."""
    create_qcow2(image, total)
    started = time.monotonic()
    with opener(image) as writer:
        pending = 0
        for offset, piece in data:
            writer.write(offset, bytes(piece))   # as the pump hands it: fresh bytes
            pending += len(piece)
            if pending >= FLUSH_BYTES:
                writer.flush()
                pending = 0
        writer.flush()
    return time.monotonic() - started


def through_qemu_img(work: Path, total: int, data: list[tuple[int, memoryview]]) -> float:
    """Seconds for `qemu-img convert` of the same bytes from a raw file written just
    before (read back from the page cache: the best case for the baseline)."""
    raw = work / "src.raw"
    with raw.open("wb") as f:
        for offset, piece in data:
            f.seek(offset)
            f.write(piece)
        os.fsync(f.fileno())
    started = time.monotonic()
    runner.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, work / "conv.qcow2"])
    runner.run(["sync", "-f", str(work / "conv.qcow2")])
    seconds = time.monotonic() - started
    raw.unlink()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--chunk-mib", type=int, default=4)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    total, chunk = int(args.gib * GiB) // MiB * MiB, args.chunk_mib * MiB
    data = chunks(os.urandom(POOL), total, chunk)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="p2v-bench-sink-", dir=args.dir) as tmp:
        work = Path(tmp)
        seconds["libnbd"] = through_sink(Qcow2Writer, work / "new.qcow2", total, data)
        if chunk <= 32 * MiB:
            seconds["hand-written"] = through_sink(OldWriter, work / "old.qcow2", total, data)
        seconds["qemu-img convert"] = through_qemu_img(work, total, data)
    rates = {name: total / s / 1e6 for name, s in seconds.items()}
    for name, rate in rates.items():
        print(f"{name:>18}: {rate:8.1f} MB/s ({seconds[name]:.2f} s)")
    result: dict[str, object] = {"gib": args.gib, "chunk_mib": args.chunk_mib,
                                 "seconds": seconds, "mb_per_s": rates}
    if "hand-written" in rates:
        result["new_over_old"] = rates["libnbd"] / rates["hand-written"]
        print(f"libnbd / hand-written: {result['new_over_old']:.2f}x")
    result["new_over_qemu_img"] = rates["libnbd"] / rates["qemu-img convert"]
    print(f"libnbd / qemu-img convert: {result['new_over_qemu_img']:.2f}x")
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
