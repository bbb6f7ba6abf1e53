"""The boot check: boot images on a throwaway overlay, isolated from every network, and judge."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from p2v import qemuimg, runner
from p2v.accel import choose_accel
from p2v.errors import GuestfsError, InputNotFound, UsageError
from p2v.firmware import fresh_ovmf_vars
from p2v.fix.inspect import ESP_GUID
from p2v.fix.session import GuestSession, open_guest
from p2v.scratch import scratch_dir
from p2v.verify import console as con
from p2v.verify.probe import Prepared, prepare_overlay
from p2v.verify.qemu import Bus, Machine, Nic, NicModel

log = logging.getLogger(__name__)

DEFAULT_MAC = "52:54:00:70:32:76"


@dataclass(frozen=True)
class BootOptions:
    bus: Bus = "virtio"
    firmware: str = "auto"          # bios, uefi, or auto (from --nvram, else the disk layout)
    nvram: Path | None = None
    macs: tuple[str, ...] = ()
    nic_model: NicModel | None = None  # default follows the bus: virtio, or e1000e on sata
    timeout: float = 300.0
    memory_mib: int = 1024
    vcpus: int = 1
    # Where the overlays and logs go (a job passes its work dir's; default: the state dir).
    scratch_root: Path | None = None


@dataclass(frozen=True)
class BootVerdict:
    booted: bool
    reason: str | None
    elapsed_s: float
    accel: str
    bus: str
    firmware: str
    os: str
    hostname: str | None
    root: str | None
    interfaces: tuple[con.Interface, ...]
    evidence: tuple[str, ...]
    changed_in_overlay: tuple[str, ...] = field(default=())
    # Where the report came from: "ttyS1" (the check's own port) or "ttyS0" (the console).
    report_port: str | None = None
    # How it booted: "qemu" (p2v's own command line) or "libvirt-transient" (the domain XML
    # register defines, started as a transient domain; `domain` is its name).
    via: str = "qemu"
    domain: str | None = None

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["interfaces"] = [asdict(i) for i in self.interfaces]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _check_inputs(images: Sequence[Path], options: BootOptions) -> None:
    if not images:
        raise UsageError(detail="verify needs at least one IMAGE")
    for image in images:
        if not image.is_file():
            raise InputNotFound(what="disk image", path=str(image))
    if options.nvram is not None and not options.nvram.is_file():
        raise InputNotFound(what="UEFI variable store (--nvram)", path=str(options.nvram))
    if options.firmware == "bios" and options.nvram is not None:
        raise UsageError(detail="--nvram goes with --firmware uefi, not bios")
    if options.timeout <= 0:
        raise UsageError(detail="--timeout must be a positive number of seconds")


def _has_esp(session: GuestSession) -> bool:
    """True when the first disk is GPT with an EFI system partition (a UEFI install)."""
    device = session.list_devices()[0]
    try:
        if session.part_get_parttype(device) != "gpt":
            return False
        numbers = session.part_numbers(device)
    except GuestfsError:  # no partition table at all
        return False
    return any(session.part_get_gpt_type(device, n).upper() == ESP_GUID for n in numbers)


def _read(path: Path) -> str:
    return con.clean(path.read_text(errors="replace")) if path.exists() else ""


def make_overlays(images: Sequence[Path], work: Path) -> list[Path]:
    """A qcow2 overlay per image in WORK (`diskN.overlay`: never named like an image)."""
    overlays = []
    for index, image in enumerate(images):
        overlay = work / f"disk{index}.overlay"
        qemuimg.create(overlay, backing=image)
        overlays.append(overlay)
    return overlays


def verify_boot(
    images: Sequence[Path],
    options: BootOptions,
    progress: Callable[[str], None] = lambda _msg: None,
) -> BootVerdict:
    """Boot the images and report whether the guest reached userspace, with evidence."""
    images = [Path(i).resolve() for i in images]
    _check_inputs(images, options)
    accel = choose_accel()
    # A scratch dir, not a temp dir: if p2v is killed (its qemu dies with it), the next
    # boot check or `p2v clean` removes what this one leaves.
    with scratch_dir("verify", options.scratch_root) as work:
        overlays = make_overlays(images, work)
        progress("preparing a throwaway overlay (serial console, report probe)")
        with open_guest(overlays, fmt="qcow2") as session:
            firmware = options.firmware
            if firmware == "auto":
                firmware = "uefi" if options.nvram or _has_esp(session) else "bios"
            prepared = prepare_overlay(session)
        nvram = None
        if firmware == "uefi":
            nvram = work / "VARS.fd"
            if options.nvram is not None:
                shutil.copyfile(options.nvram, nvram)
            else:
                fresh_ovmf_vars(nvram)
        model: NicModel = options.nic_model or ("e1000e" if options.bus == "sata" else "virtio")
        nics = tuple(Nic(mac=m.lower(), model=model) for m in (options.macs or (DEFAULT_MAC,)))
        serial, fwlog, reportlog = work / "console.log", work / "firmware.log", work / "report.log"
        machine = Machine(
            disks=tuple(overlays), serial_log=serial, report_log=reportlog, bus=options.bus,
            firmware=firmware,  # type: ignore[arg-type]
            nvram=nvram, nics=nics, memory_mib=options.memory_mib, vcpus=options.vcpus,
            accel=accel, debugcon_log=fwlog, extra=("-device", "VGA"),
        )
        progress(f"booting on {options.bus} ({firmware}, {accel}), timeout {options.timeout:.0f} s")
        with (work / "qemu.err").open("wb") as qemu_err:
            proc = runner.spawn(machine.argv(), stderr=qemu_err.fileno())
        try:
            seen = watch(Logs(serial, reportlog, fwlog), lambda: proc.poll() is None,
                         lambda: (work / "qemu.err").read_text(errors="replace").strip(),
                         options.timeout)
        finally:
            runner.stop(proc, grace=2.0)
        return seen.verdict(accel=accel, bus=options.bus, firmware=firmware, prepared=prepared,
                            via="qemu")


@dataclass(frozen=True)
class Logs:
    """The files a boot writes: the console (ttyS0), the report port (ttyS1), the firmware's."""

    console: Path
    report: Path
    firmware: Path


