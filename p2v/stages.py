"""The stages of one conversion job, each a function of the values it needs.

Every stage takes the job's context and the values earlier stages returned, writes its own
result file into the work dir (the record a rerun reloads with the stage's `load_*`), and
returns its value: inspect -> Inventory, preflight (p2v.preflight) -> JobPlan, copy -> the
copied disks, sync -> the cutover's passes, fix -> GuestCaps, verify -> the boot verdict,
register -> the defined domain. No stage reads another stage's file: p2v.pipeline passes
the values along.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from p2v import qemuimg
from p2v.errors import BootFailed, P2VError, UsageError
from p2v.events import Event, EventSink
from p2v.job import JobSpec, host_bucket
from p2v.jobdir import WorkDir, read_json, write_json
from p2v.jobplan import JobPlan, nic_mappings, target_inventory
from p2v.model import GuestCaps, Inventory
from p2v.report import DiskReport, allocated

if TYPE_CHECKING:
    from p2v.source.ssh import SshSource
    from p2v.source.tracker import WriteTracker
    from p2v.target.request import RegisterRequest
    from p2v.transfer.sync import SyncRequest

# Live sync passes before the frozen one: more while each delta is smaller than the last.
MAX_LIVE_PASSES = 4


class JobContext:
    """What every stage may use: the spec, the work dir, events and the log, and the SSH
    session to the source, opened on first use (a rerun that only registers never opens it)."""

    def __init__(self, spec: JobSpec, wd: WorkDir, sink: EventSink | None) -> None:
        self.spec = spec
        self.wd = wd
        self.sink = sink
        self.stage: str | None = None
        self._source: SshSource | None = None

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

    def source(self) -> SshSource:
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


# ------------------------------------------------------------------------------- inspect
def inspect(ctx: JobContext) -> Inventory:
    from p2v.source.inventory import inspect_source

    inv = inspect_source(ctx.source())
    write_json(ctx.wd.file("inventory.json"), inv.to_dict())
    ctx.say(f"{inv.hostname}: {inv.os.pretty_name or inv.os.id}, {inv.firmware}, "
            f"{len(inv.disks)} disk(s), {len(inv.nics)} NIC(s)")
    return inv


def load_inventory(wd: WorkDir) -> Inventory:
    path = wd.file("inventory.json")
    return Inventory.from_json(path.read_text(), str(path))


def load_plan(wd: WorkDir) -> JobPlan:
    return JobPlan.from_dict(read_json(wd.file("plan.json")))


# ------------------------------------------------------------------------------- copy, sync
def shared_limit(spec: JobSpec) -> tuple[Path, float] | None:
    """The batch's host-wide bandwidth bucket and rate, or None outside such a batch."""
    if spec.host_bandwidth_limit is None:
        return None
    from p2v.secure import private_dir

    bucket = host_bucket(spec.output_dir)
    private_dir(bucket.parent, "batch state dir")
    return bucket, spec.host_bandwidth_limit


def copy(ctx: JobContext, plan: JobPlan) -> tuple[DiskReport, ...]:
    from p2v.transfer.copy import CopyRequest, copy_disks

    spec = ctx.spec
    request = CopyRequest(disks=tuple(d.device for d in plan.disks), output_dir=ctx.wd.path,
                          name=spec.name, full=spec.full, compress=spec.compress,
                          parallel=spec.parallel, bandwidth_limit=spec.bandwidth_limit,
                          shared_limit=shared_limit(spec))
    # Dirty pages the server has not written yet are not on the device the copy reads:
    # flush them first, so the copy starts from a consistent on-disk state.
    ctx.say("flushing the source's page cache to its disks (sync)")
    ctx.source().run(["sync"], timeout=600, check=False)
    results = copy_disks(ctx.source(), request, emit=ctx.emit)
    disks = tuple(DiskReport(r.device, str(r.image), r.size, allocated(r.image), r.wire_bytes)
                  for r in results)
    write_json(ctx.wd.file("copy.json"), [asdict(d) for d in disks])
    return disks


def load_disks(wd: WorkDir) -> tuple[DiskReport, ...]:
    return tuple(DiskReport(**d) for d in read_json(wd.file("copy.json")))


