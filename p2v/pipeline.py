"""`p2v convert`: one job, inspect -> preflight -> copy -> fix -> verify -> register, resumable.

`run_job(spec)` is the whole job as one top-level, picklable call: `p2v convert` runs it in
its own process, `p2v batch` in worker processes. Each stage leaves its result and a marker
in the job's work dir (p2v.jobdir); a rerun of the same spec continues at the first stage
without a marker (the copy itself resumes mid-disk through its journal).

The boot check runs before anything is registered, on a throwaway overlay of the fixed
images with every NIC off any network: a guest that does not boot is never defined, and a
failure in any stage leaves no domain defined (a half-done register is undone) and keeps the
work dir. Errors are P2VErrors: run_job catches them and returns a failed JobReport that
names the stage and how to resume, so one job's failure never escapes into a batch.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from p2v import runner
from p2v.errors import (
    BootFailed,
    CommandNotFound,
    ExitCode,
    NotEnoughSpace,
    P2VError,
    UsageError,
    WorkDirMismatch,
)
from p2v.job import JobSpec, name_problem
from p2v.jobdir import WorkDir, read_json, write_json
from p2v.model import Inventory, SourceDisk, SourceInventory, SourceNic
from p2v.secure import open_private

log = logging.getLogger(__name__)

STAGES = ("inspect", "preflight", "copy", "fix", "verify", "register")
# With --cutover: sync passes (the last one frozen) between the copy and the fix.
CUTOVER_STAGES = ("inspect", "preflight", "copy", "sync", "fix", "verify", "register")
# Live sync passes before the frozen one: more while each delta is smaller than the last.
MAX_LIVE_PASSES = 4


def stages_for(spec: JobSpec) -> tuple[str, ...]:
    return CUTOVER_STAGES if spec.cutover else STAGES
EVENT_SCHEMA = "p2v.events/1"
# Room for what fix writes (a rebuilt initramfs, grub config) and qcow2 metadata.
SPACE_MARGIN = 256 << 20
# JobSpec fields a rerun must share with the run that made the work dir: the rest (memory,
# networks, --start, ...) only affect stages not run yet and may change between runs.
_SAME_JOB = ("source", "disks", "full", "new_macs")  # new_macs: the MACs fix pinned

Event = dict[str, Any]
EventSink = Callable[[Event], None]


# ------------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class StageTime:
    stage: str
    seconds: float
    earlier_run: bool = False          # finished by an earlier run of this job


@dataclass(frozen=True)
class DiskReport:
    device: str                        # on the source, e.g. /dev/sda
    image: str                         # the qcow2 in the work dir
    size: int                          # virtual size (the source disk's size)
    file_bytes: int                    # what the image takes on the host
    wire_bytes: int                    # sent by the run that finished this disk


@dataclass(frozen=True)
class JobReport:
    """What one job did: the final summary of `p2v convert` and a batch's per-job record."""

    name: str
    source: str
    work_dir: str
    ok: bool
    stages: tuple[StageTime, ...] = ()
    disks: tuple[DiskReport, ...] = ()
    disk_choice: str = ""
    not_carried_over: tuple[str, ...] = ()
    domain: dict[str, Any] | None = None     # name, uri, uuid, started, bus, NIC model, ...
    verdict: dict[str, Any] | None = None    # the boot check (None with --no-verify)
    network: tuple[str, ...] = ()            # each source NIC as the booted guest showed it
    failed_stage: str | None = None
    error: str | None = None                 # the one-line message (with how to resume)
    exit_code: int = ExitCode.OK
    elapsed_s: float = 0.0
    downtime_s: float | None = None          # --cutover: the source frozen, freeze to thaw

    @property
    def bytes_sent(self) -> int:
        return sum(d.wire_bytes for d in self.disks)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["bytes_sent"] = self.bytes_sent
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobReport:
        return cls(
            name=data["name"], source=data["source"], work_dir=data["work_dir"],
            ok=bool(data["ok"]),
            stages=tuple(StageTime(**s) for s in data.get("stages", ())),
            disks=tuple(DiskReport(**d) for d in data.get("disks", ())),
            disk_choice=data.get("disk_choice", ""),
            not_carried_over=tuple(data.get("not_carried_over", ())),
            domain=data.get("domain"), verdict=data.get("verdict"),
            network=tuple(data.get("network", ())),
            failed_stage=data.get("failed_stage"), error=data.get("error"),
            exit_code=int(data.get("exit_code", 0)), elapsed_s=float(data.get("elapsed_s", 0)),
            downtime_s=data.get("downtime_s"),
        )


def load_report(work_dir: Path) -> JobReport | None:
    path = Path(work_dir) / "report.json"
    return JobReport.from_dict(read_json(path)) if path.is_file() else None


# ------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class PlannedDisk:
    device: str                        # /dev/sda
    name: str                          # sda (what fix and register call it)
    boot: bool
    size: int
    estimate: int | None


