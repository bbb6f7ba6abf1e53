"""The command line: subcommands, output, exit codes. The only place that prints or exits."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from p2v import __version__
from p2v.errors import ExitCode, P2VError

log = logging.getLogger("p2v")


def _say(args: argparse.Namespace) -> Callable[[str], None]:
    """Progress messages go to stderr, and not at all with --json (stdout stays parseable)."""
    if getattr(args, "json", False):
        return lambda msg: log.info("%s", msg)
    return lambda msg: print(f"p2v: {msg}", file=sys.stderr, flush=True)


def _mac(text: str) -> str:
    import re

    if not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", text):
        raise argparse.ArgumentTypeError(f"not a MAC address: {text!r} (want aa:bb:cc:dd:ee:ff)")
    return text.lower()


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


# ---------------------------------------------------------------- verify
def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="boot disk image(s) headless and report whether the guest reaches userspace",
        description=(
            "Boot IMAGE(s) in qemu on a throwaway overlay (the images and the --nvram file are "
            "never modified), with every NIC kept off any real network, and report whether the "
            "guest reached userspace: console evidence, elapsed time, accelerator, and the "
            "network interfaces seen inside the guest. A serial console and a small report "
            "script are added to the overlay only. KVM is used only when a probe boot proves "
            "it works, else TCG. Exit 0 when the guest booted, 4 when it did not, with the "
            "reason: no-bootloader, bootloader-error, root-device-missing, initramfs-shell, "
            "emergency-mode, kernel-panic, timeout."
        ),
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="disk images of one guest, boot disk first (any format qemu reads)")
    p.add_argument("--bus", choices=("virtio", "sata"), default="virtio",
                   help="disk bus the guest sees (default: virtio)")
    p.add_argument("--firmware", choices=("auto", "bios", "uefi"), default="auto",
                   help="firmware; auto picks uefi with --nvram or an EFI system partition")
    p.add_argument("--nvram", type=Path, metavar="VARS",
                   help="UEFI variable store to boot with (a copy is used); default: a fresh one")
    p.add_argument("--mac", action="append", type=_mac, default=[], metavar="MAC",
                   help="one NIC per --mac, in order (default: one NIC with a local MAC)")
    p.add_argument("--nic-model", choices=("virtio", "e1000e"),
                   help="NIC model (default: virtio on the virtio bus, e1000e on sata)")
    p.add_argument("--timeout", type=_positive, default=300.0, metavar="S",
                   help="seconds to wait for userspace (default: 300)")
    p.add_argument("--memory", type=int, default=1024, metavar="MiB", help="guest RAM (1024)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
    from p2v.verify.boot import BootOptions, verify_boot

    options = BootOptions(
        bus=args.bus, firmware=args.firmware, nvram=args.nvram, macs=tuple(args.mac),
        nic_model=args.nic_model, timeout=args.timeout, memory_mib=args.memory,
    )
    verdict = verify_boot(args.images, options, progress=_say(args))
    if args.json:
        print(verdict.to_json())
    else:
        state = "BOOTED" if verdict.booted else f"FAILED: {verdict.reason}"
        print(f"{state} after {verdict.elapsed_s:.0f} s "
              f"({verdict.bus}, {verdict.firmware}, {verdict.accel}); os: {verdict.os}")
        if verdict.booted:
            print(f"  hostname: {verdict.hostname}   root: {verdict.root}")
            for nic in verdict.interfaces:
                addrs = ", ".join(nic.addresses) or "no address"
                print(f"  nic {nic.name:<10} {nic.mac}  {nic.state:<5} {addrs}")
        print("  evidence:")
        for line in verdict.evidence[-10:]:
            print(f"    | {line}")
    return ExitCode.OK if verdict.booted else ExitCode.BOOT_FAILED


# ---------------------------------------------------------------- demo
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="build (or reuse) a legacy-server fixture, run it as a live source, boot-check it",
        description=(
            "The built-in example. Builds or reuses the 'bios' fixture (a Debian 12 legacy "
            "server image), starts it as a live SSH source in qemu and shows what it serves, "
            "then boot-checks the image with `p2v verify` on SATA (boots) and on virtio "
            "(fails until `p2v fix` exists) and says where everything is."
        ),
    )
    p.add_argument("--variant", default="bios", help="fixture variant (default: bios)")
    p.add_argument("--json", action="store_true", help="print one JSON document at the end")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from p2v.testbed.demo import run_demo

    result = run_demo(args.variant, progress=_say(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for line in result["summary"]:
            print(line)
    return ExitCode.OK


# ---------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2v",
        description="Turn a running physical server into a bootable, verified KVM guest.",
    )
    parser.add_argument("--version", action="version", version=f"p2v {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output on stderr (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_verify(sub)
    _add_demo(sub)
    return parser




def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="p2v: %(levelname)s: %(message)s")
    try:
        return int(args.func(args))
    except P2VError as exc:
        print(f"p2v: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("p2v: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
