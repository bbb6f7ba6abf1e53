"""`p2v convert` and its report: one server to a verified, registered guest."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from p2v.cli.common import (
    add_freeze_flags,
    add_libvirt_target,
    add_ssh_source,
    check_source_arg,
    parallel_arg,
    positive_arg,
    print_json,
    quiet,
    rate_arg,
)
from p2v.cli.render import print_report
from p2v.cli.screens import ConvertScreen
from p2v.errors import ExitCode
from p2v.events import EventSink, discard
from p2v.inputs import check_name, check_output_dir

if TYPE_CHECKING:
    from p2v.job import JobSpec


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a running server into a verified libvirt guest (the whole job)",
        description=(
            "One job: inspect SOURCE, preflight (host key, devices, free space for the copy "
            "estimate, the name free in libvirt, networks, tools, and what will not carry "
            "over), copy its disks (without --disk: every physical disk, never loop, ram or "
            "optical devices), fix the copy for virtio with the source's MACs, boot-check it "
            "on a throwaway overlay with its NICs off every network, then register it with "
            "libvirt (shut off unless --start). Everything lives in the job's work dir "
            "DIR/NAME; a failure leaves no domain defined and keeps the work dir: rerun the "
            "same command to continue at the first unfinished stage (the copy resumes "
            "mid-disk). `p2v clean NAME` removes it. With --from-image IMG ... instead of "
            "SOURCE, existing disk images (raw, qcow2, VMDK, VHD, VHDX) are imported into the "
            "work dir as qcow2 in place of inspect, preflight and copy. See "
            "docs/user/convert.md."
        ),
    )
    add_ssh_source(p, optional="--from-image")
    p.add_argument("--name", required=True,
                   help="the guest's name: domain name, work dir and image names")
    p.add_argument("--from-image", nargs="+", type=Path, metavar="IMG",
                   help="convert existing disk images instead of a live SOURCE (raw, qcow2, "
                        "VMDK, VHD, VHDX; boot disk first): imported into the work dir as "
                        "qcow2, then fix, verify, register (docs/user/convert.md)")
    p.add_argument("--in-place", action="store_true",
                   help="with --from-image: use raw or qcow2 images where they are (fix "
                        "writes to them) instead of converting copies")
    _add_guest_flags(p)
    _add_copy_flags(p)
    p.add_argument("--json", action="store_true",
                   help="JSON lines on stdout: one event per stage change, progress tick and "
                        "message, then job-done or job-failed with the report")
    p.set_defaults(func=run)


def _add_guest_flags(p: argparse.ArgumentParser) -> None:
    """How the guest looks, where it goes, and how it is fixed and checked."""
    p.add_argument("--memory", type=int, metavar="MiB",
                   help="guest RAM (default: the source's; from an image: 2048)")
    p.add_argument("--vcpus", type=int, metavar="N",
                   help="vCPUs (default: the source's topology; from an image: 2)")
    p.add_argument("--output-dir", type=Path, metavar="DIR",
                   help="where the job's work dir NAME/ goes (default: $P2V_STATE_DIR/jobs, "
                        "/var/lib/p2v/jobs)")
    add_libvirt_target(p)
    p.add_argument("--serial-console", action="store_true",
                   help="fix adds a serial console (ttyS0) whose login prompt shows the "
                        "guest's IPv4 addresses: `virsh console` and the domain's console log")
    p.add_argument("--virtio-win", type=Path, metavar="DIR|ISO",
                   help="Windows sources: the virtio-win ISO or directory fix takes the "
                        "drivers from (checked before anything runs; docs/user/windows.md)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the boot check before registering (not recommended)")
    p.add_argument("--verify-timeout", type=positive_arg, default=300.0, metavar="S",
                   help="seconds the boot check waits for userspace (default: 300)")
    p.add_argument("--new-macs", action="store_true",
                   help="give the guest fresh MACs (the source stays live with its own); the "
                        "guest's interface names are pinned to the new ones, so its network "
                        "configuration still applies")


def _add_copy_flags(p: argparse.ArgumentParser) -> None:
    """What is copied from the live source, how fast, and the cutover."""
    p.add_argument("--disk", action="append", default=[], metavar="DEV",
                   help="source disk to copy, e.g. /dev/sda (repeatable; default: every "
                        "physical disk)")
    p.add_argument("--full", action="store_true",
                   help="copy every non-zero byte (default: skip ext2/3/4 free blocks and swap)")
    p.add_argument("--no-compress", action="store_true", help="never compress on the wire")
    p.add_argument("--parallel", type=parallel_arg, default=2, metavar="N",
                   help="disks copied at the same time, 1 to 4 (default: 2)")
    p.add_argument("--bandwidth-limit", type=rate_arg, metavar="RATE",
                   help="at most RATE bytes/s on the wire over all disks, in the copy and "
                        "the sync passes, e.g. 50M (MiB/s), 800K (default: unlimited)")
    p.add_argument("--cutover", action="store_true",
                   help="live cutover: after the copy, sync passes while the delta shrinks, "
                        "then a final pass with the source's filesystems frozen (fsfreeze, "
                        "a thaw timer on the source); the downtime window is reported "
                        "(docs/user/sync.md)")
    add_freeze_flags(p, "with --cutover: ", "the final pass always freezes; ")


def job_spec(args: argparse.Namespace, uri: str) -> JobSpec:
    """The job these arguments ask for (`p2v jobs` prints the arguments of a spec back)."""
    from p2v.job import JobSpec, default_output_dir, image_source

    images = tuple(p.absolute() for p in args.from_image or ())
    return JobSpec(
        source=image_source(images) if images else args.source, name=args.name,
        images=images, in_place=args.in_place,
        output_dir=(args.output_dir or default_output_dir()).absolute(),
        disks=tuple(args.disk), memory_mib=args.memory, vcpus=args.vcpus,
        connect=uri, networks=tuple(args.network), bridges=tuple(args.bridge),
        pool=args.pool, start=args.start, verify=not args.no_verify, full=args.full,
        compress=not args.no_compress, identity=args.identity, known_hosts=args.known_hosts,
        accept_new_host_key=args.accept_new_host_key, ssh_config=args.ssh_config,
        verify_timeout=args.verify_timeout, new_macs=args.new_macs,
        cutover=args.cutover, freeze=args.freeze or "strict",
        freeze_timeout=args.freeze_timeout, before_final=args.before_final,
        after_final=args.after_final, serial_console=args.serial_console,
        parallel=args.parallel, bandwidth_limit=args.bandwidth_limit,
        virtio_win=args.virtio_win.absolute() if args.virtio_win else None,
    )


def check_image_args(args: argparse.Namespace) -> None:
    """--from-image: no SOURCE, nothing only a live source has, every image importable."""
    from p2v.errors import UsageError
    from p2v.image_import import check_images, mapping_problem

    if args.source is not None:
        raise UsageError(detail=f"give SOURCE ({args.source}) or --from-image, not both")
    for flag, given in (("--disk", args.disk), ("--cutover", args.cutover),
                        ("--new-macs", args.new_macs)):
        if given:
            raise UsageError(detail=f"{flag} is for a live SOURCE, not --from-image"
                             + (" (an image's guest always gets fresh MACs)"
                                if flag == "--new-macs" else ""))
    problem = mapping_problem(args.network, args.bridge)
    if problem:
        raise UsageError(detail=" ".join(problem))
    check_images([p.absolute() for p in args.from_image], in_place=args.in_place)


def run(args: argparse.Namespace) -> int:
    from p2v.errors import UsageError
    from p2v.job import default_output_dir
    from p2v.libvirt_uri import resolve_uri
    from p2v.pipeline import run_job
    from p2v.source.freeze import check_freeze_timeout

    for flag, value in (("--memory", args.memory), ("--vcpus", args.vcpus)):
        if value is not None and value < 1:
            raise UsageError(detail=f"{flag} must be positive, not {value}")
    check_freeze_timeout(args.freeze_timeout)     # now, not at the final pass after the copy
    if args.virtio_win is not None:               # now, not at fix after the whole copy
        from p2v.fix.windows.virtio_win import check_virtio_win

        check_virtio_win(args.virtio_win)
    uri = resolve_uri(args.connect)
    if args.in_place and not args.from_image:
        raise UsageError(detail="--in-place needs --from-image (the images it leaves where "
                                "they are)")
    if args.from_image:
        check_image_args(args)
    else:
        if args.source is None:
            raise UsageError(detail="give SOURCE (the live server) or --from-image IMG ...")
        check_source_arg(args)
    check_name(args.name)
    check_output_dir(args.output_dir or default_output_dir())
    spec = job_spec(args, uri.uri)
    if not args.cutover and (args.before_final or args.after_final):
        raise UsageError(detail="--before-final and --after-final need --cutover")
    # --json: the events as they are; -q: none; else the screen (bars on a terminal).
    screen = None if args.json or quiet(args) else ConvertScreen()
    sink: EventSink = print_json if args.json else (screen or discard)
    if screen is not None and uri.chosen_by_config:
        print(f"libvirt: {uri.uri} ({uri.origin})", file=sys.stderr)
    with screen or contextlib.nullcontext():
        report = run_job(spec, sink)
    if not report.ok:
        print(f"p2v: error: {report.error}", file=sys.stderr)
        return report.exit_code
    if screen is not None:
        print_report(report)
    return ExitCode.OK
