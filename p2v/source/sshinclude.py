"""ssh_config's Include, expanded for the reader used where OpenSSH's client is missing.

paramiko's parser knows no Include; `expand_includes` inlines the files an Include names
the way OpenSSH reads them for one host alias, so the parser sees one flat text.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
from pathlib import Path

from p2v.errors import SourceSpecError, SshConfigRefused

_MAX_INCLUDE_DEPTH = 16       # OpenSSH's own limit (READCONF_MAX_DEPTH)

_LINE = re.compile(r"\s*([A-Za-z]+)(?:\s*=\s*|\s+)(.*)")


def _keyword(line: str) -> tuple[str, str]:
    """(keyword lowercase, arguments) of a config line; ("", "") for blanks and comments."""
    if not line.strip() or line.lstrip().startswith("#"):
        return "", ""
    match = _LINE.match(line)
    return (match.group(1).lower(), match.group(2).strip()) if match else ("", "")


def host_matches(patterns: str, alias: str) -> bool:
    """Whether a `Host` line's patterns take in `alias` (* and ?, ! negates), as OpenSSH."""
    matched = False
    try:
        words = shlex.split(patterns)
    except ValueError:          # an unbalanced quote: OpenSSH splits on blanks then
        words = patterns.split()
    for pattern in words:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in body)
        if re.fullmatch(regex, alias, re.IGNORECASE):
            if negated:
                return False
            matched = True
    return matched


def _include_paths(args: str, relative_to: Path, source: Path) -> list[Path]:
    try:
        names = shlex.split(args)
    except ValueError as exc:
        raise SourceSpecError(source=str(source), detail=f"bad Include line: {exc}") from None
    paths: list[Path] = []
    for name in names:
        path = Path(os.path.expanduser(name))
        pattern = str(path if path.is_absolute() else relative_to / path)
        paths.extend(Path(p) for p in sorted(glob.glob(pattern)))
    return paths


def expand_includes(path: Path, alias: str, *, relative_to: Path, depth: int = 0) -> str:
    """The text of config `path` with each Include replaced by the files it names (globs,
    ~, relative to `relative_to`), read the way OpenSSH reads them for `alias`.

    An Include in a Host block that does not take in `alias` adds nothing; after an
    included file the block that held the Include goes on (its Host line is repeated, or
    `Host *` at the top). An Include inside a Match block is refused: only ssh knows
    whether that Match holds.
    """
    if depth > _MAX_INCLUDE_DEPTH:
        raise SourceSpecError(source=str(path), detail="Include nested too deep (a loop?)")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeError) as exc:
        raise SourceSpecError(source=str(path), detail=f"unreadable ssh config: {exc}") from None
    out: list[str] = []
    block: str | None = None
    for line in lines:
        keyword, args = _keyword(line)
        if keyword in ("host", "match"):
            block = line
        if keyword != "include":
            out.append(line)
            continue
        held_by = _keyword(block)[0] if block is not None else ""
        if held_by == "match":
            raise SshConfigRefused(source=alias, option="Include", detail=(
                f"{path} has an Include inside a Match block, which only OpenSSH's own "
                "reader can resolve; install OpenSSH's ssh client"))
        if held_by == "host" and not host_matches(_keyword(block or "")[1], alias):
            continue
        for included in _include_paths(args, relative_to, path):
            out.append(expand_includes(included, alias, relative_to=relative_to,
                                       depth=depth + 1))
        out.append(block or "Host *")
    return "\n".join(out) + "\n"