def sync(ctx: JobContext, plan: JobPlan) -> dict[str, Any]:
    """Live sync passes while the delta shrinks, then the frozen final pass; the writes on
    the source are tracked from before the first pass, so later passes (and the frozen
    one) read only what was written since the pass before."""
    from p2v.transfer import sync as transfer

    spec = ctx.spec
    live = transfer.SyncRequest(output_dir=ctx.wd.path,
                                disks=tuple(d.device for d in plan.disks), name=spec.name,
                                compress=spec.compress, bandwidth_limit=spec.bandwidth_limit,
                                shared_limit=shared_limit(spec))
    final_request = replace(live, freeze=spec.freeze, freeze_timeout=spec.freeze_timeout,
                            before_final=spec.before_final, after_final=spec.after_final)
    with transfer.write_tracker(ctx.source(), live) as tracker:
        passes = _live_passes(ctx, live, tracker)
        ctx.say("final pass: " + ("running the before-final hook, " if spec.before_final
                                  else "") + f"freezing ({spec.freeze})")
        final = transfer.sync(ctx.source(), final_request, emit=ctx.emit, tracker=tracker)
    freeze = final.freeze.to_dict() if final.freeze else None
    downtime = final.freeze.seconds if final.freeze else None
    bound = pass_mode(final.to_dict())
    ctx.say(f"final pass: {final.changed_bytes} bytes changed; the source was frozen "
            f"{downtime or 0:.1f} s (the downtime window; {bound})")
    data = {"live_passes": passes, "final": final.to_dict(), "freeze": freeze,
            "downtime_s": None if downtime is None else round(downtime, 2),
            "downtime_bound": bound}
    write_json(ctx.wd.file("sync.json"), data)
    return data


def _live_passes(ctx: JobContext, live: SyncRequest, tracker: WriteTracker
                 ) -> list[dict[str, Any]]:
    """Live passes while the delta shrinks (at most MAX_LIVE_PASSES); their records."""
    from p2v.transfer import sync as transfer

    passes: list[dict[str, Any]] = []
    for number in range(1, MAX_LIVE_PASSES + 1):
        result = transfer.sync(ctx.source(), live, emit=ctx.emit, tracker=tracker)
        how = pass_mode(result.to_dict())
        passes.append({"pass": number, "changed_bytes": result.changed_bytes,
                       "wire_bytes": result.wire_bytes, "seconds": round(result.seconds, 2),
                       "tracked": result.tracked, "how": how})
        ctx.say(f"sync pass {number}: {result.changed_bytes} bytes changed, "
                f"{result.wire_bytes} bytes sent, {result.seconds:.1f} s ({how})")
        if result.changed_bytes == 0 or (
                len(passes) > 1 and result.changed_bytes >= passes[-2]["changed_bytes"]):
            break               # nothing left, or the delta stopped shrinking
    return passes


def pass_mode(result: dict[str, Any]) -> str:
    """How a pass found its chunks, in words: tracked, or rehashed and why."""
    disks = [d for d in result.get("disks", ()) if isinstance(d, dict)]
    if disks and all(d.get("tracked") for d in disks):
        read = sum(int(d.get("read_chunks") or 0) for d in disks)
        return f"tracked: only the {read} chunk(s) written since the last pass were read"
    whys = sorted({str(d.get("rehash_why")) for d in disks
                   if not d.get("tracked") and d.get("rehash_why")})
    return "rehashed: every used chunk was hashed" + (f" ({'; '.join(whys)})" if whys else "")


def load_sync(wd: WorkDir) -> dict[str, Any]:
    data = read_json(wd.file("sync.json"))
    return data if isinstance(data, dict) else {}


def images(disks: Sequence[DiskReport]) -> list[Path]:
    return [Path(d.image) for d in disks]


def wait_until_released(paths: Sequence[Path], say: Callable[[str], None],
                        timeout: float = 180.0) -> None:
    """Wait while another process holds an image's write lock.

    A run killed during fix leaves its libguestfs appliance behind for a few seconds (its
    recovery process stops it); the rerun must not race it for the image.
    """
    deadline = time.monotonic() + timeout
    for image in paths:
        told = False
        while True:
            holder = qemuimg.lock_holder(image)
            if holder is None:
                break       # free, or another problem the stage itself will report
            if time.monotonic() > deadline:
                raise UsageError(detail=(
                    f"{image} is still in use by another process ({holder[:120]})"
                    "; find it with `fuser -v IMAGE`, let it finish, then rerun"))
            if not told:
                say(f"waiting for another process (a killed run's appliance?) to release "
                    f"{image}")
                told = True
            time.sleep(2)


