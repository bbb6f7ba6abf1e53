"""The serial console on a guest's kernel command line: fix adds it for good when asked
(--serial-console), the boot check only in its throwaway overlay."""

from __future__ import annotations

import re

CONSOLE_ARGS = "console=tty0 console=ttyS0,115200n8"
KERNEL_LINE = re.compile(r"^(\s*(?:linux|linuxefi|linux16|kernel)\s+\S+.*?)\s*$", re.MULTILINE)

def add_console(text: str, pattern: re.Pattern[str] = KERNEL_LINE) -> str:
    """Append the serial console to every kernel line that lacks it."""

    def repl(match: re.Match[str]) -> str:
        line = match.group(1)
        return line if "console=ttyS0" in line else f"{line} {CONSOLE_ARGS}"

    return pattern.sub(repl, text)
