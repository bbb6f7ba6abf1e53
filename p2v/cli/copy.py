"""`p2v copy`: the source's disks into qcow2 images, resumable, with progress bars."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from p2v.cli.common import (
    add_data_channel,
    add_ssh_source,
    at_least_one,
    images_locked,
    parallel_arg,
    progress_printer,
    quiet,
    rate_arg,
    ssh_options,
)
from p2v.cli.progress import Term
from p2v.errors import ExitCode
from p2v.inputs import check_name, check_output_dir


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "copy",
        help="copy source disks over SSH into qcow2 images (verified, resumable)",
        description=(
            "Copy each --disk of SOURCE into DIR/NAME-DEV.qcow2 while the server runs. The device "
            "is opened read-only on the source and read at idle I/O and lowest CPU priority; every"
            " chunk is hashed there and checked here (a mismatch is fetched again, then exit 5); "
            "all-zero chunks are not sent, nor (without --full) ext2/3/4 and XFS free blocks and "
            "swap areas; data is compressed on the wire when it pays (zstd where the source has "
            "it, else zlib or gzip). Written straight into the qcow2 (no raw staging copy) with a "
            "journal beside it: rerun the same command after any interruption and the copy "
            "resumes. A manifest (chunk hashes, digest) is written beside each image. Disks are "
            "copied --parallel at a time under one --bandwidth-limit. A source without python3 "
            "gets a slower sh/dd reader: still verified and resumable, zero chunks skipped, free "
            "space sent. See docs/user/copy.md."
        ),
    )
    add_ssh_source(p)
    add_data_channel(p)
    p.add_argument("--disk", action="append", required=True, metavar="DEV",
                   help="source block device to copy, e.g. /dev/sda (repeatable)")
    p.add_argument("--output-dir", type=Path, required=True, metavar="DIR",
                   help="where the images, journals and manifests go")
    p.add_argument("--name", help="image name stem (default: the source's hostname)")
    p.add_argument("--full", action="store_true",
                   help="send every non-zero byte for a byte-identical image (default: skip "
                        "ext2/3/4 and XFS free blocks and swap areas too)")
    p.add_argument("--source-priority", choices=("low", "normal"), default="low",
                   help="CPU/IO priority of the reader on the source (default: low)")
    p.add_argument("--no-compress", action="store_true", help="never compress on the wire")
    p.add_argument("--chunk-size", type=at_least_one, default=4, metavar="MiB",
                   help="chunk size in MiB (default: 4)")
    p.add_argument("--parallel", type=parallel_arg, default=2, metavar="N",
                   help="disks copied at the same time, 1 to 4 (default: 2; each costs "
                        "about 35 MiB of memory)")
    p.add_argument("--bandwidth-limit", type=rate_arg, metavar="RATE",
                   help="at most RATE bytes/s on the wire over all disks, e.g. 50M (MiB/s), "
                        "800K, 1G (default: unlimited)")
    p.add_argument("--json", action="store_true",
                   help="JSON lines on stdout, one event each (disk-start, progress, "
                        "disk-done, disk-complete)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from p2v.source.ssh import SshSource
    from p2v.transfer.copy import CopyRequest, copy_disks

    check_name(args.name)
    check_output_dir(args.output_dir)
    options = ssh_options(args)
    request = CopyRequest(
        disks=tuple(args.disk), output_dir=args.output_dir, name=args.name, full=args.full,
        chunk_size=args.chunk_size << 20, compress=not args.no_compress,
        low_priority=args.source_priority == "low", parallel=args.parallel,
        bandwidth_limit=args.bandwidth_limit,
    )
    # A bar per disk on a terminal, a plain line at each 10 % elsewhere; none with --json/-q.
    term = None if args.json or quiet(args) else Term()
    say = term.line if term is not None else progress_printer(args)

    def emit(event: dict[str, object]) -> None:
        if args.json:
            print(json.dumps(event), flush=True)
        elif event["event"] == "disk-start":
            reader = (" sh-only source: zero chunks skipped, free space sent;"
                      if event.get("reader") == "sh" else "")
            say(f"{event['device']} -> {event['image']} ({event['chunks']} chunks,{reader} "
                f"{event['resumed_chunks']} already done)")
        elif event["event"] == "disk-complete":
            say(f"{event['device']}: {event['image']} is already complete")

    try:
        with SshSource.open(args.source, options) as source, \
                images_locked(source, request.output_dir, request.name) as name:
            results = copy_disks(source, replace(request, name=name), emit,
                                 term.disk if term is not None else None)
    finally:
        if term is not None:
            term.close()
    if term is not None:
        for r in results:
            print(f"{r.device}: {r.image} ({r.data_chunks} data + {r.zero_chunks} zero "
                  f"chunks, {r.wire_bytes} bytes on the wire, {r.seconds:.1f} s"
                  + (", resumed" if r.resumed_chunks and not r.already_complete else "")
                  + ")")
    return ExitCode.OK
