"""The command synopses in the docs, made from p2v's real parser.

A synopsis is a fenced block marked `synopsis` in a Markdown file under docs/:

    ```synopsis
    p2v convert [-h] [--identity FILE] ...
    ```

Its text is the subcommand's `format_usage()` without "usage: ". tests/unit/test_docs.py
checks every block against the parser (whitespace and wrapping aside); run
`scripts/update-synopses` to rewrite them all after a flag changes (it also adds a section
for a new subcommand to docs/user/reference.md)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REFERENCE = DOCS / "user/reference.md"      # shows every subcommand (update-synopses adds new ones)
FILES_HEADING = "## Files p2v reads"        # where on it a new subcommand's section goes
WIDTH = 92             # the wrapping of the blocks written (the check ignores wrapping)
BLOCK = re.compile(r"^```synopsis\n(.*?)^```$", re.S | re.M)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int           # 1-based line of the opening fence
    command: str        # "" for p2v itself, else the subcommand
    text: str


def parsers() -> dict[str, argparse.ArgumentParser]:
    """p2v's parser ("") and each subcommand's, by name."""
    sys.path.insert(0, str(ROOT))
    from p2v.cli import build_parser

    root = build_parser()
    found = {"": root}
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def usage(parser: argparse.ArgumentParser) -> str:
    """The parser's usage as --help prints it, "usage: " dropped, wrapped at WIDTH."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH + 2)     # argparse wraps at COLUMNS - 2
    try:
        text = parser.format_usage()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    prefix = "usage: "
    lines = [line[len(prefix):] if line.startswith(" " * len(prefix)) else line
             for line in text.rstrip("\n").splitlines()]
    return "\n".join(lines).removeprefix(prefix) + "\n"


def command_of(text: str) -> str:
    """Which parser a block shows: `p2v NAME ...` is NAME's, `p2v [-h] ...` p2v's own."""
    words = text.split()
    if len(words) > 1 and words[0] == "p2v" and not words[1].startswith(("[", "-")):
        return words[1]
    return ""


def blocks() -> list[Block]:
    """Every synopsis block in docs/ and README.md."""
    found = []
    for path in sorted([ROOT / "README.md", *DOCS.rglob("*.md")]):
        text = path.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(Block(path, line, command_of(match.group(1)), match.group(1)))
    return found


def same(a: str, b: str) -> bool:
    return a.split() == b.split()


def rewrite(text: str, by_name: dict[str, argparse.ArgumentParser]) -> str:
    """`text` with each synopsis block of a known command replaced by the parser's usage."""
    def fresh(match: re.Match[str]) -> str:
        name = command_of(match.group(1))
        if name not in by_name:
            return match.group(0)          # unknown: left for the test to name
        return f"```synopsis\n{usage(by_name[name])}```"

    return BLOCK.sub(fresh, text)


def helps() -> dict[str, str]:
    """Each subcommand's one-line help, as `p2v --help` lists it."""
    root = parsers()[""]
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {choice.dest: choice.help or "" for choice in action._get_subactions()}
    return {}


def _sentence(text: str) -> str:
    return (text[:1].upper() + text[1:] + ".") if text else ""


def add_missing(text: str, by_name: dict[str, argparse.ArgumentParser]) -> str:
    """The reference page with a section for each subcommand it lacks, before FILES_HEADING."""
    shown = {command_of(m.group(1)) for m in BLOCK.finditer(text)}
    missing = [name for name in by_name if name not in shown]
    if not missing:
        return text
    one_line = helps()
    new = "".join(f"### `p2v {name}`\n\n{_sentence(one_line.get(name, ''))}\n\n"
                  f"```synopsis\n{usage(by_name[name])}```\n\n" for name in missing)
    at = text.find(FILES_HEADING)
    return text + "\n" + new if at < 0 else text[:at] + new + text[at:]


def main() -> int:
    by_name = parsers()
    reference = REFERENCE.read_text(encoding="utf-8")
    with_all = add_missing(reference, by_name)
    if with_all != reference:
        REFERENCE.write_text(with_all, encoding="utf-8")
        print(f"update-synopses: added the missing subcommands to {REFERENCE.relative_to(ROOT)}"
              " (say there what each is for)")
    for path in sorted([ROOT / "README.md", *DOCS.rglob("*.md")]):
        old = path.read_text(encoding="utf-8")
        new = rewrite(old, by_name)
        if new != old:
            path.write_text(new, encoding="utf-8")
            print(f"update-synopses: rewrote {path.relative_to(ROOT)}")
    unknown = [b for b in blocks() if b.command not in by_name]
    for b in unknown:
        print(f"update-synopses: {b.path.relative_to(ROOT)}:{b.line}: no subcommand "
              f"{b.command!r} in p2v; fix or remove the block", file=sys.stderr)
    return 1 if unknown else 0


if __name__ == "__main__":
    sys.exit(main())
