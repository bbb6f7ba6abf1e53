"""`p2v sync`: delta passes against a finished copy, the last one with the source frozen."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from p2v.cli.common import (
    add_data_channel,
    add_freeze_flags,
    add_ssh_source,
    at_least_one,
    images_locked,
    progress_printer,
    quiet,
    rate_arg,
    ssh_options,
)
from p2v.cli.screens import ConvertScreen
from p2v.errors import ExitCode
from p2v.inputs import check_name, check_output_dir

if TYPE_CHECKING:
    from p2v.transfer.sync import SyncResult


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sync",
        help="bring completed copies up to date, sending only changed chunks (live cutover)",
        description=(
            "After a completed `p2v copy` into DIR: the source hashes every chunk in use "
            "(read-only), p2v compares with each image's manifest and fetches only the "
            "chunks that changed, zeroing chunks no longer in use; resumable like a copy. "
            "--freeze makes this the final pass with the source's mounted filesystems on "
            "the copied disks frozen (fsfreeze) for a filesystem-consistent image; a timer "
            "started on the source first thaws them after --freeze-timeout seconds even "
            "if p2v or the link dies. --before-final/--after-final run YOUR shell command "
            "on the source around the pass (e.g. stop and start a database). These are "
            "the only things p2v ever does on a source beyond reading. See docs/user/sync.md."
        ),
    )
    add_ssh_source(p)
    add_data_channel(p)
    p.add_argument("--output-dir", type=Path, required=True, metavar="DIR",
                   help="the directory the copy wrote its images and manifests into")
    p.add_argument("--disk", action="append", metavar="DEV",
                   help="source disk to sync (repeatable; default: every disk copied "
                        "into DIR under --name)")
    p.add_argument("--name", help="image name stem used by the copy (default: the "
                                  "source's hostname)")
    add_freeze_flags(p, "", "freeze the source's mounted filesystems on these disks during "
                             "the pass; ")
    p.add_argument("--passes", type=at_least_one, default=1, metavar="N",
                   help="N passes in this one session, the source's writes tracked between "
                        "them (a tracing instance of p2v's own on the source, removed at the "
                        "end): the first hashes every used chunk, each later one reads only "
                        "the chunks written since; --freeze and the hooks apply to the last "
                        "(default: 1)")
    p.add_argument("--source-priority", choices=("low", "normal"), default="low",
                   help="CPU/IO priority of the readers on the source (default: low)")
    p.add_argument("--no-compress", action="store_true", help="never compress on the wire")
    p.add_argument("--bandwidth-limit", type=rate_arg, metavar="RATE",
                   help="at most RATE bytes/s on the wire, e.g. 50M (default: unlimited)")
    p.add_argument("--json", action="store_true",
                   help="JSON lines on stdout, one event each (sync-start, sync-delta, "
                        "progress, sync-done, frozen, thawed, sync-result per pass)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from p2v.source.freeze import check_freeze_timeout
    from p2v.source.ssh import SshSource
    from p2v.transfer.sync import SyncRequest, sync_passes

    check_freeze_timeout(args.freeze_timeout)     # before connecting
    check_name(args.name)
    check_output_dir(args.output_dir)
    options = ssh_options(args)
    request = SyncRequest(
        output_dir=args.output_dir, disks=tuple(args.disk or ()), name=args.name,
        compress=not args.no_compress, low_priority=args.source_priority == "low",
        bandwidth_limit=args.bandwidth_limit, freeze=args.freeze,
        freeze_timeout=args.freeze_timeout, before_final=args.before_final,
        after_final=args.after_final,
    )
    # The sync's lines and a bar per disk's pass, as convert draws them; none with --json/-q.
    screen = None if args.json or quiet(args) else ConvertScreen()
    say = screen.term.line if screen is not None else progress_printer(args)

    def emit(event: dict[str, object]) -> None:
        if args.json:
            print(json.dumps(event), flush=True)
        elif screen is not None:
            screen(event)
        _say_event(say, event)

    with SshSource.open(args.source, options) as source, \
            images_locked(source, request.output_dir, request.name) as name, \
            screen or contextlib.nullcontext():
        passes = sync_passes(source, replace(request, name=name), args.passes, emit)
    for number, result in enumerate(passes, 1):
        if args.json:
            print(json.dumps({"event": "sync-result", "pass": number, **result.to_dict()}),
                  flush=True)
        elif screen is not None:
            _print_result(result, f"pass {number}: " if len(passes) > 1 else "")
    return ExitCode.OK


def _say_event(say: Callable[[str], None], event: dict[str, object]) -> None:
    """The freeze's lines (the screen draws the passes themselves)."""
    if event["event"] == "frozen":
        frozen = event["frozen"]
        say("frozen: " + (", ".join(frozen) if isinstance(frozen, list) and frozen
                          else "nothing (no mounted filesystem on these disks)"))
        for item in event["not_frozen"] if isinstance(event["not_frozen"], list) else []:
            say(f"NOT frozen: {item['mountpoint']} ({item['why']})")
    elif event["event"] == "thawed":
        say(f"thawed after {event['freeze_s'] or 0:.1f} s")


def _print_result(result: SyncResult, prefix: str) -> None:
    for d in result.disks:
        how = "tracked" if d.tracked else "rehashed" + (f": {d.rehash_why}"
                                                        if d.rehash_why else "")
        print(f"{prefix}{d.device}: {d.image} ({d.changed_chunks} changed + "
              f"{d.dropped_chunks} dropped of {d.chunks} chunks, {d.changed_bytes} bytes "
              f"changed, {d.wire_bytes} bytes on the wire, {d.seconds:.1f} s, {how}"
              + (", resumed" if d.resumed else "") + ")")
    if result.freeze is not None:
        f = result.freeze
        print(f"{prefix}frozen {f.seconds or 0:.1f} s: "
              f"{', '.join(m.mountpoint for m in f.frozen)}" if f.frozen
              else f"{prefix}nothing was frozen")
        for m, why in f.not_frozen:
            print(f"NOT frozen (not consistent): {m.mountpoint} ({m.fstype}): {why}")
    print(f"{prefix}total: {result.changed_bytes} bytes changed, {result.wire_bytes} bytes "
          f"sent, {result.seconds:.1f} s")
