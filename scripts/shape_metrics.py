#!/usr/bin/env python3
"""The shape of `p2v/` in numbers: what the architecture issue measures before and after.

Run from the repo: `python3 scripts/shape_metrics.py [--json]`. Pure AST and import-graph
counts (nothing is imported or run):
- the longest function, and every function over 60 lines (decorators and docstring included);
- files over 500 lines;
- import cycles between modules and between packages (strongly connected components of the
  import graph, imports under `if TYPE_CHECKING:` left out since they never run; a package is
  `p2v.<name>`, so `fix` -> `verify` -> `fix` counts even when no module cycle closes);
- for each outside library, how many modules import it;
- the names `Any` used in annotations and code;
- the lines of `run_job`.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "p2v"
OUTSIDE = ("paramiko", "guestfs", "libvirt", "hivex", "dask", "distributed", "tqdm")
LONG_FUNCTION = 60
LONG_FILE = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Every module this one imports when it runs (function-level imports included)."""
    found: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from p2v.fix import session` imports the module p2v.fix.session.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))
    return result


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def measure() -> dict[str, object]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p): p for p in files}
    functions: list[tuple[int, str]] = []
    long_files: list[tuple[int, str]] = []
    outside: dict[str, list[str]] = {lib: [] for lib in OUTSIDE}
    graph: dict[str, set[str]] = {}
    any_count = 0
    run_job_lines = 0
    for module, path in modules.items():
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > LONG_FILE:
            long_files.append((lines, str(path.relative_to(ROOT))))
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = (node.end_lineno or node.lineno) - first + 1
                functions.append((length, f"{path.relative_to(ROOT)}:{node.name}"))
                if node.name == "run_job":
                    run_job_lines = max(run_job_lines, length)
            elif isinstance(node, ast.Name) and node.id == "Any":
                any_count += 1
            elif isinstance(node, ast.Attribute) and node.attr == "Any":
                any_count += 1
        imports = runtime_imports(tree, module, path.name == "__init__.py")
        graph[module] = {m for m in imports if m in modules and m != module}
        for lib in OUTSIDE:
            if any(m == lib or m.startswith(lib + ".") for m in imports):
                outside[lib].append(module)
    functions.sort(reverse=True)
    long_functions = [f for f in functions if f[0] > LONG_FUNCTION]
    found_cycles = cycles(graph)
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(_package(module), set()).update(
            _package(t) for t in targets if _package(t) != _package(module))
    package_cycles = cycles(packages)
    return {
        "longest_function": {"name": functions[0][1], "lines": functions[0][0]},
        "functions_over_60": len(long_functions),
        "functions_over_60_list": [f"{name} {n}" for n, name in long_functions],
        "files_over_500": len(long_files),
        "files_over_500_list": [f"{name} {n}" for n, name in sorted(long_files, reverse=True)],
        "import_cycles": len(found_cycles),
        "import_cycle_list": found_cycles,
        "package_cycles": len(package_cycles),
        "package_cycle_list": package_cycles,
        "modules_importing": {lib: len(mods) for lib, mods in outside.items()},
        "modules_importing_list": outside,
        "any_count": any_count,
        "run_job_lines": run_job_lines,
        "python_lines": sum(len(p.read_text().splitlines()) for p in files),
    }


# The functions still over the limit, each with the length it may not exceed: the list only
# shrinks (split one, then remove its line); `make lint` fails on any other function over 60.
ALLOWED_LONG = ROOT / "scripts" / "long_functions.txt"


def check_lengths(figures: dict[str, object], allowed_path: Path = ALLOWED_LONG) -> list[str]:
    """Problems with function lengths: a new function over the limit, a listed one that grew,
    a listed one that is now short enough to be removed from the list."""
    allowed: dict[str, int] = {}
    for line in allowed_path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, limit = line.rsplit(None, 1)
            allowed[name] = int(limit)
    problems = []
    found = {}
    for entry in figures["functions_over_60_list"]:  # type: ignore[attr-defined]
        name, length = entry.rsplit(None, 1)
        found[name] = int(length)
    for name, length in sorted(found.items()):
        if name not in allowed:
            problems.append(f"{name} is {length} lines (limit {LONG_FUNCTION}): split it")
        elif length > allowed[name]:
            problems.append(f"{name} grew to {length} lines (listed at {allowed[name]} in "
                            f"{allowed_path.name}, limit {LONG_FUNCTION}): split it")
    for name in sorted(set(allowed) - set(found)):
        problems.append(f"{name} is no longer over {LONG_FUNCTION} lines: remove it from "
                        f"{allowed_path.name}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    parser.add_argument("--check", action="store_true",
                        help=f"fail on a function over {LONG_FUNCTION} lines that is not in "
                             f"{ALLOWED_LONG.name} or grew past its listed length")
    args = parser.parse_args()
    figures = measure()
    if args.check:
        problems = check_lengths(figures)
        for problem in problems:
            print(f"shape_metrics: {problem}", file=sys.stderr)
        return 1 if problems else 0
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    for key in ("longest_function", "functions_over_60", "files_over_500", "import_cycles",
                "package_cycles",
                "modules_importing", "any_count", "run_job_lines", "python_lines"):
        print(f"{key}: {figures[key]}")
    for cycle in figures["import_cycle_list"]:  # type: ignore[attr-defined]
        print(f"  cycle: {' <-> '.join(cycle)}")
    for cycle in figures["package_cycle_list"]:  # type: ignore[attr-defined]
        print(f"  package cycle: {' <-> '.join(cycle)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
