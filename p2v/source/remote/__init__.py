"""The programs p2v runs on the source, kept as real files so that ruff, shellcheck and the
unit tests see them as code. Each is read here and sent at run time (`python3 -B -c TEXT` or
`sh -c TEXT`): nothing is installed on the source.

The Python ones run on the source's own python3, as old as 3.2, with the standard library
only; reader.py and hasher.py are sent after freemap.py and use what it defines."""

from __future__ import annotations

from importlib import resources


def script(name: str) -> str:
    """The text of the remote program NAME (a file beside this one)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