@dataclass(frozen=True)
class JobPlan:
    """What preflight decided, once: the disks (boot disk first) and the NICs' MACs."""

    disks: tuple[PlannedDisk, ...]
    pins: tuple[tuple[str, str], ...]  # (NIC name, MAC) in the source's order
    firmware: str
    disk_choice: str
    not_carried_over: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobPlan:
        return cls(disks=tuple(PlannedDisk(**d) for d in data["disks"]),
                   pins=tuple((str(n), str(m)) for n, m in data["pins"]),
                   firmware=str(data["firmware"]), disk_choice=str(data["disk_choice"]),
                   not_carried_over=tuple(data["not_carried_over"]))


def _size(value: int | None) -> str:
    if value is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value = int(value) / 1024  # type: ignore[assignment]
    return str(value)


def other_paths(inventory: Inventory) -> dict[str, tuple[str, str]]:
    """Disks that are another path to a LUN already listed: disk -> (multipath map, the
    first path). A dual-path disk shows up once per path (sda, sdb): copying each would
    give the guest the same filesystems twice."""
    order = {d.name: i for i, d in enumerate(inventory.disks)}
    found: dict[str, tuple[str, str]] = {}
    for m in inventory.dm:
        # The boot disk, if it is one of them, else the first in inventory order.
        paths = sorted((s for s in m.slaves if s in order),
                       key=lambda s: (s != inventory.boot_disk, order[s]))
        if m.kind == "multipath" and paths:
            found.update({p: (m.name or m.device, paths[0]) for p in paths[1:]})
    return found


def choose_disks(inventory: Inventory, asked: Sequence[str]) -> tuple[list[PlannedDisk], str,
                                                                       list[str]]:
    """The disks to copy (boot disk first), why those, and the disks left out.

    Without `asked`, every disk inspect reports (it never lists loop, ram, zram, optical,
    md or dm devices) except removable ones. Named disks are taken as given, in that order
    but boot disk first; a name inspect does not know is kept for the device probe to judge.
    """
    by_key: dict[str, Any] = {}
    for d in inventory.disks:
        by_key[d.name] = d
        by_key[d.path] = d
    left: list[str] = []
    chosen: list[PlannedDisk] = []
    if asked:
        for dev in asked:
            info = by_key.get(dev) or by_key.get(dev.removeprefix("/dev/"))
            if info is None:
                name = dev.removeprefix("/dev/")
                device = dev if dev.startswith("/") else f"/dev/{dev}"
                chosen.append(PlannedDisk(device, name, False, 0, None))
            else:
                chosen.append(PlannedDisk(info.path, info.name, info.name == inventory.boot_disk,
                                          info.size_bytes or 0, info.copy_bytes_estimate))
        picked = {c.name for c in chosen}
        for d in inventory.disks:
            if d.name not in picked:
                left.append(f"disk {d.name} ({_size(d.size_bytes)}) is not copied: not named "
                            "with --disk")
        why = "as named with --disk"
    else:
        second = other_paths(inventory)
        for d in inventory.disks:
            if d.name in second:
                name, first = second[d.name]
                left.append(f"disk {d.name} is another path of multipath map {name} (the "
                            f"same LUN as {first}): copied once, as {first}")
                continue
            if d.removable:
                left.append(f"disk {d.name} ({_size(d.size_bytes)}) is removable (USB, card "
                            "reader): not copied; name it with --disk to copy it")
                continue
            chosen.append(PlannedDisk(d.path, d.name, d.name == inventory.boot_disk,
                                      d.size_bytes or 0, d.copy_bytes_estimate))
        why = "every physical disk the source reports (never loop, ram or optical devices)"
    chosen.sort(key=lambda c: not c.boot)     # stable: boot disk first, the rest in order
    return chosen, why, left


def describe_choice(disks: Sequence[PlannedDisk], why: str) -> str:
    listed = ", ".join(f"{d.name} ({_size(d.size)}{', boot disk' if d.boot else ''})"
                       for d in disks)
    return f"copying {listed or 'nothing'}: {why}"


def not_carried_over(inventory: Inventory, disks: Sequence[PlannedDisk]) -> list[str]:
    """An honest list of what the guest will not have as the server had it."""
    copied = {d.name for d in disks}
    items: list[str] = []
    part_disk = {p.name: d.name for d in inventory.disks for p in d.partitions}
    part_disk.update({d.name: d.name for d in inventory.disks})
    # A multipath map is whole on any one of its paths: the first stands for them all.
    second = other_paths(inventory)
    dm_slaves = {m.device: tuple(s for s in m.slaves if s not in second) for m in inventory.dm}
    md_members = {m.name: m.devices for m in inventory.md}

    def disks_of(device: str, depth: int = 0) -> set[str]:
        if device in part_disk:
            return {part_disk[device]}
        if depth > 4:
            return set()
        below = dm_slaves.get(device, ()) + md_members.get(device, ())
        return set().union(*(disks_of(b, depth + 1) for b in below)) if below else set()

    for fs in inventory.filesystems:
        if not fs.mountpoint:
            continue
        on = disks_of(fs.device)
        if on and not on <= copied:
            items.append(f"{fs.mountpoint} ({fs.path or fs.device}) lives on "
                         f"{', '.join(sorted(on - copied))}, which is not copied: its fstab "
                         "entry will fail at boot unless it is marked nofail")
    for nic in inventory.nics:
        if not nic.mac:
            items.append(f"NIC {nic.name} has no MAC: it gets no guest NIC")
    for nic in inventory.virtual_nics:
        if nic.kind in ("bridge", "bond"):
            items.append(f"{nic.kind} {nic.name}: its configuration is copied, but the guest "
                         "has one virtual NIC per physical NIC (no teaming hardware)")
    if any(m.kind == "crypt" for m in inventory.dm):
        items.append("encrypted volumes still ask for their passphrase at boot (console)")
    if inventory.firmware == "uefi":
        items.append("the server's UEFI boot entries (NVRAM) are not copied: the guest boots "
                     "the fallback loader \\EFI\\BOOT\\BOOTX64.EFI")
    items.append("the copy is read from the running server, not a snapshot: what changes "
                 "while it runs may be inconsistent in the guest; stop busy services (databases) "
                 "first")
    items.append("hardware-specific software (vendor agents, RAID tools, licences bound to "
                 "the machine's serial or MAC) is reported by fix, not made to work")
    for what in inventory.unknown:
        items.append(f"could not be read on the source: {what}")
    return items


