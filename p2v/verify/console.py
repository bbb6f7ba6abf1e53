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
    # An array or a PV that is not there also ends in "ALERT! ... does not exist": the
    # storage layer's own message names the real cause, so it is checked first.
    ("md-not-assembled", re.compile(
        # Not "mdadm: No arrays found": Debian prints it at every boot of a guest that
        # has mdadm installed and no array.
        r"not enough operational mirrors|ALERT!\s+/dev/md[\w/]* does not exist")),
    ("lvm-pv-missing", re.compile(
        r"Volume group \"?[\w.+-]+\"? not found|Cannot process volume group"
        r"|Couldn't find device with uuid|ignored by filtering|not in devices file"
        r"|ALERT!\s+/dev/mapper/\S+ does not exist")),
    ("root-device-missing", re.compile(
        r"ALERT!\s+\S+ does not exist|Gave up waiting for root (file system )?device"
        r"|Warning: /dev/\S+ does not exist|Cannot open root device|Could not boot\.?"
        r"|unable to mount root fs|VFS: Unable to mount root")),
    ("kernel-panic", re.compile(r"Kernel panic - not syncing")),
    ("initramfs-shell", re.compile(
        r"Dropping to a shell|\(initramfs\)|dracut:/#|dracut Warning: .*emergency"
        r"|Entering emergency mode\. Exit the shell to continue")),
    ("fstab-device-missing", re.compile(
        r"Timed out waiting for device \S+|Dependency failed for (?!Local File Systems)"
        r"\S+.*\.mount|Failed to mount /\S*")),
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


_LOGIN_PROMPT = re.compile(r"^\S+ login: ?$", re.MULTILINE)


def diagnose(console: str, firmware_log: str) -> str | None:
    """The first failure reason the logs show, or None.

    None too once the guest printed its login prompt: it reached userspace, so a message
    seen on the way (a swap device that never appeared) did not stop the boot.
    """
    if _LOGIN_PROMPT.search(console):
        return None
    text = console + "\n" + firmware_log
    for reason, pattern in FAILURES:
        if pattern.search(text):
            return reason
    return None


_CULPRIT = re.compile(r"ALERT!\s+(\S+) does not exist|Timed out waiting for device (?:\S+ - )?"
                      r"(\S+?)\.?$|Failed to mount (\S+?)\.?$|Volume group \"?([\w.+-]+)"
                      r"|mounting (\S+) on /root failed", re.MULTILINE)

# reason -> what to do next ({what}: the device or volume group the console names).
_NEXT_STEPS = {
    "md-not-assembled": "the initramfs's mdadm.conf does not select the array's members "
                        "({what}) on virtio: fix the DEVICE lines of /etc/mdadm/mdadm.conf and "
                        "rebuild the initramfs (`p2v fix` does both), then verify again",
    "lvm-pv-missing": "LVM did not use the PV of {what}: check filter/global_filter in "
                      "/etc/lvm/lvm.conf and /etc/lvm/devices/system.devices, rebuild the "
                      "initramfs (`p2v fix` does), then verify again",
    "root-device-missing": "{what} is not there on virtio: the initramfs lacks the virtio "
                           "driver or root=/fstab still name the old device; run `p2v fix` on "
                           "the images (it rewrites root= and fstab and rebuilds the initramfs), "
                           "then verify again",
    "fstab-device-missing": "an fstab entry or mount unit names {what}, which the VM does not "
                            "have: convert that disk too, or mark the entry nofail (`p2v fix` "
                            "does for disks left out)",
    "emergency-mode": "systemd stopped in emergency mode: a mount or a service the boot needs "
                      "failed; the console lines above name it",
    "initramfs-shell": "the initramfs gave up: the console lines above say on what",
    "kernel-panic": "the kernel panicked: see the console lines above",
    "bootloader-error": "grub cannot find its files or root: regenerate grub.cfg in the guest "
                        "(`p2v fix` does) and check its search/root lines",
    "no-bootloader": "the firmware found nothing to boot: on UEFI the disk needs "
                     "\\EFI\\BOOT\\BOOTX64.EFI or the source's NVRAM (`p2v fix` copies the "
                     "loader); on BIOS grub must be in the disk's MBR",
    "timeout": "no failure seen and no report from the guest in time (if the console "
               "shows a login prompt, the guest booted but its report was lost): raise "
               "--timeout (emulation is slow), or read the console lines in the evidence",
    "qemu-exited": "qemu stopped by itself: its stderr is in the evidence",
}


def culprit(lines: list[str] | tuple[str, ...]) -> str | None:
    """The device (or volume group) the console says is missing, if it names one."""
    for line in lines:
        match = _CULPRIT.search(line.strip())
        if match:
            return next(g for g in match.groups() if g)
    return None


# Debian's initramfs prints this when the DEVICE lines of its mdadm.conf match no disk: with
# no virtio driver there is no disk at all, and a DEVICE pattern naming the old disks (by
# name or by-path) matches none of the new ones. The console cannot tell which; either way an
# array never assembled, so the LV or root on it is missing for that reason, not an LVM one.
_MD_FOUND_NO_MEMBER = "No devices listed in conf file were found"
_MD_STEP = ("mdadm found none of the disks its mdadm.conf selects, so no md array assembled "
            "(and nothing on one, such as {what}): the initramfs lacks the virtio drivers, or "
            "the DEVICE lines of /etc/mdadm/mdadm.conf name the old disks; `p2v fix` adds "
            "the drivers and rewrites the names it can (a pattern it cannot rewrite is "
            "reported by file and line), then verify again")


def next_step(reason: str | None, evidence: list[str] | tuple[str, ...]) -> str:
    """What to do about a failed boot, naming what the console says is missing."""
    if reason is None:
        return ""
    step = _NEXT_STEPS.get(reason, "see the console lines in the evidence")
    if reason in ("lvm-pv-missing", "root-device-missing", "md-not-assembled") and any(
            _MD_FOUND_NO_MEMBER in line for line in evidence):
        step = _MD_STEP
    return step.format(what=culprit(evidence) or "a device")


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
