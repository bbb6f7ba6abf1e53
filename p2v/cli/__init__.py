"""The command line: subcommands, output, exit codes. The only place that prints or exits.

One module per subcommand (add() its parser, run() it); common.py holds the argument
groups they share, render.py what they show."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from p2v import __version__, runner
from p2v.cli import batch, clean, convert, copy, demo, fix, inspect, register, sync, verify
from p2v.errors import ExitCode, P2VError


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (exit 2), like every other p2v error."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="p2v",
        description="Turn a running physical server into a bootable, verified KVM guest.",
    )
    parser.add_argument("--version", action="version", version=f"p2v {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output on stderr (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    verify.add(sub)
    demo.add(sub)
    register.add(sub)
    inspect.add(sub)
    copy.add(sub)
    sync.add(sub)
    fix.add(sub)
    convert.add(sub)
    clean.add(sub)
    batch.add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="p2v: %(levelname)s: %(message)s")
    from p2v.secure import private_umask, private_umask_restore

    umask = private_umask()     # every file p2v or its children write: 0600, dirs 0700
    runner.interrupt_on_sigint()    # even under nohup: p2v's own stop signal
    try:
        return int(args.func(args))
    except P2VError as exc:
        print(f"p2v: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("p2v: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    finally:
        private_umask_restore(umask)
