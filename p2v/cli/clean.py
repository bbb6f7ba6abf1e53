"""`p2v clean`: remove a job's work dir (and, asked, the guest it registered)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from p2v.cli.common import quiet
from p2v.errors import ExitCode


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "clean",
        help="remove a convert job's work dir (and, with --domain, the guest it registered)",
        description=(
            "Remove the work dir DIR/NAME of a `p2v convert` job: images, journals, log, "
            "markers. With --domain, also undefine the guest the job registered (only that "
            "guest: same name and the UUID in the job's register.json, and shut off). "
            "Without --domain a guest whose disks are in the work dir is never orphaned: the "
            "clean is refused."
        ),
    )
    p.add_argument("name", metavar="NAME", help="the job's --name")
    p.add_argument("--output-dir", type=Path, metavar="DIR",
                   help="the job's --output-dir (default: $P2V_STATE_DIR/jobs)")
    p.add_argument("--domain", action="store_true",
                   help="also undefine the guest this job registered (with its NVRAM)")
    p.add_argument("--connect", metavar="URI",
                   help="libvirt URI (default: the one the job registered at)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from p2v.clean import clean_job
    from p2v.job import default_output_dir

    result = clean_job(args.name, (args.output_dir or default_output_dir()).absolute(),
                       domain=args.domain, uri=args.connect)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return ExitCode.OK
    if quiet(args):
        return ExitCode.OK
    if result.domain:
        print(f"undefined domain {result.domain}")
    for note in result.notes:
        print(note)
    print(f"removed {result.work_dir}")
    return ExitCode.OK
