"""`p2v batch`: a fleet from one manifest, locally or on Dask workers."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from p2v.cli.common import at_least_one, print_json, quiet, rate_arg
from p2v.cli.render import print_batch_plan, print_batch_result
from p2v.cli.screens import BatchScreen
from p2v.errors import ExitCode
from p2v.events import EventSink, discard
from p2v.inputs import check_output_dir

if TYPE_CHECKING:
    from p2v.batch.manifest import Manifest


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="convert every server of a TOML manifest, N jobs at a time, resumable",
        description=(
            "Run one `p2v convert` job per [[server]] of MANIFEST (TOML: [defaults] and one "
            "[[server]] entry each). The whole manifest is checked first: every problem is "
            "listed (file, entry, field) and nothing runs. Up to --jobs jobs run at once, "
            "each in its own process with its own work dir OUTPUT_DIR/NAME; one failing "
            "job never stops the others. A ledger (OUTPUT_DIR/.p2v-batch/ledger.sqlite) "
            "records every job, so rerunning the same command skips finished jobs and "
            "resumes the rest; Ctrl-C stops the jobs cleanly. Ends with a summary table and "
            "a report (OUTPUT_DIR/.p2v-batch/report.json, and report.html: see `p2v "
            "report`); exit 0 when every job succeeded, 1 when one failed. See docs/user/batch.md."
        ),
    )
    p.add_argument("manifest", type=Path, metavar="MANIFEST", help="the fleet's TOML manifest")
    p.add_argument("--jobs", type=at_least_one, metavar="N",
                   help="jobs run at the same time (default: the manifest's `jobs`, else 1)")
    p.add_argument("--only", action="append", default=[], metavar="NAME[,NAME...]",
                   help="run only these servers of the manifest (their `name`s; repeatable "
                        "or comma-separated); the others are left as they are")
    p.add_argument("--bandwidth-limit", type=rate_arg, metavar="RATE",
                   help="at most RATE bytes/s on the wire over ALL jobs running at once on "
                        "this host, e.g. 200M (wins over the manifest's top-level "
                        "bandwidth_limit; a server's own bandwidth_limit still caps that "
                        "job). With --scheduler: per conversion host (docs/user/batch.md)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the manifest and print which jobs would run, resume or be "
                        "skipped; change nothing")
    p.add_argument("--json", action="store_true",
                   help="JSON lines on stdout: the convert events of every job (with `job`) "
                        "and the batch's own (batch-start, batch-job-start, batch-job-end, "
                        "batch-done)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="run the jobs on the workers of this Dask scheduler (each worker "
                        "started with --resources p2v=N runs N at once); the ledger stays "
                        "here. See docs/user/fleet.md")
    p.add_argument("--tries", type=at_least_one, metavar="N", default=3,
                   help="with --scheduler: how often a job is started when the worker "
                        "running it dies, before it is failed (default 3)")
    p.set_defaults(func=run)


def only(manifest: Manifest, names: list[str]) -> Manifest:
    """The manifest with just the servers named (in the manifest's order)."""
    from dataclasses import replace

    from p2v.errors import UsageError

    known = [s.name for s in manifest.specs]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(detail=(f"--only {unknown[0]}: {manifest.path} has no [[server]] of "
                                 f"that name (its servers: {', '.join(known)})"))
    return replace(manifest, specs=tuple(s for s in manifest.specs if s.name in names))


def share_bandwidth(manifest: Manifest, rate: float | None) -> Manifest:
    """Every job draws on the batch's host-wide limit: RATE (--bandwidth-limit), else the
    manifest's top-level bandwidth_limit, else none."""
    from dataclasses import replace

    rate = rate if rate is not None else manifest.bandwidth_limit
    specs = tuple(replace(s, host_bandwidth_limit=rate) for s in manifest.specs)
    return replace(manifest, specs=specs, bandwidth_limit=rate)


def run(args: argparse.Namespace) -> int:
    from p2v.batch.driver import ledger_path, plan_batch, run_batch
    from p2v.batch.manifest import load_manifest
    from p2v.errors import ManifestInvalid

    try:
        manifest = load_manifest(args.manifest)
    except ManifestInvalid as exc:
        for problem in exc.problems:
            print(f"p2v: error: {problem}", file=sys.stderr)
        raise
    check_output_dir(manifest.output_dir, flag=f"{args.manifest}: output_dir")
    if args.only:
        manifest = only(manifest, [n for item in args.only for n in item.split(",") if n])
    manifest = share_bandwidth(manifest, args.bandwidth_limit)
    jobs = args.jobs or manifest.jobs or 1
    if args.dry_run:
        plan = plan_batch(manifest)
        if args.json:
            print(json.dumps({"manifest": str(manifest.path), "jobs": jobs,
                              "bandwidth_limit": manifest.bandwidth_limit,
                              "ledger": str(ledger_path(manifest)),
                              "plan": [{"job": i.spec.name, "action": i.action,
                                        "reason": i.reason, "source": i.spec.source,
                                        "work_dir": str(i.spec.work_dir),
                                        "spec": i.spec.to_dict()} for i in plan]}, indent=2))
            return ExitCode.OK
        print_batch_plan(plan, jobs, manifest)
        return ExitCode.OK
    # --json: every event as it is; -q: none; else the screen (live lines on a terminal).
    screen = None if args.json or quiet(args) else BatchScreen()
    sink: EventSink = print_json if args.json else (screen or discard)
    with screen or contextlib.nullcontext():
        if args.scheduler:
            from p2v.batch.dask_pool import DaskPool, connect

            client = connect(args.scheduler)  # unreachable: one line, exit 6, nothing started
            result = run_batch(manifest, jobs=jobs, events=sink, tries=args.tries,
                               pool_factory=lambda run: DaskPool(client, run, manifest.hosts))
        else:
            result = run_batch(manifest, jobs=jobs, events=sink)
    if args.json:
        return result.exit_code
    if screen is not None:
        print_batch_result(result)
    else:                                       # -q: a failed job is an error line
        for job in result.jobs:
            if job.state == "failed" and job.action != "skip":
                print(f"p2v: error: {job.name}: {job.error}"
                      + (f" (log: {job.log})" if job.log else ""), file=sys.stderr)
    if result.interrupted:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
    return result.exit_code
