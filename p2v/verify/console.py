"""Read a boot's console and firmware logs: did it reach userspace, and if not, why."""

from __future__ import annotations

import re
from dataclasses import dataclass

from p2v.verify.probe import BEGIN, END

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


def clean(text: str) -> str:
    """Strip terminal escapes so patterns and evidence are plain text."""
    return _ANSI.sub("", text)


# (reason, pattern) in the order they are checked: the most specific cause first, because a
# missing root device also drops the initramfs to a shell, and that shell is not the cause.
FAILURES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("root-device-missing", re.compile(
        r"ALERT!\s+\S+ does not exist|Gave up waiting for root (file system )?device"
        r"|Warning: /dev/\S+ does not exist|Cannot open root device|Could not boot\.?"
        r"|unable to mount root fs|VFS: Unable to mount root")),
    ("kernel-panic", re.compile(r"Kernel panic - not syncing")),
    ("initramfs-shell", re.compile(
        r"Dropping to a shell|\(initramfs\)|dracut:/#|dracut Warning: .*emergency"
        r"|Entering emergency mode\. Exit the shell to continue")),
    ("emergency-mode", re.compile(
        r"You are in emergency mode|Give root password for maintenance"
        r"|You are in rescue mode")),
    ("bootloader-error", re.compile(r"grub rescue>|error: (no such device|file .* not found)"
                                    r"|Minimal BASH-like line editing")),
    ("no-bootloader", re.compile(
        r"No bootable device|Boot failed: not a bootable disk|No bootable option or device"
        r"|UEFI Interactive Shell|starting Boot\d+ \"EFI Internal Shell\"")),
)

# Failures that leave a machine stuck for good: report at once rather than waiting out the
# timeout. The others (e.g. "Boot failed" for one disk) may be followed by a later success.
FINAL_MARKERS = re.compile(
    r"Kernel panic - not syncing|\(initramfs\) ?$|dracut:/# ?$|grub rescue> ?$|Shell> ?$"
    r"|No bootable device\.|Give root password for maintenance|Press Enter for maintenance",
    re.MULTILINE,
)


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str
    state: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class ProbeReport:
    hostname: str
    root: str
    interfaces: tuple[Interface, ...]


def parse_probe(console: str) -> ProbeReport | None:
    """Return the guest's report if the probe printed one in full."""
    start = console.find(BEGIN)
    if start < 0:
        return None
    stop = console.find(END, start)
    if stop < 0:
        return None
    hostname, root = "unknown", "unknown"
    nics: list[Interface] = []
    for line in console[start + len(BEGIN):stop].splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "hostname":
            hostname = words[1]
        elif len(words) >= 2 and words[0] == "root":
            root = words[1]
        elif len(words) >= 4 and words[0] == "nic":
            addrs = tuple(a for a in (words[4].split(",") if len(words) > 4 else ()) if a)
            nics.append(Interface(words[1], words[2].lower(), words[3], addrs))
    return ProbeReport(hostname, root, tuple(nics))


def diagnose(console: str, firmware_log: str) -> str | None:
    """The first failure reason the logs show, or None."""
    text = console + "\n" + firmware_log
    for reason, pattern in FAILURES:
        if pattern.search(text):
            return reason
    return None


def is_stuck(console: str, firmware_log: str) -> bool:
    """True once the logs show a state the guest will not leave by itself."""
    return bool(FINAL_MARKERS.search(console) or FINAL_MARKERS.search(firmware_log))


def evidence_lines(console: str, firmware_log: str, limit: int = 12) -> list[str]:
    """The lines that explain the verdict: pattern matches first, then the console's tail."""
    lines = [ln.strip() for ln in (firmware_log + "\n" + console).splitlines() if ln.strip()]
    hits = [ln for ln in lines if any(p.search(ln) for _, p in FAILURES)]
    tail = [ln for ln in console.splitlines() if ln.strip()][-limit:]
    seen: list[str] = []
    for line in hits[:limit] + tail:
        line = line.strip()[:200]
        if line and line not in seen:
            seen.append(line)
    return seen[: limit * 2]