# ------------------------------------------------------------------------------- fix
def fix(ctx: JobContext, inv: Inventory, plan: JobPlan,
        disks: Sequence[DiskReport]) -> GuestCaps:
    from p2v.fix.fixer import fix_images
    from p2v.fix.fsck import repair_filesystems
    from p2v.fix.linux.multipath import maps_from_dm
    from p2v.fix.linux.network import NicPin
    from p2v.fix.options import FixOptions, disk_ids, mac_changes

    source_macs = {n.name: n.mac.lower() for n in inv.nics if n.mac}
    known = {d.name: d for d in inv.disks}
    # An imported image: no source names to pin or map, fix inspects it as `p2v fix` would.
    pinned = plan.pins if plan.pin_nics else ()
    options = FixOptions(pins=tuple(NicPin(n, m) for n, m in pinned),
                         mac_map=mac_changes(source_macs, dict(pinned)),
                         source_disks=() if ctx.spec.images else
                         tuple(d.name for d in plan.disks),
                         firmware=plan.firmware, serial_console=ctx.spec.serial_console,
                         # serial/WWID and multipath maps: what by-id names point at
                         disk_ids=tuple(disk_ids(known[d.name]) if d.name in known else ()
                                        for d in plan.disks),
                         mpath_maps=maps_from_dm(inv.dm), virtio_win=ctx.spec.virtio_win)
    paths = images(disks)
    wait_until_released(paths, ctx.say)
    # A live copy is not a snapshot: repair its filesystems before fix mounts them.
    for line in repair_filesystems(paths, progress=ctx.say):
        ctx.say(f"filesystem {line}")
    result = fix_images(paths, options, progress=ctx.say)
    data = result.to_dict()
    write_json(ctx.wd.file("fix.json"), data)
    write_json(ctx.wd.file("caps.json"), data["caps"])
    for change in result.plan.changes:
        ctx.say(f"changed: {change}")
    for warning in result.plan.warnings:
        ctx.say(f"warning: {warning}")
    return GuestCaps.from_dict(data["caps"])


def load_caps(wd: WorkDir) -> GuestCaps:
    path = wd.file("caps.json")
    return GuestCaps.from_json(path.read_text(), str(path))


# ------------------------------------------------------------------------------- verify
def guest_request(ctx: JobContext, inv: Inventory, plan: JobPlan, disks: Sequence[DiskReport],
                  caps: GuestCaps) -> RegisterRequest:
    """What register is asked to define: the verify stage boots the same."""
    from p2v.target.request import RegisterRequest

    spec = ctx.spec
    return RegisterRequest(
        name=spec.name, images=tuple(images(disks)),
        inventory=target_inventory(inv, plan.disks, plan.pins), caps=caps,
        memory_mib=spec.memory_mib, vcpus=spec.vcpus, mappings=nic_mappings(spec, inv),
        uri=spec.connect, start=spec.start, pool=spec.pool, output_dir=ctx.wd.path)


def verify(ctx: JobContext, inv: Inventory, plan: JobPlan, disks: Sequence[DiskReport],
           caps: GuestCaps) -> dict[str, Any] | None:
    """Boot the guest that register will define; a guest that does not boot stops the job."""
    if not ctx.spec.verify:
        ctx.say("boot check skipped (--no-verify)")
        write_json(ctx.wd.file("verify.json"), None)
        return None
    wait_until_released(images(disks), ctx.say)
    verdict = _boot_check(ctx, guest_request(ctx, inv, plan, disks, caps), plan, caps)
    write_json(ctx.wd.file("verify.json"), verdict.to_dict())
    if not verdict.booted:
        from p2v.verify.console import next_step

        last = next((ln for ln in reversed(verdict.evidence) if ln.strip()), "no output")
        raise BootFailed(reason=verdict.reason,
                         detail=f"{last.strip()[:160]}; "
                                f"{next_step(verdict.reason, verdict.evidence)}; "
                                f"console evidence in {ctx.wd.file('verify.json')}")
    ctx.say(f"booted on {verdict.bus} in {verdict.elapsed_s:.0f} s (via {verdict.via}): "
            f"hostname {verdict.hostname}, root {verdict.root}")
    return load_verdict(ctx.wd)         # as a rerun will see it (JSON, not tuples)


def load_verdict(wd: WorkDir) -> dict[str, Any] | None:
    path = wd.file("verify.json")
    return read_json(path) if path.is_file() else None


