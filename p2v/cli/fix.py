"""`p2v fix`: make copied images boot on virtio (Linux initramfs and names, Windows drivers)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from p2v.cli.common import progress_printer, quiet
from p2v.cli.render import print_fix_result
from p2v.errors import ExitCode
from p2v.inputs import check_disk_image


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fix",
        help="make copied disk images of a Linux or Windows guest boot on virtio",
        description=(
            "Open IMAGE(s) (all disks of one guest, boot disk first) in the libguestfs "
            "appliance, report what the guest is (OS, kernels and their virtio support, boot "
            "loader, BIOS/UEFI, filesystems, NICs) and the changes it needs, then make them: "
            "virtio drivers in each kernel's initramfs (the guest's own tool), device names "
            "in fstab/crypttab/grub/mdadm/LVM switched to UUID= or virtio names, the grub "
            "config regenerated and checked, NIC names pinned to the VM's MACs, the UEFI "
            "fallback loader. Windows guests get the virtio-win drivers of --virtio-win "
            "(docs/user/windows.md). Writes the GuestCaps JSON beside the first image "
            "(IMAGE.caps.json). --dry-run stops after the report; a second run changes "
            "nothing. See docs/user/fix.md."
        ),
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="disk images of one guest, in source order (boot disk first)")
    p.add_argument("--inventory", type=Path, metavar="JSON",
                   help="the source's inventory (p2v inspect --json): NIC MACs, disk names")
    p.add_argument("--mac", action="append", default=[], metavar="NAME=MAC",
                   help="pin interface NAME to the VM NIC with MAC (repeatable; wins over "
                        "--inventory)")
    p.add_argument("--remove-agents", action="store_true",
                   help="remove other hypervisors' and hardware vendors' agents (always "
                        "reported)")
    p.add_argument("--serial-console", action="store_true",
                   help="add a serial console on ttyS0 (kernel and grub) for virsh console")
    p.add_argument("--virtio-win", type=Path, metavar="DIR|ISO",
                   help="Windows guests: the virtio-win ISO or directory to take the drivers "
                        "from (see docs/user/windows.md)")
    p.add_argument("--dry-run", action="store_true", help="report the plan, change nothing")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from p2v.errors import UsageError
    from p2v.fix.fixer import fix_images
    from p2v.fix.linux.network import NicPin, valid_name
    from p2v.fix.options import FixOptions, mac_changes, read_inventory
    from p2v.inputs import check_json_text, read_text_input
    from p2v.model import normalise_mac

    pins: dict[str, str] = {}
    source_macs: dict[str, str] = {}
    disks: tuple[str, ...] = ()
    firmware = None
    facts = None
    if args.inventory is not None:
        text = read_text_input(args.inventory, "inventory")
        check_json_text(text, args.inventory, "inventory")
        facts = read_inventory(text, str(args.inventory))
        pins.update(facts.pins)
        source_macs.update(facts.pins)
        disks, firmware = facts.disks, facts.firmware
        if disks and len(disks) != len(args.images):
            raise UsageError(detail=f"--inventory lists {len(disks)} disk(s) but "
                                    f"{len(args.images)} image(s) were given")
    for item in args.mac:
        name, sep, mac = item.partition("=")
        if not sep or not valid_name(name):
            raise UsageError(detail=f"--mac {item!r}: want NAME=MAC, e.g. eth0=52:54:00:12:34:56")
        pins[name] = normalise_mac(mac, f"--mac {name}")
    macs = list(pins.values())
    if len(set(macs)) != len(macs):
        raise UsageError(detail=f"the same MAC is given to two interfaces: {pins}")
    for index, image in enumerate(args.images):
        check_disk_image(image, boot=index == 0)    # before the appliance starts
    options = FixOptions(pins=tuple(NicPin(n, m) for n, m in pins.items()),
                         mac_map=mac_changes(source_macs, pins), source_disks=disks,
                         firmware=firmware, dry_run=args.dry_run,
                         serial_console=args.serial_console,
                         remove_agents=args.remove_agents, virtio_win=args.virtio_win,
                         disk_ids=facts.disk_ids if facts else (),
                         mpath_maps=facts.mpath_maps if facts else ())
    result = fix_images(args.images, options, progress=progress_printer(args))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return ExitCode.OK
    if not quiet(args) or args.dry_run:         # -q --dry-run: the plan is the result
        print_fix_result(result)
    return ExitCode.OK
