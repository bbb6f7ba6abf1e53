"""A SIGKILLed `p2v verify` takes its qemu with it (the accelerator probe's and the boot
check's), and the next run removes the scratch dirs, overlay and libguestfs's temp dir
included, that the killed one could not."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p2v import runner
from p2v.errors import ExitCode

QEMU = "qemu-system-x86_64"
# On p2v's PATH: the KVM probe's qemu, under TCG and paused (-S, and no monitor to resume
# it), never ends, as on a host whose nested KVM hangs. Any other qemu runs as asked.
HANGING_PROBE = """#!/bin/sh
case "$*" in *accel=kvm*) ;; *) exec {qemu} "$@" ;; esac
for a; do
  shift
  case "$a" in accel=kvm) a=accel=tcg ;; host) a=max ;; esac
  set -- "$@" "$a"
done
exec {qemu} "$@" -S
"""


def hanging_disk(path: Path) -> Path:
    """A qcow2 whose boot sector loops for ever (`jmp $`): the BIOS boots it, nothing ends."""
    raw = path.with_suffix(".raw")
    sector = bytearray(512)
    sector[0:2] = b"\xeb\xfe"
    sector[510:512] = b"\x55\xaa"
    with raw.open("wb") as out:
        out.write(sector)
        out.truncate(1 << 20)
    runner.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)])
    raw.unlink()
    return path


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def qemu_children(parent: int) -> Iterator[tuple[int, list[str]]]:
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.split("/")[2])
        argv = _argv(pid)
        if int(fields[1]) == parent and argv and "qemu-system" in Path(argv[0]).name:
            yield pid, argv


def alive(pid: int) -> bool:
    """Running (a zombie is dead: this container's init may be slow to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for_qemu(proc: subprocess.Popen[str], wanted: Callable[[list[str]], bool],
                  timeout: float = 300) -> tuple[int, list[str]]:
    """The event: a qemu child of PROC whose argv WANTED accepts (polled, with a deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, argv in qemu_children(proc.pid):
            if wanted(argv):
                return pid, argv
        if proc.poll() is not None:
            raise AssertionError(f"p2v ended ({proc.returncode}) before its qemu was seen: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.02)
    raise AssertionError(f"no such qemu child of {proc.pid} within {timeout} s")


def gone_within(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def drive_file(argv: list[str]) -> Path:
    """The first -drive file= of a boot check's qemu: its overlay."""
    drive = next(a for a in argv if a.startswith("file=") and ",if=none" in a)
    return Path(drive.split(",")[0].removeprefix("file="))


@pytest.fixture
def strays() -> Iterator[list[int]]:
    """qemu pids a test saw; any still running at the end are killed (the old code's)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_killed_verify_leaves_no_qemu_and_the_next_run_no_scratch(
        tmp_path: Path, strays: list[int]) -> None:
    disk = hanging_disk(tmp_path / "hangs.qcow2")
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != "P2V_ACCEL"}
    env["P2V_STATE_DIR"] = str(state)
    verify = [sys.executable, "-m", "p2v.cli", "verify", "--timeout", "900", str(disk)]
    left: list[Path] = []

    if os.access("/dev/kvm", os.R_OK | os.W_OK) and glob.glob("/boot/vmlinuz-*"):
        # No cached accelerator choice: verify starts with the KVM probe. The shim makes the
        # probe's qemu hang as it does where nested KVM hangs (here KVM fails at once).
        shims = tmp_path / "bin"
        shims.mkdir()
        (shims / QEMU).write_text(HANGING_PROBE.format(qemu=runner.which(QEMU)))
        (shims / QEMU).chmod(0o755)
        proc = subprocess.Popen(verify, env={**env, "PATH": f"{shims}:{env['PATH']}"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            pid, argv = wait_for_qemu(proc, lambda a: "root=/dev/nonexistent" in " ".join(a))
            strays.append(pid)
        finally:
            proc.kill()
            proc.wait()
        assert gone_within(pid, 10), f"the accelerator probe's qemu {pid} outlived p2v"
        console = Path(option(argv, "-serial").removeprefix("file:"))
        left.append(console.parent)

    env["P2V_ACCEL"] = "tcg"
    env["TMPDIR"] = str(tmp_path / "tmp")
    # The appliance cache stays where it is (it follows TMPDIR otherwise: a rebuild).
    env["LIBGUESTFS_CACHEDIR"] = os.environ.get("LIBGUESTFS_CACHEDIR", "/var/tmp")
    (tmp_path / "tmp").mkdir()
    # Killed while libguestfs's appliance runs (it prepares the overlay): its temp dir is
    # a scratch dir too, and the next run sweeps it.
    proc = subprocess.Popen(verify, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        pid, argv = wait_for_qemu(proc, lambda a: "-no-reboot" in a and "strict=on" not in a)
        strays.append(pid)
        # libguestfs keeps its sockets in /tmp (always, for root), outside every dir p2v
        # chooses; p2v records that dir in its scratch dir while the appliance launches.
        sockdir = next(Path(part.removeprefix("path=")).parent for a in argv
                       for part in a.split(",") if part.endswith("/guestfsd.sock"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
                str(sockdir) in f.read_text()
                for f in (state / "scratch").glob("guestfs-*/.adopted")):
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    # libguestfs's qemu is not p2v's child helper: it ends once its daemon finds no host.
    assert gone_within(pid, 300), f"the appliance's qemu {pid} outlived p2v by 300 s"
    appliance = [p for p in (state / "scratch").glob("guestfs-*")]
    assert len(appliance) == 1 and any(appliance[0].iterdir()), appliance
    assert sockdir.is_dir()            # a SIGKILL runs no close(): it is still there
    left += [*appliance, sockdir]

    proc = subprocess.Popen(verify, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        pid, argv = wait_for_qemu(proc, lambda a: "strict=on" in a, timeout=900)
        strays.append(pid)
    finally:
        proc.kill()
        proc.wait()
    assert gone_within(pid, 10), f"the boot check's qemu {pid} outlived p2v"
    overlay = drive_file(argv)
    assert not overlay.name.endswith(".qcow2"), "an overlay named like an image"
    left.append(overlay.parent)
    for stale in left[:-1]:          # swept before this run made its own scratch dir
        assert not stale.exists(), f"{stale} outlived the next run"

    # The next run goes to the end (a boot that hangs times out) and removes the rest.
    rerun = subprocess.run([*verify[:-3], "--timeout", "1", str(disk)], env=env,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == ExitCode.BOOT_FAILED, rerun.stderr
    for stale in left:
        assert not stale.exists(), f"{stale} outlived the next run"
    scratch = state / "scratch"
    assert [p.name for p in scratch.iterdir() if not p.name.startswith(".")] == []
    assert list((tmp_path / "tmp").iterdir()) == [], "left in TMPDIR"
