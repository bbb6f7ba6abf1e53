"""The copy journal: appended after a flush, read back on resume, a torn last line ignored."""

from __future__ import annotations

from pathlib import Path

from p2v.copy import FREE_MARK, _Journal


def test_journal_round_trip_and_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "disk.qcow2.journal"
    header = {"schema": "p2v.journal/1", "device": "/dev/sda", "size": 8 << 20,
              "chunk_size": 1 << 20}
    journal = _Journal.create(path, header)
    journal.append([(0, "ab" * 32), (1, None), (2, FREE_MARK)])
    journal.append([])
    with path.open("a") as out:
        out.write('{"i": 3, "h": "cd')          # p2v killed in the middle of a line
    again = _Journal.load(path)
    assert again.header == header
    assert again.done == {0: "ab" * 32, 1: None, 2: FREE_MARK}
    again.append([(3, "ef" * 32)])                # the torn line is gone, not extended
    assert _Journal.load(path).done[3] == "ef" * 32
