"""The one home of hivex: read and write Windows registry hive files on the host.

p2v downloads a guest's SYSTEM and SOFTWARE hives out of the appliance, edits them here and
uploads them back. Values are typed (`RegValue`) so callers never handle UTF-16 or byte
orders; `set_value` reports whether anything changed, which is what makes a second
`p2v fix` a no-op. `create_hive` writes an empty hive (hivex cannot make one) for the test
bed's phony Windows images.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2v.errors import FixError

REG_SZ, REG_EXPAND_SZ, REG_BINARY, REG_DWORD, REG_MULTI_SZ, REG_QWORD = 1, 2, 3, 4, 7, 11
_TYPE_NAMES = {REG_SZ: "sz", REG_EXPAND_SZ: "expand_sz", REG_BINARY: "binary",
               REG_DWORD: "dword", REG_MULTI_SZ: "multi_sz", REG_QWORD: "qword"}


@dataclass(frozen=True)
class RegValue:
    """A typed registry value: kind is sz, expand_sz, multi_sz, dword, qword or binary."""

    kind: str
    data: str | int | bytes | tuple[str, ...]

    @staticmethod
    def sz(text: str) -> RegValue:
        return RegValue("sz", text)

    @staticmethod
    def expand_sz(text: str) -> RegValue:
        return RegValue("expand_sz", text)

    @staticmethod
    def multi_sz(*items: str) -> RegValue:
        return RegValue("multi_sz", tuple(items))

    @staticmethod
    def dword(number: int) -> RegValue:
        return RegValue("dword", number)

    @staticmethod
    def qword(number: int) -> RegValue:
        return RegValue("qword", number)

    @staticmethod
    def binary(data: bytes) -> RegValue:
        return RegValue("binary", data)

    def encode(self) -> tuple[int, bytes]:
        if self.kind in ("sz", "expand_sz"):
            assert isinstance(self.data, str)
            return (REG_SZ if self.kind == "sz" else REG_EXPAND_SZ,
                    (self.data + "\0").encode("utf-16-le"))
        if self.kind == "multi_sz":
            assert isinstance(self.data, tuple)
            return REG_MULTI_SZ, ("".join(s + "\0" for s in self.data) + "\0").encode("utf-16-le")
        if self.kind == "dword":
            assert isinstance(self.data, int)
            return REG_DWORD, struct.pack("<I", self.data)
        if self.kind == "qword":
            assert isinstance(self.data, int)
            return REG_QWORD, struct.pack("<Q", self.data)
        assert isinstance(self.data, bytes)
        return REG_BINARY, self.data

    @staticmethod
    def decode(kind: int, raw: bytes) -> RegValue:
        if kind in (REG_SZ, REG_EXPAND_SZ):
            text = raw.decode("utf-16-le", errors="replace").split("\0", 1)[0]
            return RegValue("sz" if kind == REG_SZ else "expand_sz", text)
        if kind == REG_MULTI_SZ:
            items = raw.decode("utf-16-le", errors="replace").split("\0")
            return RegValue("multi_sz", tuple(i for i in items if i))
        if kind == REG_DWORD and len(raw) >= 4:
            return RegValue("dword", struct.unpack("<I", raw[:4])[0])
        if kind == REG_QWORD and len(raw) >= 8:
            return RegValue("qword", struct.unpack("<Q", raw[:8])[0])
        return RegValue("binary", bytes(raw))


def _split(path: str) -> list[str]:
    return [p for p in path.replace("/", "\\").split("\\") if p]


class Hive:
    """An open hive file. Paths are backslash-separated, relative to the hive's root, and
    matched case-insensitively (as Windows does)."""

    def __init__(self, raw: Any, path: Path) -> None:
        self._h = raw
        self.path = path
        self.changed = False

    def node(self, path: str) -> int | None:
        node = self._h.root()
        for part in _split(path):
            node = self._h.node_get_child(node, part)
            if node is None:
                return None
        return int(node)

    def ensure(self, path: str) -> int:
        """The node at path, creating missing keys on the way."""
        node = self._h.root()
        for part in _split(path):
            child = self._h.node_get_child(node, part)
            if child is None:
                child = self._h.node_add_child(node, part)
                self.changed = True
            node = child
        return int(node)

    def children(self, path: str) -> list[str]:
        node = self.node(path)
        if node is None:
            return []
        return [str(self._h.node_name(c)) for c in self._h.node_children(node)]

    def values(self, path: str) -> dict[str, RegValue]:
        node = self.node(path)
        if node is None:
            return {}
        result = {}
        for value in self._h.node_values(node):
            kind, raw = self._h.value_value(value)
            result[str(self._h.value_key(value))] = RegValue.decode(int(kind), bytes(raw))
        return result

    def get(self, path: str, name: str) -> RegValue | None:
        """A value by name (case-insensitive; "" is the key's default value)."""
        for key, value in self.values(path).items():
            if key.lower() == name.lower():
                return value
        return None

    def set_value(self, path: str, name: str, value: RegValue) -> bool:
        """Set one value (creating the key); False when it already had exactly this value."""
        if self.get(path, name) == value:
            return False
        node = self.ensure(path)
        kind, raw = value.encode()
        self._h.node_set_value(node, {"key": name, "t": kind, "value": raw})
        self.changed = True
        return True

    def commit(self) -> None:
        if self.changed:
            self._h.commit(None)


@contextmanager
def open_hive(path: Path, write: bool = False) -> Iterator[Hive]:
    """Open a hive file; with write=True the changes are committed on a clean exit."""
    try:
        import hivex  # noqa: PLC0415 - the only importer of hivex by design
    except ImportError as exc:  # pragma: no cover - depends on the host
        raise FixError(images=str(path), detail="import hivex failed; install python3-hivex "
                       "and run p2v from the venv built by `make setup`") from exc
    try:
        raw = hivex.Hivex(str(path), write=write)
    except RuntimeError as exc:
        raise FixError(images=str(path), detail=f"not a registry hive: {exc}") from exc
    hive = Hive(raw, path)
    try:
        yield hive
        if write:
            hive.commit()
    except RuntimeError as exc:
        raise FixError(images=str(path), detail=f"hivex failed: {exc}") from exc


# ---------------------------------------------------------------------------- new hives

def _cell(payload: bytes) -> bytes:
    """An allocated cell: negative size (8-byte aligned, size field included) + payload."""
    size = (len(payload) + 4 + 7) // 8 * 8
    return struct.pack("<i", -size) + payload.ljust(size - 4, b"\0")


def create_hive(path: Path, root_name: str = "ROOT") -> None:
    """Write an empty registry hive (one root key, one security descriptor) to path.

    Layout (regf version 1.3): a 4 KiB base block, then one 4 KiB hive bin holding the
    root key cell, its security cell and a free cell.
    """
    bin_size = 0x1000
    name = root_name.encode("ascii")
    nk_len = (0x50 + len(name) + 7) // 8 * 8
    sk_offset = 0x20 + nk_len
    # A self-relative security descriptor: DACL present, empty ACL.
    descriptor = struct.pack("<BBHIIII", 1, 0, 0x8004, 0, 0, 0, 20) + struct.pack(
        "<BBHHH", 2, 0, 8, 0, 0)
    nk = (b"nk" + struct.pack("<H", 0x2C) + b"\0" * 8
          + struct.pack("<IIIIIIIIIiHHIIII", 0, 0, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF, 0,
                        0xFFFFFFFF, sk_offset, -1, 0, 0, 0, 0, 0, 0)
          + struct.pack("<HH", len(name), 0) + name)
    sk = b"sk" + struct.pack("<HIIII", 0, sk_offset, sk_offset, 1, len(descriptor)) + descriptor
    cells = _cell(nk) + _cell(sk)
    assert len(_cell(nk)) == nk_len
    free = bin_size - 0x20 - len(cells)
    hbin = (b"hbin" + struct.pack("<III", 0, bin_size, 0) + b"\0" * 16 + cells
            + struct.pack("<i", free) + b"\0" * (free - 4))
    base = bytearray(0x1000)
    struct.pack_into("<4sIIQIIIIIII", base, 0, b"regf", 1, 1, 0, 1, 3, 0, 1, 0x20, bin_size, 1)
    checksum = 0
    for (word,) in struct.iter_unpack("<I", bytes(base[:0x1FC])):
        checksum ^= word
    struct.pack_into("<I", base, 0x1FC, checksum)
    path.write_bytes(bytes(base) + hbin)
