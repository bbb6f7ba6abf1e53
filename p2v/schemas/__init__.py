"""The JSON Schemas (draft 2020-12) of the documents p2v writes and reads (docs/user/schemas.md).

Shipped as package data so a consumer of `--json` output, a work dir or a manifest can
check what it gets against the schema of the p2v it runs. p2v itself does not validate
with them at run time (jsonschema is only a test dependency): its own readers check what
they need and ignore keys they do not know.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

# Each document, by the name of its schema file (NAME.schema.json in this package).
NAMES = ("events", "inventory", "report", "caps", "manifest")


def filename(name: str) -> str:
    if name not in NAMES:
        raise KeyError(f"no schema named {name!r} (one of {', '.join(NAMES)})")
    return f"{name}.schema.json"


def text(name: str) -> str:
    """The schema file as shipped."""
    return resources.files(__name__).joinpath(filename(name)).read_text(encoding="utf-8")


def load(name: str) -> dict[str, Any]:
    """One schema as a dict; its `$id` is how the others refer to it (events -> report)."""
    data = json.loads(text(name))
    assert isinstance(data, dict)
    return data


def load_all() -> dict[str, dict[str, Any]]:
    """Every schema by name: what a validator's registry needs to follow `$ref`s between them."""
    return {name: load(name) for name in NAMES}


__all__ = ["NAMES", "filename", "load", "load_all", "text"]
