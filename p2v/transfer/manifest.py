"""The manifest of a finished image (`<image>.manifest.json`): the source's identity, the
device, its size and every chunk's hash; what sync compares the source against."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from p2v.errors import UsageError

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