def _boot_check(ctx: JobContext, request: RegisterRequest, plan: JobPlan,
                caps: GuestCaps) -> Any:
    """Boot the domain XML register will define (a transient domain on the local libvirt);
    with a remote libvirt, p2v's own qemu machine of the same bus, firmware and NICs."""
    from p2v.scratch import WORK_DIR_ROOT
    from p2v.target.libvirt import LibvirtTarget, is_local

    spec = ctx.spec
    scratch = ctx.wd.file(WORK_DIR_ROOT)       # `clean` removes it with the work dir
    if not is_local(spec.connect):
        from p2v.verify.boot import BootOptions, verify_boot

        ctx.say(f"{spec.connect} is remote: the boot check boots here in qemu on the same disk "
                "bus, firmware and NIC model, not the domain XML itself")
        options = BootOptions(bus=cast(Any, caps.disk_bus), firmware=caps.firmware,
                              macs=tuple(m for _n, m in plan.pins),
                              nic_model=cast(Any, caps.nic_model),
                              timeout=spec.verify_timeout, scratch_root=scratch)
        return verify_boot(list(request.images), options, progress=ctx.say)
    from p2v.target.domain import domain_xml
    from p2v.target.request import check_request, inspect_image, volume_names
    from p2v.verify.libvirt_boot import DomainBoot, verify_domain

    checked = check_request(request)
    infos = [inspect_image(p) for p in request.images]
    with LibvirtTarget(spec.connect, progress=ctx.say) as target:
        xml = domain_xml(target.plan(request, infos, checked))
    volumes = volume_names(spec.name, infos)
    keys = [f"{spec.pool}/{v}" if spec.pool else str(i.path)
            for i, v in zip(infos, volumes, strict=True)]
    boot = DomainBoot(xml=xml, images=dict(zip(keys, (i.path for i in infos), strict=True)),
                      uri=spec.connect, timeout=spec.verify_timeout, scratch_root=scratch)
    return verify_domain(boot, progress=ctx.say)


# ------------------------------------------------------------------------------- register
def register(ctx: JobContext, inv: Inventory, plan: JobPlan, disks: Sequence[DiskReport],
             caps: GuestCaps) -> dict[str, Any]:
    from p2v.target.register import register as define

    spec = ctx.spec
    paths = images(disks)
    pending = ctx.wd.file("register.pending")
    if pending.exists():
        # An earlier run died between defining and its marker: remove what it defined
        # (only if it is that run's guest: same name, our images) and define it again.
        _undo_register(ctx, paths)
    request = guest_request(ctx, inv, plan, disks, caps)
    write_json(pending, {"name": spec.name, "uri": spec.connect})
    try:
        result = define(request, progress=ctx.say)
    except BaseException:
        _undo_register(ctx, paths)
        raise
    write_json(ctx.wd.file("register.json"), result.to_dict())
    pending.unlink(missing_ok=True)
    ctx.say(f"domain {result.name} defined at {result.uri} ({result.domain_type}, "
            f"{result.firmware}, {result.disk_bus}); "
            + ("started" if result.started else "left shut off"))
    return cast(dict[str, Any], read_json(ctx.wd.file("register.json")))  # as a rerun sees it


def load_domain(wd: WorkDir) -> dict[str, Any] | None:
    path = wd.file("register.json")
    return read_json(path) if path.is_file() else None


def _undo_register(ctx: JobContext, paths: Sequence[Path]) -> None:
    """Undefine the job's own guest if a failed register left it defined."""
    from p2v.target.libvirt import LibvirtTarget
    from p2v.target.request import volume_names

    spec = ctx.spec
    try:
        with LibvirtTarget(spec.connect) as target:
            facts = target.describe(spec.name)
            if facts is None:
                return
            ours = {str(p.resolve()) for p in paths}
            if spec.pool:
                # The copy writes qcow2 only; volume_names reads nothing else of an image.
                qcow2 = [cast(Any, SimpleNamespace(format="qcow2")) for _ in paths]
                ours |= {f"{spec.pool}/{v}" for v in volume_names(spec.name, qcow2)}
            if facts.disks and set(facts.disks) <= ours and not facts.active:
                target.remove(spec.name, facts.uuid)
                ctx.say(f"undefined the half-registered domain {spec.name}")
    except P2VError as exc:
        ctx.say(f"could not undo the register: {exc.message}")