@dataclass(frozen=True)
class Seen:
    """What one boot showed by the time the watch ended."""

    report: con.ProbeReport | None
    port: str | None
    console: str
    firmware: str
    elapsed_s: float
    timed_out: bool

    def verdict(self, *, accel: str, bus: str, firmware: str, prepared: Prepared, via: str,
                domain: str | None = None) -> BootVerdict:
        report = self.report
        reason = None
        if report is None:
            reason = con.diagnose(self.console, self.firmware) or (
                "timeout" if self.timed_out else "qemu-exited")
        return BootVerdict(
            booted=report is not None,
            reason=reason,
            elapsed_s=self.elapsed_s,
            accel=accel,
            bus=bus,
            firmware=firmware,
            os=prepared.product if prepared.os_found else "no operating system found",
            hostname=report.hostname if report else None,
            root=report.root if report else None,
            interfaces=report.interfaces if report else (),
            evidence=tuple(con.evidence_lines(self.console, self.firmware)),
            changed_in_overlay=prepared.consoles_added,
            report_port=self.port if report is not None else None,
            via=via,
            domain=domain,
        )


def watch(logs: Logs, alive: Callable[[], bool], exit_detail: Callable[[], str],
          timeout: float) -> Seen:
    """Read the logs until the report arrives, the guest is stuck or gone, or time is up."""
    started = time.monotonic()
    report, port, text, fw = None, None, "", ""
    while True:
        elapsed = time.monotonic() - started
        text, fw = _read(logs.console), _read(logs.firmware)
        report, port = con.parse_probe(_read(logs.report)), "ttyS1"
        if report is None:
            report, port = con.parse_probe(text), "ttyS0"
        if report is not None or con.is_stuck(text, fw) or elapsed > timeout:
            break
        if not alive():
            fw += "\n" + exit_detail()
            break
        time.sleep(1.0)
    elapsed = round(time.monotonic() - started, 1)
    return Seen(report, port if report is not None else None, text, fw, elapsed,
                timed_out=elapsed > timeout)