# ------------------------------------------------------------------------------- the job
class _Job:
    """One run of one job: the stages, the SSH session opened on demand, events and log."""

    def __init__(self, spec: JobSpec, wd: WorkDir, sink: EventSink | None) -> None:
        self.spec = spec
        self.wd = wd
        self.sink = sink
        self.stage: str | None = None
        self._source: Any = None
        self._source_cm: Any = None

    # ---------------------------------------------------------------- events and log
    def emit(self, event: Event) -> None:
        full = {"event": event.get("event"), "job": self.spec.name,
                "stage": event.get("stage", self.stage), "time": round(time.time(), 3)}
        full.update({k: v for k, v in event.items() if k not in ("event", "stage")})
        try:
            self.wd.record_event(full)
        except OSError:
            pass            # a full disk must not hide the real error
        if self.sink is not None:
            self.sink(full)

    def say(self, text: str) -> None:
        try:
            self.wd.log(f"[{self.stage or '-'}] {text}")
        except OSError:
            pass
        self.emit({"event": "message", "text": text})

    # ---------------------------------------------------------------- the source
    def source(self) -> Any:
        if self._source is None:
            from p2v.source.ssh import SshOptions, SshSource

            options = SshOptions(identity=self.spec.identity, known_hosts=self.spec.known_hosts,
                                 accept_new_host_key=self.spec.accept_new_host_key,
                                 ssh_config=self.spec.ssh_config)
            self.say(f"connecting to {self.spec.source}")
            self._source = SshSource.open(self.spec.source, options)
        return self._source

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    # ---------------------------------------------------------------- stages
    def inventory(self) -> Inventory:
        return Inventory.from_json(self.wd.file("inventory.json").read_text(),
                                   str(self.wd.file("inventory.json")))

    def plan(self) -> JobPlan:
        return JobPlan.from_dict(read_json(self.wd.file("plan.json")))

    def run_inspect(self) -> dict[str, Any]:
        from p2v.source.inventory import inspect_source

        inv = inspect_source(self.source())
        write_json(self.wd.file("inventory.json"), inv.to_dict())
        self.say(f"{inv.hostname}: {inv.os.pretty_name or inv.os.id}, {inv.firmware}, "
                 f"{len(inv.disks)} disk(s), {len(inv.nics)} NIC(s)")
        return {"hostname": inv.hostname}

    def run_preflight(self) -> dict[str, Any]:
        from p2v.copy import probe_device

        spec, inv = self.spec, self.inventory()
        # Tools first: nothing else is worth checking on a host that cannot do the job.
        for program in ("qemu-img", "qemu-storage-daemon", "qemu-system-x86_64"):
            runner.which(program)
        if importlib.util.find_spec("guestfs") is None:
            raise CommandNotFound(program="libguestfs Python binding (python3-guestfs)")
        firmware = inv.firmware or "bios"
        if firmware == "uefi":
            from p2v.target.register import host_ovmf

            host_ovmf()
        disks, choice, left = choose_disks(inv, spec.disks)
        if not disks:
            raise UsageError(detail=f"{spec.source} reports no disk to copy; name one with "
                                    "--disk DEV")
        sized = []
        for disk in disks:
            info: Any = probe_device(self.source(), disk.device)
            # DeviceInfo (size, reader tools); an int from older copy modules.
            sized.append(replace(disk, size=int(getattr(info, "size", info))))
        choice = describe_choice(sized, choice)
        self.say(choice)
        needed = sum(d.size if spec.full or d.estimate is None else min(d.estimate, d.size)
                     for d in sized) + SPACE_MARGIN
        free = shutil.disk_usage(self.wd.path).free
        if free < needed:
            raise NotEnoughSpace(directory=str(self.wd.path), free=_size(free),
                                 needed=_size(needed),
                                 detail="the source's copy estimate plus 256 MiB for fix")
        pins = tuple((n.name, n.mac.lower()) for n in inv.nics if n.physical and n.mac)
        if spec.new_macs:
            from p2v.target.register import fresh_mac

            pins = tuple((name, fresh_mac()) for name, _mac in pins)
        target_inventory = self._target_inventory(inv, sized, pins)
        self._check_target(target_inventory, firmware)
        plan = JobPlan(disks=tuple(sized), pins=pins, firmware=firmware, disk_choice=choice,
                       not_carried_over=tuple(left + not_carried_over(inv, sized)))
        write_json(self.wd.file("plan.json"), plan.to_dict())
        for item in plan.not_carried_over:
            self.say(f"will not carry over: {item}")
        self.say("MACs for the guest (used by fix and register): "
                 + (", ".join(f"{n}={m}" for n, m in pins) or "none"))
        return {"disks": [d.device for d in sized], "needed_bytes": needed, "free_bytes": free}

    def _target_inventory(self, inv: Inventory, disks: Sequence[PlannedDisk],
                          pins: Sequence[tuple[str, str]]) -> SourceInventory:
        base = inv.source_inventory()
        return replace(base, nics=tuple(SourceNic(n, m) for n, m in pins),
                       disks=tuple(SourceDisk(d.name, d.boot) for d in disks))

    def _mappings(self) -> tuple[Any, ...]:
        from p2v.target.domain import NicMapping

        mappings = ([NicMapping.parse("network", m) for m in self.spec.networks]
                    + [NicMapping.parse("bridge", m) for m in self.spec.bridges])
        if self.spec.new_macs and self.wd.file("inventory.json").is_file():
            # A mapping keyed by a source MAC means that NIC, whatever MAC the guest gets.
            by_mac = {n.mac.lower(): n.name for n in self.inventory().nics if n.mac}
            mappings = [replace(m, src=by_mac.get(m.src.strip().lower().replace("-", ":"),
                                                  m.src)) if m.src else m
                        for m in mappings]
        return tuple(mappings)

    def _check_target(self, inventory: SourceInventory, firmware: str) -> None:
        from p2v.target.libvirt import LibvirtTarget

        with LibvirtTarget(self.spec.connect, progress=self.say) as target:
            target.check_new_guest(self.spec.name, inventory, firmware, self._mappings(),
                                   start=self.spec.start, pool=self.spec.pool)

    def run_copy(self) -> dict[str, Any]:
        from p2v.copy import CopyRequest, copy_disks

        plan, spec = self.plan(), self.spec
        request = CopyRequest(disks=tuple(d.device for d in plan.disks),
                              output_dir=self.wd.path, name=spec.name, full=spec.full,
                              compress=spec.compress)
        # Dirty pages the server has not written yet are not on the device the copy reads:
        # flush them first, so the copy starts from a consistent on-disk state.
        self.say("flushing the source's page cache to its disks (sync)")
        self.source().run(["sync"], timeout=600, check=False)
        results = copy_disks(self.source(), request, emit=self.emit)
        disks = [DiskReport(r.device, str(r.image), r.size, _allocated(r.image), r.wire_bytes)
                 for r in results]
        write_json(self.wd.file("copy.json"), [asdict(d) for d in disks])
        return {"disks": [asdict(d) for d in disks]}

    def run_sync(self) -> dict[str, Any]:
        """Live sync passes while the delta shrinks, then the frozen final pass."""
        from p2v.sync import SyncRequest, sync

        plan, spec = self.plan(), self.spec
        live = SyncRequest(output_dir=self.wd.path, disks=tuple(d.device for d in plan.disks),
                           name=spec.name, compress=spec.compress)
        passes: list[dict[str, Any]] = []
        for number in range(1, MAX_LIVE_PASSES + 1):
            result = sync(self.source(), live, emit=self.emit)
            passes.append({"pass": number, "changed_bytes": result.changed_bytes,
                           "wire_bytes": result.wire_bytes,
                           "seconds": round(result.seconds, 2)})
            self.say(f"sync pass {number}: {result.changed_bytes} bytes changed, "
                     f"{result.seconds:.1f} s")
            if result.changed_bytes == 0 or (
                    len(passes) > 1 and result.changed_bytes >= passes[-2]["changed_bytes"]):
                break               # nothing left, or the delta stopped shrinking
        final_request = replace(live, freeze=spec.freeze, freeze_timeout=spec.freeze_timeout,
                                before_final=spec.before_final, after_final=spec.after_final)
        self.say("final pass: " + ("running the before-final hook, " if spec.before_final
                                   else "") + f"freezing ({spec.freeze})")
        final = sync(self.source(), final_request, emit=self.emit)
        freeze = final.freeze.to_dict() if final.freeze else None
        downtime = final.freeze.seconds if final.freeze else None
        self.say(f"final pass: {final.changed_bytes} bytes changed; the source was frozen "
                 f"{downtime or 0:.1f} s (the downtime window)")
        data = {"live_passes": passes, "final": final.to_dict(), "freeze": freeze,
                "downtime_s": None if downtime is None else round(downtime, 2)}
        write_json(self.wd.file("sync.json"), data)
        return {"live_passes": len(passes), "downtime_s": data["downtime_s"]}

    def images(self) -> list[Path]:
        return [Path(d["image"]) for d in read_json(self.wd.file("copy.json"))]

    def run_fix(self) -> dict[str, Any]:
        from p2v.fix.fixer import FixOptions, disk_ids, fix_images, mac_changes
        from p2v.fix.fsck import repair_filesystems
        from p2v.fix.multipath import maps_from_dm
        from p2v.fix.network import NicPin

        plan = self.plan()
        inv = self.inventory()
        source_macs = {n.name: n.mac.lower() for n in inv.nics if n.mac}
        known = {d.name: d for d in inv.disks}
        options = FixOptions(pins=tuple(NicPin(n, m) for n, m in plan.pins),
                             mac_map=mac_changes(source_macs, dict(plan.pins)),
                             source_disks=tuple(d.name for d in plan.disks),
                             firmware=plan.firmware, serial_console=self.spec.serial_console,
                             # serial/WWID and multipath maps: what by-id names point at
                             disk_ids=tuple(disk_ids(known[d.name]) if d.name in known else ()
                                            for d in plan.disks),
                             mpath_maps=maps_from_dm(inv.dm))
        wait_until_released(self.images(), self.say)
        # A live copy is not a snapshot: repair its filesystems before fix mounts them.
        for line in repair_filesystems(self.images(), progress=self.say):
            self.say(f"filesystem {line}")
        result = fix_images(self.images(), options, progress=self.say)
        data = result.to_dict()
        write_json(self.wd.file("fix.json"), data)
        write_json(self.wd.file("caps.json"), data["caps"])
        for change in result.plan.changes:
            self.say(f"changed: {change}")
        for warning in result.plan.warnings:
            self.say(f"warning: {warning}")
        return {"changes": len(result.plan.changes), "caps": data["caps"]}

    def caps(self) -> Any:
        from p2v.model import GuestCaps

        return GuestCaps.from_json(self.wd.file("caps.json").read_text(),
                                   str(self.wd.file("caps.json")))

    def run_verify(self) -> dict[str, Any]:
        if not self.spec.verify:
            self.say("boot check skipped (--no-verify)")
            write_json(self.wd.file("verify.json"), None)
            return {"skipped": True}
        wait_until_released(self.images(), self.say)
        verdict = self._boot_check()
        write_json(self.wd.file("verify.json"), verdict.to_dict())
        if not verdict.booted:
            from p2v.verify.console import next_step

            last = next((ln for ln in reversed(verdict.evidence) if ln.strip()), "no output")
            raise BootFailed(reason=verdict.reason,
                             detail=f"{last.strip()[:160]}; "
                                    f"{next_step(verdict.reason, verdict.evidence)}; "
                                    f"console evidence in {self.wd.file('verify.json')}")
        self.say(f"booted on {verdict.bus} in {verdict.elapsed_s:.0f} s (via {verdict.via}): "
                 f"hostname {verdict.hostname}, root {verdict.root}")
        return {"booted": True, "hostname": verdict.hostname, "via": verdict.via}

    def _boot_check(self) -> Any:
        """Boot the domain XML register will define (a transient domain on the local libvirt);
        with a remote libvirt, p2v's own qemu machine of the same bus, firmware and NICs."""
        from p2v.scratch import WORK_DIR_ROOT
        from p2v.target.libvirt import LibvirtTarget, is_local

        scratch = self.wd.file(WORK_DIR_ROOT)       # `clean` removes it with the work dir
        if not is_local(self.spec.connect):
            from p2v.verify.boot import BootOptions, verify_boot

            self.say(f"{self.spec.connect} is remote: the boot check boots here in qemu on the "
                     "same disk bus, firmware and NIC model, not the domain XML itself")
            caps, plan = self.caps(), self.plan()
            options = BootOptions(bus=cast(Any, caps.disk_bus), firmware=caps.firmware,
                                  macs=tuple(m for _n, m in plan.pins),
                                  nic_model=cast(Any, caps.nic_model),
                                  timeout=self.spec.verify_timeout, scratch_root=scratch)
            return verify_boot(self.images(), options, progress=self.say)
        from p2v.target.domain import domain_xml
        from p2v.target.register import check_request, inspect_image, volume_names
        from p2v.verify.libvirt_boot import DomainBoot, verify_domain

        request = self._register_request()
        caps = check_request(request)
        infos = [inspect_image(p) for p in request.images]
        with LibvirtTarget(self.spec.connect, progress=self.say) as target:
            xml = domain_xml(target.plan(request, infos, caps))
        volumes = volume_names(self.spec.name, infos)
        keys = [f"{self.spec.pool}/{v}" if self.spec.pool else str(i.path)
                for i, v in zip(infos, volumes, strict=True)]
        boot = DomainBoot(xml=xml, images=dict(zip(keys, (i.path for i in infos), strict=True)),
                          uri=self.spec.connect, timeout=self.spec.verify_timeout,
                          scratch_root=scratch)
        return verify_domain(boot, progress=self.say)

    def _register_request(self) -> Any:
        """What register is asked to define: the verify stage boots the same."""
        from p2v.target.register import RegisterRequest

        spec, plan, inv = self.spec, self.plan(), self.inventory()
        return RegisterRequest(
            name=spec.name, images=tuple(self.images()),
            inventory=self._target_inventory(inv, plan.disks, plan.pins),
            caps=self.caps(), memory_mib=spec.memory_mib, vcpus=spec.vcpus,
            mappings=self._mappings(), uri=spec.connect, start=spec.start, pool=spec.pool,
            output_dir=self.wd.path,
        )

    def run_register(self) -> dict[str, Any]:
        from p2v.target.register import register

        spec = self.spec
        images = self.images()
        pending = self.wd.file("register.pending")
        if pending.exists():
            # An earlier run died between defining and its marker: remove what it defined
            # (only if it is that run's guest: same name, our images) and define it again.
            self._undo_register(images)
        write_json(pending, {"name": spec.name, "uri": spec.connect})
        request = self._register_request()
        try:
            result = register(request, progress=self.say)
        except BaseException:
            self._undo_register(images)
            raise
        write_json(self.wd.file("register.json"), result.to_dict())
        pending.unlink(missing_ok=True)
        self.say(f"domain {result.name} defined at {result.uri} ({result.domain_type}, "
                 f"{result.firmware}, {result.disk_bus}); "
                 + ("started" if result.started else "left shut off"))
        return {"uuid": result.uuid, "started": result.started}

    def _undo_register(self, images: Sequence[Path]) -> None:
        """Undefine the job's own guest if a failed register left it defined."""
        from p2v.target.libvirt import LibvirtTarget
        from p2v.target.register import volume_names

        try:
            with LibvirtTarget(self.spec.connect) as target:
                facts = target.describe(self.spec.name)
                if facts is None:
                    return
                ours = {str(p.resolve()) for p in images}
                if self.spec.pool:
                    # The copy writes qcow2 only; volume_names reads nothing else of an image.
                    qcow2 = [cast(Any, SimpleNamespace(format="qcow2")) for _ in images]
                    ours |= {f"{self.spec.pool}/{v}"
                             for v in volume_names(self.spec.name, qcow2)}
                if facts.disks and set(facts.disks) <= ours and not facts.active:
                    target.remove(self.spec.name, facts.uuid)
                    self.say(f"undefined the half-registered domain {self.spec.name}")
        except P2VError as exc:
            self.say(f"could not undo the register: {exc.message}")

    # ---------------------------------------------------------------- the report
    def report(self, started: float, earlier: set[str], error: P2VError | None,
               failed_stage: str | None) -> JobReport:
        wd = self.wd
        stages = []
        for stage in stages_for(self.spec):
            if wd.is_done(stage):
                stages.append(StageTime(stage, float(wd.marker_data(stage).get("seconds", 0)),
                                        stage in earlier))
        disks: tuple[DiskReport, ...] = ()
        if wd.file("copy.json").is_file():
            disks = tuple(DiskReport(**d) for d in read_json(wd.file("copy.json")))
            disks = tuple(replace(d, file_bytes=_allocated(Path(d.image))) for d in disks)
        choice, left = "", cast(tuple[str, ...], ())
        if wd.file("plan.json").is_file():
            plan = self.plan()
            choice, left = plan.disk_choice, plan.not_carried_over
        verdict = None
        if wd.is_done("verify") and wd.file("verify.json").is_file():
            verdict = read_json(wd.file("verify.json"))
        domain = None
        if wd.is_done("register") and wd.file("register.json").is_file():
            domain = read_json(wd.file("register.json"))
        downtime = None
        if wd.is_done("sync") and wd.file("sync.json").is_file():
            downtime = read_json(wd.file("sync.json")).get("downtime_s")
        message = None
        code = ExitCode.OK
        if error is not None:
            code = error.exit_code
            message = (f"{error.message} [convert stopped at {failed_stage or 'start'}; work dir "
                       f"{wd.path} kept, no domain defined: rerun the same command to resume, "
                       f"or `p2v clean {self.spec.name}`]")
        return JobReport(
            name=self.spec.name, source=self.spec.source, work_dir=str(wd.path),
            ok=error is None, stages=tuple(stages), disks=disks, disk_choice=choice,
            not_carried_over=tuple(left), domain=domain, verdict=verdict,
            network=tuple(self._network_lines(verdict)), failed_stage=failed_stage,
            error=message, exit_code=code, elapsed_s=round(time.monotonic() - started, 1),
            downtime_s=downtime)

    def _network_lines(self, verdict: dict[str, Any] | None) -> list[str]:
        """Each source NIC next to what the booted guest showed on the same MAC."""
        if not verdict or not self.wd.file("inventory.json").is_file():
            return []
        seen = {str(i.get("mac", "")).lower(): i for i in verdict.get("interfaces", [])}
        guest_mac = dict(self.plan().pins) if self.wd.file("plan.json").is_file() else {}
        lines = []
        for nic in self.inventory().nics:
            if not nic.mac:
                continue
            src = sorted(a for a in nic.addresses if ":" not in a)
            mac = guest_mac.get(nic.name, nic.mac.lower())
            got = seen.get(mac)
            if mac != nic.mac.lower():
                nic = replace(nic, mac=f"{nic.mac} (guest {mac})")
            if got is None:
                lines.append(f"{nic.name} {nic.mac}: NOT seen in the guest")
                continue
            have = sorted(a for a in got.get("addresses", []) if ":" not in a)
            same = got.get("name") == nic.name and set(src) <= set(have)
            lines.append(f"{nic.name} {nic.mac} {', '.join(src) or 'no IPv4'} -> guest "
                         f"{got.get('name')} {', '.join(have) or 'no IPv4'}"
                         + (" (as on the source)" if same else " (DIFFERS from the source)"))
        return lines


