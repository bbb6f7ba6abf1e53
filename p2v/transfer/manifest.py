"""The manifest of a finished image (`<image>.manifest.json`): the source's identity, the
device, its size and every chunk's hash; what sync compares the source against. Copy writes
it first, each sync pass rewrites it; both the same way (`chunk_summary`, `write_manifest`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from p2v.errors import UsageError
from p2v.secure import write_private
from p2v.transfer.journal import fsync

MANIFEST_SCHEMA = "p2v.manifest/1"
FREE_MARK = "free"     # journal/manifest value of a chunk skipped as free filesystem space


def read_manifest(path: Path) -> dict[str, Any]:
    """A copy's manifest; an unreadable one is a one-line error, not a traceback."""
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise UsageError(detail=f"the manifest {path} is unreadable ({exc}); remove it and "
                                "its image to copy afresh, or use another --output-dir"
                         ) from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise UsageError(detail=f"{path} is not a p2v manifest; remove it and its image to "
                                "copy afresh, or use another --output-dir")
    return manifest


def chunk_summary(hashes: list[str | None], size: int, chunk: int) -> tuple[str, int, int]:
    """(chunks_digest, zero chunks, free chunks) of an image's chunk hashes: the digest is
    sha256 over every chunk's sha256 in order, zero and free chunks hashed as zeros."""
    zero = hashlib.sha256(bytes(chunk)).hexdigest()
    digest = hashlib.sha256()
    for i, h in enumerate(hashes):
        if h is None or h == FREE_MARK:
            length = min(chunk, size - i * chunk)
            h = zero if length == chunk else hashlib.sha256(bytes(length)).hexdigest()
        digest.update(bytes.fromhex(h))
    zero_chunks = sum(1 for h in hashes if h is None)
    free_chunks = sum(1 for h in hashes if h == FREE_MARK)
    return digest.hexdigest(), zero_chunks, free_chunks


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically and durably: a crash leaves the old one or the new."""
    tmp = path.with_name(path.name + ".tmp")
    write_private(tmp, json.dumps(manifest, indent=1) + "\n", "manifest")
    fsync(tmp)
    tmp.replace(path)
