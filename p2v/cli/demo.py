"""`p2v demo`: convert a test server built here, end to end, in one command."""

from __future__ import annotations

import argparse
import json
import sys

from p2v.cli.common import progress_printer, quiet


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole story: a legacy-server fixture running as a live source, converted "
             "into a libvirt guest that boots on virtio",
        description=(
            "The built-in example. Builds or reuses the 'bios' fixture (a Debian 12 legacy "
            "server image with a static address), starts it in qemu as a live SSH source, "
            "makes sure a libvirtd answers (starting one if none does) with an isolated "
            "network 'p2v-demo', and runs `p2v convert` on the live server: copy, fix, boot "
            "check on virtio with the NIC isolated, register (left shut off). Prints where "
            "everything is and how to clean up; the exit code is the conversion's."
        ),
    )
    p.add_argument("--variant", default="bios", help="fixture variant (default: bios)")
    p.add_argument("--json", action="store_true", help="print one JSON document at the end")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from p2v.demo.run import run_demo

    result = run_demo(args.variant, progress=progress_printer(args))
    if args.json:
        print(json.dumps(result, indent=2))
    elif quiet(args):
        if result["job"].get("error"):
            print(f"p2v: error: {result['job']['error']}", file=sys.stderr)
    else:
        for line in result["summary"]:
            print(line)
    return int(result["job"]["exit_code"])
