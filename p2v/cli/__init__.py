"""The command line: subcommands, output, exit codes. The only place that prints or exits.

One module per subcommand (add() its parser, run() it); common.py holds the argument
groups they share, render.py what they show."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from p2v import __version__, runner
from p2v.cli import (
    batch,
    clean,
    completion,
    convert,
    copy,
    demo,
    fix,
    inspect,
    jobs,
    register,
    report,
    sync,
    verify,
)
from p2v.errors import ExitCode, P2VError, UsageError


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (exit 2), like every other p2v error."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


QUIET_EPILOG = """\
-q/--quiet: nothing on stdout or stderr but errors (each a `p2v: error:` line); exit
codes are unchanged. Commands that do work (copy, sync, fix, verify, register, convert,
batch, clean, report, demo) then print no progress and no summary: the exit code is the result,
and a failed boot check (verify) or a failed job (batch) is an error line. Commands that
only report print their report all the same, as it is their result: inspect, jobs,
completion, batch --dry-run, fix --dry-run. --json output is printed under -q too.
"""


def _add_output_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """-v, -q and --log-file, before or after the subcommand (`p2v -q convert` = `p2v
    convert -q`).

    On a subcommand the defaults are suppressed, so a flag given before it is not reset."""
    verbose: object = 0 if top else argparse.SUPPRESS
    quiet: object = False if top else argparse.SUPPRESS
    log_file: object = None if top else argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", action="count", default=verbose,
                        help="more log output on stderr (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", default=quiet,
                        help="print nothing but errors (see `p2v --help`; not with -v)")
    parser.add_argument("--log-file", type=Path, metavar="FILE", default=log_file,
                        help="also write the log, at debug level, to FILE (created 0600)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="p2v",
        description="Turn a running physical server into a bootable, verified KVM guest.",
        epilog=QUIET_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"p2v {__version__}")
    _add_output_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in (verify, demo, register, inspect, copy, sync, fix, convert, clean, batch,
                    jobs, report):
        command.add(sub)
    completion.add(sub, parser)     # last: it completes every subcommand added above
    for subparser in sub.choices.values():
        _add_output_options(subparser, top=False)
    return parser


def _log_to_file(path: Path) -> logging.Handler:
    """Append the whole log (debug level) to `path`, a file only its owner can read: it names
    hosts, devices and paths (never a password or key)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise UsageError(detail=f"--log-file {path}: {exc.strerror}; give a writable file "
                                "path") from None
    os.fchmod(fd, 0o600)                    # an existing file too: the log names the server
    handler = logging.StreamHandler(os.fdopen(fd, "a", encoding="utf-8"))
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s p2v: %(levelname)s: %(name)s: "
                                           "%(message)s"))
    ours = logging.getLogger("p2v")          # p2v's own records: no library's packet dumps
    ours.addHandler(handler)
    ours.setLevel(logging.DEBUG)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet and args.verbose:
        parser.error("-q/--quiet and -v/--verbose contradict each other: give one of them")
    level = logging.ERROR if args.quiet else {0: logging.WARNING, 1: logging.INFO}.get(
        args.verbose, logging.DEBUG)
    stderr = logging.StreamHandler()
    stderr.setLevel(level)
    stderr.setFormatter(logging.Formatter("p2v: %(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[stderr])
    from p2v.secure import private_umask, private_umask_restore

    umask = private_umask()     # every file p2v or its children write: 0600, dirs 0700
    runner.interrupt_on_sigint()    # even under nohup: p2v's own stop signal
    log_file: logging.Handler | None = None
    try:
        if args.log_file is not None:
            log_file = _log_to_file(args.log_file)
        return int(args.func(args))
    except P2VError as exc:
        print(f"p2v: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("p2v: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    finally:
        private_umask_restore(umask)
        if log_file is not None:                # main() may run again in this process
            logging.getLogger("p2v").removeHandler(log_file)
            logging.getLogger("p2v").setLevel(logging.NOTSET)
            log_file.close()
