"""`p2v register`: define the fixed images as a libvirt guest (or write them out locally)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from p2v.cli.common import add_libvirt_target, progress_printer, quiet
from p2v.cli.render import print_register_result
from p2v.errors import ExitCode
from p2v.inputs import check_name, check_output_dir


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "register",
        help="define a libvirt guest for disk image(s) that matches the source machine",
        description=(
            "Define a libvirt guest for IMAGE(s) (boot disk first): name, memory, vCPUs and "
            "NICs (MACs kept) from the source inventory, disk bus, NIC model and firmware from "
            "the guest caps of `p2v fix`; flags override both. Everything is checked before "
            "anything is defined: the name is free (unless --replace), the images are "
            "readable, networks, bridges, pool and firmware exist. If libvirt refuses the "
            "definition the XML is kept and the way to define it by hand is printed. "
            "--output local writes NAME.xml and copies of the images into --output-dir and "
            "needs no libvirt. See docs/user/register.md."
        ),
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="the guest's disk images (qcow2 or raw), boot disk first")
    p.add_argument("--name", required=True, help="the guest's (domain) name")
    p.add_argument("--inventory", type=Path, metavar="JSON",
                   help="source inventory (hostname, CPUs, memory, NICs with MACs, firmware)")
    p.add_argument("--caps", type=Path, metavar="JSON",
                   help="guest caps from `p2v fix` (disk_bus, nic_model, machine, firmware); "
                        "default: virtio, firmware from the inventory or bios")
    p.add_argument("--memory", type=int, metavar="MiB",
                   help="guest RAM (default: the source's, else 1024)")
    p.add_argument("--vcpus", type=int, metavar="N",
                   help="vCPUs as one socket of N cores (default: the source's topology, else 1)")
    add_libvirt_target(p)
    p.add_argument("--nvram", type=Path, metavar="VARS",
                   help="UEFI variable store to seed the guest's NVRAM with (e.g. the source "
                        "machine's, with its boot entry); default: an empty one")
    p.add_argument("--new-macs", action="store_true",
                   help="give the guest's NICs fresh MACs instead of the source's (refused when "
                        "the guest pins interface names to MACs, see --caps)")
    p.add_argument("--force-new-macs", action="store_true",
                   help="with --new-macs: go ahead even though pinned names will change")
    p.add_argument("--replace", action="store_true",
                   help="replace a (shut off) guest of the same name and its pool volumes")
    p.add_argument("--output", choices=("libvirt", "local"), default="libvirt",
                   help="libvirt (default) or local: NAME.xml + images in --output-dir")
    p.add_argument("--output-dir", type=Path, metavar="DIR",
                   help="where --output local writes; with libvirt, where a refused XML is kept")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from p2v.errors import UsageError
    from p2v.inputs import check_json_text, read_text_input
    from p2v.libvirt_uri import resolve_uri
    from p2v.model import GuestCaps, SourceInventory
    from p2v.target.domain import NicMapping
    from p2v.target.register import register
    from p2v.target.request import RegisterRequest

    def read(path: Path | None, what: str) -> str | None:
        if path is None:
            return None
        text = read_text_input(path, what)
        check_json_text(text, path, what)
        return text

    check_name(args.name)
    check_output_dir(args.output_dir)

    for flag, value in (("--memory", args.memory), ("--vcpus", args.vcpus)):
        if value is not None and value < 1:
            raise UsageError(detail=f"{flag} must be positive, not {value}")
    uri = resolve_uri(args.connect)
    inventory_text = read(args.inventory, "inventory")
    caps_text = read(args.caps, "guest caps")
    request = RegisterRequest(
        name=args.name,
        images=tuple(args.images),
        inventory=(SourceInventory.from_json(inventory_text, str(args.inventory))
                   if inventory_text is not None else SourceInventory()),
        caps=GuestCaps.from_json(caps_text, str(args.caps)) if caps_text is not None else None,
        memory_mib=args.memory,
        vcpus=args.vcpus,
        mappings=NicMapping.from_flags(args.network, args.bridge),
        uri=uri.uri,
        start=args.start,
        replace=args.replace,
        pool=args.pool,
        output=args.output,
        output_dir=args.output_dir,
        nvram=args.nvram,
        new_macs=args.new_macs,
        force_new_macs=args.force_new_macs,
    )
    if args.output == "libvirt" and not (args.json or quiet(args)) and uri.chosen_by_config:
        print(f"libvirt: {uri.uri} ({uri.origin})", file=sys.stderr)
    result = register(request, progress=progress_printer(args))
    if args.json:
        print(result.to_json())
        return ExitCode.OK
    if not quiet(args):
        print_register_result(result)
    return ExitCode.OK
