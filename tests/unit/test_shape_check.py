"""scripts/shape_metrics.py --check: the 60-line rule `make lint` enforces (pure logic)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "shape_metrics.py"


def shape() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shape_metrics", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_new_grown_and_shrunk_functions_are_each_named(tmp_path: Path) -> None:
    allowed = tmp_path / "long.txt"
    allowed.write_text("# comment\np2v/a.py:kept 80\np2v/a.py:grew 70\np2v/a.py:gone 65\n")
    figures = {"functions_over_60_list": ["p2v/a.py:kept 80", "p2v/a.py:grew 71",
                                          "p2v/b.py:new 61"]}
    problems = shape().check_lengths(figures, allowed)
    assert problems == [
        "p2v/a.py:grew grew to 71 lines (listed at 70 in long.txt, limit 60): split it",
        "p2v/b.py:new is 61 lines (limit 60): split it",
        "p2v/a.py:gone is no longer over 60 lines: remove it from long.txt",
    ]


def test_the_repository_keeps_the_rule() -> None:
    module = shape()
    assert module.check_lengths(module.measure()) == []
