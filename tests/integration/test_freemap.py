"""The reader's free-space map against e2fsprogs' own count, on fresh and used ext4 and swap."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from p2v import runner
from p2v.source.extents import FREEMAP

MiB = 1 << 20


def free_ranges(path: Path) -> list[tuple[int, int]]:
    namespace: dict[str, Any] = {}
    exec(FREEMAP, namespace)  # noqa: S102 - the reader's own code, run as on a source
    fd = os.open(path, os.O_RDONLY)
    try:
        return list(namespace["free_ranges"](fd, str(path), path.stat().st_size))
    finally:
        os.close(fd)


def dumpe2fs_free_bytes(path: Path) -> int:
    header = runner.run(["dumpe2fs", "-h", path]).stdout
    free = int(re.search(r"^Free blocks:\s+(\d+)", header, re.M)[1])  # type: ignore[index]
    block = int(re.search(r"^Block size:\s+(\d+)", header, re.M)[1])  # type: ignore[index]
    return free * block


@pytest.mark.parametrize("options", [["-b", "4096"], ["-b", "1024"],
                                     ["-b", "4096", "-O", "^flex_bg"]])
def test_ext4_free_space_matches_e2fsprogs(tmp_path: Path, options: list[str]) -> None:
    fs = tmp_path / "fs.raw"
    with fs.open("wb") as f:
        f.truncate(300 * MiB)
    runner.run(["mkfs.ext4", "-q", "-F", *options, fs])
    # Fill part of it with a file through debugfs (no mount needed), then look again.
    data = tmp_path / "data"
    data.write_bytes(os.urandom(40 * MiB))
    runner.run(["debugfs", "-w", "-R", f"write {data} data", fs])
    ranges = free_ranges(fs)
    free = sum(z - a for a, z in ranges)
    expected = dumpe2fs_free_bytes(fs)
    # Only whole bitmap bytes (8 blocks) count, so a few blocks per group may be missed.
    assert expected - 64 * 8 * 4096 <= free <= expected
    assert all(0 <= a < z <= fs.stat().st_size for a, z in ranges)
    assert all(ranges[i][1] < ranges[i + 1][0] for i in range(len(ranges) - 1))
    # The file's bytes lie outside every free range.
    content = fs.read_bytes()
    marker = data.read_bytes()[:4096]
    where = content.find(marker)
    assert where >= 0 and not any(a <= where < z for a, z in ranges)


def test_swap_is_free_past_its_header(tmp_path: Path) -> None:
    swap = tmp_path / "swap.raw"
    with swap.open("wb") as f:
        f.truncate(64 * MiB)
    runner.run(["mkswap", "-L", "s1", swap])
    assert free_ranges(swap) == [(4096, 64 * MiB)]


def test_unknown_content_is_never_free(tmp_path: Path) -> None:
    blob = tmp_path / "blob.raw"
    blob.write_bytes(os.urandom(8 * MiB))
    assert free_ranges(blob) == []
