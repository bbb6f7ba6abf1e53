"""Pick the qemu accelerator: KVM only after a short probe boot proves it works, else TCG."""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from pathlib import Path

from p2v import runner
from p2v.scratch import scratch_dir
from p2v.secure import private_dir, state_dir, write_private

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 25.0
_CACHE = state_dir() / "accel.json"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _probe_kernel() -> str | None:
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    return kernels[-1] if kernels else None


def probe_kvm(timeout: float = PROBE_TIMEOUT) -> bool:
    """Boot the host's kernel with no root under KVM: a working KVM panics quickly and exits.

    Nested KVM on some hosts hangs right after the kernel is decompressed, so the mere
    presence of /dev/kvm proves nothing.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    kernel = _probe_kernel()
    if kernel is None:
        return False
    # Its qemu dies with p2v (runner.spawn); a killed probe's dir goes at the next sweep.
    with scratch_dir("kvmprobe") as tmp:
        console = tmp / "console.log"
        proc = runner.spawn(
            [
                "qemu-system-x86_64", "-machine", "accel=kvm", "-cpu", "host", "-m", "256",
                "-display", "none", "-no-reboot", "-nodefaults",
                "-serial", f"file:{console}", "-kernel", kernel,
                "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent",
            ]
        )
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                text = console.read_text(errors="replace") if console.exists() else ""
                if "Kernel panic" in text or "VFS:" in text:
                    return True
                if proc.poll() is not None:
                    # Exited on its own: a panic with panic=-1 reboots, -no-reboot exits.
                    return "Linux version" in text
                time.sleep(0.5)
            return False
        finally:
            runner.stop(proc)


def choose_accel() -> str:
    """Return "kvm" or "tcg"; P2V_ACCEL overrides, the probe result is cached per host boot."""
    forced = os.environ.get("P2V_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    boot_id = _boot_id()
    try:
        cached = json.loads(_CACHE.read_text())
        if cached.get("boot_id") == boot_id and cached.get("accel") in ("kvm", "tcg"):
            return str(cached["accel"])
    except (OSError, ValueError):
        pass
    accel = "kvm" if probe_kvm() else "tcg"
    log.info("accelerator probe: %s", accel)
    try:
        private_dir(_CACHE.parent, "state dir")
        write_private(_CACHE, json.dumps({"boot_id": boot_id, "accel": accel}))
    except OSError:
        pass
    return accel


def guestfs_env() -> dict[str, str]:
    """Environment for libguestfs so its appliance uses the same accelerator choice."""
    return {"LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"} if choose_accel() == "tcg" else {}


__all__ = ["choose_accel", "guestfs_env", "probe_kvm"]
