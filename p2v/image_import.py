"""`p2v convert --from-image`: the import stage, in place of inspect, preflight and copy.

A lab guest that already exists as disk images (raw, qcow2, VMDK, VHD, VHDX) has no live
server to inspect: its images are checked (there, readable, a disk image, not in use), the
libvirt side is checked as preflight checks it (the name free, the networks), and each image
is converted into the job's work dir as qcow2 with `qemu-img convert` (the originals are
only read). With --in-place a raw or qcow2 image is used where it is and fix writes to it.
The stage writes the same records as the three it replaces (inventory.json, plan.json,
copy.json), so fix, verify, register and the report read an imported job as a live one.

What no live inventory can say is decided here, and said: the firmware from the boot image's
partition table (p2v.firmware.disk_firmware), memory and vCPUs from --memory/--vcpus or
DEFAULT_MEMORY_MIB/DEFAULT_VCPUS, one virtio NIC per --network/--bridge (net1, net2, ...)
with a fresh MAC, whose name fix never pins: the guest's own network configuration stays.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from p2v import qemuimg
from p2v.errors import CommandFailed, ImageNotImportable, InputNotFound, NotEnoughSpace, P2VError
from p2v.firmware import TABLE_BYTES, disk_firmware
from p2v.inputs import check_disk_image
from p2v.job import JobSpec
from p2v.jobdir import WorkDir, read_json, write_json
from p2v.jobplan import JobPlan, PlannedDisk, image_nic_names, target_inventory
from p2v.model import CpuInfo, DiskInfo, Inventory
from p2v.preflight import SPACE_MARGIN, check_target, check_tools
from p2v.report import DiskReport, allocated
from p2v.stages import JobContext, load_disks, load_inventory, load_plan
from p2v.units import human_size

# qemu-img's format name -> what users call it.
FORMATS = {"raw": "raw", "qcow2": "qcow2", "vmdk": "VMDK", "vpc": "VHD", "vhdx": "VHDX"}
IN_PLACE_FORMATS = ("raw", "qcow2")
# An image says nothing about the machine it ran on: what the guest gets without flags.
DEFAULT_MEMORY_MIB = 2048
DEFAULT_VCPUS = 2


@dataclass(frozen=True)
class ImageFacts:
    """One image as qemu-img sees it."""

    path: Path
    format: str
    size: int                       # virtual size: the disk the guest sees
    allocated: int                  # bytes the file takes (what the converted copy needs)
    firmware: str                   # what its partition table says (p2v.firmware)


def check_image(path: Path, *, boot: bool, in_place: bool = False) -> ImageFacts:
    """The image's facts, or a one-line error naming it: missing, unreadable, not a disk
    image in a format p2v imports, in use by another process, or --in-place on a format that
    has to be converted."""
    if not path.exists():
        raise InputNotFound(what="image", path=str(path))
    mode = os.R_OK | (os.W_OK if in_place else 0)
    if path.is_file() and not os.access(path, mode):
        raise ImageNotImportable(path=str(path), detail="this user cannot "
                                 + ("write" if in_place else "read") + " it")
    check_disk_image(path, boot=boot)       # a file, not empty, a disk at its start
    try:
        info = qemuimg.info(path)
    except (CommandFailed, ValueError) as exc:
        raise ImageNotImportable(path=str(path), detail=f"qemu-img cannot read it ({exc})"
                                 ) from None
    fmt = str(info.get("format"))
    if fmt not in FORMATS:
        raise ImageNotImportable(path=str(path), detail=(
            f"its format is {fmt}, not one p2v imports (raw, qcow2, VMDK, VHD, VHDX)"))
    if info.get("encrypted"):
        raise ImageNotImportable(path=str(path), detail=(
            "it is encrypted: decrypt it into a plain image first (qemu-img convert with its "
            "secret), then give that one"))
    if in_place and fmt not in IN_PLACE_FORMATS:
        raise ImageNotImportable(path=str(path), detail=(
            f"--in-place uses raw or qcow2 images where they are; a {FORMATS[fmt]} image is "
            "converted into the work dir: drop --in-place"))
    size = int(info.get("virtual-size") or 0)
    try:
        # Its partition table, read as the import will read it: with the same locks.
        head = qemuimg.read_head(path, fmt, min(TABLE_BYTES, size - size % 512))
    except CommandFailed as exc:
        why = str(exc.fields.get("stderr_tail", "")).strip()
        raise ImageNotImportable(path=str(path), detail=(
            IN_USE if "lock" in why else f"qemu-img cannot read it ({_last(why)})")) from None
    return ImageFacts(path, fmt, size, int(info.get("actual-size") or 0), disk_firmware(head))


IN_USE = "it is in use by another process (a running VM?); shut it down, then rerun"


def _last(text: str) -> str:
    return text.splitlines()[-1][:200] if text else "no message"


def check_images(paths: Sequence[Path], *, in_place: bool = False) -> list[ImageFacts]:
    """Every image checked (the first is the boot disk); the same file twice is refused."""
    seen: dict[Path, Path] = {}
    for path in paths:
        real = path.resolve()
        if real in seen:
            also = "" if seen[real] == path else f" (also as {seen[real]})"
            raise ImageNotImportable(path=str(path), detail=f"it is given twice{also}")
        seen[real] = path
    return [check_image(p, boot=i == 0, in_place=in_place) for i, p in enumerate(paths)]


def mapping_problem(networks: Sequence[str], bridges: Sequence[str],
                    flags: tuple[str, str] = ("--network", "--bridge")
                    ) -> tuple[str, str] | None:
    """(the flag, why) when these --network/--bridge values cannot be an image's NICs, or
    None: each one adds one NIC, and there are no source NICs for a SRC= to name."""
    from p2v.target.domain import NicKind, NicMapping

    groups: tuple[tuple[str, NicKind, Sequence[str]], ...] = (
        (flags[0], "network", networks), (flags[1], "bridge", bridges))
    for flag, kind, values in groups:
        for text in values:
            mapping = NicMapping.parse(kind, text)
            if mapping.src is not None:
                return flag, (f"{text!r}: from an image each {kind} given adds one NIC (there "
                              f"are no source NICs to map): give {mapping.target!r}")
    return None


def image_name(spec: JobSpec, index: int) -> str:
    """The work dir's copy of the INDEXth image (from 1): NAME-disk1.qcow2, ..."""
    return f"{spec.name}-disk{index}.qcow2"


