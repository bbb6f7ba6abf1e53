"""`p2v inspect`: what the source is (disks, LVM/md, filesystems, NICs, firmware, OS)."""

from __future__ import annotations

import argparse

from p2v.cli.common import add_ssh_source, progress_printer, ssh_options
from p2v.errors import ExitCode


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="inventory a running source over SSH (disks, LVM, NICs, firmware, OS)",
        description=(
            "Log in to SOURCE over SSH (strict host-key checking; a non-root login uses sudo, "
            "password from P2V_SUDO_PASSWORD or a prompt) and run one batch of read-only "
            "commands: disks with partitions and filesystems (used/free), LVM, md, "
            "device-mapper, CPUs, memory, NICs (name, MAC, addresses, driver), firmware, OS "
            "and kernel, the boot disk, and at most how many bytes a copy will send. Only sh, "
            "coreutils, util-linux, /proc and /sys are needed; what is missing is reported "
            "as unknown. --json prints the p2v.inventory/1 document (docs/user/inventory.md), "
            "which `p2v register --inventory` reads."
        ),
    )
    add_ssh_source(p)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from p2v.source.inventory import format_inventory, inspect_source
    from p2v.source.ssh import SshSource

    options = ssh_options(args)
    with SshSource.open(args.source, options) as source:
        progress_printer(args)(f"connected to {source.target}; collecting the inventory")
        inventory = inspect_source(source)
    print(inventory.to_json() if args.json else "\n".join(format_inventory(inventory)))
    return ExitCode.OK