def wait_until_released(images: Sequence[Path], say: Callable[[str], None],
                        timeout: float = 180.0) -> None:
    """Wait while another process holds an image's write lock.

    A run killed during fix leaves its libguestfs appliance behind for a few seconds (its
    recovery process stops it); the rerun must not race it for the image.
    """
    deadline = time.monotonic() + timeout
    for image in images:
        told = False
        while True:
            probe = runner.run(["qemu-img", "info", str(image)], check=False, timeout=60)
            if probe.returncode == 0 or "lock" not in probe.stderr:
                break       # free, or another problem the stage itself will report
            if time.monotonic() > deadline:
                raise UsageError(detail=(
                    f"{image} is still in use by another process ({probe.stderr.strip()[:120]})"
                    "; find it with `fuser -v IMAGE`, let it finish, then rerun"))
            if not told:
                say(f"waiting for another process (a killed run's appliance?) to release "
                    f"{image}")
                told = True
            time.sleep(2)


def _allocated(path: Path) -> int:
    try:
        return Path(path).stat().st_blocks * 512
    except OSError:
        return 0


def _copy_started(wd: WorkDir) -> bool:
    """Whether any disk of this job has been (partly) copied into the work dir."""
    if wd.is_done("copy"):
        return True
    return any(p.name.endswith((".qcow2", ".qcow2.part", ".journal"))
               for p in wd.path.iterdir())