def run(ctx: JobContext) -> tuple[Inventory, JobPlan, tuple[DiskReport, ...]]:
    """Check the images and the target, import the images; the job's inventory, plan and
    disks as inspect, preflight and copy would have left them."""
    spec = ctx.spec
    facts = check_images(spec.images, in_place=spec.in_place)
    firmware = facts[0].firmware            # the boot disk's
    check_tools(("qemu-img", "qemu-system-x86_64"), firmware)
    inv = image_inventory(spec, facts, firmware)
    plan = image_plan(spec, facts, firmware)
    check_target(ctx, inv, target_inventory(inv, plan.disks, plan.pins), firmware)
    write_json(ctx.wd.file("inventory.json"), inv.to_dict())
    write_json(ctx.wd.file("plan.json"), plan.to_dict())
    ctx.say(plan.disk_choice)
    for item in plan.not_carried_over:
        ctx.say(f"will not carry over: {item}")
    if not spec.in_place:
        _check_space(ctx.wd.path, facts)
    disks = import_images(ctx, facts)
    write_json(ctx.wd.file("copy.json"), [asdict(d) for d in disks])
    return inv, plan, disks


def import_images(ctx: JobContext, facts: Sequence[ImageFacts]) -> tuple[DiskReport, ...]:
    """Every image into the work dir as qcow2 (or, --in-place, as it is), in order."""
    return tuple(_import_one(ctx, fact, index) for index, fact in enumerate(facts, 1))


def load(wd: WorkDir) -> tuple[Inventory, JobPlan, tuple[DiskReport, ...]]:
    """The import's values from its records (a rerun past it)."""
    return load_inventory(wd), load_plan(wd), load_disks(wd)


def image_inventory(spec: JobSpec, facts: Sequence[ImageFacts], firmware: str) -> Inventory:
    """What the guest is known to be without a live source: its disks, the firmware its
    boot disk shows, the memory and vCPUs asked for (or the defaults)."""
    vcpus = spec.vcpus or DEFAULT_VCPUS
    # The disks as the guest will see them on virtio (vda, vdb, ...): the images themselves
    # are the plan's and copy.json's devices.
    disks = tuple(DiskInfo(name=guest_disk(i), path=f"/dev/{guest_disk(i)}", size_bytes=f.size,
                           boot=i == 0) for i, f in enumerate(facts))
    return Inventory(hostname=None, firmware="uefi" if firmware == "uefi" else "bios",
                     cpu=CpuInfo(sockets=1, cores=vcpus, threads=1),
                     memory_mib=spec.memory_mib or DEFAULT_MEMORY_MIB, disks=disks,
                     boot_disk=guest_disk(0))


