"""The batch's host-wide bandwidth limit at the copy itself: two job processes (spawned, as
`p2v batch` spawns its jobs) copy a disk each from a loop source at the same time, both
drawing on one bucket file; together they stay under the limit. No libvirt, no guest."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from copy_helpers import identical
from loop_sources import LoopSource, write_random_disk

from p2v.demo.live import SourceEndpoint

MiB = 1 << 20
LIMIT = 4 * MiB


def _copy_one(ep: SourceEndpoint, device: str, out: str, bucket: str, start: float,
              results: Any) -> None:
    """A job process: copy DEVICE under the shared limit, report (start, end, wire bytes)."""
    from copy_helpers import open_source

    from p2v.transfer.copy import CopyRequest, copy_disks

    while time.monotonic() < start:
        time.sleep(0.01)
    source = open_source(ep)
    seen: dict[str, float] = {}

    def emit(event: dict[str, Any]) -> None:       # when the disk's data starts and ends
        if event["event"] in ("disk-start", "disk-done"):
            seen[event["event"]] = time.monotonic()

    try:
        (result,) = copy_disks(source, CopyRequest(disks=(device,), output_dir=Path(out),
                                                   name="shared", compress=False,
                                                   shared_limit=(Path(bucket), LIMIT)),
                               emit=emit)
        results.put((device, seen["disk-start"], seen["disk-done"], result.wire_bytes,
                     str(result.image)))
    finally:
        source.close()


@pytest.fixture(scope="module")
def two_disks(tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[SourceEndpoint, list[Path]]]:
    base = tmp_path_factory.mktemp("shared")
    paths = [base / "a.raw", base / "b.raw"]
    for path in paths:
        write_random_disk(path, 40 * MiB, 32 * MiB)      # random: compression cannot help
    with LoopSource.from_files(paths) as ep:
        yield ep, paths


def test_two_job_processes_share_one_bandwidth_limit(
        two_disks: tuple[SourceEndpoint, list[Path]], tmp_path: Path) -> None:
    ep, raws = two_disks
    bucket = tmp_path / "bandwidth.bucket"
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    start = time.monotonic() + 3.0                       # after both interpreters are up
    procs = [ctx.Process(target=_copy_one, args=(ep, device, str(tmp_path / f"job{i}"),
                                                 str(bucket), start, results))
             for i, device in enumerate(ep.disks)]
    for i, proc in enumerate(procs):
        (tmp_path / f"job{i}").mkdir()
        proc.start()
    got = {}
    for _ in procs:
        device, began, ended, wire, image = results.get(timeout=300)
        got[device] = (began, ended, wire, image)
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    begins = [g[0] for g in got.values()]
    ends = [g[1] for g in got.values()]
    assert max(begins) < min(ends), "the two copies ran at the same time"
    wire = sum(g[2] for g in got.values())
    assert wire >= 64 * MiB
    span = max(ends) - min(begins)
    # 64 MiB at 4 MiB/s over both: at least 16 s less the quarter-second burst; each under a
    # 4 MiB/s of its own would have been done in about 8 s.
    assert span >= (wire - LIMIT / 4) / LIMIT * 0.95, (span, wire)
    for raw, device in zip(raws, ep.disks, strict=True):
        assert identical(raw, Path(got[device][3]))