def _check_same_job(spec: JobSpec, wd: WorkDir) -> None:
    path = wd.file("spec.json")
    if not path.is_file():
        return
    old = read_json(path)
    new = spec.to_dict()
    # A key missing from an older spec.json had its field's default then.
    defaults = {f.name: f.default for f in fields(JobSpec)}
    differs = [k for k in _SAME_JOB if old.get(k, defaults.get(k)) != new.get(k)]
    if differs and not _copy_started(wd):
        # Nothing was copied yet (e.g. a disk name was wrong and preflight refused it): the
        # corrected job simply replaces the old one, from inspect on.
        wd.clear(CUTOVER_STAGES)
        wd.log("spec changed before any copy (" + ", ".join(differs) + "): starting afresh")
        return
    if differs:
        detail = ", ".join(f"{k} was {old.get(k)!r}" for k in differs)
        raise WorkDirMismatch(work_dir=str(wd.path), detail=detail, name=spec.name)


@contextmanager
def _job_log_handler(wd: WorkDir) -> Iterator[None]:
    """Warnings p2v's modules log (the copy's refetches, ...) go to the job's log too."""
    open_private(wd.file("job.log"), "a").close()     # 0600 before logging appends to it
    handler = logging.FileHandler(wd.file("job.log"))
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s [log] %(levelname)s %(name)s: "
                                           "%(message)s", "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("p2v")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def run_job(spec: JobSpec, events: EventSink | None = None) -> JobReport:
    """Run (or continue) one conversion job; never raises a P2VError: the report says.

    `events` receives every event (docs/convert.md, schema p2v.events/1) as a dict; the same
    events are appended to the work dir's events.jsonl. KeyboardInterrupt is re-raised after
    the work dir is left consistent (markers only ever mark finished stages).
    """
    started = time.monotonic()
    problem = name_problem(spec.name)
    if problem is not None:
        return JobReport(name=spec.name, source=spec.source, work_dir=str(spec.work_dir),
                         ok=False, error=problem, exit_code=ExitCode.USAGE,
                         failed_stage="start")
    wd = WorkDir(spec.work_dir, spec.name)
    job = _Job(spec, wd, events)
    failed: str | None = None
    error: P2VError | None = None
    earlier: set[str] = set()
    try:
        with wd, _job_log_handler(wd):
            try:
                _check_same_job(spec, wd)
                write_json(wd.file("spec.json"), spec.to_dict())
                stages = stages_for(spec)
                earlier = set(wd.done_stages(stages))
                first = wd.first_unfinished(stages)
                wd.log(f"run starts (pid {os.getpid()}); "
                       + (f"resuming at {first}" if earlier and first else
                          "all stages done" if first is None else "fresh job"))
                job.emit({"event": "job-start", "stage": None, "schema": EVENT_SCHEMA,
                          "work_dir": str(wd.path), "source": spec.source,
                          "resume_at": first, "done": sorted(earlier, key=stages.index)})
                runners = {"inspect": job.run_inspect, "preflight": job.run_preflight,
                           "copy": job.run_copy, "sync": job.run_sync, "fix": job.run_fix,
                           "verify": job.run_verify, "register": job.run_register}
                reached = False
                for stage in stages:
                    job.stage = stage
                    if not reached and stage != first:
                        job.emit({"event": "stage-skip", "reason": "done in an earlier run"})
                        continue
                    reached = True
                    # Later markers stand on this stage's output: they go before it reruns.
                    wd.clear(stages[stages.index(stage):])
                    job.emit({"event": "stage-start"})
                    t0 = time.monotonic()
                    failed = stage
                    result = runners[stage]()
                    failed = None
                    seconds = time.monotonic() - t0
                    wd.mark_done(stage, seconds, result)
                    job.emit({"event": "stage-done", "seconds": round(seconds, 1)})
                job.stage = None
            except P2VError as exc:
                error = exc
                failed = failed or job.stage
                wd.log(f"FAILED in {failed}: {exc.message}")
            except KeyboardInterrupt:
                wd.log(f"interrupted in {job.stage}")
                job.emit({"event": "job-interrupted", "stage": job.stage})
                raise
            except Exception:
                wd.log(f"internal error in {job.stage}:\n{traceback.format_exc()}")
                raise
            finally:
                job.close()
            report = job.report(started, earlier, error, failed)
            write_json(wd.file("report.json"), report.to_dict())
            if error is None:
                wd.log("job done")
                job.emit({"event": "job-done", "stage": None, "report": report.to_dict()})
            else:
                job.emit({"event": "job-failed", "stage": failed, "error": report.error,
                          "exit_code": report.exit_code})
            return report
    except P2VError as exc:
        # The work dir itself could not be set up (locked, unwritable): nothing ran.
        return JobReport(name=spec.name, source=spec.source, work_dir=str(spec.work_dir),
                         ok=False, error=exc.message, exit_code=exc.exit_code,
                         failed_stage="start", elapsed_s=round(time.monotonic() - started, 1))


