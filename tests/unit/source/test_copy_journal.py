"""The copy journal: appended after a flush, read back on resume, a torn last line ignored;
which ranges a resume must zero."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2v.errors import JournalUnreadable
from p2v.transfer.copy import _stale_ranges
from p2v.transfer.journal import Journal
from p2v.transfer.manifest import FREE_MARK


def test_journal_round_trip_and_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "disk.qcow2.journal"
    header = {"schema": "p2v.journal/1", "device": "/dev/sda", "size": 8 << 20,
              "chunk_size": 1 << 20}
    journal = Journal.create(path, header)
    journal.append([(0, "ab" * 32), (1, None), (2, FREE_MARK)])
    journal.append([])
    with path.open("a") as out:
        out.write('{"i": 3, "h": "cd')          # p2v killed in the middle of a line
    again = Journal.load(path)
    assert again.header == header
    assert again.done == {0: "ab" * 32, 1: None, 2: FREE_MARK}
    again.append([(3, "ef" * 32)])                # the torn line is gone, not extended
    assert Journal.load(path).done[3] == "ef" * 32


HEADER = {"schema": "p2v.journal/1", "device": "/dev/sda", "size": 8 << 20,
          "chunk_size": 1 << 20}


def test_a_torn_header_is_nothing_journaled(tmp_path: Path) -> None:
    """Power lost inside create: an empty file, half a header, or zeros the filesystem
    left where the header was to be."""
    path = tmp_path / "disk.qcow2.journal"
    for torn in (b"", b'{"schema": "p2v.jou', b"\0" * 40, b"\0" * 40 + b"\n"):
        path.write_bytes(torn)
        assert Journal.load(path, "p2v.journal/1") is None
        assert path.read_bytes() == torn          # loading never writes


def test_a_garbled_header_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "disk.qcow2.journal"
    for bad in (b"\xff\xfe not json\n", b"[1, 2]\n", b'{"schema": "p2v.sync-journal/1"}\n'):
        path.write_bytes(bad + b'{"i": 0, "h": null}\n')
        with pytest.raises(JournalUnreadable) as info:
            Journal.load(path, "p2v.journal/1")
        assert "\n" not in info.value.message and info.value.exit_code == 2
        assert f"remove it and {tmp_path / 'disk.qcow2.part'}" in info.value.message


def test_a_bad_line_ends_the_journal_and_is_cut_only_on_the_next_append(tmp_path: Path
                                                                        ) -> None:
    path = tmp_path / "disk.qcow2.journal"
    Journal.create(path, HEADER).append([(0, "ab" * 32), (1, None)])
    good = path.read_bytes()
    path.write_bytes(good + b'{"i": "2"}\n{"i": 3, "h": null}\n{"i": 4')
    before = path.read_bytes()
    journal = Journal.load(path, "p2v.journal/1")
    assert journal is not None and journal.done == {0: "ab" * 32, 1: None}
    assert path.read_bytes() == before           # a refused journal stays as it was
    journal.append([(5, None)])
    assert path.read_bytes() == good + b'{"i": 5, "h": null}\n'


def test_stale_ranges_are_the_data_inside_unjournaled_chunks() -> None:
    mib = 1 << 20
    data = [(0, 3 * mib), (5 * mib, mib // 2), (7 * mib, 3 * mib)]
    missing = [(1, 2), (2, 4), (5, 6), (8, 9), (12, 14)]
    assert _stale_ranges(data, missing, mib) == [
        (mib, 2 * mib), (5 * mib, mib // 2), (8 * mib, mib)]
    assert _stale_ranges([], missing, mib) == []
    assert _stale_ranges(data, [], mib) == []
