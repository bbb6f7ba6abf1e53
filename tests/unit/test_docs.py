"""The docs say what the code does: synopses equal --help, links resolve, no internal issue
numbers in the user guide, every error class has a troubleshooting entry.

A synopsis is a ```synopsis block (scripts/synopses.py); `scripts/update-synopses` rewrites
them all from the parser."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import synopses  # noqa: E402  (scripts/ is not a package)

DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
USER_DOCS = sorted((ROOT / "docs/user").glob("*.md"))
FIX = "run scripts/update-synopses to rewrite them from the parser"


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_every_synopsis_equals_the_parsers_usage() -> None:
    by_name = synopses.parsers()
    blocks = synopses.blocks()
    assert len(blocks) >= len(by_name), "the synopsis blocks are gone from the docs"
    wrong = []
    for block in blocks:
        where = f"{rel(block.path)}:{block.line}"
        if block.command not in by_name:
            wrong.append(f"{where}: no subcommand {block.command!r} in p2v")
        elif not synopses.same(block.text, synopses.usage(by_name[block.command])):
            wrong.append(f"{where}: `p2v {block.command}` differs from its --help usage")
    assert not wrong, "\n".join(wrong) + f"\n{FIX}"


def test_the_reference_shows_every_subcommand() -> None:
    reference = ROOT / "docs/user/reference.md"
    shown = {b.command for b in synopses.blocks() if b.path == reference}
    missing = sorted(set(synopses.parsers()) - shown)
    assert not missing, (f"docs/user/reference.md has no synopsis of "
                         f"{', '.join(repr(m) for m in missing)}: run scripts/update-synopses "
                         "(it adds a section for each), then say there what it is for")


def test_a_changed_flag_is_caught_and_rewritten() -> None:
    """The check can fail, and the rewrite repairs exactly what it reports."""
    by_name = synopses.parsers()
    stale = "```synopsis\np2v jobs [-h] [--json]\n```\n"
    assert not synopses.same("p2v jobs [-h] [--json]", synopses.usage(by_name["jobs"]))
    fresh = synopses.rewrite(stale, by_name)
    assert fresh != stale and "--output-dir DIR" in fresh
    body = fresh.removeprefix("```synopsis\n").removesuffix("```\n")
    assert synopses.same(body, synopses.usage(by_name["jobs"]))
    assert synopses.rewrite(fresh, by_name) == fresh


def _slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, re.M)}


def test_every_link_in_the_docs_resolves() -> None:
    broken = []
    for doc in DOCS:
        text = re.sub(r"^```.*?^```", "", doc.read_text(encoding="utf-8"), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not path.exists():
                broken.append(f"{rel(doc)}: ({target}): no such file")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{rel(doc)}: ({target}): no heading #{anchor} in {rel(path)}")
    assert not broken, "\n".join(broken)


def test_every_docs_path_named_in_code_exists() -> None:
    """Help strings, docstrings and comments that cite docs/… point at a page that exists."""
    sources = [*ROOT.glob("p2v/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/*"),
               *ROOT.glob("scripts/*"), ROOT / "Makefile", ROOT / "pyproject.toml", *DOCS]
    missing = []
    for source in sources:
        if not source.is_file():
            continue
        for name in re.findall(r"(?<![\w/.])docs/[\w/.-]+\.md", source.read_text(errors="replace")):
            if not (ROOT / name).exists():
                missing.append(f"{rel(source)}: {name}")
    assert not missing, "no such page:\n" + "\n".join(sorted(set(missing)))


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda p: p.name)
def test_user_docs_name_no_internal_issue_numbers(doc: Path) -> None:
    pattern = re.compile(r"\bissues? #?\d+|(?<![\w&])#\d+\b|\bsession \d+", re.I)
    hits = [f"{rel(doc)}:{n}: {line.strip()}"
            for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
            if pattern.search(line)]
    assert not hits, "internal tracker references in the user guide:\n" + "\n".join(hits)


def _error_classes() -> dict[str, str]:
    """Every P2VError subclass defined in p2v/, by name -> the file defining it (read from
    the source, so modules needing libvirt or libguestfs need not import)."""
    bases: dict[str, tuple[list[str], str]] = {}
    for path in ROOT.glob("p2v/**/*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                names = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")
                         for b in node.bases]
                bases[node.name] = (names, rel(path))
    errors = {"P2VError": "p2v/errors.py"}
    grew = True
    while grew:
        grew = False
        for name, (parents, where) in bases.items():
            if name not in errors and any(p in errors for p in parents):
                errors[name] = where
                grew = True
    return errors


def test_every_error_class_has_a_troubleshooting_entry() -> None:
    page = (ROOT / "docs/user/troubleshooting.md").read_text(encoding="utf-8")
    errors = _error_classes()
    assert {"HostKeyUnknown", "SourceMismatch", "JobLocked", "DriverMissing"} <= set(errors)
    missing = sorted(f"{name} ({where})" for name, where in errors.items()
                     if f"`{name}`" not in page)
    assert not missing, ("docs/user/troubleshooting.md has no entry (its message, cause and "
                         "fix, naming the class in backquotes) for: " + ", ".join(missing))