@dataclass(frozen=True)
class CleanResult:
    work_dir: str | None               # removed
    domain: str | None                 # undefined (name), when --domain and there was one
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def clean_job(name: str, output_dir: Path, *, domain: bool = False,
              uri: str | None = None) -> CleanResult:
    """Remove a job's work dir and, with `domain`, the guest that job registered.

    Only what the job made is removed: the guest must carry the UUID in the job's
    register.json and be shut off; a guest still using the work dir's images is not
    orphaned (without `domain` the clean is refused); a directory without a job's spec.json
    is not removed.
    """
    from p2v.errors import InputNotFound

    problem = name_problem(name)
    if problem is not None:
        raise UsageError(detail=problem)
    wd = WorkDir(Path(output_dir) / name, name)
    if not wd.path.is_dir():
        raise InputNotFound(what=f"work dir of job {name!r}", path=str(wd.path))
    if not wd.file("spec.json").is_file():
        raise UsageError(detail=f"{wd.path} has no spec.json: not a p2v job's work dir, "
                                "not removing it")
    notes: list[str] = []
    removed_domain = None
    with wd:
        spec = read_json(wd.file("spec.json"))
        registered = (read_json(wd.file("register.json"))
                      if wd.file("register.json").is_file() else None)
        uri = uri or (registered or {}).get("uri") or spec.get("connect")
        if registered is not None or domain:
            from p2v.target.libvirt import LibvirtTarget

            with LibvirtTarget(str(uri)) as target:
                facts = target.describe(name)
                inside = facts is not None and any(
                    d.startswith(str(wd.path.resolve()) + "/") or d.startswith(str(wd.path) + "/")
                    for d in facts.disks)
                if registered is None:
                    notes.append(f"job {name} registered no domain: no domain removed"
                                 + (f" (a domain {name!r} exists at {uri}: not this job's)"
                                    if facts is not None else ""))
                    if inside:
                        raise UsageError(detail=(
                            f"domain {name!r} at {uri} uses images in {wd.path} but this job "
                            "did not register it; remove it yourself first"))
                elif facts is None:
                    notes.append(f"domain {name} is no longer defined at {uri}")
                elif domain:
                    target.remove(name, str(registered["uuid"]))
                    removed_domain = name
                    if registered.get("disks") and spec.get("pool"):
                        notes.append("its volumes in pool " + str(spec.get("pool"))
                                     + " are kept: " + ", ".join(registered["disks"]))
                elif inside:
                    raise UsageError(detail=(
                        f"domain {name!r} at {uri} uses the images in {wd.path}; pass "
                        "--domain to remove it too, or keep the work dir"))
    shutil.rmtree(wd.path)
    notes += _sweep_boot_checks(str(uri or spec.get("connect") or "qemu:///system"))
    return CleanResult(work_dir=str(wd.path), domain=removed_domain, notes=tuple(notes))


def _sweep_boot_checks(uri: str) -> list[str]:
    """A boot check's network (or domain) that a killed run left behind goes with `clean`."""
    from p2v.scratch import owner_alive
    from p2v.target.libvirt import is_local, sweep_transient_at

    if not is_local(uri):
        return []
    try:
        removed = sweep_transient_at(uri, owner_alive)
    except P2VError:
        return []           # no libvirtd here: nothing of a boot check can be left in it
    return [f"removed {name}, left in libvirt by a boot check that was killed"
            for name in removed]


__all__ = ["CUTOVER_STAGES", "EVENT_SCHEMA", "STAGES", "CleanResult", "DiskReport", "JobPlan",
           "JobReport",
           "StageTime", "choose_disks", "clean_job", "load_report", "not_carried_over", "run_job"]
