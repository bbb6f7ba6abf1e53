"""`p2v jobs`: the convert jobs in a state dir, their stage and the command that goes on."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from p2v.cli.render import print_jobs
from p2v.errors import ExitCode


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "jobs",
        help="list the convert jobs in a state dir: stage, last error, what to run next",
        description=(
            "Every `p2v convert` job under DIR (a batch's jobs too): done, failed (with its "
            "stage and one-line error), interrupted (Ctrl-C or killed) or running, the "
            "stages it finished, the guest it registered, and the command that resumes it "
            "(the same convert) or, once done, cleans it. Reads the work dirs only: nothing "
            "is locked or changed."
        ),
    )
    p.add_argument("--output-dir", type=Path, metavar="DIR",
                   help="the jobs' --output-dir (default: $P2V_STATE_DIR/jobs)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from p2v.job import default_output_dir
    from p2v.jobs import list_jobs

    directory = (args.output_dir or default_output_dir()).absolute()
    jobs = list_jobs(directory)
    if args.json:
        print(json.dumps({"output_dir": str(directory),
                          "jobs": [j.to_dict() for j in jobs]}, indent=2))
        return ExitCode.OK
    print_jobs(directory, jobs)
    return ExitCode.OK
