"""The one event type: every long-running command (copy, sync, convert, batch) reports
progress as JSON-able dicts, one documented schema (docs/user/convert.md, p2v.events/1; its JSON
Schema is p2v/schemas/events.schema.json)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Event = dict[str, Any]
EventSink = Callable[[Event], None]


def discard(event: Event) -> None:
    """The sink of a caller that wants no events."""

