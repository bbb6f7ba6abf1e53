"""The one way p2v writes a byte count for people: 512 B, 1.5 GiB (binary units)."""

from __future__ import annotations


def human_size(value: float | None) -> str:
    """VALUE bytes in the largest binary unit under 1024 of it; "?" when unknown."""
    if value is None:
        return "?"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
