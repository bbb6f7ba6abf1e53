"""An interpreter for the small subset of cmd.exe the first-boot script is written in.

cmd.exe is not available here, so the tests run the script's own text with this: variables
expanded line by line as cmd does (%NAME%, %ERRORLEVEL%), `set`, `set /a N=N+1`,
`set /p N=<file`, `if exist F CMD`, `if %A% EQU|GEQ|GTR|LSS|LEQ|NEQ %B% goto L`, labels and
`goto`, `echo` with a leading `>`/`>>` redirection, a program call with a trailing
`>>file 2>&1`, `rem`, `@echo off`, `exit /b N`. Anything else raises, so the script cannot
drift outside what this checks. Windows paths under the system root map to a host dir.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

Program = Callable[[list[str]], tuple[int, str]]   # argv -> (exit code, output)


class Unsupported(Exception):
    pass


def _split_args(text: str) -> list[str]:
    return [a.strip('"') for a in re.findall(r'"[^"]*"|\S+', text)]


class CmdSubset:
    def __init__(self, system_root: Path, programs: dict[str, Program]) -> None:
        self.root = system_root
        self.programs = programs
        self.env: dict[str, str] = {"SystemRoot": "C:\\Windows"}
        self.errorlevel = 0

    def host(self, path: str) -> Path:
        """C:\\Windows\\X\\Y -> system_root/X/Y (the only tree the script touches)."""
        path = path.strip('"')
        prefix = "C:\\Windows\\"
        if not path.lower().startswith(prefix.lower()):
            raise Unsupported(f"path outside %SystemRoot%: {path}")
        return self.root.joinpath(*path[len(prefix):].split("\\"))

    def expand(self, line: str) -> str:
        def var(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.upper() == "ERRORLEVEL":
                return str(self.errorlevel)
            return next((v for k, v in self.env.items() if k.lower() == name.lower()), "")
        return re.sub(r"%([A-Za-z_][A-Za-z0-9_]*)%", var, line)

    def _write(self, target: str, text: str, append: bool) -> None:
        path = self.host(target)
        with path.open("a" if append else "w", newline="") as f:
            f.write(text + "\r\n")

    def run(self, text: str) -> int:
        """Run the script once (one boot); return its exit code."""
        lines = text.replace("\r\n", "\n").split("\n")
        labels = {ln.strip()[1:].lower(): i for i, ln in enumerate(lines)
                  if ln.strip().startswith(":")}
        pc = 0
        steps = 0
        while pc < len(lines):
            steps += 1
            if steps > 10_000:
                raise Unsupported("the script loops")
            raw = lines[pc].strip()
            pc += 1
            if not raw or raw.startswith(":") or raw.lower().startswith("rem ") \
                    or raw.lower() == "@echo off":
                continue
            jump = self.statement(self.expand(raw))
            if jump is None:
                continue
            if isinstance(jump, int):
                return jump
            if jump == "eof":
                return self.errorlevel
            if jump not in labels:
                raise Unsupported(f"goto to unknown label {jump}")
            pc = labels[jump] + 1
        return self.errorlevel

    def statement(self, line: str) -> str | int | None:
        """Run one expanded statement: None, a label to jump to, or an exit code."""
        low = line.lower()
        if low.startswith("goto "):
            label = line[5:].strip().lstrip(":").lower()
            return label
        if low.startswith("exit /b"):
            return int(line[7:].strip() or "0")
        m = re.fullmatch(r'if exist ("[^"]+"|\S+) (.+)', line, re.IGNORECASE)
        if m:
            return self.statement(m.group(2)) if self.host(m.group(1)).exists() else None
        m = re.fullmatch(r"if (\S+) (EQU|NEQ|GEQ|GTR|LSS|LEQ) (\S+) (.+)", line, re.IGNORECASE)
        if m:
            a, op, b = int(m.group(1)), m.group(2).upper(), int(m.group(3))
            ok = {"EQU": a == b, "NEQ": a != b, "GEQ": a >= b, "GTR": a > b, "LSS": a < b,
                  "LEQ": a <= b}[op]
            return self.statement(m.group(4)) if ok else None
        m = re.fullmatch(r'set /p (\w+)=<("[^"]+"|\S+)', line, re.IGNORECASE)
        if m:
            first = self.host(m.group(2)).read_text().splitlines()
            self.env[m.group(1)] = first[0] if first else ""
            return None
        m = re.fullmatch(r"set /a (\w+)=(\w+)\+(\d+)", line, re.IGNORECASE)
        if m:
            current = int(self.env.get(m.group(2), "0") or 0)
            self.env[m.group(1)] = str(current + int(m.group(3)))
            return None
        m = re.fullmatch(r"set (\w+)=(.*)", line, re.IGNORECASE)
        if m:
            self.env[m.group(1)] = m.group(2)
            return None
        m = re.fullmatch(r'(>>?)("[^"]+") echo (.*)', line, re.IGNORECASE)
        if m:
            self._write(m.group(2), m.group(3), append=m.group(1) == ">>")
            return None
        m = re.fullmatch(r'(\S+\.exe) (.*) >>("[^"]+") 2>&1', line, re.IGNORECASE)
        if m and m.group(1).lower() in self.programs:
            code, output = self.programs[m.group(1).lower()](_split_args(m.group(2)))
            self._write(m.group(3), output, append=True)
            self.errorlevel = code
            return None
        raise Unsupported(f"not in the subset: {line}")