def guest_disk(index: int) -> str:
    """The INDEXth (from 0) virtio disk's kernel name: vda ... vdz, vdaa, ..."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return "vd" + letters


def image_plan(spec: JobSpec, facts: Sequence[ImageFacts], firmware: str) -> JobPlan:
    """The disks in the order given (the first boots), one fresh MAC per NIC, unpinned."""
    from p2v.target.request import fresh_mac

    disks = tuple(PlannedDisk(str(f.path), guest_disk(i), i == 0, f.size, f.allocated)
                  for i, f in enumerate(facts))
    how = "used where they are (--in-place)" if spec.in_place else \
        "converted to qcow2 in the work dir (the originals are only read)"
    listed = ", ".join(f"{f.path.name} ({human_size(f.size)} {FORMATS[f.format]}"
                       f"{', boot disk' if i == 0 else ''})" for i, f in enumerate(facts))
    memory = f"{spec.memory_mib} MiB (--memory)" if spec.memory_mib else \
        f"{DEFAULT_MEMORY_MIB} MiB (the default for an image; --memory to change)"
    vcpus = f"{spec.vcpus} vCPU(s) (--vcpus)" if spec.vcpus else \
        f"{DEFAULT_VCPUS} vCPUs (the default for an image; --vcpus to change)"
    left = (f"no live server: the guest gets {memory} and {vcpus}",
            f"firmware {firmware}, read from {facts[0].path.name}'s partition table "
            "(GPT with an EFI system partition and no BIOS boot partition: uefi)",
            "the guest's NICs are new (one virtio NIC per --network/--bridge, fresh MACs); "
            "its network configuration is kept as it is, interface names are not pinned",
            "the image is taken as it is on disk: a guest that was not shut down cleanly "
            "has its filesystems repaired by fix")
    return JobPlan(disks=disks, pins=tuple((n, fresh_mac()) for n in image_nic_names(spec)),
                   firmware=firmware, disk_choice=f"importing {listed}: {how}",
                   not_carried_over=left, pin_nics=False)


def _check_space(work_dir: Path, facts: Sequence[ImageFacts]) -> None:
    needed = sum(min(f.allocated, f.size) or f.size for f in facts) + SPACE_MARGIN
    free = shutil.disk_usage(work_dir).free
    if free < needed:
        raise NotEnoughSpace(directory=str(work_dir), free=human_size(free),
                             needed=human_size(needed),
                             detail="the images' allocated bytes plus 256 MiB for fix")


def _import_one(ctx: JobContext, fact: ImageFacts, index: int) -> DiskReport:
    """One image into the work dir (or, --in-place, as it is): its DiskReport.

    The copy is written as .part and renamed when whole, so a rerun after an interrupted
    import converts that image again and keeps the ones finished (same source, same size
    and mtime, recorded beside each)."""
    if ctx.spec.in_place:
        ctx.say(f"using {fact.path} in place ({fact.format}): fix writes to it")
        return DiskReport(str(fact.path), str(fact.path), fact.size, allocated(fact.path), 0)
    dest = ctx.wd.file(image_name(ctx.spec, index))
    stamp = ctx.wd.file(f"{dest.name}.from.json")
    origin = {"path": str(fact.path), "format": fact.format, "size": fact.size,
              "mtime_ns": fact.path.stat().st_mtime_ns}
    if dest.is_file() and stamp.is_file() and _same(stamp, origin):
        ctx.say(f"{dest.name}: imported by an earlier run")
    else:
        part = dest.with_name(dest.name + ".part")
        part.unlink(missing_ok=True)
        ctx.say(f"importing {fact.path} ({FORMATS[fact.format]}, {human_size(fact.size)}) "
                f"as {dest.name}")
        begun = time.monotonic()
        try:
            qemuimg.convert(fact.path, part, "qcow2", source_format=fact.format)
        except CommandFailed as exc:
            part.unlink(missing_ok=True)
            why = str(exc.fields.get("stderr_tail", "")).strip()
            raise ImageNotImportable(path=str(fact.path), detail=(
                IN_USE if "lock" in why else f"qemu-img convert failed: {_last(why)}")
            ) from None
        os.chmod(part, 0o600)
        part.rename(dest)
        write_json(stamp, origin)
        ctx.emit({"event": "image-imported", "source_image": str(fact.path),
                  "format": fact.format, "image": str(dest), "size": fact.size,
                  "seconds": round(time.monotonic() - begun, 1)})
    return DiskReport(str(fact.path), str(dest), fact.size, allocated(dest), 0)


def _same(stamp: Path, origin: dict[str, object]) -> bool:
    try:
        return bool(read_json(stamp) == origin)
    except (OSError, ValueError, P2VError):
        return False


__all__ = ["DEFAULT_MEMORY_MIB", "DEFAULT_VCPUS", "FORMATS", "ImageFacts", "check_image",
           "check_images", "guest_disk", "image_inventory", "image_plan", "import_images",
           "load", "mapping_problem", "run"]
