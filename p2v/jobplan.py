"""What preflight decides once for a job: the disks to copy (boot disk first), the NICs'
MACs, and an honest list of what the guest will not have as the server had it.

Pure logic over an Inventory: unit-tested without a source (tests/unit/test_pipeline_resume).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from p2v.job import JobSpec
from p2v.model import Inventory, SourceDisk, SourceInventory, SourceNic
from p2v.units import human_size

if TYPE_CHECKING:
    from p2v.target.domain import NicKind, NicMapping


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
    # Whether fix pins the guest's interface names to `pins` (the source's NIC names). An
    # imported image has no source NICs: its NICs (net1, ...) get MACs, never pinned names.
    pin_nics: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobPlan:
        return cls(disks=tuple(PlannedDisk(**d) for d in data["disks"]),
                   pins=tuple((str(n), str(m)) for n, m in data["pins"]),
                   firmware=str(data["firmware"]), disk_choice=str(data["disk_choice"]),
                   not_carried_over=tuple(data["not_carried_over"]),
                   pin_nics=bool(data.get("pin_nics", True)))


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
                left.append(f"disk {d.name} ({human_size(d.size_bytes)}) is not copied: not named "
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
                left.append(f"disk {d.name} ({human_size(d.size_bytes)}) is removable (USB, card "
                            "reader): not copied; name it with --disk to copy it")
                continue
            chosen.append(PlannedDisk(d.path, d.name, d.name == inventory.boot_disk,
                                      d.size_bytes or 0, d.copy_bytes_estimate))
        why = "every physical disk the source reports (never loop, ram or optical devices)"
    chosen.sort(key=lambda c: not c.boot)     # stable: boot disk first, the rest in order
    return chosen, why, left


def describe_choice(disks: Sequence[PlannedDisk], why: str) -> str:
    listed = ", ".join(f"{d.name} ({human_size(d.size)}{', boot disk' if d.boot else ''})"
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



def target_inventory(inv: Inventory, disks: Sequence[PlannedDisk],
                     pins: Sequence[tuple[str, str]]) -> SourceInventory:
    """The source as the guest will have it: the planned disks, one NIC per pinned MAC."""
    base = inv.source_inventory()
    return replace(base, nics=tuple(SourceNic(n, m) for n, m in pins),
                   disks=tuple(SourceDisk(d.name, d.boot) for d in disks))


def nic_mappings(spec: JobSpec, inv: Inventory | None) -> tuple[NicMapping, ...]:
    """The job's --network/--bridge mappings; with --new-macs one keyed by a source MAC
    still means that NIC, whatever MAC the guest gets."""
    from p2v.target.domain import NicMapping

    if spec.images:
        return tuple(NicMapping(kind, target, name)
                     for name, (kind, target) in zip(image_nic_names(spec), _targets(spec),
                                                     strict=False))
    mappings = NicMapping.from_flags(spec.networks, spec.bridges)
    if spec.new_macs and inv is not None:
        by_mac = {n.mac.lower(): n.name for n in inv.nics if n.mac}
        mappings = tuple(replace(m, src=by_mac.get(m.src.strip().lower().replace("-", ":"),
                                                   m.src)) if m.src else m
                         for m in mappings)
    return mappings


def _targets(spec: JobSpec) -> list[tuple[NicKind, str]]:
    kinds: list[tuple[NicKind, str]] = [("network", n) for n in spec.networks]
    return kinds + [("bridge", b) for b in spec.bridges]


def image_nic_names(spec: JobSpec) -> tuple[str, ...]:
    """An imported image's NICs: one per --network and --bridge, in that order (at least one,
    on libvirt's default network): net1, net2, ..."""
    return tuple(f"net{i}" for i in range(1, max(1, len(_targets(spec))) + 1))
