"""The preflight stage: everything that can refuse the job is checked before a byte is
copied (tools, firmware, the disks and their sizes, free space, the libvirt target), and
the job's plan is fixed once: which disks, which MACs, what will not carry over."""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import replace

from p2v import runner
from p2v.errors import CommandNotFound, NotEnoughSpace, UsageError
from p2v.jobdir import write_json
from p2v.jobplan import (
    JobPlan,
    choose_disks,
    describe_choice,
    nic_mappings,
    not_carried_over,
    target_inventory,
)
from p2v.model import Inventory, SourceInventory
from p2v.stages import JobContext
from p2v.units import human_size

# Room for what fix writes (a rebuilt initramfs, grub config) and qcow2 metadata.
SPACE_MARGIN = 256 << 20


def run(ctx: JobContext, inv: Inventory) -> JobPlan:
    """Refuse the job now if anything would stop it later; else fix its plan."""
    from p2v.transfer.device import probe_device

    spec = ctx.spec
    # Tools first: nothing else is worth checking on a host that cannot do the job.
    firmware = inv.firmware or "bios"
    check_tools(("qemu-img", "qemu-storage-daemon", "qemu-system-x86_64"), firmware)
    disks, choice, left = choose_disks(inv, spec.disks)
    if not disks:
        raise UsageError(detail=f"{spec.source} reports no disk to copy; name one with "
                                "--disk DEV")
    sized = [replace(disk, size=probe_device(ctx.source(), disk.device).size)
             for disk in disks]
    choice = describe_choice(sized, choice)
    ctx.say(choice)
    needed = sum(d.size if spec.full or d.estimate is None else min(d.estimate, d.size)
                 for d in sized) + SPACE_MARGIN
    free = shutil.disk_usage(ctx.wd.path).free
    if free < needed:
        raise NotEnoughSpace(directory=str(ctx.wd.path), free=human_size(free),
                             needed=human_size(needed),
                             detail="the source's copy estimate plus 256 MiB for fix")
    pins = tuple((n.name, n.mac.lower()) for n in inv.nics if n.physical and n.mac)
    if spec.new_macs:
        from p2v.target.request import fresh_mac

        pins = tuple((name, fresh_mac()) for name, _mac in pins)
    check_target(ctx, inv, target_inventory(inv, sized, pins), firmware)
    plan = JobPlan(disks=tuple(sized), pins=pins, firmware=firmware, disk_choice=choice,
                   not_carried_over=tuple(left + not_carried_over(inv, sized)))
    write_json(ctx.wd.file("plan.json"), plan.to_dict())
    for item in plan.not_carried_over:
        ctx.say(f"will not carry over: {item}")
    ctx.say("MACs for the guest (used by fix and register): "
            + (", ".join(f"{n}={m}" for n, m in pins) or "none"))
    ctx.say(f"space: {human_size(needed)} needed, {human_size(free)} free in {ctx.wd.path}")
    return plan


def check_tools(programs: tuple[str, ...], firmware: str) -> None:
    """The host programs the job runs, the libguestfs binding fix needs, OVMF for UEFI."""
    for program in programs:
        runner.which(program)
    if importlib.util.find_spec("guestfs") is None:
        raise CommandNotFound(program="libguestfs Python binding (python3-guestfs)")
    if firmware == "uefi":
        from p2v.target.request import host_ovmf

        host_ovmf()


def check_target(ctx: JobContext, inv: Inventory, guest: SourceInventory,
                  firmware: str) -> None:
    """The libvirt side, before any copy: a free name, the networks, the pool, firmware."""
    from p2v.target.libvirt import LibvirtTarget

    spec = ctx.spec
    with LibvirtTarget(spec.connect, progress=ctx.say) as target:
        target.check_new_guest(spec.name, guest, firmware, nic_mappings(spec, inv),
                               start=spec.start, pool=spec.pool)
