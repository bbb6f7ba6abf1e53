"""The one wrapper for local commands: argv lists only, timeouts, and a stderr tail on failure."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from p2v.errors import CommandFailed, CommandNotFound, CommandTimeout

log = logging.getLogger(__name__)

# Variables that may hold secrets are never passed on to child processes.
_SECRET_ENV = ("P2V_SUDO_PASSWORD", "SSH_ASKPASS_PASSWORD")


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
    if extra:
        env.update(extra)
    return env


def which(program: str) -> str:
    """Return the program's path, or raise CommandNotFound naming it."""
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if not found:
        raise CommandNotFound(program=program)
    return found


def _tail(text: str, lines: int = 5) -> str:
    rest = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(rest[-lines:]) or "(no output)"


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float | None = 600,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    input: str | None = None,
) -> Result:
    """Run argv (never through a shell) and return its output as text."""
    args = [os.fspath(a) for a in argv]
    args[0] = which(args[0]) if "/" not in args[0] else args[0]
    log.debug("run: %s", shlex.join(args))
    try:
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=_env(env),
            cwd=cwd,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandTimeout(command=shlex.join(args[:3]), timeout=timeout or 0) from exc
    result = Result(tuple(args), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise CommandFailed(
            command=shlex.join(args[:4]) + (" …" if len(args) > 4 else ""),
            returncode=proc.returncode,
            stderr_tail=_tail(proc.stderr or proc.stdout),
        )
    return result


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    stdout: int | None = subprocess.DEVNULL,
    stderr: int | None = subprocess.DEVNULL,
    cwd: str | Path | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a long-running process (qemu, sshd) in its own session; the caller stops it.

    die_with_parent: the kernel sends it SIGTERM when p2v dies, even by SIGKILL (Linux
    PR_SET_PDEATHSIG), so a helper holding an image lock never outlives a killed copy.
    """
    args = [os.fspath(a) for a in argv]
    args[0] = which(args[0]) if "/" not in args[0] else args[0]
    log.debug("spawn: %s", shlex.join(args))
    return subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=_env(env),
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_die_with_parent if die_with_parent else None,
    )


def _die_with_parent() -> None:
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Terminate a spawned process, then kill it if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
