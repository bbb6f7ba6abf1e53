"""Freezing a source's filesystems for the final sync pass, and the user's hooks around it.

The only things p2v does on a source beyond reading, and only when asked (`--freeze`,
`--before-final`, `--after-final`). A frozen filesystem takes no writes (writers wait),
so a pass read while frozen is consistent like a snapshot. Safety first:

- before freezing anything, a detached timer is started on the source (`setsid sh -c
  'sleep N; fsfreeze -u ...'`, output to /dev/null): if p2v dies or the link drops, the
  source thaws itself after `--freeze-timeout` seconds;
- the session doing the freezing writes nothing on the source: the commands run over the
  SSH connection opened before the freeze, readers run with `python3 -B`, output goes to
  /dev/null or back over the link;
- thawing happens on leaving the `Freeze` block however it is left (end, error, Ctrl-C),
  and covers every mount a freeze was *started* on, not only those known to be frozen: a
  mount joins the thaw list before its `fsfreeze -f` runs, a freeze that was cut short
  (timeout, Ctrl-C) is waited for on the source before thawing, `fsfreeze -u` answering
  EINVAL means "not frozen", and the timer is stopped only once every thaw succeeded;
- the timer keeps thawing while a p2v `fsfreeze -f` is still running on the source, and no
  mount is frozen within `DEADLINE_MARGIN` seconds of its deadline (`FreezeDeadline`).

Hooks are the user's own shell commands for their own server: they are handed to `sh -c`
on the source as given (that is their point). Nothing else here takes user text into a
remote command line except as a separate, shell-quoted argument.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from dataclasses import dataclass, field
from types import TracebackType

from p2v.errors import (
    FreezeDeadline,
    FreezeFailed,
    FreezeRefused,
    HookFailed,
    P2VError,
    UsageError,
)
from p2v.source import remote
from p2v.source.protocol import Source

log = logging.getLogger(__name__)

DEFAULT_FREEZE_TIMEOUT = 300.0
MIN_FREEZE_TIMEOUT = 10.0
MAX_FREEZE_TIMEOUT = 86400.0
HOOK_TIMEOUT = 1800.0
FREEZE_COMMAND_TIMEOUT = 120.0   # one `fsfreeze -f`, at most (less near the deadline)
# No freeze starts with less than this left before the timer fires: the pass needs time,
# and a freeze still running when the timer fires would be missed by a one-shot timer.
DEADLINE_MARGIN = 5.0
_POLL = 0.5

# $1 timeout, $2 marker (the timer's $0, to recognise it), $3 the freeze marker's hex,
# $4... mountpoints. Prints its pid. Once fired, it thaws every mount, and again each second
# while a p2v `fsfreeze -f` (a process named p2v-freeze-HEX) still runs: a freeze that lands
# after the first round is thawed too. The bracket keeps grep from matching itself.
_TIMER = remote.script("freeze_timer.sh")

# $1 pid, $2 marker, $3 "kill" or "check": exit 0 when the timer is (was) running.
_TIMER_CTL = remote.script("freeze_timer_ctl.sh")

# The freeze itself, under a name ($0 = p2v-freeze-HEX) the timer and thaw() can look for;
# the trailing commands keep sh from exec'ing fsfreeze (which would drop the name).
_FREEZE = 'fsfreeze -f "$1"; r=$?; exit "$r"'

# $1 hex: exit 0 while a p2v-freeze-HEX process runs.
_IN_FLIGHT = 'grep -q -e "p2v-[f]reeze-$1" /proc/[0-9]*/cmdline 2>/dev/null'


def check_freeze_timeout(seconds: float) -> None:
    """Refuse a --freeze-timeout that is not a number of seconds the timer can keep."""
    if not math.isfinite(seconds) or not MIN_FREEZE_TIMEOUT <= seconds <= MAX_FREEZE_TIMEOUT:
        raise UsageError(detail=f"--freeze-timeout must be between {MIN_FREEZE_TIMEOUT:.0f} "
                                f"and {MAX_FREEZE_TIMEOUT:.0f} seconds, not {seconds}")


def freeze_command_timeout(remaining: float, *, host: str, mountpoint: str,
                           timeout: float) -> float:
    """How long one `fsfreeze -f` may take with `remaining` s left before the timer fires;
    FreezeDeadline when that is too little to freeze at all (the deadline is near)."""
    if remaining < DEADLINE_MARGIN:
        raise FreezeDeadline(mountpoint=mountpoint, host=host, left=max(remaining, 0.0),
                             margin=DEADLINE_MARGIN, timeout=timeout)
    return min(FREEZE_COMMAND_TIMEOUT, remaining - DEADLINE_MARGIN / 2)


@dataclass(frozen=True)
class Mount:
    device: str
    mountpoint: str
    fstype: str
    read_only: bool = False


_PAIR = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _unescape(text: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def _mounts_table(text: str) -> dict[str, tuple[str, bool]]:
    """/proc/self/mounts as {mountpoint: (fstype, read-only)}."""
    table = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            mountpoint = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)),
                                fields[1])
            table[mountpoint] = (fields[2], "ro" in fields[3].split(","))
    return table


def mounts_on(source: Source, disks: tuple[str, ...]) -> list[Mount]:
    """The filesystems mounted from the disks (their partitions, LVs, ...), one per device,
    deepest mountpoint first (the order to freeze them in)."""
    # One round trip: lsblk's rows, a separator line, then the mount table.
    result = source.run(["sh", "-c", 'lsblk -P -p -o NAME,MOUNTPOINT "$@" && echo "--" && '
                         "cat /proc/self/mounts", "p2v-mounts", *disks], timeout=60)
    rows, _, mounts = result.text.partition("\n--\n")
    table = _mounts_table(mounts)
    seen: dict[str, Mount] = {}
    for line in rows.splitlines():
        row = {k: _unescape(v) for k, v in _PAIR.findall(line)}
        mountpoint = row.get("MOUNTPOINT", "")
        if not mountpoint.startswith("/") or row.get("NAME", "") in seen:
            continue                     # not mounted, or swap ("[SWAP]")
        fstype, read_only = table.get(mountpoint, ("", False))
        seen[row["NAME"]] = Mount(row["NAME"], mountpoint, fstype, read_only)
    return sorted(seen.values(), key=lambda m: (-m.mountpoint.count("/"), m.mountpoint))


@dataclass
class FreezeReport:
    frozen: list[Mount] = field(default_factory=list)
    not_frozen: list[tuple[Mount, str]] = field(default_factory=list)    # (mount, why)
    read_only: list[Mount] = field(default_factory=list)    # need no freeze
    frozen_at: float | None = None
    thawed_at: float | None = None
    thawed_by: str = ""              # "p2v" or "timer"

    @property
    def seconds(self) -> float | None:
        if self.frozen_at is None or self.thawed_at is None:
            return None
        return self.thawed_at - self.frozen_at

    def to_dict(self) -> dict[str, object]:
        return {"frozen": [m.mountpoint for m in self.frozen],
                "not_frozen": [{"mountpoint": m.mountpoint, "fstype": m.fstype, "why": why}
                               for m, why in self.not_frozen],
                "read_only": [m.mountpoint for m in self.read_only],
                "freeze_s": self.seconds, "thawed_by": self.thawed_by}


class Freeze:
    """`with Freeze(source, mounts, ...) as report:` the mounts are frozen inside the block.

    best_effort=False: a filesystem that cannot be frozen stops everything (the others are
    thawed again) with FreezeRefused naming it; True: it is reported and left running.
    """

    def __init__(self, source: Source, mounts: list[Mount], *, timeout: float,
                 best_effort: bool = False) -> None:
        check_freeze_timeout(timeout)
        self.source = source
        self.mounts = mounts
        self.timeout = timeout
        self.best_effort = best_effort
        self.report = FreezeReport()
        self._hex = secrets.token_hex(6)
        self._tag = f"p2v-thaw-timer-{self._hex}"
        self._pid: str | None = None
        self._deadline = math.inf        # local monotonic time by which the timer fires
        self._listed: list[Mount] = []   # every mount a freeze was started on: thawed
        self._in_flight = False          # an `fsfreeze -f` may still run on the source
        self._thawed = False

    @property
    def host(self) -> str:
        return self.source.target.host

    def __enter__(self) -> FreezeReport:
        if not any(not m.read_only for m in self.mounts):
            self.report.read_only = list(self.mounts)
            return self.report
        # Taken before the timer starts: the timer fires no earlier than this deadline.
        self._deadline = time.monotonic() + int(self.timeout)
        started = self.source.run(
            ["sh", "-c", _TIMER, "p2v-timer", str(int(self.timeout)), self._tag, self._hex,
             *[m.mountpoint for m in self.mounts]], timeout=60)
        pid = started.text.strip()
        if not pid.isdigit():
            raise FreezeFailed(host=self.host, detail=f"the thaw timer did not start ({pid!r})")
        self._pid = pid
        log.info("thaw timer %s on %s: thaws after %.0f s whatever happens", pid, self.host,
                 self.timeout)
        try:
            for mount in self.mounts:
                if mount.read_only:
                    self.report.read_only.append(mount)
                    log.info("%s is mounted read-only: consistent without a freeze",
                             mount.mountpoint)
                    continue
                self._freeze(mount)
            if self.report.not_frozen and not self.best_effort:
                names = ", ".join(f"{m.mountpoint} ({m.fstype or '?'})"
                                  for m, _ in self.report.not_frozen)
                raise FreezeRefused(filesystems=names, host=self.host,
                                    detail=self.report.not_frozen[0][1])
        except BaseException:
            self.thaw()
            raise
        return self.report

    def _freeze(self, mount: Mount) -> None:
        """Freeze one mount, listed for the thaw first; a refusal is recorded in the report."""
        limit = freeze_command_timeout(self._deadline - time.monotonic(), host=self.host,
                                       mountpoint=mount.mountpoint, timeout=self.timeout)
        self._listed.append(mount)
        self._in_flight = True
        result = self.source.run(["sh", "-c", _FREEZE, f"p2v-freeze-{self._hex}",
                                  mount.mountpoint], check=False, timeout=limit)
        if result.returncode < 0:        # no exit status: the link dropped, outcome unknown
            raise FreezeFailed(host=self.host, detail=f"{mount.mountpoint}: the link dropped "
                                                      "during fsfreeze -f")
        self._in_flight = False
        if result.returncode == 0:
            if self.report.frozen_at is None:
                self.report.frozen_at = time.monotonic()
            self.report.frozen.append(mount)
            log.info("froze %s (%s) on %s", mount.mountpoint, mount.fstype, self.host)
            return
        # A definite refusal: the kernel did not freeze it for us (already frozen by someone
        # else is not ours to thaw either).
        self._listed.remove(mount)
        why = (result.stderr.strip().splitlines() or ["fsfreeze failed"])[-1]
        why = why.removeprefix("fsfreeze: ")
        self.report.not_frozen.append((mount, why))
        log.warning("cannot freeze %s (%s) on %s: %s", mount.mountpoint, mount.fstype,
                    self.host, why)

    def expired(self) -> bool:
        """True when the timer fired (or may have): it thawed the source before we did."""
        if self._pid is None:
            return False
        if time.monotonic() >= self._deadline:
            return True
        check = self.source.run(["sh", "-c", _TIMER_CTL, "p2v-timer", self._pid, self._tag,
                                 "check"], check=False, timeout=60)
        return check.returncode != 0

    def _wait_for_freezes(self) -> str | None:
        """Wait (until the timer's deadline) for a cut-short `fsfreeze -f` to end on the
        source, so that its mount is thawed after it froze; None when none runs, else why."""
        announced = False
        while True:
            try:
                busy = self.source.run(["sh", "-c", _IN_FLIGHT, "p2v-in-flight", self._hex],
                                       check=False, timeout=60)
            except P2VError as exc:
                return f"cannot tell whether a freeze still runs ({exc.message})"
            if busy.returncode != 0:
                self._in_flight = False
                return None
            if time.monotonic() >= self._deadline:
                return "an fsfreeze -f is still running"
            if not announced:
                log.warning("an fsfreeze -f on %s was cut short and still runs; waiting for "
                            "it to end before thawing", self.host)
                announced = True
            time.sleep(_POLL)

    def _thaw_one(self, mount: Mount) -> str | None:
        """`fsfreeze -u` one mount; None when it is thawed (EINVAL: it was not frozen)."""
        try:
            result = self.source.run(["env", "LC_ALL=C", "fsfreeze", "-u", mount.mountpoint],
                                     check=False, timeout=60)
        except P2VError as exc:
            return f"{mount.mountpoint}: {exc.message}"
        if result.returncode == 0 or "Invalid argument" in result.stderr:
            return None
        return f"{mount.mountpoint}: {result.stderr.strip()[-200:]}"

    def thaw(self) -> None:
        """Thaw every mount a freeze was started on, then stop the timer. Idempotent; raises
        FreezeFailed when a thaw failed (the timer is then left to thaw it)."""
        if self._thawed:
            return
        self._thawed = True
        failures: list[str] = []
        if self._in_flight:
            why = self._wait_for_freezes()
            if why is not None:
                failures.append(why)
        for mount in reversed(self._listed):
            failure = self._thaw_one(mount)
            if failure is not None:
                failures.append(failure)
        self.report.thawed_at = time.monotonic()
        self.report.thawed_by = "p2v"
        if self._pid is not None and not failures:
            self._stop_timer()
        if failures:
            raise FreezeFailed(host=self.host,
                               detail="; ".join(failures) + f" (the timer thaws it within "
                                                            f"{self.timeout:.0f} s)")
        if self.report.frozen:
            log.info("thawed %s after %.1f s", self.host, self.report.seconds or 0.0)

    def _stop_timer(self) -> None:
        assert self._pid is not None
        try:
            killed = self.source.run(["sh", "-c", _TIMER_CTL, "p2v-timer", self._pid,
                                      self._tag, "kill"], check=False, timeout=60)
            if killed.returncode != 0 and self.report.frozen:
                self.report.thawed_by = "timer"
        except P2VError as exc:
            log.warning("could not stop the thaw timer on %s (%s); it fires harmlessly",
                        self.host, exc.message)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.thaw()
            return
        try:
            self.thaw()
        except P2VError as thaw_error:
            log.error("%s", thaw_error.message)


def run_hook(source: Source, hook: str, command: str, *, outcome: str,
             timeout: float = HOOK_TIMEOUT) -> str:
    """Run the user's hook command on the source through `sh -c`; its output is logged
    and returned; a non-zero exit raises HookFailed ending with `outcome`."""
    log.info("%s hook on %s: %s", hook, source.target.host, command)
    result = source.run(["sh", "-c", command], check=False, timeout=timeout)
    output = (result.text + result.stderr).strip()
    for line in output.splitlines():
        log.info("%s: %s", hook, line)
    if result.returncode != 0:
        tail = " | ".join(output.splitlines()[-2:]) or "no output"
        raise HookFailed(hook=hook, host=source.target.host, returncode=result.returncode,
                         tail=tail[-200:], outcome=outcome)
    return output


__all__ = ["DEADLINE_MARGIN", "DEFAULT_FREEZE_TIMEOUT", "Freeze", "FreezeReport", "Mount",
           "check_freeze_timeout", "freeze_command_timeout", "mounts_on", "run_hook"]
