"""`p2v completion bash|zsh`: the shell completion script, generated from the real parser.

Generated at run time from the same argparse tree `p2v` parses with, so a new subcommand or
flag completes as soon as it exists: there is no second list to keep in step."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from p2v.errors import ExitCode

SHELLS = ("bash", "zsh")

# Where `make setup` (scripts/install-completion) puts each script when run as root.
INSTALL_PATHS = {
    "bash": "/usr/share/bash-completion/completions/p2v",
    "zsh": "/usr/share/zsh/vendor-completions/_p2v",
}


def add(sub: argparse._SubParsersAction, root: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "completion",
        help="print the bash or zsh completion script for p2v",
        description=(
            "Prints the completion script for SHELL, made from p2v's own argument parser: "
            "subcommands, their options, choices, and file or directory names where an "
            "option takes a path. `make setup` run as root installs both ("
            + ", ".join(INSTALL_PATHS.values()) + "). By hand: `p2v completion bash > "
            "~/.local/share/bash-completion/completions/p2v`, or for zsh write `_p2v` into "
            "a directory on $fpath."
        ),
    )
    p.add_argument("shell", metavar="SHELL", choices=SHELLS, help="bash or zsh")
    p.set_defaults(func=functools.partial(run, root))


def _prepare(parser: argparse.ArgumentParser, kinds: dict[str, object]) -> None:
    """Every Path argument completes as file names (DIR ones as directories), in every
    subcommand: the rule follows the argument's type, so a new path option needs nothing.
    zsh shows each subcommand's one-line help, not its page-long description. Changes the
    parser in place: `script` is given one built for this alone."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._get_subactions()}
            for name, subparser in action.choices.items():
                subparser.description = helps.get(name) or subparser.description
                _prepare(subparser, kinds)
        elif action.type is Path and not hasattr(action, "complete"):
            kind = "dir" if action.metavar == "DIR" else "file"
            action.complete = kinds[kind]  # type: ignore[attr-defined]


def script(root: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for `shell` (one of SHELLS); changes `root` (see _prepare)."""
    import shtab

    _prepare(root, {"file": shtab.FILE, "dir": shtab.DIRECTORY})
    return str(shtab.complete(root, shell=shell))


def run(root: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    print(script(root, args.shell), end="")
    return ExitCode.OK
