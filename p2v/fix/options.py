"""What `p2v fix` is asked to do: its options, and the facts it takes from an inventory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from p2v.fix.linux import multipath, network
from p2v.model import INVENTORY_SCHEMA, DiskInfo, Inventory, SourceInventory


@dataclass(frozen=True)
class FixOptions:
    pins: tuple[network.NicPin, ...] = ()        # NIC name -> the VM's MAC
    mac_map: tuple[tuple[str, str], ...] = ()    # source MAC -> the VM's, where they differ
    source_disks: tuple[str, ...] = ()           # the source's disk names, image order
    firmware: str | None = None                  # from the inventory, when known
    dry_run: bool = False
    serial_console: bool = False                 # add console=ttyS0 (kernel and grub)
    remove_agents: bool = False                  # remove other platforms' agents
    virtio_win: Path | None = None               # Windows: the virtio-win ISO or directory
    disk_ids: tuple[tuple[str, ...], ...] = ()   # each source disk's serial/WWID, image order
    mpath_maps: tuple[multipath.SourceMap, ...] = ()  # the source's multipath maps


def mac_changes(source: dict[str, str], vm: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """(source MAC, VM MAC) for each NIC name whose MAC changes in the VM."""
    return tuple((source[n], m.lower()) for n, m in vm.items()
                 if n in source and source[n].lower() != m.lower())


@dataclass(frozen=True)
class InventoryFacts:
    """What p2v fix takes from an inventory: NIC names and MACs, disk names, firmware."""

    pins: dict[str, str]
    disks: tuple[str, ...]
    firmware: str | None
    disk_ids: tuple[tuple[str, ...], ...] = ()
    mpath_maps: tuple[multipath.SourceMap, ...] = ()


def read_inventory(text: str, what: str = "inventory") -> InventoryFacts:
    """Read `p2v inspect --json` (p2v.inventory/1) or the minimal inventory register reads.

    Only physical NICs with a MAC become pins (bridges and bonds carry a member's MAC).
    """
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("schema") == INVENTORY_SCHEMA:
        inv = Inventory.from_dict(data, what)
        return InventoryFacts({n.name: n.mac.lower() for n in inv.nics if n.physical and n.mac},
                              tuple(d.name for d in inv.disks), inv.firmware,
                              tuple(disk_ids(d) for d in inv.disks),
                              multipath.maps_from_dm(inv.dm))
    src = SourceInventory.from_json(text, what)
    return InventoryFacts({n.name: n.mac for n in src.nics}, tuple(d.name for d in src.disks),
                          src.firmware)


def disk_ids(disk: DiskInfo) -> tuple[str, ...]:
    """What names a source disk by its identity (by-id links, multipath WWIDs)."""
    return tuple(i for i in (disk.serial, disk.wwid) if i)
