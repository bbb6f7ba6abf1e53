"""The journal beside an image being written: a JSON header line, then one line per chunk
known to be on disk. Lines are appended only after a flush made their chunks durable; a
kill's torn last line is cut off before the next append. copy and sync share it."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2v.errors import JournalUnreadable
from p2v.secure import open_private, write_private


@dataclass
class Journal:
    path: Path
    header: dict[str, Any]
    done: dict[int, str | None] = field(default_factory=dict)   # index -> sha256 (None: zero)
    # Bytes of whole, valid lines: a kill's torn tail is cut off before the next append
    # (or it would extend it), not while loading, so a refused journal stays as it was.
    valid_bytes: int | None = None

    @classmethod
    def load(cls, path: Path, schema: str | None = None) -> Journal | None:
        """The journal at path; None if its header line never got whole onto the disk (a
        kill or power loss inside `create`: nothing can have been journaled after it)."""
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        lines = data[:end].split(b"\n")[:-1]
        if not lines or not lines[0].strip(b"\0 "):
            return None
        try:
            header = json.loads(lines[0])
        except ValueError:
            header = None
        if not isinstance(header, dict) or (schema and header.get("schema") != schema):
            raise JournalUnreadable(path=path, part=path.with_suffix(".part"),
                                    detail=f"its first line is not a {schema or 'p2v'} "
                                           "journal header")
        journal = cls(path, header)
        offset = len(lines[0]) + 1
        for line in lines[1:]:
            entry = _entry(line)
            if entry is None:
                break           # torn by a kill: everything before it stands
            journal.done[entry[0]] = entry[1]
            offset += len(line) + 1
        if offset != len(data):
            journal.valid_bytes = offset
        return journal

    @classmethod
    def create(cls, path: Path, header: dict[str, Any]) -> Journal:
        write_private(path, json.dumps(header) + "\n", "journal")
        fsync(path)
        fsync(path.parent)          # the journal's name too, before anything relies on it
        return cls(path, header)

    def append(self, entries: Sequence[tuple[int, str | None]]) -> None:
        if not entries:
            return
        if self.valid_bytes is not None:
            with self.path.open("r+b") as f:
                f.truncate(self.valid_bytes)
            self.valid_bytes = None
        with open_private(self.path, "a", "journal") as out:
            for index, digest in entries:
                out.write(json.dumps({"i": index, "h": digest}) + "\n")
            out.flush()
            os.fsync(out.fileno())
        self.done.update(entries)


def _entry(line: bytes) -> tuple[int, str | None] | None:
    """One journal line as (index, hash), or None for anything else (a torn line)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or type(entry.get("i")) is not int or entry["i"] < 0:
        return None
    digest = entry.get("h")
    return (entry["i"], digest) if digest is None or isinstance(digest, str) else None


def fsync(path: Path) -> None:
    """Make a file (or a directory's entries) durable before anything relies on it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
