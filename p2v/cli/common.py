"""Argument types and groups several subcommands share (SSH source, rates, freeze flags)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2v.inputs import finite_positive

if TYPE_CHECKING:
    from p2v.source.ssh import SshOptions, SshSource


log = logging.getLogger("p2v")


def quiet(args: argparse.Namespace) -> bool:
    """-q: nothing but errors (`p2v --help` says what each command still prints)."""
    return bool(getattr(args, "quiet", False))


def print_json(event: dict[str, Any]) -> None:
    """An event as one JSON line on stdout (--json), flushed: a reader sees it at once."""
    print(json.dumps(event), flush=True)


def progress_printer(args: argparse.Namespace) -> Callable[[str], None]:
    """Progress messages go to stderr, and only to the log with --json (stdout stays
    parseable) or -q."""
    if getattr(args, "json", False) or quiet(args):
        return lambda msg: log.info("%s", msg)
    return lambda msg: print(f"p2v: {msg}", file=sys.stderr, flush=True)


def mac_arg(text: str) -> str:
    import re

    if not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", text):
        raise argparse.ArgumentTypeError(f"not a MAC address: {text!r} (want aa:bb:cc:dd:ee:ff)")
    return text.lower()


# Every seconds option: finite and above zero (nan and inf are refused, p2v/inputs.py).
positive_arg = finite_positive


def add_ssh_source(p: argparse.ArgumentParser, *, optional: str | None = None) -> None:
    """SOURCE and the SSH flags every subcommand that logs in to a source shares; OPTIONAL
    says what stands in for SOURCE when it may be left out (convert's --from-image)."""
    p.add_argument("source", metavar="SOURCE", nargs="?" if optional else None,
                   help="ssh://[user@]host[:port] or a Host alias from ~/.ssh/config"
                        + (f" (or {optional})" if optional else ""))
    p.add_argument("--identity", "-i", type=Path, metavar="FILE",
                   help="private key to log in with (default: ssh-agent and ssh_config)")
    p.add_argument("--known-hosts", type=Path, metavar="FILE",
                   help="known_hosts file to check the host key against "
                        "(default: ~/.ssh/known_hosts)")
    p.add_argument("--accept-new-host-key", action="store_true",
                   help="trust an unknown host key and record it in the known_hosts file "
                        "(a changed key is always refused)")
    p.add_argument("--ssh-config", type=Path, metavar="FILE",
                   help="ssh client config to read instead of ~/.ssh/config")


def add_data_channel(p: argparse.ArgumentParser) -> None:
    """--data-channel: what carries the disks' data (copy and sync; convert reads
    P2V_DATA_CHANNEL only)."""
    p.add_argument("--data-channel", choices=("paramiko", "openssh", "auto"),
                   help="what carries the disks' data: p2v's own SSH session (paramiko), "
                        "or an OpenSSH ssh child trusting only the host keys p2v verified "
                        "(openssh, auto; paramiko where ssh cannot log in) (default: "
                        "$P2V_DATA_CHANNEL, else paramiko)")


def ssh_options(args: argparse.Namespace) -> SshOptions:
    """SshOptions from the flags add_ssh_source added (a sudo prompt only on a terminal)."""
    from p2v.source.ssh import SshOptions, terminal_sudo_prompt

    return SshOptions(
        identity=args.identity, known_hosts=args.known_hosts,
        accept_new_host_key=args.accept_new_host_key, ssh_config=args.ssh_config,
        sudo_prompt=terminal_sudo_prompt if sys.stdin.isatty() else None,
        data_channel=getattr(args, "data_channel", None),
    )


def check_source_arg(args: argparse.Namespace) -> None:
    """Parse SOURCE before a job records it anywhere (a password in it is refused, redacted)."""
    from p2v.source.ssh import parse_source

    parse_source(args.source, ssh_config=args.ssh_config, identity=args.identity)


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def parallel_arg(text: str) -> int:
    from p2v.transfer.copy import MAX_PARALLEL

    value = at_least_one(text)
    if value > MAX_PARALLEL:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_PARALLEL}: {text!r}")
    return value


def rate_arg(text: str) -> float:
    from p2v.ratelimit import parse_rate

    try:
        rate = parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not math.isfinite(rate):         # "9" * 400 overflows float() to inf
        shown = text if len(text) <= 20 else text[:20] + "..."
        raise argparse.ArgumentTypeError(f"not a finite rate: {shown!r}")
    return rate


@contextlib.contextmanager
def images_locked(source: SshSource, output_dir: Path, name: str | None) -> Iterator[str]:
    """Hold the images' lock (the one convert holds too) for a standalone copy or sync."""
    from p2v.jobdir import images_lock
    from p2v.transfer.device import source_hostname

    name = name or source_hostname(source)
    with images_lock(output_dir, name):
        yield name


def add_freeze_flags(p: argparse.ArgumentParser, scope: str, freeze_what: str) -> None:
    """--freeze[=best-effort], --freeze-timeout and the hooks: the same for sync and convert."""
    p.add_argument("--freeze", nargs="?", const="strict", choices=("strict", "best-effort"),
                   metavar="best-effort",
                   help=f"{scope}{freeze_what}a filesystem that cannot be frozen stops it, "
                        "unless --freeze=best-effort (then it is named and left running)")
    p.add_argument("--freeze-timeout", type=positive_arg, default=300.0, metavar="SECONDS",
                   help=f"{scope}the source thaws itself after this long whatever happens "
                        "(default: 300)")
    p.add_argument("--before-final", metavar="CMD",
                   help=f"{scope}YOUR shell command, run on the source (via sh -c) before the "
                        "final pass and before freezing (e.g. stop a database); a failure "
                        "stops everything before the freeze")
    p.add_argument("--after-final", metavar="CMD",
                   help=f"{scope}YOUR shell command, run on the source after the final pass "
                        "and the thaw; runs even when the pass failed")


def add_libvirt_target(p: argparse.ArgumentParser) -> None:
    """Where and how the guest is defined: convert and register say it the same way."""
    p.add_argument("--connect", metavar="URI",
                   help="libvirt URI (default: $LIBVIRT_DEFAULT_URI, else uri_default in "
                        "libvirt.conf, else qemu:///system for root, as virsh picks it)")
    p.add_argument("--network", action="append", default=[], metavar="[SRC=]NET",
                   help="attach source NIC SRC (its name or MAC) to libvirt network NET "
                        "(SRC:NET, virt-v2v's spelling, works too); "
                        "without SRC=, every NIC not mapped otherwise (default: 'default')")
    p.add_argument("--bridge", action="append", default=[], metavar="[SRC=]BR",
                   help="attach source NIC SRC (its name or MAC) to host bridge BR "
                        "(or SRC:BR); "
                        "without SRC=, every NIC not mapped otherwise")
    p.add_argument("--pool", metavar="NAME",
                   help="upload the images into this libvirt storage pool (needed for a "
                        "remote --connect)")
    p.add_argument("--start", action="store_true", help="start the guest once it is defined")
